//! The convolutions of training (1x1 and dense kxk, not depthwise) as one autograd node each,
//! on GEMM kernels.
//!
//! Composed from candle ops, a 1x1 convolution whose weight needs a gradient is a reshape, a
//! transposed copy, a matrix product and a transposed copy back (see
//! [`super::pointwise_conv2d`]): every one of those is a node of candle's backward pass, and
//! candle accumulates each node's gradient into a freshly zeroed tensor, so one pointwise
//! layer cost some eight full passes over its activations in the backward alone. Here it is a
//! custom op: the forward is one GEMM per image, the backward one GEMM per image for the input
//! gradient and a per-thread sum of GEMMs for the weight gradient.
//!
//! Dense kxk convolutions (the stem, Fused-MBConv) are the same GEMMs over the image's
//! im2col matrix. candle's own `conv2d` backward computes the input gradient with
//! `conv_transpose2d`, a direct loop that was a tenth of a training step.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use rayon::prelude::*;

use crate::ops::cpu::conv::{col2im_nchw, im2col_nchw};
use crate::ops::cpu::gemm::{Mat, gemm_acc};
use crate::ops::cpu::tasks::sum_partials;
use crate::ops::{ConvGeom, Padding2d};

use super::cpu_data::{cpu_f32, with_cpu_f32};

const OP: &str = "pointwise-train";
const CONV: &str = "conv2d-train";

/// `[N, C, H, W]` input and `[O, C]` weight dimensions: `(n, c, hw, o)`.
fn dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match (x, w) {
        (&[n, c, h, wd], &[o, wc]) if wc == c => Ok((n, c, h * wd, o)),
        _ => bail!("{OP}: input [N, C, H, W] and weight [O, C] expected, got {x:?} and {w:?}"),
    }
}

struct PointwiseTrain;

impl CustomOp2 for PointwiseTrain {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw, o) = dims(l1.dims(), l2.dims())?;
        let x = cpu_f32(s1, l1, self.name(), "input")?;
        let w = cpu_f32(s2, l2, self.name(), "weight")?;
        let mut y = vec![0f32; n * o * hw];
        if hw > 0 && c > 0 && o > 0 {
            let wv = Mat::row_major(w, o, c);
            y.par_chunks_mut(o * hw)
                .zip(x.par_chunks(c * hw))
                .try_for_each(|(yn, xn)| {
                    let xv = Mat::row_major(xn, c, hw);
                    gemm_acc(OP, yn, false, wv, xv)
                })?;
        }
        let [_, _, h, wd] = l1.dims() else {
            bail!("{OP}: input must be [N, C, H, W]");
        };
        Ok((CpuStorage::F32(y), Shape::from((n, o, *h, *wd))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, hw, o) = dims(x.dims(), w.dims())?;
        if n == 0 || c == 0 || hw == 0 || o == 0 {
            return Ok((Some(x.zeros_like()?), Some(w.zeros_like()?)));
        }
        let (dx, dw) = with_cpu_f32(x, self.name(), |xs| {
            with_cpu_f32(w, self.name(), |ws| {
                with_cpu_f32(dy, self.name(), |g| {
                    // dx[n] = W^T dy[n]: [C, O] x [O, HW].
                    let wt = Mat::row_major(ws, o, c).t();
                    let mut dx = vec![0f32; n * c * hw];
                    dx.par_chunks_mut(c * hw)
                        .zip(g.par_chunks(o * hw))
                        .try_for_each(|(dxn, gn)| {
                            let gv = Mat::row_major(gn, o, hw);
                            gemm_acc(OP, dxn, false, wt, gv)
                        })?;
                    // dW = sum over images of dy[n] x[n]^T: [O, HW] x [HW, C], one partial
                    // sum per thread's share of the batch, then the partials added.
                    let per = n.div_ceil(rayon::current_num_threads().max(1));
                    let partials = (0..n)
                        .step_by(per)
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .map(|start| {
                            let mut acc = vec![0f32; o * c];
                            for i in start..(start + per).min(n) {
                                let gv = Mat::row_major(&g[i * o * hw..(i + 1) * o * hw], o, hw);
                                let xt =
                                    Mat::row_major(&xs[i * c * hw..(i + 1) * c * hw], c, hw).t();
                                gemm_acc(OP, &mut acc, i != start, gv, xt)?;
                            }
                            Ok(acc)
                        })
                        .collect::<Result<Vec<Vec<f32>>>>()?;
                    Ok((dx, sum_partials(&partials, o * c)))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

/// `x` (`[N, C, H, W]`, f32, CPU) convolved with the 1x1 weight `w` (`[O, C]`), as one
/// autograd node.
pub fn pointwise_conv2d_train(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, PointwiseTrain)
}

struct ConvTrain {
    stride: usize,
    dilation: usize,
    pad: Padding2d,
    oh: usize,
    ow: usize,
}

impl ConvTrain {
    /// `(n, o, geometry)` from `[N, C, H, W]` input and `[O, C, k, k]` weight dimensions.
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<(usize, usize, ConvGeom)> {
        match (x, w) {
            (&[n, c, h, wd], &[o, wc, k, k2]) if wc == c && k == k2 && k > 0 => Ok((
                n,
                o,
                ConvGeom {
                    n,
                    c,
                    h,
                    w: wd,
                    o,
                    k,
                    stride: self.stride,
                    dilation: self.dilation,
                    pad: self.pad,
                },
            )),
            _ => bail!(
                "{CONV}: input [N, C, H, W] and weight [O, C, k, k] expected, got {x:?} and {w:?}"
            ),
        }
    }
}

impl CustomOp2 for ConvTrain {
    fn name(&self) -> &'static str {
        CONV
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, o, g) = self.geom(l1.dims(), l2.dims())?;
        let (oh, ow) = (self.oh, self.ow);
        let x = cpu_f32(s1, l1, self.name(), "input")?;
        let w = cpu_f32(s2, l2, self.name(), "weight")?;
        let (p, ck) = (oh * ow, g.c * g.k * g.k);
        let mut y = vec![0f32; n * o * p];
        if p > 0 && o > 0 && g.c * g.h * g.w > 0 {
            let wv = Mat::row_major(w, o, ck);
            y.par_chunks_mut(o * p)
                .zip(x.par_chunks(g.c * g.h * g.w))
                .try_for_each(|(yn, xn)| {
                    let mut cols = vec![0f32; ck * p];
                    im2col_nchw(&g, (oh, ow), xn, &mut cols);
                    let cv = Mat::row_major(&cols, ck, p);
                    gemm_acc(OP, yn, false, wv, cv)
                })?;
        }
        Ok((CpuStorage::F32(y), Shape::from((n, o, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, o, g) = self.geom(x.dims(), w.dims())?;
        let (oh, ow) = (self.oh, self.ow);
        let (p, ck, img) = (oh * ow, g.c * g.k * g.k, g.c * g.h * g.w);
        if n == 0 || o == 0 || p == 0 || img == 0 {
            return Ok((Some(x.zeros_like()?), Some(w.zeros_like()?)));
        }
        let per = n.div_ceil(rayon::current_num_threads().max(1));
        let (dx, dw) = with_cpu_f32(x, self.name(), |xs| {
            with_cpu_f32(w, self.name(), |ws| {
                with_cpu_f32(dy, self.name(), |gy| {
                    // W^T as a [C*k*k, O] view of the [O, C*k*k] weight.
                    let wt = Mat::row_major(ws, o, ck).t();
                    let mut dx = vec![0f32; n * img];
                    // Each task: its share of the batch, with one im2col buffer, writing its
                    // images' input gradients and summing their weight gradients.
                    let partials = dx
                        .par_chunks_mut(per * img)
                        .enumerate()
                        .map(|(t, dxs)| {
                            let mut acc = vec![0f32; o * ck];
                            let mut cols = vec![0f32; ck * p];
                            for (j, dxn) in dxs.chunks_mut(img).enumerate() {
                                let i = t * per + j;
                                let gv = Mat::row_major(&gy[i * o * p..(i + 1) * o * p], o, p);
                                // dW += dy[i] cols[i]^T.
                                im2col_nchw(&g, (oh, ow), &xs[i * img..(i + 1) * img], &mut cols);
                                let ct = Mat::row_major(&cols, ck, p).t();
                                gemm_acc(OP, &mut acc, j != 0, gv, ct)?;
                                // dx[i] = col2im(W^T dy[i]).
                                gemm_acc(OP, &mut cols, false, wt, gv)?;
                                col2im_nchw(&g, (oh, ow), &cols, dxn);
                            }
                            Ok(acc)
                        })
                        .collect::<Result<Vec<Vec<f32>>>>()?;
                    Ok((dx, sum_partials(&partials, o * ck)))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

/// A dense (`groups = 1`) convolution of `x` (`[N, C, H, W]`, f32, CPU) with `w`
/// (`[O, C, k, k]`) at `stride`, with the given zero padding on each side, as one autograd
/// node.
pub fn conv2d_train(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
    conv2d_train_dilated(x, w, stride, 1, pad)
}

/// [`conv2d_train`] with the kernel's taps `dilation` pixels apart (the im2col matrix reads
/// them so; the GEMMs are the same).
pub fn conv2d_train_dilated(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
) -> Result<Tensor> {
    let (h, wd, k) = match (x.dims(), w.dims()) {
        (&[_, _, h, wd], &[_, _, k, k2]) if k == k2 && k > 0 => (h, wd, k),
        (xd, wdims) => bail!(
            "{CONV}: input [N, C, H, W] and weight [O, C, k, k] expected, got {xd:?} and {wdims:?}"
        ),
    };
    if stride == 0 || dilation == 0 {
        bail!("{CONV}: stride and dilation must be at least 1");
    }
    let (ph, pw) = (h + pad.top + pad.bottom, wd + pad.left + pad.right);
    let ek = crate::ops::geom::dilated_extent(k, dilation);
    if ph < ek || pw < ek {
        bail!(
            "{CONV}: a {k}x{k} kernel (dilation {dilation}) does not fit the padded {ph}x{pw} input"
        );
    }
    let op = ConvTrain {
        stride,
        dilation,
        pad,
        oh: (ph - ek) / stride + 1,
        ow: (pw - ek) / stride + 1,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}
