//! The candle plan's backend: every layer operation as candle ops on NCHW tensors, on any
//! device and dtype, in eval or train mode, differentiable by candle's autograd. It is the
//! reference the effnet kernels are tested against and the fallback where they do not run.
//! Depthwise and 1x1 convolutions, and on the CPU in f32 the dense ones, are still effnet's
//! own ops (`crate::ops`): candle's grouped `conv2d` runs one convolution per channel.

use candle_core::{D, DType, Result, Tensor};
use effnet_compiler::ir::Activation;

use super::forward::ForwardOps;
use super::shared::update_running_stats;
use crate::nn::{Classifier, Conv2d, ConvBnAct, GlobalContext, Norm, SqueezeExcite};
use crate::ops::{
    Padding2d, conv2d_train_dilated, depthwise_conv2d_dilated, linear, pointwise_conv2d,
    pointwise_conv2d_for_training,
};

/// candle ops in eval mode (running statistics) or train mode (batch statistics, updating the
/// running ones); `grads` says candle's autograd will differentiate the result (train mode,
/// or parameters that are training variables), which picks the ops' training formulations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CandleOps {
    pub train: bool,
    pub grads: bool,
}

impl CandleOps {
    /// Train mode, for autograd.
    pub fn differentiable() -> Self {
        CandleOps {
            train: true,
            grads: true,
        }
    }
}

impl ForwardOps for CandleOps {
    type Map = Tensor;

    fn input(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &Tensor,
        residual: Option<&Tensor>,
        _squeeze: bool,
    ) -> Result<Tensor> {
        if residual.is_some() {
            candle_core::bail!("the candle plan adds residuals after the block");
        }
        self.bn_act(l, &conv(&l.conv, x, self.grads)?)
    }

    fn fuses_residual(&self, _: &ConvBnAct) -> bool {
        false
    }

    fn squeeze_excite(&mut self, se: &SqueezeExcite, x: Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let pooled = match &se.context {
            Some(gc) => attention_pool(gc, &x, self.grads)?,
            None => x.mean((2, 3))?,
        };
        let gate = se_gates(se, &pooled)?.reshape((n, c, 1, 1))?;
        x.broadcast_mul(&gate)
    }

    fn add_residual(&mut self, y: Tensor, x: &Tensor, keep: Option<Vec<f32>>) -> Result<Tensor> {
        let y = match keep {
            Some(k) => {
                let n = k.len();
                let mask = Tensor::from_vec(k, (n, 1, 1, 1), y.device())?.to_dtype(y.dtype())?;
                y.broadcast_mul(&mask)?
            }
            None => y,
        };
        y + x
    }

    fn batch(&self, x: &Tensor) -> Result<usize> {
        x.dim(0)
    }

    fn output(&mut self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn pool(&mut self, x: Tensor) -> Result<Tensor> {
        x.mean((2, 3))
    }

    fn classify(&mut self, c: &Classifier, pooled: &Tensor) -> Result<Tensor> {
        linear(pooled, &c.weight, Some(&c.bias))
    }

    fn routing(&mut self, r: &Classifier, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&linear(&x.mean((2, 3))?, &r.weight, Some(&r.bias))?)
    }

    fn cond_conv_bn_act(&mut self, l: &ConvBnAct, x: &Tensor, routing: &Tensor) -> Result<Tensor> {
        self.bn_act(l, &cond_conv(&l.conv, x, routing)?)
    }
}

impl CandleOps {
    /// A layer's BatchNorm and activation on its convolution's output `y`.
    fn bn_act(&self, l: &ConvBnAct, y: &Tensor) -> Result<Tensor> {
        // A frozen BatchNorm stays in eval mode while the rest trains.
        let train = self.train && !l.bn.frozen;
        let y = norm(&l.bn, y, train)?;
        let y = match l.activation {
            Some(a) => activate(&y, a)?,
            None => y,
        };
        match l.conv.spec.blur_stride {
            1 => Ok(y),
            s => blur_pool(&y, s),
        }
    }
}

/// A CondConv convolution (timm's `CondConv2d`): each sample convolves with its own kernel,
/// `routing[n] @ experts` (`routing` `[N, E]`, the experts `[E, prod(weight_shape)]`), in
/// candle ops so that autograd reaches the experts and, through the routing weights, the
/// routing function. Three formulations, each one batched op where it can be:
/// - a 1x1 convolution (`conv_pw`, `conv_pwl`) is one batched matmul, `[N, O, C] x [N, C, HW]`;
/// - a depthwise one (`conv_dw`) folds the batch into the channels, `[1, N * C, H, W]`, and
///   runs one depthwise convolution whose `N * C` kernels are the samples' (timm's own
///   batch-into-groups trick, which costs nothing here: our depthwise op reads each channel
///   once, whatever the count);
/// - anything else (a grouped or dense kxk one, rare) runs sample by sample with candle's
///   `conv2d`: folding would make candle's grouped `conv2d` one convolution per group anyway.
pub(crate) fn cond_conv(c: &Conv2d, x: &Tensor, routing: &Tensor) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let s = &c.spec;
    let (experts, bias) = c.experts()?;
    let routing = routing.to_dtype(experts.dtype())?;
    let [o, per_group, k, _] = s.weight_shape();
    // [N, P]: every sample's kernel, flattened as timm's `weight.view(...)` reads it.
    let kernels = routing.matmul(experts)?;
    let pad = c.pad(h, w);
    let y = if k == 1 && s.stride == 1 && s.groups == 1 && pad.is_zero() {
        kernels
            .reshape((n, o, cin))?
            .matmul(&x.reshape((n, cin, h * w))?)?
            .reshape((n, o, h, w))?
    } else if s.is_depthwise() {
        let folded = x.reshape((1, n * cin, h, w))?;
        let y = depthwise_conv2d_dilated(
            &folded,
            &kernels.reshape((n * o, 1, k, k))?,
            s.stride,
            s.dilation,
            pad,
        )?;
        let (_, _, oh, ow) = y.dims4()?;
        y.reshape((n, o, oh, ow))?
    } else {
        let x = x
            .pad_with_zeros(2, pad.top, pad.bottom)?
            .pad_with_zeros(3, pad.left, pad.right)?;
        let per_sample = (0..n)
            .map(|i| {
                let wi = kernels.get(i)?.reshape((o, per_group, k, k))?;
                x.narrow(0, i, 1)?
                    .conv2d(&wi, 0, s.stride, s.dilation, s.groups)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&per_sample, 0)?
    };
    match bias {
        Some(b) => y.broadcast_add(&routing.matmul(b)?.reshape((n, o, 1, 1))?),
        None => Ok(y),
    }
}

/// A convolution on candle tensors: depthwise and 1x1 on effnet's ops; with `grads`, dense
/// ones on the CPU in f32 as one autograd node with a GEMM backward of our own (candle's would
/// run `conv_transpose2d`); otherwise candle's `conv2d`. Each path takes the convolution's
/// dilation.
pub(crate) fn conv(c: &Conv2d, x: &Tensor, grads: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pad = c.pad(h, w);
    let s = &c.spec;
    let y = if s.is_depthwise() {
        depthwise_conv2d_dilated(x, &c.weight()?, s.stride, s.dilation, pad)?
    } else if s.kernel == 1 && s.stride == 1 && pad.is_zero() && s.groups == 1 {
        // The matmul formulations add the bias themselves.
        if grads {
            return pointwise_conv2d_for_training(x, &c.weight()?, c.bias.as_ref());
        }
        return pointwise_conv2d(x, &c.weight()?, c.bias.as_ref());
    } else if grads
        && s.groups == 1
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && c.weight_dtype() == DType::F32
    {
        conv2d_train_dilated(x, &c.weight()?, s.stride, s.dilation, pad)?
    } else if pad.top == pad.bottom && pad.left == pad.right && pad.top == pad.left {
        x.conv2d(&c.weight()?, pad.top, s.stride, s.dilation, s.groups)?
    } else {
        // TensorFlow "same" on stride 2: the extra row and column go after.
        let x = x
            .pad_with_zeros(2, pad.top, pad.bottom)?
            .pad_with_zeros(3, pad.left, pad.right)?;
        x.conv2d(&c.weight()?, 0, s.stride, s.dilation, s.groups)?
    };
    match &c.bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// timm's blur pool (`aa_layer='blurpc'`, `antialias blur`): each channel convolved with the
/// 3x3 binomial filter `[1, 2, 1]^T [1, 2, 1] / 16` over zero padding 1, at `stride`. The filter
/// is a constant, not a parameter; it is made on the map's device in the map's dtype, nine
/// values per channel (the depthwise op wants one filter per channel).
pub(crate) fn blur_pool(x: &Tensor, stride: usize) -> Result<Tensor> {
    let c = x.dim(1)?;
    let taps = [1f32, 2., 1., 2., 4., 2., 1., 2., 1.].map(|v| v / 16.0);
    let w = Tensor::from_iter(taps.iter().copied().cycle().take(9 * c), x.device())?
        .reshape((c, 1, 3, 3))?
        .to_dtype(x.dtype())?;
    depthwise_conv2d_dilated(x, &w, stride, 1, Padding2d::symmetric(1))
}

/// A normalization layer: BatchNorm (running statistics in eval mode; in train mode batch
/// statistics and PyTorch's running-statistic update) or GroupNorm, which is the same in both.
pub(crate) fn norm(n: &Norm, x: &Tensor, train: bool) -> Result<Tensor> {
    match n.spec.groups() {
        Some(groups) => group_norm(n, groups, x),
        None => batch_norm(n, x, train),
    }
}

/// GroupNorm (PyTorch's `F.group_norm`): each sample's channels in `groups` groups, each group
/// normalized over its channels and the whole map with the biased variance, then the
/// per-channel affine. Computed in f32 whatever the compute dtype, like BatchNorm; candle's
/// autograd differentiates it through the statistics.
fn group_norm(n: &Norm, groups: usize, x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if groups == 0 || !c.is_multiple_of(groups) || c != n.spec.channels {
        candle_core::bail!(
            "`{}`: a GroupNorm of {} channels in {groups} groups got {c} channels",
            n.spec.path,
            n.spec.channels
        );
    }
    let dtype = x.dtype();
    let xg = x
        .to_dtype(DType::F32)?
        .reshape((b, groups, (c / groups) * h * w))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let centered = xg.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered
        .broadcast_mul(&(var + n.spec.eps)?.sqrt()?.recip()?)?
        .reshape((b, c, h, w))?;
    let wt = n.weight.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
    let bias = n.bias.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
    normed
        .broadcast_mul(&wt)?
        .broadcast_add(&bias)?
        .to_dtype(dtype)
}

/// BatchNorm: running statistics in eval mode; in train mode batch statistics (computed in
/// f32 whatever the compute dtype) and PyTorch's running-statistic update.
fn batch_norm(bn: &Norm, x: &Tensor, train: bool) -> Result<Tensor> {
    let c = bn.spec.channels;
    let dtype = x.dtype();
    if !train {
        let (scale, shift) = bn.folded()?;
        return x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?.to_dtype(dtype)?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?.to_dtype(dtype)?);
    }
    let xf = x.to_dtype(DType::F32)?;
    let (n, _, h, w) = x.dims4()?;
    let count = (n * h * w) as f64;
    let mean = xf
        .mean_keepdim(D::Minus1)?
        .mean_keepdim(D::Minus2)?
        .mean_keepdim(0)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered
        .sqr()?
        .mean_keepdim(D::Minus1)?
        .mean_keepdim(D::Minus2)?
        .mean_keepdim(0)?;
    let inv = (var.clone() + bn.spec.eps)?.sqrt()?.recip()?;
    let wt = bn.weight.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
    let b = bn.bias.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
    let y = centered.broadcast_mul(&(inv * wt)?)?.broadcast_add(&b)?;
    let unbias = if count > 1.0 {
        count / (count - 1.0)
    } else {
        1.0
    };
    update_running_stats(bn, &mean.flatten_all()?, &(var.flatten_all()? * unbias)?)?;
    y.to_dtype(dtype)
}

/// A squeeze-excitation's gates `[N, C]` from the pooled input `[N, C]`: the reduce layer,
/// the block's activation, the expand layer, a sigmoid. The candle and CUDA plans share it
/// (they differ in how they pool and how they gate).
pub(crate) fn se_gates(se: &SqueezeExcite, pooled: &Tensor) -> Result<Tensor> {
    let r = linear(pooled, se.reduce.plain_weight(), se.reduce.bias.as_ref())?;
    let r = match &se.context {
        // timm's LayerNorm2d on the 1x1 map: the one-group GroupNorm.
        Some(gc) => {
            let (n, k) = r.dims2()?;
            norm(&gc.norm, &r.reshape((n, k, 1, 1))?, false)?.reshape((n, k))?
        }
        None => r,
    };
    let r = activate(&r, se.activation)?;
    let e = linear(&r, se.expand.plain_weight(), se.expand.bias.as_ref())?;
    candle_nn::ops::sigmoid(&e)
}

/// Global context attention's pooling: each sample's channels weighted by the softmax over
/// its pixels of the 1x1 attention logits, `[N, C]`.
fn attention_pool(gc: &GlobalContext, x: &Tensor, grads: bool) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let logits = conv(&gc.attn, x, grads)?.reshape((n, h * w))?;
    let weights = candle_nn::ops::softmax_last_dim(&logits)?.reshape((n, h * w, 1))?;
    x.reshape((n, c, h * w))?.matmul(&weights)?.reshape((n, c))
}

/// An activation as candle ops.
pub(crate) fn activate(x: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Silu => x.silu(),
        Activation::Relu => x.relu(),
        Activation::Relu6 => x.clamp(0f32, 6f32),
        Activation::HardSwish => {
            let gate = ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?;
            x * gate
        }
        Activation::Gelu => x.gelu_erf(),
        Activation::Mish => {
            // softplus(x) = max(x, 0) + ln(1 + e^-|x|): never overflows (e^x would at x > 88 in
            // f32) and stays differentiable through candle's autograd.
            let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
            x * softplus.tanh()?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Mish and its autograd derivative against the closed forms, in f64, over a range that
    /// includes the large |x| where a naive ln(1 + e^x) overflows in f32.
    #[test]
    fn mish_and_its_gradient_match_the_closed_form() {
        let xs: Vec<f64> = (-40..=40)
            .map(|i| i as f64 * 0.37)
            .chain([95.0, -95.0])
            .collect();
        let x = Var::new(xs.as_slice(), &Device::Cpu).expect("var");
        let y = activate(x.as_tensor(), Activation::Mish).expect("mish");
        let grads = y.sum_all().and_then(|s| s.backward()).expect("backward");
        let dy: Vec<f64> = grads.get(&x).expect("grad").to_vec1().expect("vec");
        let y: Vec<f64> = y.to_vec1().expect("vec");
        for (i, &v) in xs.iter().enumerate() {
            let sp = v.exp().ln_1p();
            let sp = if sp.is_finite() { sp } else { v };
            let want = v * sp.tanh();
            let sigmoid = 1.0 / (1.0 + (-v).exp());
            let want_dy = sp.tanh() + v * (1.0 - sp.tanh().powi(2)) * sigmoid;
            assert!(
                (y[i] - want).abs() <= 1e-12 * want.abs().max(1.0),
                "mish({v}) = {}",
                y[i]
            );
            assert!(
                (dy[i] - want_dy).abs() <= 1e-9,
                "mish'({v}) = {}, want {want_dy}",
                dy[i]
            );
        }
        // f32 at x = 95: finite, equal to x.
        let x32 = Tensor::new(&[95f32, -95.0], &Device::Cpu).expect("t");
        let y32: Vec<f32> = activate(&x32, Activation::Mish)
            .and_then(|y| y.to_vec1())
            .expect("mish f32");
        assert_eq!(y32[0], 95.0);
        assert!(y32[1].abs() < 1e-30);
    }
}
