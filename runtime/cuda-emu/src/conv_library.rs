//! A [`ConvLibrary`] on the CPU, in cuDNN's place: candle's own convolution (and its autograd
//! for the two gradients) behind the same contract as `effnet_runtime`'s cuDNN library (NHWC
//! maps, `[o, k, k, c]` weights, symmetric padding, results in the maps' dtype, computed in
//! f32). With it the cuda plans' library path (the border `LibraryWindow` adds for
//! TensorFlow's `same` padding, the weights' layout, the reshapes around each call, the
//! backward's assembly) is compared with the CPU plans in `cargo test`; cuDNN's descriptors
//! themselves are checked only on a GPU (`runtime/tests/gpu.rs`).

use candle_core::{DType, Result, Tensor, Var};
use effnet_runtime::exec::cuda::ConvLibrary;
use effnet_runtime::ops::ConvGeom;

/// candle's CPU convolution as a convolution library.
#[derive(Debug, Clone, Copy, Default)]
pub struct CandleConv;

/// `x` `[n, h, w, c]` as f32 NCHW, with `g`'s symmetric padding added (candle's convolution
/// takes one padding for both dimensions).
fn nchw_padded(x: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    x.to_dtype(DType::F32)?
        .permute((0, 3, 1, 2))?
        .pad_with_zeros(2, g.pad.top, g.pad.bottom)?
        .pad_with_zeros(3, g.pad.left, g.pad.right)?
        .contiguous()
}

/// `w` `[o, k, k, c]` as f32 `[o, c, k, k]`.
fn oihw(w: &Tensor) -> Result<Tensor> {
    w.to_dtype(DType::F32)?.permute((0, 3, 1, 2))?.contiguous()
}

/// An f32 NCHW tensor as NHWC in `dtype`.
fn nhwc(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.permute((0, 2, 3, 1))?.contiguous()?.to_dtype(dtype)
}

/// The convolution's gradients with respect to its (padded) input and weight, from `dy`.
fn grads(x: &Tensor, w: &Tensor, dy: &Tensor, g: &ConvGeom) -> Result<(Tensor, Tensor)> {
    let xv = Var::from_tensor(&nchw_padded(x, g)?)?;
    let wv = Var::from_tensor(&oihw(w)?)?;
    let y = xv.conv2d(&wv, 0, g.stride, g.dilation, 1)?;
    let dy = dy.to_dtype(DType::F32)?.permute((0, 3, 1, 2))?;
    let store = (y * dy)?.sum_all()?.backward()?;
    let missing = || candle_core::Error::Msg("candle's autograd gave no gradient".into());
    let dx = store.get(&xv).ok_or_else(missing)?.clone();
    let dw = store.get(&wv).ok_or_else(missing)?.clone();
    // The padded input's gradient, cut to the input the library was given.
    let (_, _, hp, wp) = dx.dims4()?;
    let dx = dx
        .narrow(2, g.pad.top, hp - g.pad.top - g.pad.bottom)?
        .narrow(3, g.pad.left, wp - g.pad.left - g.pad.right)?;
    Ok((dx, dw))
}

impl ConvLibrary for CandleConv {
    fn name(&self) -> &'static str {
        "candle (CPU)"
    }

    fn forward(&self, x: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let y = nchw_padded(x, g)?.conv2d(&oihw(w)?, 0, g.stride, g.dilation, 1)?;
        nhwc(&y, x.dtype())
    }

    fn input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let x = Tensor::zeros((g.n, g.h, g.w, g.c), DType::F32, dy.device())?;
        let (dx, _) = grads(&x, w, dy, g)?;
        nhwc(&dx, dy.dtype())
    }

    fn weight_grad(&self, x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let w = Tensor::zeros((g.o, g.k, g.k, g.c), DType::F32, x.device())?;
        let (_, dw) = grads(x, &w, dy, g)?;
        dw.permute((0, 2, 3, 1))?.contiguous()?.to_dtype(x.dtype())
    }
}
