//! The layers a network is made of, as data: each holds its IR description and its tensors
//! (timm's names), loads itself from a `VarBuilder` and lists its tensors in `state_dict`
//! order. How a layer is computed is not here: that is a backend's business (`crate::exec`).

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
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub spec: ir::Conv,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    padding: PaddingMode,
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
        })
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
/// A `frozen` BatchNorm (a part frozen for fine-tuning) runs in eval mode in training too:
/// it normalizes with its running statistics and does not update them.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub spec: ir::BatchNorm,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
    pub frozen: bool,
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
            frozen: false,
        })
    }

    /// Eval-mode BatchNorm as per-channel `(scale, shift)`, each `[C]` in f32:
    /// `x * scale + shift`.
    pub fn folded(&self) -> CResult<(Tensor, Tensor)> {
        let f32 = candle_core::DType::F32;
        let rv = self.running_var.as_tensor().to_dtype(f32)?;
        let rm = self.running_mean.as_tensor().to_dtype(f32)?;
        let scale = (self.weight.to_dtype(f32)? * (rv + self.spec.eps)?.sqrt()?.recip()?)?;
        let shift = (self.bias.to_dtype(f32)? - (rm * &scale)?)?;
        Ok((scale, shift))
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

    pub fn named(&self, out: &mut Vec<NamedTensor>) {
        self.reduce.named(out);
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

/// conv, BatchNorm, activation: the stem, the head, and every layer of a block.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub activation: Option<Activation>,
}

impl ConvBnAct {
    pub fn load(
        conv: &ir::Conv,
        bn: &ir::BatchNorm,
        padding: PaddingMode,
        activation: Option<Activation>,
        vb: &VarBuilder,
    ) -> CResult<Self> {
        Ok(ConvBnAct {
            conv: Conv2d::load(conv, padding, vb)?,
            bn: BatchNorm::load(bn, vb)?,
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
    /// The convolutions in timm's order, each with its BatchNorm and (maybe) activation.
    pub layers: Vec<ConvBnAct>,
    pub se: Option<SqueezeExcite>,
    /// The SE gates the output of `layers[se_after]`.
    pub se_after: usize,
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
        Ok(Block {
            spec: spec.clone(),
            layers,
            se,
            se_after,
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
    }

    /// Whether the block's output is the SE-gated output of its last layer: a residual
    /// cannot then be added inside that layer's epilogue (it must follow the gate).
    pub fn se_on_last_layer(&self) -> bool {
        self.se.is_some() && self.se_after + 1 >= self.layers.len()
    }
}
