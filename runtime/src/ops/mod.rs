//! Hand-written convolution kernels used by the EfficientNet blocks.
//!
//! * [`depthwise_conv2d`]: depthwise 2-D convolution (one `kh x kw` filter per channel) with
//!   explicit stride and possibly asymmetric padding. On the CPU it is a candle custom op with
//!   a multi-threaded direct-loop kernel and a full backward pass (input and weight gradients,
//!   themselves custom ops, so second-order gradients also work). On other devices it is
//!   composed from candle tensor ops ([`depthwise_conv2d_tensor_ops`]), never from candle's
//!   grouped `conv2d` (which runs one convolution per channel).
//! * [`pointwise_conv2d`]: 1x1 convolution as a (batched) matrix product, plus the
//!   squeeze-and-excitation helpers [`global_avg_pool`], [`linear`] and [`squeeze_excite`].
//! * [`conv2d_train`] and the 1x1 op behind [`pointwise_conv2d`] in training
//!   (`train_gemm`): dense convolutions as single autograd nodes on GEMM kernels, forward and
//!   backward, so training does not go through candle's `conv_transpose2d` backward.

pub mod candle;
pub mod cpu;

pub use candle::{
    conv2d_train, depthwise_conv2d, depthwise_conv2d_backward, depthwise_conv2d_tensor_ops,
    global_avg_pool, linear, pointwise_conv2d, squeeze_excite,
};
// The old module paths, until the split of `cpu::conv` lands.
pub(crate) use candle::cpu_data;
pub use candle::{depthwise, pointwise};
pub use cpu::backward as train_nhwc;
pub use cpu::conv as fused;

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
    /// `before = pad / 2`, `after = pad - before`.
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
