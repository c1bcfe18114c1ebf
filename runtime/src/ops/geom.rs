//! What a kernel is asked to compute, whatever computes it: a convolution's zero padding
//! ([`Padding2d`]) and geometry ([`ConvGeom`]), and the activation of an epilogue ([`Act`]).
//! The CPU kernels (`super::cpu`) and the candle ops (`super::candle`) take these, and a GPU
//! backend will take the same.

use candle_core::{Result, bail};

/// Explicit zero padding of the two spatial dimensions of an NCHW tensor.
///
/// The four sides are independent, which is what TensorFlow's `SAME` padding needs: a 3x3
/// stride-2 convolution over an even input pads 0 rows/columns before and 1 after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding2d {
    /// Rows of zeros added above the input.
    pub top: usize,
    /// Rows of zeros added below the input.
    pub bottom: usize,
    /// Columns of zeros added left of the input.
    pub left: usize,
    /// Columns of zeros added right of the input.
    pub right: usize,
}

impl Padding2d {
    /// The same padding `p` on all four sides (PyTorch style).
    pub const fn symmetric(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// No padding at all ("valid").
    pub const fn zero() -> Self {
        Self::symmetric(0)
    }

    /// TensorFlow `SAME` padding for a square `kernel` with the given `stride` over an
    /// `in_h x in_w` input: per dimension `pad = max((ceil(x / s) - 1) * s + k - x, 0)`,
    /// `before = pad / 2`, `after = pad - before`. For a dilated kernel, pass the pixels it
    /// spans ([`ConvGeom::extent`]): timm's `get_same_padding` with dilation.
    ///
    /// Errors when `stride` or `kernel` is zero or the arithmetic overflows.
    pub fn same(in_h: usize, in_w: usize, kernel: usize, stride: usize) -> Result<Self> {
        let (top, bottom) = same_1d(in_h, kernel, stride)?;
        let (left, right) = same_1d(in_w, kernel, stride)?;
        Ok(Self {
            top,
            bottom,
            left,
            right,
        })
    }

    /// `true` when no side is padded.
    pub const fn is_zero(&self) -> bool {
        self.top == 0 && self.bottom == 0 && self.left == 0 && self.right == 0
    }
}

/// One dimension of TensorFlow `SAME` padding, computed in signed, checked arithmetic.
fn same_1d(x: usize, k: usize, s: usize) -> Result<(usize, usize)> {
    if s == 0 {
        bail!("SAME padding: stride must be positive");
    }
    if k == 0 {
        bail!("SAME padding: kernel size must be positive");
    }
    let overflow =
        || candle_core::Error::Msg(format!("SAME padding overflows for x={x} k={k} s={s}"));
    let xi = i128::try_from(x).map_err(|_| overflow())?;
    let ki = i128::try_from(k).map_err(|_| overflow())?;
    let si = i128::try_from(s).map_err(|_| overflow())?;
    // ceil(x / s) for x >= 0, s > 0.
    let out = xi.checked_add(si - 1).ok_or_else(overflow)? / si;
    let pad = (out - 1)
        .checked_mul(si)
        .and_then(|v| v.checked_add(ki))
        .and_then(|v| v.checked_sub(xi))
        .ok_or_else(overflow)?
        .max(0);
    let before = pad / 2;
    let after = pad - before;
    let before = usize::try_from(before).map_err(|_| overflow())?;
    let after = usize::try_from(after).map_err(|_| overflow())?;
    Ok((before, after))
}

/// An activation, as a kernel applies it in its epilogue (after the affine map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    Identity,
    Silu,
    Relu,
    Relu6,
    HardSwish,
    /// The exact GELU, `x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))` (PyTorch's default).
    Gelu,
}

/// Geometry of a convolution with a square kernel over a batch. The layout is the kernel's:
/// the fused kernels read NHWC maps, the candle training op one NCHW image at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch, input channels, input height and width.
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels (equal to `c` for a depthwise convolution).
    pub o: usize,
    /// Square kernel size and stride.
    pub k: usize,
    pub stride: usize,
    /// The spacing of the kernel's taps (1: adjacent): tap `(i, j)` of output `(y, x)` reads
    /// padded input `(y * stride + i * dilation, x * stride + j * dilation)`.
    pub dilation: usize,
    pub pad: Padding2d,
}

/// The pixels a kernel of `k` taps `dilation` apart spans: `dilation * (k - 1) + 1`.
pub const fn dilated_extent(k: usize, dilation: usize) -> usize {
    if k == 0 { 0 } else { dilation * (k - 1) + 1 }
}

impl ConvGeom {
    /// The pixels the kernel spans along each axis, `dilation * (k - 1) + 1`.
    pub const fn extent(&self) -> usize {
        dilated_extent(self.k, self.dilation)
    }

    /// Output height and width, or an error naming `op` when the kernel or stride is zero or
    /// the padded input is empty or smaller than the kernel.
    pub(crate) fn check(&self, op: &str) -> Result<(usize, usize)> {
        if self.k == 0 || self.stride == 0 || self.dilation == 0 {
            bail!(
                "{op}: kernel {}, stride {} and dilation {} must be positive",
                self.k,
                self.stride,
                self.dilation
            );
        }
        let ek = self.extent();
        let hp = self.h + self.pad.top + self.pad.bottom;
        let wp = self.w + self.pad.left + self.pad.right;
        if hp < ek || wp < ek || self.h == 0 || self.w == 0 {
            bail!(
                "{op}: padded input {hp}x{wp} is empty or smaller than the {ek}x{ek} extent of \
                 the {0}x{0} kernel",
                self.k
            );
        }
        Ok(((hp - ek) / self.stride + 1, (wp - ek) / self.stride + 1))
    }

    /// Output height and width.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        self.check("conv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() -> Result<()> {
        // 3x3 stride 2 on an even input pads 0 before, 1 after.
        assert_eq!(same_1d(28, 3, 2)?, (0, 1));
        // 3x3 stride 2 on an odd input pads 1/1.
        assert_eq!(same_1d(7, 3, 2)?, (1, 1));
        // 3x3 stride 1: 1/1.
        assert_eq!(same_1d(14, 3, 1)?, (1, 1));
        // 5x5 stride 2 on an even input: pad 3 -> 1/2.
        assert_eq!(same_1d(14, 5, 2)?, (1, 2));
        // 5x5 stride 1: 2/2.
        assert_eq!(same_1d(67, 5, 1)?, (2, 2));
        // Kernel smaller than stride: no padding (never negative).
        assert_eq!(same_1d(8, 1, 2)?, (0, 0));
        // Degenerate empty input.
        assert_eq!(same_1d(0, 3, 2)?, (0, 1));
        assert!(same_1d(8, 3, 0).is_err());
        assert!(same_1d(8, 0, 1).is_err());
        let p = Padding2d::same(28, 7, 3, 2)?;
        assert_eq!(
            p,
            Padding2d {
                top: 0,
                bottom: 1,
                left: 1,
                right: 1
            }
        );
        assert_eq!(
            Padding2d::symmetric(2),
            Padding2d {
                top: 2,
                bottom: 2,
                left: 2,
                right: 2
            }
        );
        assert!(Padding2d::zero().is_zero());
        Ok(())
    }
}
