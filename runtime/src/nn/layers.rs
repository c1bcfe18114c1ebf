//! The layers a network is made of, as data: each holds its IR description and its tensors
//! (timm's names), loads itself from a `VarBuilder` and lists its tensors in `state_dict`
//! order. How a layer is computed is not here: that is a backend's business (`crate::exec`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Tensor, Var};
use candle_nn::VarBuilder;
use effnet_compiler::ir::{self, Activation, PaddingMode};

use crate::ops::{ConvGeom, Padding2d};

pub type CResult<T> = candle_core::Result<T>;

/// A named tensor the network holds: a parameter or a BatchNorm running statistic.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
    pub trainable: bool,
}

/// A trainable tensor by its (timm) name, as the trainer's variable, and whether weight decay
/// applies to it: only to tensors of more than one dimension (BatchNorm parameters and biases
/// are exempt, as timm's `param_groups_weight_decay` does). Fine-tuning sets `frozen` (the
/// optimizer leaves the tensor and its state alone, weight decay included) and `lr_scale`
/// (its learning rate is the schedule's times this).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
    pub frozen: bool,
    pub lr_scale: f64,
}

impl Param {
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let decay = var.as_tensor().rank() > 1;
        Param {
            name: name.into(),
            var,
            decay,
            frozen: false,
            lr_scale: 1.0,
        }
    }
}

/// A convolution as the IR describes it, padded as the network's padding mode says.
///
/// A mixed convolution (MixNet's `k3.5.7`, `a1.1`) holds one weight per part, under timm's
/// names (`conv_dw.0.weight`, ...): those are the parameters (what loads, saves and trains).
/// Every plan runs it as the single convolution [`ir::Conv::weight_shape`] describes, its
/// weight assembled from the parts by [`Conv2d::weight`]: each part's kernel centred in zeros
/// to the largest kernel, on its own block of channels. That one convolution computes exactly
/// what timm's split, convolve and concatenate computes (a centred odd kernel with the larger
/// kernel's padding reads the same pixels, for symmetric and TensorFlow-SAME padding alike),
/// and it runs on every fast kernel as it is: a depthwise kernel reads the NHWC map once for
/// all channels, instead of once per strided channel slice. The price is the zeros' multiply-
/// adds: for `k3.5.7.9` the depthwise layer does 81 taps per channel where the parts average
/// 41, and a two-group 1x1 (`a1.1`) is a dense GEMM twice its parts' work; depthwise layers
/// are a small share of a MixNet's time, and the GEMMs are our fastest kernels.
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub spec: ir::Conv,
    /// The weight of a plain convolution; for a mixed one, empty parts of it come from `parts`.
    weight: Tensor,
    pub bias: Option<Tensor>,
    padding: PaddingMode,
    /// A mixed convolution's parts (timm's names and shapes) with their weights.
    parts: Vec<(ir::Conv, Tensor)>,
}

impl Conv2d {
    pub fn load(spec: &ir::Conv, padding: PaddingMode, vb: &VarBuilder) -> CResult<Self> {
        // A CondConv's bias holds one row per expert, as its weight does (timm's layout).
        let bias_shape = if spec.is_conditional() {
            vec![spec.experts, spec.out_channels]
        } else {
            vec![spec.out_channels]
        };
        let bias = if spec.bias {
            Some(vb.get(bias_shape, &format!("{}.bias", spec.path))?)
        } else {
            None
        };
        let parts = if spec.mixed.is_empty() {
            Vec::new()
        } else {
            spec.parts()
                .into_iter()
                .map(|p| {
                    let w = vb.get(p.weight_shape().to_vec(), &format!("{}.weight", p.path))?;
                    Ok((p, w))
                })
                .collect::<CResult<Vec<_>>>()?
        };
        let weight = match parts.first() {
            // A mixed convolution's own weight is assembled when asked for (`weight()`), so
            // that it always follows its parts, which training updates in place.
            Some((_, w)) => w.clone(),
            None => vb.get(spec.stored_weight_shape(), &format!("{}.weight", spec.path))?,
        };
        Ok(Conv2d {
            spec: spec.clone(),
            weight,
            bias,
            padding: spec.padding_in(padding),
            parts,
        })
    }

    /// The weight of the convolution the plans run, `[O, I / groups, k, k]`: the loaded
    /// tensor, or a mixed convolution's parts assembled (in candle ops, so that autograd
    /// carries the gradient back to each part).
    pub fn weight(&self) -> CResult<Tensor> {
        if self.spec.is_conditional() {
            // No one kernel exists: each sample's is mixed from the experts (`experts()`).
            candle_core::bail!(
                "`{}` is a CondConv convolution: its kernel differs per sample",
                self.spec.path
            );
        }
        if self.parts.is_empty() {
            return Ok(self.weight.clone());
        }
        let k = self.spec.kernel;
        let dense = self.spec.groups == 1;
        let mut before = 0;
        let blocks = self
            .parts
            .iter()
            .map(|(p, w)| {
                let m = (k - p.kernel) / 2;
                let mut w = w.pad_with_zeros(2, m, m)?.pad_with_zeros(3, m, m)?;
                if dense {
                    // Dense over its slice: zeros for the other parts' input channels.
                    let after = self.spec.in_channels - before - p.in_channels;
                    w = w.pad_with_zeros(1, before, after)?;
                    before += p.in_channels;
                }
                Ok(w)
            })
            .collect::<CResult<Vec<_>>>()?;
        Tensor::cat(&blocks, 0)
    }

    /// A CondConv's expert kernels, `[experts, prod(weight_shape)]` as timm stores them, and its
    /// per-expert bias `[experts, out]` if it has one: each sample's kernel is
    /// `routing @ experts`, reshaped to [`ir::Conv::weight_shape`].
    pub fn experts(&self) -> CResult<(&Tensor, Option<&Tensor>)> {
        if !self.spec.is_conditional() {
            candle_core::bail!("`{}` is not a CondConv convolution", self.spec.path);
        }
        Ok((&self.weight, self.bias.as_ref()))
    }

    /// The stored weight of a convolution that is not mixed (a squeeze-excitation's 1x1s),
    /// borrowed: `weight()` without the assembly.
    pub fn plain_weight(&self) -> &Tensor {
        debug_assert!(self.parts.is_empty(), "`{}` is mixed", self.spec.path);
        &self.weight
    }

    /// Replace a plain convolution's weight (a mixed one's weights are its parts').
    pub fn set_weight(&mut self, weight: Tensor) {
        assert!(
            self.parts.is_empty(),
            "`{}` is mixed: set its parts",
            self.spec.path
        );
        self.weight = weight;
    }

    /// What identifies the weight's values for a cache of prepared weights: the tensor behind
    /// the weight (a mixed convolution's first part).
    pub fn weight_id(&self) -> candle_core::TensorId {
        self.weight.id()
    }

    /// Whether the weights are training variables.
    pub fn weight_is_variable(&self) -> bool {
        self.weight.is_variable()
    }

    pub fn weight_dtype(&self) -> candle_core::DType {
        self.weight.dtype()
    }

    /// The gradient of [`Conv2d::weight`] (`[O, I / groups, k, k]`, row-major) as the
    /// gradients of the parameters, by name: itself, or each part's block cut out of it (the
    /// zeros around a part are not parameters, so their gradient goes nowhere).
    pub fn weight_grads(&self, dw: Vec<f32>) -> Vec<(String, Vec<f32>)> {
        if self.parts.is_empty() {
            return vec![(format!("{}.weight", self.spec.path), dw)];
        }
        let [_, ci, k, _] = self.spec.weight_shape();
        let dense = self.spec.groups == 1;
        let (mut o0, mut i0) = (0, 0);
        let mut out = Vec::with_capacity(self.parts.len());
        for (p, _) in &self.parts {
            let [po, pi, pk, _] = p.weight_shape();
            let m = (k - pk) / 2;
            let mut g = Vec::with_capacity(po * pi * pk * pk);
            for o in o0..o0 + po {
                for i in 0..pi {
                    let i = if dense { i0 + i } else { i };
                    for y in 0..pk {
                        let row = ((o * ci + i) * k + y + m) * k + m;
                        g.extend_from_slice(&dw[row..row + pk]);
                    }
                }
            }
            out.push((format!("{}.weight", p.path), g));
            o0 += po;
            i0 += p.in_channels;
        }
        out
    }

    /// [`Conv2d::weight_grads`] on a tensor (`[O, I / groups, k, k]`, on any device): the
    /// parameters' gradients as views cut out of it.
    pub fn weight_grad_tensors(&self, dw: &Tensor) -> CResult<Vec<(String, Tensor)>> {
        if self.parts.is_empty() {
            return Ok(vec![(format!("{}.weight", self.spec.path), dw.clone())]);
        }
        let k = self.spec.kernel;
        let dense = self.spec.groups == 1;
        let (mut o0, mut i0) = (0, 0);
        let mut out = Vec::with_capacity(self.parts.len());
        for (p, _) in &self.parts {
            let [po, pi, pk, _] = p.weight_shape();
            let m = (k - pk) / 2;
            let g = dw
                .narrow(0, o0, po)?
                .narrow(1, if dense { i0 } else { 0 }, pi)?
                .narrow(2, m, pk)?
                .narrow(3, m, pk)?
                .contiguous()?;
            out.push((format!("{}.weight", p.path), g));
            o0 += po;
            i0 += p.in_channels;
        }
        Ok(out)
    }

    /// The padding of each side for an `h x w` input.
    pub fn pad(&self, h: usize, w: usize) -> Padding2d {
        let s = &self.spec;
        let (top, bottom, _) = self.padding.resolve(h, s.kernel, s.stride, s.dilation);
        let (left, right, _) = self.padding.resolve(w, s.kernel, s.stride, s.dilation);
        Padding2d {
            top,
            bottom,
            left,
            right,
        }
    }

    /// The kernels' geometry for an `[n, c, h, w]` input.
    pub fn geom(&self, [n, c, h, w]: [usize; 4]) -> ConvGeom {
        ConvGeom {
            n,
            c,
            h,
            w,
            o: self.spec.out_channels,
            k: self.spec.kernel,
            stride: self.spec.stride,
            dilation: self.spec.dilation,
            pad: self.pad(h, w),
        }
    }

    /// A 1x1, stride-1, unpadded dense convolution: one GEMM per sample, and the only kind
    /// a squeeze-excitation gate can be folded into.
    pub fn is_pointwise(&self) -> bool {
        let s = &self.spec;
        s.kernel == 1 && s.stride == 1 && s.groups == 1 && !s.is_depthwise()
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        if self.parts.is_empty() {
            out.push(NamedTensor {
                name: format!("{}.weight", self.spec.path),
                tensor: self.weight.clone(),
                trainable: true,
            });
        }
        for (p, w) in &self.parts {
            out.push(NamedTensor {
                name: format!("{}.weight", p.path),
                tensor: w.clone(),
                trainable: true,
            });
        }
        if let Some(b) = &self.bias {
            out.push(NamedTensor {
                name: format!("{}.bias", self.spec.path),
                tensor: b.clone(),
                trainable: true,
            });
        }
    }
}

/// BatchNorm2d's running statistics: `Var`s so that training can update them in place.
/// Whoever changes them in place calls [`RunningStats::changed`] (as the running-statistic
/// update does): a plan that keeps a BatchNorm folded into its weights between calls (the
/// cuda-fused plan) refolds when the generation moves, since an in-place update keeps the
/// tensor's id.
#[derive(Debug, Clone)]
pub struct RunningStats {
    pub mean: Var,
    pub var: Var,
    generation: Arc<AtomicU64>,
}

impl RunningStats {
    pub fn new(mean: Var, var: Var) -> Self {
        RunningStats {
            mean,
            var,
            generation: Arc::default(),
        }
    }

    /// How many times the statistics were changed in place.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records an in-place change of `mean` or `var`.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The normalization after a convolution (timm's `bn1`, `bn2`, ...): BatchNorm2d with its
/// running statistics, or GroupNorm (timm's `GroupNormAct`), which has none and computes the
/// same in training and eval. A `frozen` BatchNorm (a part frozen for fine-tuning) runs in eval
/// mode in training too: it normalizes with its running statistics and does not update them.
#[derive(Debug, Clone)]
pub struct Norm {
    pub spec: ir::Norm,
    pub weight: Tensor,
    pub bias: Tensor,
    /// BatchNorm's; `None` for GroupNorm.
    pub running: Option<RunningStats>,
    pub frozen: bool,
}

impl Norm {
    pub fn load(spec: &ir::Norm, vb: &VarBuilder) -> CResult<Self> {
        let c = spec.channels;
        let p = &spec.path;
        let weight = vb.get(c, &format!("{p}.weight"))?;
        let bias = vb.get(c, &format!("{p}.bias"))?;
        let running = if spec.is_batch() {
            let mean =
                vb.get_with_hints(c, &format!("{p}.running_mean"), candle_nn::Init::Const(0.0))?;
            let var =
                vb.get_with_hints(c, &format!("{p}.running_var"), candle_nn::Init::Const(1.0))?;
            // Statistics are state, not parameters: detached copies the optimizer never sees.
            Some(RunningStats::new(
                Var::from_tensor(&mean.detach())?,
                Var::from_tensor(&var.detach())?,
            ))
        } else {
            None
        };
        Ok(Norm {
            spec: spec.clone(),
            weight,
            bias,
            running,
            frozen: false,
        })
    }

    /// A BatchNorm's running statistics; an error for a GroupNorm, which has none (the plans
    /// that fold or update statistics never get one: the plan's facts send such networks to
    /// the candle plan).
    pub fn running(&self) -> CResult<&RunningStats> {
        self.running.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "`{}` is a {}: it has no running statistics",
                self.spec.path,
                self.spec.timm_name()
            ))
        })
    }

    /// Eval-mode BatchNorm as per-channel `(scale, shift)`, each `[C]` in f32:
    /// `x * scale + shift`. A GroupNorm normalizes by each sample's own statistics, so it
    /// folds into nothing: an error.
    pub fn folded(&self) -> CResult<(Tensor, Tensor)> {
        let f32 = candle_core::DType::F32;
        let stats = self.running()?;
        let rv = stats.var.as_tensor().to_dtype(f32)?;
        let rm = stats.mean.as_tensor().to_dtype(f32)?;
        let scale = (self.weight.to_dtype(f32)? * (rv + self.spec.eps)?.sqrt()?.recip()?)?;
        let shift = (self.bias.to_dtype(f32)? - (rm * &scale)?)?;
        Ok((scale, shift))
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        let p = &self.spec.path;
        let mut push = |suffix: &str, tensor: Tensor, trainable| {
            out.push(NamedTensor {
                name: format!("{p}.{suffix}"),
                tensor,
                trainable,
            })
        };
        push("weight", self.weight.clone(), true);
        push("bias", self.bias.clone(), true);
        if let Some(s) = &self.running {
            push("running_mean", s.mean.as_tensor().clone(), false);
            push("running_var", s.var.as_tensor().clone(), false);
        }
    }
}

/// Squeeze-excitation on the pooled vector, with the block's activation and a sigmoid gate;
/// or timm's global context attention (`context`), which pools through attention and puts a
/// LayerNorm after the reduce layer.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    pub reduce: Conv2d,
    pub expand: Conv2d,
    pub activation: Activation,
    pub context: Option<GlobalContext>,
}

/// What global context attention adds (`ir::GlobalContext`): the attention logits' 1x1
/// convolution and the LayerNorm on the reduced channels (a one-group GroupNorm there).
#[derive(Debug, Clone)]
pub struct GlobalContext {
    pub attn: Conv2d,
    pub norm: Norm,
}

impl SqueezeExcite {
    pub fn load(
        spec: &ir::SqueezeExcite,
        activation: Activation,
        vb: &VarBuilder,
    ) -> CResult<Self> {
        let context = spec
            .global_context
            .as_ref()
            .map(|gc| -> CResult<GlobalContext> {
                Ok(GlobalContext {
                    attn: Conv2d::load(&gc.conv_attn, PaddingMode::Symmetric, vb)?,
                    norm: Norm::load(&gc.norm, vb)?,
                })
            })
            .transpose()?;
        Ok(SqueezeExcite {
            reduce: Conv2d::load(&spec.conv_reduce, PaddingMode::Symmetric, vb)?,
            expand: Conv2d::load(&spec.conv_expand, PaddingMode::Symmetric, vb)?,
            activation,
            context,
        })
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        if let Some(gc) = &self.context {
            gc.attn.named(out);
        }
        self.reduce.named(out);
        if let Some(gc) = &self.context {
            gc.norm.named(out);
        }
        self.expand.named(out);
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

/// conv, normalization, activation: the stem, the head, and every layer of a block.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: Norm,
    pub activation: Option<Activation>,
}

impl ConvBnAct {
    pub fn load(
        conv: &ir::Conv,
        bn: &ir::Norm,
        padding: PaddingMode,
        activation: Option<Activation>,
        vb: &VarBuilder,
    ) -> CResult<Self> {
        Ok(ConvBnAct {
            conv: Conv2d::load(conv, padding, vb)?,
            bn: Norm::load(bn, vb)?,
            activation,
        })
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        self.conv.named(out);
        self.bn.named(out);
    }
}

/// One block of any kind: its layers in order, with the SE after the first `se_after` of them.
#[derive(Debug, Clone)]
pub struct Block {
    pub spec: ir::Block,
    /// The convolutions in timm's order, each with its normalization and (maybe) activation.
    pub layers: Vec<ConvBnAct>,
    pub se: Option<SqueezeExcite>,
    /// The SE gates the output of `layers[se_after]`.
    pub se_after: usize,
    /// CondConv (timm's `CondConvResidual`): `routing_fn`, a linear layer (held as the
    /// classifier's kind) from the block input's global average to the expert weights (through
    /// a sigmoid) of its conditional convolutions.
    pub routing: Option<Classifier>,
}

impl Block {
    pub fn load(spec: &ir::Block, padding: PaddingMode, vb: &VarBuilder) -> CResult<Self> {
        let layers = spec
            .layers
            .conv_bns()
            .into_iter()
            .map(|l| {
                let act = l.activated.then_some(spec.activation);
                ConvBnAct::load(l.conv, l.bn, padding, act, vb)
            })
            .collect::<CResult<Vec<_>>>()?;
        let se = spec.layers.se();
        let se_after = spec.layers.se_after();
        let se = se
            .map(|s| SqueezeExcite::load(s, spec.activation, vb))
            .transpose()?;
        let routing = spec
            .layers
            .routing()
            .map(|r| Classifier::load(r, vb))
            .transpose()?;
        Ok(Block {
            spec: spec.clone(),
            layers,
            se,
            se_after,
            routing,
        })
    }

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        for (i, l) in self.layers.iter().enumerate() {
            l.named(out);
            if i == self.se_after
                && let Some(se) = &self.se
            {
                se.named(out);
            }
        }
        // timm registers `routing_fn` after the block's other modules.
        if let Some(r) = &self.routing {
            r.named(out);
        }
    }

    /// Whether the block's output is the SE-gated output of its last layer: a residual
    /// cannot then be added inside that layer's epilogue (it must follow the gate).
    pub fn se_on_last_layer(&self) -> bool {
        self.se.is_some() && self.se_after + 1 >= self.layers.len()
    }
}
