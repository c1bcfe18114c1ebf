//! What `check` returns: models and schedules with every setting known and valid.

use effnet_grammar::Span;

use crate::diagnostic::Diagnostic;
use crate::ir::{Activation, Freeze, Interpolation, LrScale, LrSchedule, Optimizer, PaddingMode};

/// How stage channels are rounded (timm's `round_channels` / `make_divisible`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChannelRounding {
    pub divisor: usize,
    pub min: Option<usize>,
    /// Round up by one divisor when rounding lost more than `1 - limit`; 0 turns it off.
    pub limit: f64,
}

impl Default for ChannelRounding {
    fn default() -> Self {
        ChannelRounding {
            divisor: 8,
            min: None,
            limit: 0.9,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DepthRounding {
    Ceil,
    Round,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StageKind {
    Conv,
    Ds,
    /// timm's `dsa`: depthwise-separable with an activation after the pointwise conv, and
    /// never a residual.
    Dsa,
    Fused,
    Edge,
    MbConv,
}

impl StageKind {
    pub const ALL: [(&'static str, StageKind); 6] = [
        ("conv", StageKind::Conv),
        ("ds", StageKind::Ds),
        ("dsa", StageKind::Dsa),
        ("fused", StageKind::Fused),
        ("edge", StageKind::Edge),
        ("mbconv", StageKind::MbConv),
    ];
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Conv => "conv",
            StageKind::Ds => "ds",
            StageKind::Dsa => "dsa",
            StageKind::Fused => "fused",
            StageKind::Edge => "edge",
            StageKind::MbConv => "mbconv",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Skip {
    /// The standard rule: residual when stride 1 and in == out.
    Auto,
    /// `skip`: asked for (needed by `conv` stages).
    On,
    /// `noskip`.
    Off,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageDef {
    pub docs: Vec<String>,
    pub kind: StageKind,
    /// The kxk convolution's kernel, the largest of `kernels`.
    pub kernel: usize,
    /// One kernel per channel group (timm's MixConv, `k3.5.7`); one entry for a plain conv.
    pub kernels: Vec<usize>,
    /// The 1x1 expansion's kernels (`a`, mbconv only), and the projection's (`p`).
    pub exp_kernels: Vec<usize>,
    pub proj_kernels: Vec<usize>,
    /// `gs N`: the kxk convolution's group size; `None` is the kind's default (depthwise for
    /// `ds`, `dsa` and `mbconv`, one group otherwise), `Some(0)` one group.
    pub group_size: Option<usize>,
    pub expansion: f64,
    pub stride: usize,
    pub channels: usize,
    pub repeats: usize,
    pub se: Option<f64>,
    pub skip: Skip,
    pub activation: Option<Activation>,
    /// This stage's own depth multiplier (`depth D` on the stage line).
    pub depth: f64,
    /// `fc N`: the expansion width is `e` times N (width-scaled) channels, not the input's.
    pub force_in: Option<usize>,
    /// `s2d`: the first block opens timm's space-to-depth region (see `lower`).
    pub space_to_depth: bool,
    /// `prune(...)`: the widths of a pruned network, where they are not the scaled ones.
    pub prune: Option<Pruned>,
    /// `cc N`: CondConv with N experts per convolution (before the model's `experts`
    /// multiplier); `mbconv` only.
    pub experts: Option<usize>,
    /// A `then` line: more blocks of the stage above (timm: another block string of the same
    /// stage), numbered on from its blocks.
    pub continues: bool,
    pub span: Span,
}

/// A stage line's pruned widths (timm's `_pruned` models, adapted from a file of layer shapes):
/// exact channel counts, not width-scaled or rounded. Each list has one entry per block of the
/// line after depth scaling; empty where the line keeps the computed widths. The SE widths
/// default to the unpruned network's, as timm's pruned models keep most of them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Pruned {
    pub out: Option<usize>,
    pub mid: Vec<usize>,
    pub se: Vec<usize>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StemDef {
    pub kernel: usize,
    pub stride: usize,
    pub channels: usize,
    pub fixed: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeadDef {
    pub kernel: usize,
    pub channels: usize,
    /// Not width-scaled (`head conv k1 -> 1280 fixed`: EfficientNet-Lite, MnasNet-0.5, ...).
    pub fixed: bool,
}

/// The model's normalization layers (`norm`), with where a group size was written.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum NormDef {
    /// `norm batch(eps = E, momentum = M)`: BatchNorm2d.
    Batch { eps: f64, momentum: f64 },
    /// `norm group(size = N, eps = E)`: timm's `GroupNormAct(group_size=N)`, `channels / N`
    /// groups in each layer.
    Group { size: usize, eps: f64, span: Span },
}

impl NormDef {
    pub fn eps(&self) -> f64 {
        match *self {
            NormDef::Batch { eps, .. } | NormDef::Group { eps, .. } => eps,
        }
    }
}

/// A model after checking: every setting known and valid.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelDef {
    pub name: String,
    pub docs: Vec<String>,
    pub span: Span,
    pub input_channels: usize,
    pub resolution: usize,
    pub train_resolution: Option<usize>,
    pub classes: usize,
    pub activation: Activation,
    pub norm: NormDef,
    /// `group_size N` (timm's model-wide `group_size`): the group size of every block's kxk
    /// convolution whose stage line has no `gs`, with where it was written.
    pub group_size: Option<(usize, Span)>,
    pub padding: PaddingMode,
    /// timm's `output_stride` (8, 16 or 32): the most the network downsamples; the strides
    /// past it become dilation.
    pub output_stride: usize,
    /// `antialias blur`: strided blocks blur-pool (timm's `aa_layer='blurpc'`).
    pub blur_pool: bool,
    /// `attention gc`: global context attention where stages have `se` (timm's
    /// `se_layer='gc'`).
    pub global_context: bool,
    pub dropout: f64,
    pub drop_path: f64,
    pub round_channels: ChannelRounding,
    pub round_depth: DepthRounding,
    pub normalize: Option<(Vec<f64>, Vec<f64>)>,
    pub width: f64,
    pub depth: f64,
    pub stage_depths: Option<Vec<f64>>,
    /// `scale experts N` (timm's `experts_multiplier`): multiplies every `cc` stage's experts.
    pub experts: usize,
    pub stem: StemDef,
    /// Every `stage` and `then` line in order.
    pub stages: Vec<StageDef>,
    pub head: Option<HeadDef>,
}

impl ModelDef {
    /// The stages as timm counts them (`blocks.S`): each `stage` line with the `then` lines
    /// after it, as ranges of [`ModelDef::stages`].
    pub fn stage_groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if s.continues => g.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
        groups
    }

    /// The number of stages as timm counts them.
    pub fn stage_count(&self) -> usize {
        self.stages.iter().filter(|s| !s.continues).count()
    }
}

/// A value per schedule stage, or a range to interpolate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum ScheduleValue {
    Fixed(f64),
    Range(f64, f64),
    PerStage(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScheduleDef {
    pub name: String,
    pub model: String,
    pub docs: Vec<String>,
    pub span: Span,
    pub epochs: usize,
    pub stages: usize,
    pub interpolation: Interpolation,
    pub image: ScheduleValue,
    pub randaug: ScheduleValue,
    pub mixup: ScheduleValue,
    pub cutmix: ScheduleValue,
    pub dropout: Option<ScheduleValue>,
    pub drop_path: Option<ScheduleValue>,
    pub batch: Option<ScheduleValue>,
    pub optimizer: Option<Optimizer>,
    pub lr: Option<LrSchedule>,
    pub label_smoothing: Option<f64>,
    pub ema: Option<f64>,
    pub grad_clip: Option<f64>,
    pub freeze: Vec<Freeze>,
    pub lr_scale: Vec<LrScale>,
}

/// A checked file: its models in source order, its schedules, and any warnings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Checked {
    pub models: Vec<ModelDef>,
    pub schedules: Vec<ScheduleDef>,
    pub warnings: Vec<Diagnostic>,
}

impl Checked {
    pub fn model(&self, name: &str) -> Option<&ModelDef> {
        self.models.iter().find(|m| m.name == name)
    }
    pub fn schedules_for<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a ScheduleDef> {
        self.schedules.iter().filter(move |s| s.model == model)
    }
}
