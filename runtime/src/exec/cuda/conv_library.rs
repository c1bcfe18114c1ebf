//! Dense convolutions (stem, Fused-MBConv, any `k > 1` convolution that is not depthwise) by a
//! convolution library instead of patches + GEMM: on a GPU, cuDNN (the `cudnn` feature,
//! `super::cudnn`), whose implicit-GEMM and Winograd kernels read the map in place where the
//! patches path writes and reads `k * k` copies of it (for V2-S's first Fused-MBConv layer at
//! 384 px, batch 32, about 1 GB of patches per call, as much traffic as the GEMM's own time on
//! an H200).
//!
//! A [`ConvLibrary`] takes NHWC maps, weights `[o, k, k, c]` (the patches' tap order, so the
//! plans' prepared weights serve both paths) and a window padded the same above and below, left
//! and right, as cuDNN's descriptors are. TensorFlow's `same` padding is often one row or column
//! larger below or right (stride 2 on an even size); [`LibraryWindow`] moves that part into
//! an explicit zero border of the input, as timm's `Conv2dSame` does with `F.pad`.
//!
//! Which path runs is decided once per process: `EFFNET_DENSE_CONV=patches` keeps the patches
//! path on a build with cuDNN, so the two can be measured side by side on the same GPU
//! (`tools/gpu-check.sh`).

use candle_core::{Result, Tensor, bail};

use crate::ops::{ConvGeom, Padding2d};

/// A library's dense convolutions. Maps are NHWC in the maps' dtype; `g`'s padding is
/// symmetric per dimension ([`LibraryWindow::library`]) and its `n, c, h, w` are the map's.
pub trait ConvLibrary: Sync + std::fmt::Debug {
    /// The library's name, for reports (`bench --json`'s `dense_conv`).
    fn name(&self) -> &'static str;
    /// The convolution `[n, oh, ow, o]` of `x` `[n, h, w, c]` with `w` `[o, k, k, c]`, no bias.
    fn forward(&self, x: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor>;
    /// The input gradient `[n, h, w, c]` from the output gradient `dy` `[n, oh, ow, o]`.
    fn input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor>;
    /// The weight gradient `[o, k, k, c]` (the maps' dtype) from `x` and `dy`.
    fn weight_grad(&self, x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Result<Tensor>;
}

/// A window as a library runs it: `library`'s padding symmetric per dimension, the rest of
/// the original padding (`border`) added to the input as explicit zeros.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LibraryWindow {
    pub library: ConvGeom,
    pub border: Padding2d,
}

impl LibraryWindow {
    /// `g` split into the symmetric padding a library applies and an explicit border.
    pub fn of(g: &ConvGeom) -> Self {
        let p = g.pad;
        let (ph, pw) = (p.top.min(p.bottom), p.left.min(p.right));
        let border = Padding2d {
            top: p.top - ph,
            bottom: p.bottom - ph,
            left: p.left - pw,
            right: p.right - pw,
        };
        let library = ConvGeom {
            h: g.h + border.top + border.bottom,
            w: g.w + border.left + border.right,
            pad: Padding2d {
                top: ph,
                bottom: ph,
                left: pw,
                right: pw,
            },
            ..*g
        };
        LibraryWindow { library, border }
    }

    /// The NHWC map `x` with the explicit border (itself when there is none).
    pub fn pad_input(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.border;
        if b.is_zero() {
            return Ok(x.clone());
        }
        x.pad_with_zeros(1, b.top, b.bottom)?
            .pad_with_zeros(2, b.left, b.right)?
            .contiguous()
    }

    /// The gradient of the padded input cut back to the original input.
    pub fn crop_input_grad(&self, dx: &Tensor) -> Result<Tensor> {
        let b = self.border;
        if b.is_zero() {
            return Ok(dx.clone());
        }
        let (_, h, w, _) = dx.dims4()?;
        dx.narrow(1, b.top, h - b.top - b.bottom)?
            .narrow(2, b.left, w - b.left - b.right)?
            .contiguous()
    }
}

/// The output `[n * oh * ow, o]` of the dense convolution `g` of `x` with `wt` (`[o, k * k *
/// c]`, [`super::backend::gemm_weight`]) by `lib`.
pub(crate) fn forward(
    lib: &dyn ConvLibrary,
    x: &Tensor,
    wt: &Tensor,
    g: &ConvGeom,
) -> Result<Tensor> {
    let win = LibraryWindow::of(g);
    let y = lib.forward(&win.pad_input(x)?, &weight(wt, g)?, &win.library)?;
    let (oh, ow) = g.out_hw()?;
    if y.dims() != [g.n, oh, ow, g.o] {
        bail!(
            "{}: a convolution to {:?}, expected {:?}",
            lib.name(),
            y.dims(),
            [g.n, oh, ow, g.o]
        );
    }
    y.reshape((g.n * oh * ow, g.o))
}

/// The weight gradient `[o, k * k * c]` (the maps' dtype) and, when `need_dx`, the input
/// gradient `[n, h, w, c]` of the dense convolution `g` from `dz` `[n * oh * ow, o]` by `lib`.
pub(crate) fn backward(
    lib: &dyn ConvLibrary,
    x: &Tensor,
    dz: &Tensor,
    wt: &Tensor,
    g: &ConvGeom,
    need_dx: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let win = LibraryWindow::of(g);
    let (oh, ow) = g.out_hw()?;
    let dy = dz.reshape((g.n, oh, ow, g.o))?;
    let dw = lib
        .weight_grad(&win.pad_input(x)?, &dy, &win.library)?
        .reshape((g.o, g.k * g.k * g.c))?;
    let dx = if need_dx {
        let dxp = lib.input_grad(&dy, &weight(wt, g)?, &win.library)?;
        Some(win.crop_input_grad(&dxp)?)
    } else {
        None
    };
    Ok((dw, dx))
}

/// `wt` `[o, k * k * c]` as the library's `[o, k, k, c]` (the same memory).
fn weight(wt: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    wt.contiguous()?.reshape((g.o, g.k, g.k, g.c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(h: usize, w: usize, k: usize, stride: usize, pad: Padding2d) -> ConvGeom {
        ConvGeom {
            n: 2,
            c: 3,
            h,
            w,
            o: 4,
            k,
            stride,
            dilation: 1,
            pad,
        }
    }

    #[test]
    fn same_padding_on_an_even_size_moves_its_extra_row_and_column_into_a_border() -> Result<()> {
        // TensorFlow SAME, 3x3 stride 2 on 8x10: one row below and one column right, none above.
        let g = geom(8, 10, 3, 2, Padding2d::same(8, 10, 3, 2)?);
        let win = LibraryWindow::of(&g);
        assert_eq!(win.library.pad, Padding2d::zero());
        assert_eq!(
            win.border,
            Padding2d {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        assert_eq!((win.library.h, win.library.w), (9, 11));
        assert_eq!(win.library.out_hw()?, g.out_hw()?);
        Ok(())
    }

    #[test]
    fn symmetric_padding_needs_no_border() -> Result<()> {
        let g = geom(7, 9, 3, 1, Padding2d::symmetric(1));
        let win = LibraryWindow::of(&g);
        assert_eq!(win.library, g);
        assert!(win.border.is_zero());
        // 5x5 SAME stride 2 on 7: 2 above and 2 below; on 9 columns 2 and 2 as well.
        let g = geom(7, 9, 5, 2, Padding2d::same(7, 9, 5, 2)?);
        assert!(LibraryWindow::of(&g).border.is_zero());
        Ok(())
    }

    #[test]
    fn the_border_pads_the_input_and_is_cropped_from_its_gradient() -> Result<()> {
        let g = geom(4, 6, 3, 2, Padding2d::same(4, 6, 3, 2)?);
        let win = LibraryWindow::of(&g);
        let x = Tensor::arange(0f32, (2 * 4 * 6 * 3) as f32, &candle_core::Device::Cpu)?
            .reshape((2, 4, 6, 3))?;
        let xp = win.pad_input(&x)?;
        assert_eq!(xp.dims(), [2, 5, 7, 3]);
        // The border is zeros below and right; the map sits at the top left.
        assert_eq!(
            xp.narrow(1, 4, 1)?.abs()?.sum_all()?.to_scalar::<f32>()?,
            0.0
        );
        assert_eq!(
            xp.narrow(2, 6, 1)?.abs()?.sum_all()?.to_scalar::<f32>()?,
            0.0
        );
        let back = win.crop_input_grad(&xp)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
