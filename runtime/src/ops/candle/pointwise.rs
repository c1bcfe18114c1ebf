//! 1x1 (pointwise) convolutions as matrix products, and the squeeze-and-excitation helpers
//! built the same way. Everything here is a composition of candle ops, so it runs on every
//! device and dtype candle's matmul supports, and autograd works through it unchanged.

use candle_core::{DType, Result, Tensor, bail};

/// Accepts a 1x1 convolution weight as `[O, C]` or `[O, C, 1, 1]` and returns it as `[O, C]`.
fn weight_2d(w: &Tensor, c: usize, op: &str) -> Result<Tensor> {
    match w.dims() {
        &[o, wc] if wc == c => w.reshape((o, wc)),
        &[o, wc, 1, 1] if wc == c => w.reshape((o, wc)),
        d => bail!("{op}: weight must be [O, {c}] or [O, {c}, 1, 1], got {d:?}"),
    }
}

/// Checks an optional bias against `o` output channels.
fn check_bias(bias: Option<&Tensor>, o: usize, op: &str) -> Result<()> {
    if let Some(b) = bias
        && b.dims() != [o]
    {
        bail!("{op}: bias must be [{o}], got {:?}", b.dims());
    }
    Ok(())
}

/// 1x1 convolution, stride 1, of `x` (`[N, C, H, W]`) with `w` (`[O, C]` or `[O, C, 1, 1]`)
/// and an optional `bias` (`[O]`), formulated for inference: `[N, C, H*W]` is multiplied on the
/// left by the weight (broadcast over the batch without copying it) to give `[N, O, H, W]`.
/// Autograd works through it, but see [`pointwise_conv2d_for_training`] for a backward that
/// pays.
pub fn pointwise_conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "pointwise_conv2d";
    let (n, c, h, wd) = dims(x, OP)?;
    let w2 = weight_2d(w, c, OP)?;
    let o = w2.dim(0)?;
    check_bias(bias, o, OP)?;
    let x3 = x.reshape((n, c, h * wd))?;
    let y = w2.broadcast_as((n, o, c))?.matmul(&x3)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, o, 1))?)?,
        None => y,
    };
    y.reshape((n, o, h, wd))
}

/// [`pointwise_conv2d`] formulated for candle's autograd (the caller says gradients are
/// wanted; nothing here guesses it from the tensors). On the CPU in f32 without a bias, one
/// autograd node with GEMM kernels of our own; elsewhere one `[O, C] x [C, N*HW]` product,
/// whose backward gives the weight gradient as one `[O, N*HW] x [N*HW, C]` product where the
/// broadcast form of [`pointwise_conv2d`] would materialize N per-batch `[O, C]` gradients and
/// sum them over the batch with candle's generic (single-threaded, per-element) reduction:
/// that sum was the largest cost of a training step. The price is two transposed copies of
/// the activations.
pub fn pointwise_conv2d_for_training(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "pointwise_conv2d_for_training";
    let (n, c, h, wd) = dims(x, OP)?;
    let w2 = weight_2d(w, c, OP)?;
    let o = w2.dim(0)?;
    check_bias(bias, o, OP)?;
    if bias.is_none() && x.device().is_cpu() && x.dtype() == DType::F32 && w2.dtype() == DType::F32
    {
        return super::train_gemm::pointwise_conv2d_train(x, &w2);
    }
    let x3 = x.reshape((n, c, h * wd))?;
    let xt = x3.transpose(0, 1)?.contiguous()?.reshape((c, n * h * wd))?;
    let y = w2.matmul(&xt)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((o, 1))?)?,
        None => y,
    };
    y.reshape((o, n, h * wd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, o, h, wd))
}

fn dims(x: &Tensor, op: &str) -> Result<(usize, usize, usize, usize)> {
    match x.dims() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        d => bail!("{op}: input must be [N, C, H, W], got {d:?}"),
    }
}

/// Global average pooling over the spatial dimensions: `[N, C, H, W] -> [N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    match x.dims() {
        &[_, _, h, w] if h > 0 && w > 0 => x.mean((2, 3)),
        d => bail!("global_avg_pool: input must be [N, C, H, W] with H, W > 0, got {d:?}"),
    }
}

/// A 1x1 convolution applied to a pooled `[N, C]` tensor, i.e. a linear layer:
/// `x @ w^T + bias` with `w` as `[O, C]` or `[O, C, 1, 1]` and `bias` as `[O]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    let c = match x.dims() {
        &[_, c] => c,
        d => bail!("{OP}: input must be [N, C], got {d:?}"),
    };
    let w2 = weight_2d(w, c, OP)?;
    check_bias(bias, w2.dim(0)?, OP)?;
    let y = x.matmul(&w2.t()?)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// EfficientNet squeeze-and-excitation: `x * sigmoid(expand(silu(reduce(gap(x)))))`, where
/// `reduce` (`[R, C]` weight, `[R]` bias) and `expand` (`[C, R]` weight, `[C]` bias) are the
/// block's two 1x1 convolutions, applied as linear layers on the pooled `[N, C]` tensor.
pub fn squeeze_excite(
    x: &Tensor,
    w_reduce: &Tensor,
    b_reduce: Option<&Tensor>,
    w_expand: &Tensor,
    b_expand: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let s = global_avg_pool(x)?;
    let s = linear(&s, w_reduce, b_reduce)?.silu()?;
    let s = linear(&s, w_expand, b_expand)?;
    let gate = candle_nn::ops::sigmoid(&s)?.reshape((n, c, 1, 1))?;
    x.broadcast_mul(&gate)
}
