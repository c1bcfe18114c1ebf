//! The IR: one fully expanded network. Scaling and rounding are applied, repeats are expanded
//! into blocks, and every layer carries the timm `state_dict` path of its tensors, so the
//! runtime, the code generator and the analyses all read the same names and shapes.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    Relu,
    Relu6,
    HardSwish,
    Gelu,
    /// x * tanh(softplus(x)) (Misra 2019; timm's `nmi` block option).
    Mish,
}

impl Activation {
    pub const ALL: [(&'static str, Activation); 6] = [
        ("silu", Activation::Silu),
        ("relu", Activation::Relu),
        ("relu6", Activation::Relu6),
        ("hard_swish", Activation::HardSwish),
        ("gelu", Activation::Gelu),
        ("mish", Activation::Mish),
    ];
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::HardSwish => "hard_swish",
            Activation::Gelu => "gelu",
            Activation::Mish => "mish",
        }
    }
    pub fn from_name(name: &str) -> Option<Activation> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }
}

/// How convolutions pad their input. A dilated kernel covers `dilation * (kernel - 1) + 1`
/// pixels, and pads for that extent (timm's `get_padding` and `get_same_padding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingMode {
    /// PyTorch style: `((stride - 1) + dilation * (kernel - 1)) / 2` on every side.
    Symmetric,
    /// TensorFlow "SAME": output `ceil(input / stride)`, any odd pixel of padding goes after.
    Same,
}

impl PaddingMode {
    pub fn name(self) -> &'static str {
        match self {
            PaddingMode::Symmetric => "symmetric",
            PaddingMode::Same => "same",
        }
    }

    /// Padding before and after along one axis, and the output size, for a kernel of `kernel`
    /// taps `dilation` pixels apart. Works in signed arithmetic, so a kernel larger than the
    /// padded input gives size 0, never an underflow.
    pub fn resolve(
        self,
        input: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
    ) -> (usize, usize, usize) {
        // The pixels the kernel spans: timm's formulas with dilation are the undilated ones
        // on this extent.
        let k = (dilation.max(1) * (kernel.max(1) - 1) + 1) as i64;
        let (i, s) = (input as i64, stride.max(1) as i64);
        let (before, after) = match self {
            PaddingMode::Symmetric => {
                let p = ((s - 1) + (k - 1)) / 2;
                (p, p)
            }
            PaddingMode::Same => {
                let out = (i + s - 1) / s;
                let total = ((out - 1) * s + k - i).max(0);
                (total / 2, total - total / 2)
            }
        };
        let span = i + before + after - k;
        let out = if span < 0 { 0 } else { span / s + 1 };
        (before as usize, after as usize, out as usize)
    }
}

/// The block kinds of the EfficientNet family, with timm's names for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// conv-bn-act (timm `cn`, `ConvBnAct`).
    Conv,
    /// Depthwise-separable (timm `ds`, `DepthwiseSeparableConv`).
    DepthwiseSeparable,
    /// Fused-MBConv / EdgeResidual (timm `er`).
    Edge,
    /// MBConv (timm `ir`, `InvertedResidual`).
    MbConv,
}

impl BlockKind {
    pub fn timm_name(self) -> &'static str {
        match self {
            BlockKind::Conv => "cn",
            BlockKind::DepthwiseSeparable => "ds",
            BlockKind::Edge => "er",
            BlockKind::MbConv => "ir",
        }
    }
}

/// A convolution's weight lives at `{path}.weight` with shape
/// `[out_channels, in_channels / groups, kernel, kernel]`, its bias (if any) at `{path}.bias`.
///
/// A mixed convolution (timm's `MixedConv2d`, MixNet's `k3.5.7` and `a1.1`) has `mixed`
/// parts instead: the channels are split by timm's `_split_channels`, part `i` convolves its
/// slice of the input into its slice of the output with its own kernel, and its weight lives at
/// `{path}.{i}.weight` ([`Conv::parts`]). `kernel` is then the largest part's kernel and
/// `groups` is `in_channels` (every part depthwise) or 1 (every part dense over its slice):
/// with those, [`Conv::weight_shape`] is the one convolution that computes the same (each
/// part's kernel centred in `kernel x kernel` zeros, placed on its block of channels), which
/// is how the runtime runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv {
    pub path: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// The spacing of the kernel's taps: above 1 where `output_stride` turned a stride into
    /// dilation (timm's `dilation`).
    #[serde(default = "one")]
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mixed: Vec<ConvPart>,
    /// This convolution's own padding, where it is not the network's: timm pads its
    /// space-to-depth convolution (2x2, stride 2) and the 2x2 depthwise after it TF-`same`
    /// whatever the model's padding, since a symmetric pad cannot centre an even kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<PaddingMode>,
    /// timm's anti-aliased downsampling (`antialias blur`, its `aa_layer='blurpc'`): the
    /// convolution runs at stride 1 (`stride`), and its normalized, activated output is
    /// blurred with the 3x3 binomial filter `[1, 2, 1]^T [1, 2, 1] / 16` over zero padding 1
    /// and subsampled by this stride. 1: no blur pool.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub blur_stride: usize,
    /// CondConv (timm's `CondConv2d`): 0 for a plain convolution; otherwise the number of
    /// expert kernels, stored as one `[experts, prod(weight_shape)]` tensor at `{path}.weight`.
    /// Each sample convolves with its own kernel of [`Conv::weight_shape`], the experts summed
    /// with the block's routing weights.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub experts: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One part of a mixed convolution: its kernel and its slices of the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvPart {
    pub kernel: usize,
    pub in_channels: usize,
    pub out_channels: usize,
}

/// timm's `_split_channels`: `groups` equal shares, the first taking the remainder.
pub fn split_channels(channels: usize, groups: usize) -> Vec<usize> {
    let g = groups.max(1);
    let mut split = vec![channels / g; g];
    split[0] += channels - channels / g * g;
    split
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn thirty_two() -> usize {
    32
}

impl Conv {
    /// The padding this convolution uses in a network padded `network`.
    pub fn padding_in(&self, network: PaddingMode) -> PaddingMode {
        self.padding.unwrap_or(network)
    }

    /// The convolutions timm holds, as plain convolutions named as its `state_dict` names
    /// them: this one, or each part of a mixed one (`{path}.{i}`, depthwise when this is).
    pub fn parts(&self) -> Vec<Conv> {
        if self.mixed.is_empty() {
            return vec![self.clone()];
        }
        let depthwise = self.groups == self.in_channels && self.groups > 1;
        self.mixed
            .iter()
            .enumerate()
            .map(|(i, p)| Conv {
                path: format!("{}.{i}", self.path),
                in_channels: p.in_channels,
                out_channels: p.out_channels,
                kernel: p.kernel,
                stride: self.stride,
                dilation: self.dilation,
                groups: if depthwise { p.in_channels } else { 1 },
                bias: self.bias,
                mixed: Vec::new(),
                padding: self.padding,
                blur_stride: self.blur_stride,
                experts: 0,
            })
            .collect()
    }

    /// Whether this is a CondConv convolution (its kernel mixed per sample from experts).
    pub fn is_conditional(&self) -> bool {
        self.experts > 0
    }

    /// The shape of the stored weight: [`Conv::weight_shape`], or a CondConv's
    /// `[experts, prod(weight_shape)]` (timm's layout).
    pub fn stored_weight_shape(&self) -> Vec<usize> {
        let shape = self.weight_shape();
        if self.is_conditional() {
            vec![self.experts, shape.iter().product()]
        } else {
            shape.to_vec()
        }
    }

    /// Multiply-adds per output pixel, over the parts of a mixed convolution (not the zeros
    /// of its equivalent single convolution).
    pub fn macs_per_pixel(&self) -> usize {
        self.parts()
            .iter()
            .map(|p| p.weight_shape().iter().product::<usize>())
            .sum()
    }

    /// Trainable parameters: the weights of every part, and the bias.
    pub fn param_count(&self) -> usize {
        // A CondConv holds every expert's weight (and bias).
        let copies = self.experts.max(1);
        self.parts()
            .iter()
            .map(|p| {
                p.weight_shape().iter().product::<usize>() + if p.bias { p.out_channels } else { 0 }
            })
            .sum::<usize>()
            * copies
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel,
            self.kernel,
        ]
    }
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.in_channels == self.out_channels
    }
}

/// The normalization after a convolution (timm's `norm_layer`; its modules keep timm's names,
/// `bn1`, `bn2`, `bn3`, whatever the kind): BatchNorm2d or GroupNorm, with `eps` in the
/// variance. Both hold `{path}.weight` and `.bias`, each `[channels]`; BatchNorm also the
/// running statistics `.running_mean` and `.running_var`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Norm {
    pub path: String,
    pub channels: usize,
    pub eps: f64,
    /// What the layer normalizes over; flattened, so that a BatchNorm's JSON stays
    /// `{path, channels, eps, momentum}`.
    #[serde(flatten)]
    pub kind: NormKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NormKind {
    /// BatchNorm2d: per channel over the batch and the map in training, over the running
    /// statistics in eval mode.
    Batch {
        /// PyTorch convention: `running = (1 - momentum) * running + momentum * batch`.
        momentum: f64,
    },
    /// GroupNorm (timm's `GroupNormAct`): per sample, over each of `groups` groups of
    /// `channels / groups` channels and the map, in training and eval alike; no running
    /// statistics.
    Group { groups: usize },
}

impl Norm {
    /// BatchNorm's running-statistics momentum; `None` for GroupNorm, which keeps none.
    pub fn momentum(&self) -> Option<f64> {
        match self.kind {
            NormKind::Batch { momentum } => Some(momentum),
            NormKind::Group { .. } => None,
        }
    }

    /// The number of groups of a GroupNorm; `None` for BatchNorm.
    pub fn groups(&self) -> Option<usize> {
        match self.kind {
            NormKind::Group { groups } => Some(groups),
            NormKind::Batch { .. } => None,
        }
    }

    pub fn is_batch(&self) -> bool {
        matches!(self.kind, NormKind::Batch { .. })
    }

    /// timm's class name for the layer, for messages.
    pub fn timm_name(&self) -> &'static str {
        match self.kind {
            NormKind::Batch { .. } => "BatchNorm2d",
            NormKind::Group { .. } => "GroupNormAct",
        }
    }
}

/// Squeeze-excitation: global average, `conv_reduce` (1x1, bias), activation, `conv_expand`
/// (1x1, bias), sigmoid gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqueezeExcite {
    pub path: String,
    pub channels: usize,
    pub reduced: usize,
    pub conv_reduce: Conv,
    pub conv_expand: Conv,
    /// timm's global context attention in the SE's place (`attention gc`, its
    /// `se_layer='gc'`; Cao et al. 2019, GCNet): the channels are pooled with a softmax over the
    /// pixels of `conv_attn`'s logits instead of averaged, and a LayerNorm (`norm`) follows
    /// `conv_reduce` (timm's `mlp_scale.fc1`, then `mlp_scale.fc2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_context: Option<GlobalContext>,
}

/// The parts global context attention adds to a squeeze-excitation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalContext {
    /// `{se}.conv_attn`: 1x1, to one channel, with bias.
    pub conv_attn: Conv,
    /// `{se}.mlp_scale.norm`: timm's LayerNorm2d on the 1x1 pooled map, a LayerNorm over the
    /// reduced channels, which is a GroupNorm with one group there (the IR's and runtime's
    /// GroupNorm computes it; eps 1e-6, timm's).
    pub norm: Norm,
}

/// The layers of one block, by kind, in timm's module order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Each variant holds its layers by value: a network's IR is built once and walked read-only,
// so the size difference between an `ir` block (about 1 KB) and a `cn` one costs nothing
// that boxing would save.
#[allow(clippy::large_enum_variant)]
pub enum BlockLayers {
    Conv {
        conv: Conv,
        bn1: Norm,
    },
    DepthwiseSeparable {
        /// timm's space-to-depth opening (`conv_s2d`, `bn_s2d`; `s2d`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s2d: Option<ConvBnAct>,
        conv_dw: Conv,
        bn1: Norm,
        se: Option<SqueezeExcite>,
        conv_pw: Conv,
        bn2: Norm,
        /// timm's `dsa`: the pointwise conv is followed by the activation too.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pw_act: bool,
    },
    Edge {
        conv_exp: Conv,
        bn1: Norm,
        se: Option<SqueezeExcite>,
        conv_pwl: Conv,
        bn2: Norm,
    },
    MbConv {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s2d: Option<ConvBnAct>,
        conv_pw: Conv,
        bn1: Norm,
        conv_dw: Conv,
        bn2: Norm,
        se: Option<SqueezeExcite>,
        conv_pwl: Conv,
        bn3: Norm,
        /// CondConv (timm's `CondConvResidual`): `routing_fn`, a linear layer from the block
        /// input's global average to one weight per expert (through a sigmoid), which mixes
        /// the experts of `conv_pw`, `conv_dw` and `conv_pwl`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        routing: Option<Linear>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// `blocks.{stage}.{index}`.
    pub path: String,
    pub stage: usize,
    pub index: usize,
    pub kind: BlockKind,
    pub in_channels: usize,
    pub mid_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// The dilation of the block's kxk convolution (the depthwise of ds and ir blocks, the
    /// first of cn and er blocks); 1 until `output_stride` caps the network's stride.
    #[serde(default = "one")]
    pub dilation: usize,
    pub se_channels: Option<usize>,
    pub residual: bool,
    /// Stochastic-depth rate of this block's residual branch.
    pub drop_path: f64,
    pub activation: Activation,
    pub layers: BlockLayers,
}

impl Block {
    pub fn se(&self) -> Option<&SqueezeExcite> {
        self.layers.se()
    }

    /// timm's block-string type: the kind's name, or `dsa` for a depthwise-separable block
    /// whose pointwise convolution is activated (which the kind alone does not tell).
    pub fn timm_kind(&self) -> &'static str {
        match &self.layers {
            BlockLayers::DepthwiseSeparable { pw_act: true, .. } => "dsa",
            _ => self.kind.timm_name(),
        }
    }

    /// Whether the block opens with timm's space-to-depth convolution (`s2d`).
    pub fn space_to_depth(&self) -> bool {
        matches!(
            &self.layers,
            BlockLayers::DepthwiseSeparable { s2d: Some(_), .. }
                | BlockLayers::MbConv { s2d: Some(_), .. }
        )
    }

    /// How much the block shrinks the map: its stride, times 2 after a space-to-depth opening.
    pub fn reduction(&self) -> usize {
        self.layers
            .conv_bns()
            .iter()
            .map(|l| l.conv.stride * l.conv.blur_stride)
            .product()
    }
}

/// One convolution of a block with the normalization after it, as timm names the two modules.
#[derive(Debug, Clone, Copy)]
pub struct ConvBnRef<'a> {
    pub conv_name: &'static str,
    pub conv: &'a Conv,
    pub bn_name: &'static str,
    pub bn: &'a Norm,
    /// False for the linear bottleneck: the last projection of ds, er and ir blocks.
    pub activated: bool,
}

impl BlockLayers {
    /// The block's convolutions in execution (and `state_dict`) order. This, with
    /// [`BlockLayers::se_after`], is the one place that knows each kind's layout: the
    /// interpreter, the analyses, the tensor list and the printer all walk it.
    pub fn conv_bns(&self) -> Vec<ConvBnRef<'_>> {
        let cb = |conv_name, conv, bn_name, bn, activated| ConvBnRef {
            conv_name,
            conv,
            bn_name,
            bn,
            activated,
        };
        match self {
            BlockLayers::Conv { conv, bn1 } => vec![cb("conv", conv, "bn1", bn1, true)],
            BlockLayers::DepthwiseSeparable {
                s2d,
                conv_dw,
                bn1,
                conv_pw,
                bn2,
                pw_act,
                ..
            } => s2d
                .iter()
                .map(|l| cb("conv_s2d", &l.conv, "bn_s2d", &l.bn, true))
                .chain([
                    cb("conv_dw", conv_dw, "bn1", bn1, true),
                    cb("conv_pw", conv_pw, "bn2", bn2, *pw_act),
                ])
                .collect(),
            BlockLayers::Edge {
                conv_exp,
                bn1,
                conv_pwl,
                bn2,
                ..
            } => vec![
                cb("conv_exp", conv_exp, "bn1", bn1, true),
                cb("conv_pwl", conv_pwl, "bn2", bn2, false),
            ],
            BlockLayers::MbConv {
                s2d,
                conv_pw,
                bn1,
                conv_dw,
                bn2,
                conv_pwl,
                bn3,
                ..
            } => s2d
                .iter()
                .map(|l| cb("conv_s2d", &l.conv, "bn_s2d", &l.bn, true))
                .chain([
                    cb("conv_pw", conv_pw, "bn1", bn1, true),
                    cb("conv_dw", conv_dw, "bn2", bn2, true),
                    cb("conv_pwl", conv_pwl, "bn3", bn3, false),
                ])
                .collect(),
        }
    }

    /// The block's kxk convolution, the one that strides (and dilates).
    pub fn kxk_mut(&mut self) -> &mut Conv {
        match self {
            BlockLayers::Conv { conv, .. } => conv,
            BlockLayers::DepthwiseSeparable { conv_dw, .. } => conv_dw,
            BlockLayers::Edge { conv_exp, .. } => conv_exp,
            BlockLayers::MbConv { conv_dw, .. } => conv_dw,
        }
    }

    pub fn se(&self) -> Option<&SqueezeExcite> {
        match self {
            BlockLayers::Conv { .. } => None,
            BlockLayers::DepthwiseSeparable { se, .. }
            | BlockLayers::Edge { se, .. }
            | BlockLayers::MbConv { se, .. } => se.as_ref(),
        }
    }

    /// A CondConv block's routing function (`routing_fn`), which weighs the experts of its
    /// conditional convolutions.
    pub fn routing(&self) -> Option<&Linear> {
        match self {
            BlockLayers::MbConv { routing, .. } => routing.as_ref(),
            _ => None,
        }
    }

    /// The index in [`BlockLayers::conv_bns`] of the layer whose output the SE gates: the
    /// block's kxk convolution (the first of ds and er blocks, the depthwise second of ir).
    /// A space-to-depth opening (`s2d`) comes first and moves it one on.
    pub fn se_after(&self) -> usize {
        match self {
            BlockLayers::Conv { .. } | BlockLayers::Edge { .. } => 0,
            BlockLayers::DepthwiseSeparable { s2d, .. } => usize::from(s2d.is_some()),
            BlockLayers::MbConv { s2d, .. } => 1 + usize::from(s2d.is_some()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub index: usize,
    pub docs: Vec<String>,
    /// The stride its `stage` line gives its first block, as written: the first block's
    /// stride, or 1 there where `output_stride` turned it into dilation. A feature level ends
    /// before every stage written with a stride, dilated or not (timm's `feature_info`).
    #[serde(default = "one")]
    pub stride: usize,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvBnAct {
    pub conv: Conv,
    pub bn: Norm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub path: String,
    pub in_features: usize,
    pub out_features: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// One network, ready to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub docs: Vec<String>,
    pub input_channels: usize,
    /// Evaluation resolution.
    pub resolution: usize,
    pub train_resolution: Option<usize>,
    pub num_classes: usize,
    pub activation: Activation,
    pub padding: PaddingMode,
    /// The most the network downsamples (timm's `output_stride`: 8, 16 or 32); the strides
    /// past it are dilation.
    #[serde(default = "thirty_two")]
    pub output_stride: usize,
    pub dropout: f64,
    pub drop_path: f64,
    pub normalize: Option<Normalize>,
    pub stem: ConvBnAct,
    pub stages: Vec<Stage>,
    pub head: Option<ConvBnAct>,
    pub classifier: Linear,
    pub schedules: Vec<Schedule>,
}

/// A named tensor and its shape, in `state_dict` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Trainable (counted in the parameter count) or a BatchNorm running statistic.
    pub trainable: bool,
}

fn push_conv(out: &mut Vec<TensorSpec>, c: &Conv) {
    for part in c.parts() {
        push_plain_conv(out, &part);
    }
}

fn push_plain_conv(out: &mut Vec<TensorSpec>, c: &Conv) {
    out.push(TensorSpec {
        name: format!("{}.weight", c.path),
        shape: c.stored_weight_shape(),
        trainable: true,
    });
    if c.bias {
        out.push(TensorSpec {
            name: format!("{}.bias", c.path),
            shape: if c.is_conditional() {
                vec![c.experts, c.out_channels]
            } else {
                vec![c.out_channels]
            },
            trainable: true,
        });
    }
}

fn push_linear(out: &mut Vec<TensorSpec>, l: &Linear) {
    out.push(TensorSpec {
        name: format!("{}.weight", l.path),
        shape: vec![l.out_features, l.in_features],
        trainable: true,
    });
    out.push(TensorSpec {
        name: format!("{}.bias", l.path),
        shape: vec![l.out_features],
        trainable: true,
    });
}

fn push_bn(out: &mut Vec<TensorSpec>, b: &Norm) {
    let stats: &[(&str, bool)] = if b.is_batch() {
        &[("running_mean", false), ("running_var", false)]
    } else {
        &[]
    };
    for &(suffix, trainable) in [("weight", true), ("bias", true)].iter().chain(stats) {
        out.push(TensorSpec {
            name: format!("{}.{suffix}", b.path),
            shape: vec![b.channels],
            trainable,
        });
    }
}

fn push_se(out: &mut Vec<TensorSpec>, se: Option<&SqueezeExcite>) {
    if let Some(se) = se {
        if let Some(gc) = &se.global_context {
            push_conv(out, &gc.conv_attn);
        }
        push_conv(out, &se.conv_reduce);
        if let Some(gc) = &se.global_context {
            push_bn(out, &gc.norm);
        }
        push_conv(out, &se.conv_expand);
    }
}

impl Block {
    /// This block's tensors in timm's `state_dict` order.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        let se_after = self.layers.se_after();
        for (i, l) in self.layers.conv_bns().into_iter().enumerate() {
            push_conv(&mut out, l.conv);
            push_bn(&mut out, l.bn);
            if i == se_after {
                push_se(&mut out, self.layers.se());
            }
        }
        // timm's CondConvResidual registers `routing_fn` after the InvertedResidual's modules.
        if let Some(r) = self.layers.routing() {
            push_linear(&mut out, r);
        }
        out
    }
}

impl Network {
    /// Every tensor of the network in timm's `state_dict` order (without
    /// `num_batches_tracked`).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        push_conv(&mut out, &self.stem.conv);
        push_bn(&mut out, &self.stem.bn);
        for b in self.blocks() {
            out.extend(b.tensors());
        }
        if let Some(h) = &self.head {
            push_conv(&mut out, &h.conv);
            push_bn(&mut out, &h.bn);
        }
        push_linear(&mut out, &self.classifier);
        out
    }

    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.stages.iter().flat_map(|s| s.blocks.iter())
    }

    /// Every tensor's name (as [`Network::tensors`] lists them) with where it is in the
    /// network: what `freeze` and `lr_scale` parts are matched against.
    pub fn tensor_places(&self) -> Vec<(String, Place)> {
        let mut out = Vec::new();
        let mut stem = Vec::new();
        push_conv(&mut stem, &self.stem.conv);
        push_bn(&mut stem, &self.stem.bn);
        out.extend(stem.into_iter().map(|t| (t.name, Place::Stem)));
        for s in &self.stages {
            for b in &s.blocks {
                out.extend(
                    b.tensors()
                        .into_iter()
                        .map(|t| (t.name, Place::Stage(s.index))),
                );
            }
        }
        if let Some(h) = &self.head {
            let mut head = Vec::new();
            push_conv(&mut head, &h.conv);
            push_bn(&mut head, &h.bn);
            out.extend(head.into_iter().map(|t| (t.name, Place::Head)));
        }
        for suffix in ["weight", "bias"] {
            out.push((
                format!("{}.{suffix}", self.classifier.path),
                Place::Classifier,
            ));
        }
        out
    }

    /// The number of trainable parameters, as `sum(p.numel() for p in model.parameters())`.
    pub fn param_count(&self) -> usize {
        self.tensors()
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.shape.iter().product::<usize>())
            .sum()
    }

    /// The product of all strides: the factor by which the network downsamples.
    pub fn total_stride(&self) -> usize {
        self.stem.conv.stride * self.blocks().map(Block::reduction).product::<usize>()
    }

    /// The channels the classifier sees.
    pub fn num_features(&self) -> usize {
        self.classifier.in_features
    }
}

/// One level of the feature pyramid a network provides: what timm's `features_only=True` lists
/// in `feature_info` (with the default `feature_location`) and what `out_indices` picks from.
/// A level is the output of a stage whose next stage downsamples, and of the last stage; the
/// stem's output is a level too when the first stage downsamples. The head is never a level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLevel {
    /// What `out_indices` (and `effnet run --features`) call this level.
    pub index: usize,
    /// The stage whose output this is (`blocks.{stage}`); `None` for the stem.
    pub stage: Option<usize>,
    /// timm's module name for it: `bn1` (the stem) or `blocks.{stage}`.
    pub module: String,
    /// Input size over the map's size (timm's `reduction`).
    pub stride: usize,
    pub channels: usize,
}

impl fmt::Display for FeatureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (`{}`, stride {}, {} channels)",
            self.index, self.module, self.stride, self.channels
        )
    }
}

impl Network {
    /// The feature pyramid's levels in order, as timm's `feature_info` lists them.
    pub fn feature_info(&self) -> Vec<FeatureLevel> {
        // The checker rejects `x0`, so every stage has blocks; skipping empty ones anyway keeps
        // "the next stage" meaning the next one that runs.
        let stages: Vec<&Stage> = self
            .stages
            .iter()
            .filter(|s| !s.blocks.is_empty())
            .collect();
        // As written: a stage whose stride became dilation still starts a level. timm's
        // builder counts a space-to-depth opening as a downsampling only in the first block
        // (the stem is then a level); elsewhere it starts none.
        let downsamples = |s: &Stage| s.stride > 1;
        let mut out = Vec::new();
        let mut stride = self.stem.conv.stride;
        let push = |out: &mut Vec<FeatureLevel>, stage, module, stride, channels| {
            let index = out.len();
            out.push(FeatureLevel {
                index,
                stage,
                module,
                stride,
                channels,
            });
        };
        if stages
            .first()
            .is_some_and(|s| downsamples(s) || s.blocks.first().is_some_and(Block::space_to_depth))
        {
            push(
                &mut out,
                None,
                "bn1".to_string(),
                stride,
                self.stem.conv.out_channels,
            );
        }
        for (i, s) in stages.iter().enumerate() {
            stride *= s.blocks.iter().map(Block::reduction).product::<usize>();
            let ends_level = stages.get(i + 1).is_none_or(|next| downsamples(next));
            if ends_level && let Some(b) = s.blocks.last() {
                push(
                    &mut out,
                    Some(s.index),
                    format!("blocks.{}", s.index),
                    stride,
                    b.out_channels,
                );
            }
        }
        out
    }

    /// The levels `indices` names, in that order; an error naming the valid levels when one is
    /// out of range, and one when a level is asked for twice or none is.
    pub fn feature_levels(&self, indices: &[usize]) -> Result<Vec<FeatureLevel>, String> {
        let all = self.feature_info();
        let valid = || {
            all.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if indices.is_empty() {
            return Err(format!(
                "no feature level requested; `{}` has levels {}",
                self.name,
                valid()
            ));
        }
        let mut out: Vec<FeatureLevel> = Vec::with_capacity(indices.len());
        for &i in indices {
            let Some(level) = all.get(i) else {
                return Err(format!(
                    "`{}` has no feature level {i}: its levels are {}",
                    self.name,
                    valid()
                ));
            };
            if out.iter().any(|l| l.index == i) {
                return Err(format!("feature level {i} is requested twice"));
            }
            out.push(level.clone());
        }
        Ok(out)
    }
}

/// Values of one progressive-learning stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStage {
    pub index: usize,
    /// Epochs `[start, end)`.
    pub epochs: (usize, usize),
    pub image_size: usize,
    pub randaug: f64,
    pub mixup: f64,
    pub cutmix: f64,
    pub dropout: f64,
    pub drop_path: Option<f64>,
    pub batch_size: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Linear,
    Automl,
    /// Every value given per stage.
    Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    /// TensorFlow's RMSProp: `ms = decay * ms + (1 - decay) * g^2`, `mom = momentum * mom +
    /// lr * g / sqrt(ms + eps)`.
    Rmsprop {
        decay: f64,
        momentum: f64,
        eps: f64,
        weight_decay: f64,
    },
    Adamw {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrDecay {
    Constant,
    Cosine,
    /// Multiply by `rate` every `every` epochs (stepwise, as the paper's 0.97 every 2.4 epochs).
    Exponential {
        rate: f64,
        every: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_epochs: f64,
    pub decay: LrDecay,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub docs: Vec<String>,
    pub epochs: usize,
    pub interpolation: Interpolation,
    pub stages: Vec<ScheduleStage>,
    pub optimizer: Option<Optimizer>,
    pub lr: Option<LrSchedule>,
    pub label_smoothing: Option<f64>,
    pub ema: Option<f64>,
    pub grad_clip: Option<f64>,
    /// Fine-tuning: parts whose parameters do not train (and whose BatchNorm layers run in
    /// eval mode), each for the first epochs or throughout.
    #[serde(default)]
    pub freeze: Vec<Freeze>,
    /// Fine-tuning: learning-rate multipliers per part; where two name the same part, the
    /// later one holds.
    #[serde(default)]
    pub lr_scale: Vec<LrScale>,
}

/// A part of a network, as `freeze` and `lr_scale` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    Stem,
    /// Stages `from..to` (`to` excluded).
    Stages {
        from: usize,
        to: usize,
    },
    Head,
    Classifier,
    /// Everything but the classifier.
    Backbone,
}

/// Where a tensor of the network is: what a [`Part`] is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Stem,
    Stage(usize),
    Head,
    Classifier,
}

impl Part {
    pub fn covers(self, place: Place) -> bool {
        match (self, place) {
            (Part::Backbone, p) => p != Place::Classifier,
            (Part::Stem, Place::Stem)
            | (Part::Head, Place::Head)
            | (Part::Classifier, Place::Classifier) => true,
            (Part::Stages { from, to }, Place::Stage(i)) => from <= i && i < to,
            _ => false,
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Stem => write!(f, "stem"),
            Part::Stages { from, to } if to == &(from + 1) => write!(f, "stages {from}"),
            Part::Stages { from, to } => write!(f, "stages {from}..{to}"),
            Part::Head => write!(f, "head"),
            Part::Classifier => write!(f, "classifier"),
            Part::Backbone => write!(f, "backbone"),
        }
    }
}

fn join_parts(parts: &[Part]) -> String {
    parts
        .iter()
        .map(Part::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `freeze PARTS [for N epochs]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub parts: Vec<Part>,
    /// Frozen for epochs `0..N`; `None`: for the whole run.
    pub epochs: Option<usize>,
}

impl fmt::Display for Freeze {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", join_parts(&self.parts))?;
        match self.epochs {
            Some(1) => write!(f, " for 1 epoch"),
            Some(n) => write!(f, " for {n} epochs"),
            None => Ok(()),
        }
    }
}

/// `lr_scale PARTS F`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrScale {
    pub parts: Vec<Part>,
    pub scale: f64,
}

impl fmt::Display for LrScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", join_parts(&self.parts), self.scale)
    }
}

impl Schedule {
    /// Whether parameters at `place` are frozen in `epoch` (0-based).
    pub fn frozen(&self, place: Place, epoch: usize) -> bool {
        self.freeze.iter().any(|fz| {
            fz.epochs.is_none_or(|n| epoch < n) && fz.parts.iter().any(|p| p.covers(place))
        })
    }

    /// The learning-rate multiplier of parameters at `place`: the last `lr_scale` naming a
    /// part that covers it, else 1.
    pub fn lr_scale_at(&self, place: Place) -> f64 {
        self.lr_scale
            .iter()
            .rev()
            .find(|l| l.parts.iter().any(|p| p.covers(place)))
            .map_or(1.0, |l| l.scale)
    }

    /// The stage that covers `epoch` (0-based); the last stage for epochs past the end.
    pub fn stage_at(&self, epoch: usize) -> Option<&ScheduleStage> {
        self.stages
            .iter()
            .find(|s| epoch >= s.epochs.0 && epoch < s.epochs.1)
            .or(self.stages.last())
    }
}

fn write_conv(f: &mut fmt::Formatter<'_>, indent: &str, name: &str, c: &Conv) -> fmt::Result {
    let [o, i, k, _] = c.weight_shape();
    write!(f, "{indent}{name:<12} {} [{o}, {i}, {k}, {k}]", c.path)?;
    if c.stride != 1 {
        write!(f, " stride {}", c.stride)?;
    }
    if c.dilation != 1 {
        write!(f, " dilation {}", c.dilation)?;
    }
    if c.blur_stride != 1 {
        write!(f, " blur_pool stride {}", c.blur_stride)?;
    }
    if let Some(p) = c.padding {
        write!(f, " padding {}", p.name())?;
    }
    if c.groups != 1 {
        write!(f, " groups {}", c.groups)?;
    }
    if !c.mixed.is_empty() {
        // The parts as timm holds them: kernel, and the channels of each slice.
        let parts: Vec<String> = c
            .mixed
            .iter()
            .map(|p| format!("k{} {}->{}", p.kernel, p.in_channels, p.out_channels))
            .collect();
        write!(f, " mixed [{}]", parts.join(", "))?;
    }
    if c.is_conditional() {
        write!(f, " experts {}", c.experts)?;
    }
    if c.bias {
        write!(f, " +bias")?;
    }
    writeln!(f)
}

fn write_bn(f: &mut fmt::Formatter<'_>, indent: &str, name: &str, b: &Norm) -> fmt::Result {
    match b.kind {
        NormKind::Batch { momentum } => writeln!(
            f,
            "{indent}{name:<12} {} [{}] eps {} momentum {momentum}",
            b.path, b.channels, b.eps
        ),
        NormKind::Group { groups } => writeln!(
            f,
            "{indent}{name:<12} {} [{}] group norm, {groups} groups, eps {}",
            b.path, b.channels, b.eps
        ),
    }
}

fn write_se(f: &mut fmt::Formatter<'_>, indent: &str, se: Option<&SqueezeExcite>) -> fmt::Result {
    if let Some(se) = se {
        if let Some(gc) = &se.global_context {
            write_conv(f, indent, "gc.attn", &gc.conv_attn)?;
        }
        write_conv(f, indent, "se.reduce", &se.conv_reduce)?;
        write_conv(f, indent, "se.expand", &se.conv_expand)?;
    }
    Ok(())
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "network {} ({} params, total stride {}{})",
            self.name,
            self.param_count(),
            self.total_stride(),
            if self.output_stride == 32 && self.blocks().all(|b| b.dilation == 1) {
                String::new()
            } else {
                format!(", output stride {}", self.output_stride)
            }
        )?;
        writeln!(
            f,
            "  input {} x {}{}, classes {}, activation {}, padding {}, dropout {}, drop_path {}",
            self.input_channels,
            self.resolution,
            self.train_resolution
                .map(|t| format!(" (train {t})"))
                .unwrap_or_default(),
            self.num_classes,
            self.activation.name(),
            self.padding.name(),
            self.dropout,
            self.drop_path
        )?;
        writeln!(f, "  stem")?;
        write_conv(f, "    ", "conv", &self.stem.conv)?;
        write_bn(f, "    ", "bn", &self.stem.bn)?;
        for stage in &self.stages {
            writeln!(f, "  stage {}", stage.index)?;
            for b in &stage.blocks {
                writeln!(
                    f,
                    "    {} {} {}->{}->{} k{} s{}{}{}{} drop_path {:.4} {}",
                    b.path,
                    b.timm_kind(),
                    b.in_channels,
                    b.mid_channels,
                    b.out_channels,
                    b.kernel,
                    b.stride,
                    if b.dilation == 1 {
                        String::new()
                    } else {
                        format!(" d{}", b.dilation)
                    },
                    b.se_channels
                        .map(|c| format!(" se {c}"))
                        .unwrap_or_default(),
                    if b.residual { " residual" } else { "" },
                    b.drop_path,
                    b.activation.name()
                )?;
                let ind = "      ";
                let se_after = b.layers.se_after();
                for (i, l) in b.layers.conv_bns().into_iter().enumerate() {
                    write_conv(f, ind, l.conv_name, l.conv)?;
                    write_bn(f, ind, l.bn_name, l.bn)?;
                    if i == se_after {
                        write_se(f, ind, b.layers.se())?;
                    }
                }
                if let Some(r) = b.layers.routing() {
                    writeln!(
                        f,
                        "{ind}{:<12} {} [{}, {}] +bias",
                        "routing", r.path, r.out_features, r.in_features
                    )?;
                }
            }
        }
        if let Some(h) = &self.head {
            writeln!(f, "  head")?;
            write_conv(f, "    ", "conv", &h.conv)?;
            write_bn(f, "    ", "bn", &h.bn)?;
        }
        writeln!(
            f,
            "  classifier {} [{}, {}]",
            self.classifier.path, self.classifier.out_features, self.classifier.in_features
        )?;
        for s in &self.schedules {
            writeln!(
                f,
                "  schedule {} ({} epochs, {:?})",
                s.name, s.epochs, s.interpolation
            )?;
            for st in &s.stages {
                writeln!(
                    f,
                    "    stage {} epochs {}..{} image {} randaug {:.2} mixup {:.2} cutmix {:.2} dropout {:.3}{}{}",
                    st.index,
                    st.epochs.0,
                    st.epochs.1,
                    st.image_size,
                    st.randaug,
                    st.mixup,
                    st.cutmix,
                    st.dropout,
                    st.drop_path
                        .map(|d| format!(" drop_path {d:.3}"))
                        .unwrap_or_default(),
                    st.batch_size
                        .map(|b| format!(" batch {b}"))
                        .unwrap_or_default()
                )?;
            }
        }
        Ok(())
    }
}
