//! The layers blocks are made of: convolution (depthwise and 1x1 on our own kernels),
//! BatchNorm (eval from running statistics, train with running-statistic updates),
//! activations, squeeze-excitation, stochastic depth and dropout.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, D, DType, Device, Module, Storage, StorageRef, Tensor, Var};
use candle_nn::VarBuilder;
use effnet_compiler::ir::{self, Activation, PaddingMode};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::ops::cpu::{self as fused, Act, ConvGeom, Epilogue};
use crate::ops::{Padding2d, depthwise_conv2d, linear, pointwise_conv2d};

pub type CResult<T> = candle_core::Result<T>;

/// A named tensor the network holds: a parameter or a BatchNorm running statistic.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
    pub trainable: bool,
}

/// A convolution as the IR describes it, padded as the network's padding mode says.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub spec: ir::Conv,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    padding: PaddingMode,
    /// The weight prepared for the fused kernels, made on first use.
    fused_weights: FusedWeightCache,
}

/// The fused kernels' form of a convolution's weight ([`fused::ConvWeights`]), kept with the
/// id of the tensor it came from: a tensor outside autograd never changes its values, so the
/// id says whether the cache still holds (a new `weight`, or a new geometry, rebuilds it).
#[derive(Default)]
struct FusedWeightCache(Mutex<Option<(candle_core::TensorId, Arc<fused::ConvWeights>)>>);

impl FusedWeightCache {
    /// The prepared form of `weight` for geometry `g`: the cached one while it holds, else
    /// built from the tensor's values (read, and widened from f16/bf16, only then). `None`
    /// when the tensor's values cannot be read on the host.
    fn get(
        &self,
        weight: &Tensor,
        g: &ConvGeom,
    ) -> candle_core::Result<Option<Arc<fused::ConvWeights>>> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((id, cw)) = slot.as_ref()
            && *id == weight.id()
            && cw.fits(g)
        {
            return Ok(Some(Arc::clone(cw)));
        }
        let Some(w) = HostData::new(weight) else {
            return Ok(None);
        };
        let cw = Arc::new(fused::ConvWeights::new(
            w.get(),
            g,
            fused::GemmKernel::Best,
        )?);
        *slot = Some((weight.id(), Arc::clone(&cw)));
        Ok(Some(cw))
    }
}

impl Clone for FusedWeightCache {
    /// A clone starts empty: it rebuilds on first use (cheaply, once).
    fn clone(&self) -> Self {
        FusedWeightCache::default()
    }
}

impl std::fmt::Debug for FusedWeightCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FusedWeightCache")
    }
}

impl Conv2d {
    pub fn load(spec: &ir::Conv, padding: PaddingMode, vb: &VarBuilder) -> CResult<Self> {
        let weight = vb.get(
            spec.weight_shape().to_vec(),
            &format!("{}.weight", spec.path),
        )?;
        let bias = if spec.bias {
            Some(vb.get(spec.out_channels, &format!("{}.bias", spec.path))?)
        } else {
            None
        };
        Ok(Conv2d {
            spec: spec.clone(),
            weight,
            bias,
            padding,
            fused_weights: FusedWeightCache::default(),
        })
    }

    fn pad(&self, h: usize, w: usize) -> Padding2d {
        let (top, bottom, _) = self.padding.resolve(h, self.spec.kernel, self.spec.stride);
        let (left, right, _) = self.padding.resolve(w, self.spec.kernel, self.spec.stride);
        Padding2d {
            top,
            bottom,
            left,
            right,
        }
    }

    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = self.pad(h, w);
        let s = &self.spec;
        let y = if s.is_depthwise() {
            depthwise_conv2d(x, &self.weight, s.stride, pad)?
        } else if s.kernel == 1 && s.stride == 1 && pad.is_zero() && s.groups == 1 {
            // Our matmul formulation adds the bias itself.
            return pointwise_conv2d(x, &self.weight, self.bias.as_ref());
        } else if s.groups == 1
            && self.weight.track_op()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            // Training on the CPU: one autograd node with a GEMM backward of our own.
            crate::ops::conv2d_train(x, &self.weight, s.stride, pad)?
        } else if pad.top == pad.bottom && pad.left == pad.right && pad.top == pad.left {
            x.conv2d(&self.weight, pad.top, s.stride, 1, s.groups)?
        } else {
            // TensorFlow "same" on stride 2: the extra row and column go after.
            let x = x
                .pad_with_zeros(2, pad.top, pad.bottom)?
                .pad_with_zeros(3, pad.left, pad.right)?;
            x.conv2d(&self.weight, 0, s.stride, 1, s.groups)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    /// The fused kernels' geometry for an `[n, c, h, w]` input.
    pub(crate) fn geom(&self, [n, c, h, w]: [usize; 4]) -> ConvGeom {
        ConvGeom {
            n,
            c,
            h,
            w,
            o: self.spec.out_channels,
            k: self.spec.kernel,
            stride: self.spec.stride,
            pad: self.pad(h, w),
        }
    }

    /// A 1x1, stride-1, unpadded dense convolution: one GEMM per sample, and the only kind
    /// a squeeze-excitation gate can be folded into.
    pub fn is_pointwise(&self) -> bool {
        let s = &self.spec;
        s.kernel == 1 && s.stride == 1 && s.groups == 1 && !s.is_depthwise()
    }

    /// Whether the fused eval kernels can run this convolution (CPU f32 weights that track
    /// no gradient; dense or depthwise).
    fn fusable(&self) -> bool {
        let s = &self.spec;
        (s.groups == 1 || s.is_depthwise())
            && s.kernel > 0
            && s.stride > 0
            && fusable_tensor(&self.weight)
            && self.bias.as_ref().is_none_or(fusable_tensor)
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        out.push(NamedTensor {
            name: format!("{}.weight", self.spec.path),
            tensor: self.weight.clone(),
            trainable: true,
        });
        if let Some(b) = &self.bias {
            out.push(NamedTensor {
                name: format!("{}.bias", self.spec.path),
                tensor: b.clone(),
                trainable: true,
            });
        }
    }
}

/// BatchNorm2d. Running statistics are `Var`s so that training can update them in place.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub spec: ir::BatchNorm,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
}

impl BatchNorm {
    pub fn load(spec: &ir::BatchNorm, vb: &VarBuilder) -> CResult<Self> {
        let c = spec.channels;
        let p = &spec.path;
        let weight = vb.get(c, &format!("{p}.weight"))?;
        let bias = vb.get(c, &format!("{p}.bias"))?;
        let running_mean =
            vb.get_with_hints(c, &format!("{p}.running_mean"), candle_nn::Init::Const(0.0))?;
        let running_var =
            vb.get_with_hints(c, &format!("{p}.running_var"), candle_nn::Init::Const(1.0))?;
        Ok(BatchNorm {
            spec: spec.clone(),
            weight,
            bias,
            // Statistics are state, not parameters: detached copies the optimizer never sees.
            running_mean: Var::from_tensor(&running_mean.detach())?,
            running_var: Var::from_tensor(&running_var.detach())?,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> CResult<Tensor> {
        let c = self.spec.channels;
        let dtype = x.dtype();
        if train {
            // Statistics in f32 whatever the compute dtype.
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
            let inv = (var.clone() + self.spec.eps)?.sqrt()?.recip()?;
            let w = self.weight.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
            let b = self.bias.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
            let y = centered.broadcast_mul(&(inv * w)?)?.broadcast_add(&b)?;
            // PyTorch: running = (1 - m) * running + m * batch, with the unbiased variance.
            let m = self.spec.momentum;
            let unbias = if count > 1.0 {
                count / (count - 1.0)
            } else {
                1.0
            };
            let batch_mean = mean.flatten_all()?.detach();
            let batch_var = (var.flatten_all()?.detach() * unbias)?;
            let rm = self.running_mean.as_tensor();
            let rv = self.running_var.as_tensor();
            let new_rm = ((rm.to_dtype(DType::F32)? * (1.0 - m))? + (batch_mean * m)?)?;
            let new_rv = ((rv.to_dtype(DType::F32)? * (1.0 - m))? + (batch_var * m)?)?;
            self.running_mean.set(&new_rm.to_dtype(rm.dtype())?)?;
            self.running_var.set(&new_rv.to_dtype(rv.dtype())?)?;
            y.to_dtype(dtype)
        } else {
            let (scale, shift) = self.folded()?;
            x.broadcast_mul(&scale.to_dtype(dtype)?)?
                .broadcast_add(&shift.to_dtype(dtype)?)
        }
    }

    /// Eval-mode BatchNorm as per-channel `(scale, shift)` computed on the host from the
    /// current parameters and statistics, when all four are contiguous CPU f32 tensors.
    fn eval_affine(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let w = HostData::new(&self.weight)?;
        let b = HostData::new(&self.bias)?;
        let rm = HostData::new(self.running_mean.as_tensor())?;
        let rv = HostData::new(self.running_var.as_tensor())?;
        let (w, b, rm, rv) = (w.get(), b.get(), rm.get(), rv.get());
        let c = self.spec.channels;
        if [w.len(), b.len(), rm.len(), rv.len()] != [c; 4] {
            return None;
        }
        let eps = self.spec.eps;
        let scale: Vec<f32> = w
            .iter()
            .zip(rv)
            .map(|(&w, &v)| (f64::from(w) / (f64::from(v) + eps).sqrt()) as f32)
            .collect();
        let shift = b
            .iter()
            .zip(rm)
            .zip(&scale)
            .map(|((&b, &m), &s)| (f64::from(b) - f64::from(m) * f64::from(s)) as f32)
            .collect();
        Some((scale, shift))
    }

    /// Parameters usable by the fused eval kernels (the statistics are `Var`s by design and
    /// are read, never differentiated, in eval mode).
    fn fusable(&self) -> bool {
        fusable_tensor(&self.weight) && fusable_tensor(&self.bias)
    }

    /// Eval-mode BatchNorm as `x * scale + shift`, each `[1, C, 1, 1]` in f32.
    pub fn folded(&self) -> CResult<(Tensor, Tensor)> {
        let c = self.spec.channels;
        let rv = self.running_var.as_tensor().to_dtype(DType::F32)?;
        let rm = self.running_mean.as_tensor().to_dtype(DType::F32)?;
        let scale = (self.weight.to_dtype(DType::F32)? * (rv + self.spec.eps)?.sqrt()?.recip()?)?;
        let shift = (self.bias.to_dtype(DType::F32)? - (rm * &scale)?)?;
        Ok((scale.reshape((1, c, 1, 1))?, shift.reshape((1, c, 1, 1))?))
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        let p = &self.spec.path;
        for (suffix, t, trainable) in [
            ("weight", self.weight.clone(), true),
            ("bias", self.bias.clone(), true),
            ("running_mean", self.running_mean.as_tensor().clone(), false),
            ("running_var", self.running_var.as_tensor().clone(), false),
        ] {
            out.push(NamedTensor {
                name: format!("{p}.{suffix}"),
                tensor: t,
                trainable,
            });
        }
    }
}

pub fn activate(x: &Tensor, a: Activation) -> CResult<Tensor> {
    match a {
        Activation::Silu => x.silu(),
        Activation::Relu => x.relu(),
        Activation::Relu6 => x.clamp(0f32, 6f32),
        Activation::HardSwish => {
            let gate = ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?;
            x * gate
        }
        Activation::Gelu => x.gelu_erf(),
    }
}

/// Squeeze-excitation on the pooled vector, with the block's activation and a sigmoid gate.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    pub reduce: Conv2d,
    pub expand: Conv2d,
    pub activation: Activation,
}

impl SqueezeExcite {
    pub fn load(
        spec: &ir::SqueezeExcite,
        activation: Activation,
        vb: &VarBuilder,
    ) -> CResult<Self> {
        Ok(SqueezeExcite {
            reduce: Conv2d::load(&spec.conv_reduce, PaddingMode::Symmetric, vb)?,
            expand: Conv2d::load(&spec.conv_expand, PaddingMode::Symmetric, vb)?,
            activation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let pooled = x.mean((2, 3))?;
        let r = linear(&pooled, &self.reduce.weight, self.reduce.bias.as_ref())?;
        let r = activate(&r, self.activation)?;
        let e = linear(&r, &self.expand.weight, self.expand.bias.as_ref())?;
        let gate = candle_nn::ops::sigmoid(&e)?.reshape((n, c, 1, 1))?;
        x.broadcast_mul(&gate)
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        self.reduce.named(out);
        self.expand.named(out);
    }

    pub(crate) fn fusable(&self) -> bool {
        self.reduce.fusable() && self.expand.fusable() && fused_act(Some(self.activation)).is_some()
    }

    /// The gates `[N, C]` from the pooled input `means` (`[N, C]`) on the host, or `None`
    /// when the fused kernels cannot run this SE.
    pub(crate) fn fused_gates(&self, means: &[f32], n: usize) -> CResult<Option<Vec<f32>>> {
        let Some(act) = fused_act(Some(self.activation)) else {
            return Ok(None);
        };
        let (c, r) = (self.expand.spec.out_channels, self.reduce.spec.out_channels);
        let (Some(wr), Some(we)) = (
            HostData::new(&self.reduce.weight),
            HostData::new(&self.expand.weight),
        ) else {
            return Ok(None);
        };
        let bias = |b: &Option<Tensor>, len: usize| -> Option<Vec<f32>> {
            match b {
                Some(t) => HostData::new(t).map(|v| v.get().to_vec()),
                None => Some(vec![0.0; len]),
            }
        };
        let (Some(br), Some(be)) = (bias(&self.reduce.bias, r), bias(&self.expand.bias, c)) else {
            return Ok(None);
        };
        fused::se_gates(means, n, c, r, wr.get(), &br, we.get(), &be, act).map(Some)
    }
}

/// The one seeded generator behind every random decision the network makes in training
/// (stochastic depth, dropout): candle's own CPU generator cannot be seeded.
#[derive(Debug)]
pub struct NetRng(pub Mutex<ChaCha8Rng>);

impl NetRng {
    /// A keep-mask of `n` samples, each kept with probability `keep` and scaled by `1 / keep`,
    /// shaped `[n, 1, 1, 1]` (or `[n, 1]` for `dims == 2`).
    pub fn sample_mask(
        &self,
        n: usize,
        keep: f64,
        dims: usize,
        device: &Device,
        dtype: DType,
    ) -> CResult<Tensor> {
        let mut rng = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("random generator lock poisoned".into()))?;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        drop(rng);
        let shape: Vec<usize> = if dims == 2 {
            vec![n, 1]
        } else {
            vec![n, 1, 1, 1]
        };
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    /// An element-wise dropout mask shaped like `x`.
    pub fn dropout_mask(&self, x: &Tensor, keep: f64) -> CResult<Tensor> {
        let mut rng = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("random generator lock poisoned".into()))?;
        let v: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        drop(rng);
        Tensor::from_vec(v, x.shape(), x.device())?.to_dtype(x.dtype())
    }
}

/// The classifier: `x @ W^T + b`.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub spec: ir::Linear,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Classifier {
    pub fn load(spec: &ir::Linear, vb: &VarBuilder) -> CResult<Self> {
        Ok(Classifier {
            weight: vb.get(
                (spec.out_features, spec.in_features),
                &format!("{}.weight", spec.path),
            )?,
            bias: vb.get(spec.out_features, &format!("{}.bias", spec.path))?,
            spec: spec.clone(),
        })
    }
    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        out.push(NamedTensor {
            name: format!("{}.weight", self.spec.path),
            tensor: self.weight.clone(),
            trainable: true,
        });
        out.push(NamedTensor {
            name: format!("{}.bias", self.spec.path),
            tensor: self.bias.clone(),
            trainable: true,
        });
    }
}

impl Module for Classifier {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        linear(x, &self.weight, Some(&self.bias))
    }
}

// ---------------------------------------------------------------------------------------------
// The fused eval path: plain f32 slices through `ops::cpu`.

/// The data of a contiguous CPU f32 tensor, borrowed under its storage's read lock.
pub(crate) struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    pub(crate) fn new(t: &'a Tensor) -> Option<Self> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*guard {
            Storage::Cpu(CpuStorage::F32(v)) if end <= v.len() => {
                Some(F32View { guard, start, end })
            }
            _ => None,
        }
    }

    pub(crate) fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => v.get(self.start..self.end).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// A tensor the fused kernels may read: CPU, f32 (or f16 / bf16, widened to f32 on the
/// way in), contiguous, outside any autograd graph.
pub(crate) fn fusable_tensor(t: &Tensor) -> bool {
    !t.track_op()
        && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && t.device().is_cpu()
        && t.is_contiguous()
}

/// A CPU tensor's values as f32: borrowed for f32, widened copies for f16 and bf16 (the
/// fused kernels compute in f32 whatever the storage dtype).
pub(crate) enum HostData<'a> {
    View(F32View<'a>),
    Owned(Vec<f32>),
}

impl<'a> HostData<'a> {
    pub(crate) fn new(t: &'a Tensor) -> Option<Self> {
        match t.dtype() {
            DType::F32 => F32View::new(t).map(HostData::View),
            DType::F16 | DType::BF16 if t.device().is_cpu() => t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .ok()
                .map(HostData::Owned),
            _ => None,
        }
    }

    pub(crate) fn get(&self) -> &[f32] {
        match self {
            HostData::View(v) => v.get(),
            HostData::Owned(v) => v,
        }
    }
}

/// The fused kernels' activation, `None` for one they do not implement (GELU).
pub(crate) fn fused_act(a: Option<Activation>) -> Option<Act> {
    match a {
        None => Some(Act::Identity),
        Some(Activation::Silu) => Some(Act::Silu),
        Some(Activation::Relu) => Some(Act::Relu),
        Some(Activation::Relu6) => Some(Act::Relu6),
        Some(Activation::HardSwish) => Some(Act::HardSwish),
        Some(Activation::Gelu) => None,
    }
}

/// An activation map of the fused path, in NHWC order (channels last), always f32.
pub(crate) struct FusedMap {
    pub data: Vec<f32>,
    /// `[n, h, w, c]`.
    pub dims: [usize; 4],
    /// Per-channel means of `data` (`[N, C]`) when asked for.
    pub means: Option<Vec<f32>>,
    /// The dtype of the tensor it came from, which results are converted back to.
    pub dtype: DType,
}

impl FusedMap {
    /// An NCHW tensor's data in NHWC order, when it is a contiguous CPU f32 tensor outside
    /// any autograd graph.
    pub(crate) fn from_nchw(t: &Tensor) -> CResult<Option<Self>> {
        if !fusable_tensor(t) {
            return Ok(None);
        }
        let (n, c, h, w) = t.dims4()?;
        let Some(v) = HostData::new(t) else {
            return Ok(None);
        };
        Ok(Some(FusedMap {
            data: fused::nchw_to_nhwc(v.get(), n, c, h * w),
            dims: [n, h, w, c],
            means: None,
            dtype: t.dtype(),
        }))
    }

    /// Back to an NCHW tensor of the original dtype.
    pub(crate) fn to_nchw(&self) -> CResult<Tensor> {
        let [n, h, w, c] = self.dims;
        let data = fused::nhwc_to_nchw(&self.data, n, h * w, c);
        Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?.to_dtype(self.dtype)
    }
}

/// Whether [`fused_conv_bn_act`] can run this layer.
pub(crate) fn fusable_layer(conv: &Conv2d, bn: &BatchNorm, act: Option<Activation>) -> bool {
    conv.fusable()
        && bn.fusable()
        && fused_act(act).is_some()
        && bn.spec.channels == conv.spec.out_channels
}

/// conv -> eval BatchNorm -> activation (-> + residual) in one fused kernel, on an NHWC map.
/// `residual` (NHWC, the output's shape) is added after the activation; `want_means` also
/// returns the per-channel means of the output. `Ok(None)` when the fused kernels cannot run
/// it (the caller then uses candle ops).
pub(crate) fn fused_conv_bn_act(
    conv: &Conv2d,
    bn: &BatchNorm,
    act: Option<Activation>,
    x: &FusedMap,
    residual: Option<&[f32]>,
    want_means: bool,
) -> CResult<Option<FusedMap>> {
    let Some(act) = fused_act(act) else {
        return Ok(None);
    };
    let [n, h, w, c] = x.dims;
    if c != conv.spec.in_channels || !fusable_layer(conv, bn, None) {
        return Ok(None);
    }
    let Some((scale, mut shift)) = bn.eval_affine() else {
        return Ok(None);
    };
    if let Some(b) = &conv.bias {
        // BN(conv + b) = scale * conv + (scale * b + shift).
        let Some(bv) = HostData::new(b) else {
            return Ok(None);
        };
        for ((sh, &sc), &bb) in shift.iter_mut().zip(&scale).zip(bv.get()) {
            *sh += sc * bb;
        }
    }
    let g = conv.geom([n, c, h, w]);
    let (oh, ow) = g.out_hw()?;
    let epi = Epilogue {
        scale: &scale,
        shift: &shift,
        act,
    };
    let o = conv.spec.out_channels;
    let dims = [n, oh, ow, o];
    if conv.spec.is_depthwise() {
        if residual.is_some() {
            return Ok(None);
        }
        let Some(wv) = HostData::new(&conv.weight) else {
            return Ok(None);
        };
        let (data, means) = fused::depthwise(&x.data, wv.get(), &g, &epi, want_means)?;
        return Ok(Some(FusedMap {
            data,
            dims,
            means,
            dtype: x.dtype,
        }));
    }
    let Some(cw) = conv.fused_weights.get(&conv.weight, &g)? else {
        return Ok(None);
    };
    let data = fused::conv2d_prepared(&x.data, &cw, &g, &epi, residual)?;
    let means = want_means.then(|| fused::channel_means(&data, n, oh * ow, o));
    Ok(Some(FusedMap {
        data,
        dims,
        means,
        dtype: x.dtype,
    }))
}
