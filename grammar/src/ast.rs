//! The typed AST of a `.effnet` file. Every node carries the byte span it came from, so that
//! every later stage can point at the exact text a diagnostic is about.

use serde::Serialize;

/// A byte range in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A name as written, with its span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A number as written. The text is kept so that `effnet fmt` writes `1e-5` back as `1e-5`;
/// the value is what the checks use (they decide whether it must be whole, positive, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Number {
    pub value: f64,
    pub text: String,
    pub span: Span,
}

impl Number {
    /// The value when it is a whole number that fits `usize`.
    pub fn as_usize(&self) -> Option<usize> {
        let v = self.value;
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
            Some(v as usize)
        } else {
            None
        }
    }
}

/// A whole `.effnet` file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct File {
    pub items: Vec<Item>,
    /// Plain `//` comments, in source order; the formatter puts them back by position.
    pub comments: Vec<Comment>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comment {
    /// The text after `//`.
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Item {
    Model(Model),
    Schedule(Schedule),
    Search(Search),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Model(m) => m.span,
            Item::Schedule(s) => s.span,
            Item::Search(s) => s.span,
        }
    }
}

/// `model NAME { ... }`, `model NAME = BASE scaled width W depth D [{ ... }]`, or
/// `model NAME = BASE { ... }` (the base with some items overridden).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub docs: Vec<Doc>,
    pub name: Ident,
    pub derivation: Option<Derivation>,
    /// `None` only for a derived model written without a body.
    pub body: Option<Vec<ModelStmt>>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Doc {
    /// The text after `///`, with one leading space removed.
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Derivation {
    pub base: Ident,
    /// Empty when the derivation has no `scaled`: the base's own scaling is kept.
    pub scale: Vec<ScaleArg>,
    pub span: Span,
}

/// `width 1.1`, `depth 1.2`, `stages(1.2, 1.6)`, `experts 2`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleArg {
    pub key: Ident,
    pub value: ScaleValue,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ScaleValue {
    Number(Number),
    Tuple(Vec<Number>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStmt {
    pub docs: Vec<Doc>,
    pub kind: ModelStmtKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ModelStmtKind {
    Input {
        channels: Number,
        resolution: Number,
        train: Option<Number>,
    },
    Classes(Number),
    Activation(Ident),
    Norm {
        kind: Ident,
        args: Vec<KwArg>,
    },
    /// `group_size 8`: timm's model-wide `group_size`, the group size of every block's kxk
    /// convolution whose stage line has no `gs` of its own.
    GroupSize(Number),
    Padding(Ident),
    /// `output_stride 16`: timm's `output_stride`, the most the network downsamples; strides
    /// past it become dilation.
    OutputStride(Number),
    /// `antialias blur`: timm's `aa_layer` (anti-aliased downsampling).
    Antialias(Ident),
    /// `attention gc`: timm's `se_layer` (what gates the channels where a stage has `se`).
    Attention(Ident),
    Dropout(Number),
    DropPath(Number),
    RoundChannels(Vec<KwArg>),
    RoundDepth(Ident),
    Normalize {
        mean: Vec<Number>,
        std: Vec<Number>,
    },
    Scale(Vec<ScaleArg>),
    Stem(Layer),
    Stage(Layer),
    /// `then KIND ...`: more blocks of the stage above, numbered on from its blocks.
    Then(Layer),
    /// `head none` is `Head(None)`.
    Head(Option<Layer>),
}

impl ModelStmtKind {
    /// The keyword that starts the statement, for messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            ModelStmtKind::Input { .. } => "input",
            ModelStmtKind::Classes(_) => "classes",
            ModelStmtKind::Activation(_) => "activation",
            ModelStmtKind::Norm { .. } => "norm",
            ModelStmtKind::GroupSize(_) => "group_size",
            ModelStmtKind::Padding(_) => "padding",
            ModelStmtKind::OutputStride(_) => "output_stride",
            ModelStmtKind::Antialias(_) => "antialias",
            ModelStmtKind::Attention(_) => "attention",
            ModelStmtKind::Dropout(_) => "dropout",
            ModelStmtKind::DropPath(_) => "drop_path",
            ModelStmtKind::RoundChannels(_) => "round channels",
            ModelStmtKind::RoundDepth(_) => "round depth",
            ModelStmtKind::Normalize { .. } => "normalize",
            ModelStmtKind::Scale(_) => "scale",
            ModelStmtKind::Stem(_) => "stem",
            ModelStmtKind::Stage(_) => "stage",
            ModelStmtKind::Then(_) => "then",
            ModelStmtKind::Head(_) => "head",
        }
    }
}

/// `name = value` inside parentheses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KwArg {
    pub key: Ident,
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    Number(Number),
    Ident(Ident),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Number(n) => n.span,
            Value::Ident(i) => i.span,
        }
    }
}

/// A stem, stage or head line: `KIND k3 e4 s2 -> 48 x4 se 0.25 skip`.
///
/// In a search space some values are choices (`{fused|mbconv}`, `k{3|5}`, `x{1..4}`): the
/// fields then hold each choice's first alternative and `choices` lists the alternatives;
/// `effnet_compiler::search` turns such a line into an ordinary one for each candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layer {
    pub kind: Ident,
    pub params: Vec<LayerParam>,
    pub channels: Number,
    pub options: Vec<LayerOpt>,
    /// Empty in a model without choices (and then left out of the AST's JSON).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub choices: Vec<Choice>,
}

/// `{a|b|c}` or `{1..4}` in place of a value of a layer line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub target: ChoiceTarget,
    pub alternatives: Vec<Alternative>,
    /// Written as a range `{A..B}` (both ends included) rather than listed.
    pub range: bool,
    pub span: Span,
}

/// Which value of a layer line a choice stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChoiceTarget {
    /// The block kind: `{fused|mbconv}`.
    Kind,
    /// A layer parameter: `k{3|5}`, `e{1|4|6}`, `s{1|2}`.
    Param(char),
    /// The output channels: `-> {32|48}`.
    Channels,
    /// `x{1..4}`.
    Repeats,
    /// `se {0|0.25}`; 0 means no squeeze-excitation.
    Se,
}

impl ChoiceTarget {
    /// How the value is written, for messages: `kind`, `k`, `-> channels`, `x`, `se`.
    pub fn describe(self) -> String {
        match self {
            ChoiceTarget::Kind => "block kind".into(),
            ChoiceTarget::Param(c) => c.to_string(),
            ChoiceTarget::Channels => "channels".into(),
            ChoiceTarget::Repeats => "x".into(),
            ChoiceTarget::Se => "se".into(),
        }
    }
}

/// One alternative of a choice: a name (block kinds) or a number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Alternative {
    Ident(Ident),
    Number(Number),
}

impl Alternative {
    pub fn span(&self) -> Span {
        match self {
            Alternative::Ident(i) => i.span,
            Alternative::Number(n) => n.span,
        }
    }
    pub fn text(&self) -> &str {
        match self {
            Alternative::Ident(i) => &i.name,
            Alternative::Number(n) => &n.text,
        }
    }
}

/// `k3`, `e4` or `s2`; kernels (`k`, `a`, `p`) may be a dotted list, `k3.5.7`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerParam {
    pub letter: char,
    /// One value, or one per group of a mixed kernel (`k3.5.7`); never empty.
    pub values: Vec<Number>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerOpt {
    pub kind: LayerOptKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum LayerOptKind {
    Repeats(Number),
    Se(Number),
    Skip,
    NoSkip,
    Act(Ident),
    Depth(Number),
    Fixed,
    /// `fc N`: the expansion width is computed from N channels instead of the block's input
    /// (timm's `fc`, `force_in_chs`, in EdgeTPU's EfficientNets).
    ForceIn(Number),
    /// `gs N`: the kxk convolution's group size (timm's `gs`; `gs 0` is one group).
    GroupSize(Number),
    /// `s2d`: the block opens with timm's space-to-depth convolution (`d1`, EfficientNet-X).
    SpaceToDepth,
    /// `prune(out = C, mid = (..), se = (..))`: a pruned network's widths (timm's `_pruned`).
    Prune(Vec<PruneArg>),
    /// `cc N`: CondConv with N experts (timm's `cc`), times the model's `experts` multiplier.
    Experts(Number),
}

/// One `key = value` of `prune(...)`: a number, or a list in parentheses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneArg {
    pub key: Ident,
    pub values: Vec<Number>,
    /// Written as a list (`(48, 62)`), not a single number.
    pub list: bool,
    pub span: Span,
}

impl LayerOptKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            LayerOptKind::Repeats(_) => "x",
            LayerOptKind::Se(_) => "se",
            LayerOptKind::Skip => "skip",
            LayerOptKind::NoSkip => "noskip",
            LayerOptKind::Act(_) => "act",
            LayerOptKind::Depth(_) => "depth",
            LayerOptKind::Fixed => "fixed",
            LayerOptKind::ForceIn(_) => "fc",
            LayerOptKind::GroupSize(_) => "gs",
            LayerOptKind::SpaceToDepth => "s2d",
            LayerOptKind::Prune(_) => "prune",
            LayerOptKind::Experts(_) => "cc",
        }
    }
}

/// `schedule NAME for MODEL { ... }`, or `schedule MODEL { ... }` (then `name` is `None`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub docs: Vec<Doc>,
    pub name: Option<Ident>,
    pub model: Ident,
    pub body: Vec<ScheduleStmt>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleStmt {
    pub docs: Vec<Doc>,
    pub kind: ScheduleStmtKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ScheduleStmtKind {
    Interpolate(Ident),
    Optimizer {
        kind: Ident,
        args: Vec<KwArg>,
    },
    Lr {
        peak: Number,
        warmup: Option<Number>,
        decay: Option<Decay>,
    },
    /// `freeze stem, stages 0..3 for 2 epochs` (no `for`: every epoch).
    Freeze {
        parts: Vec<Part>,
        epochs: Option<Number>,
    },
    /// `lr_scale backbone 0.1`.
    LrScale {
        parts: Vec<Part>,
        scale: Number,
    },
    /// `image 128 -> 300`, `epochs 350`, `batch [64, 32]`.
    Setting {
        key: Ident,
        value: SettingValue,
    },
}

/// A part of a network named by `freeze` and `lr_scale`: `stem`, `head`, `classifier`,
/// `backbone` (a name, checked later), or `stages 2` / `stages 0..3` (`to` excluded, as in
/// Rust).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Part {
    Named(Ident),
    Stages {
        from: Number,
        to: Option<Number>,
        span: Span,
    },
}

impl Part {
    pub fn span(&self) -> Span {
        match self {
            Part::Named(id) => id.span,
            Part::Stages { span, .. } => *span,
        }
    }
}

/// `effnet train --freeze TEXT`: the parts and epochs of a `freeze` statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FreezeFlag {
    pub parts: Vec<Part>,
    pub epochs: Option<Number>,
}

/// `effnet train --lr-scale TEXT`: the parts and factor of an `lr_scale` statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LrScaleFlag {
    pub parts: Vec<Part>,
    pub scale: Number,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decay {
    pub kind: Ident,
    pub args: Vec<KwArg>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SettingValue {
    Single(Number),
    Range(Number, Number),
    List(Vec<Number>),
}

impl SettingValue {
    pub fn span(&self) -> Span {
        match self {
            SettingValue::Single(n) => n.span,
            SettingValue::Range(a, b) => a.span.to(b.span),
            SettingValue::List(v) => match (v.first(), v.last()) {
                (Some(a), Some(b)) => a.span.to(b.span),
                _ => Span::default(),
            },
        }
    }
}

/// `search NAME for SPACE { ... }`: how `effnet search` explores model SPACE's choices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Search {
    pub docs: Vec<Doc>,
    pub name: Ident,
    pub space: Ident,
    pub body: Vec<SearchStmt>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchStmt {
    pub docs: Vec<Doc>,
    pub kind: SearchStmtKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SearchStmtKind {
    /// `strategy evolution(population = 8, sample = 3)`.
    Strategy { kind: Ident, args: Vec<KwArg> },
    /// `reward(step_time = -0.07, params = -0.05)`: the exponents of each measure.
    Reward(Vec<KwArg>),
    /// `constraint step_time < 1.2 * base`.
    Constraint {
        metric: Ident,
        /// `<` or `<=`.
        comparison: String,
        bound: Number,
        /// `* base`: the bound is relative to the base model's value.
        relative: bool,
    },
    /// `base efficientnetv2_nano`: the model step time and parameters are normalized by.
    Base(Ident),
    /// `candidates 24`, `epochs 2`, `image 20`, `batch 64`, `images 2000`.
    Setting { key: Ident, value: SettingValue },
}
