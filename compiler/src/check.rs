//! `check`: every rule of the language, all diagnostics at once. What it returns is validated
//! and fully resolved (derived models merged with their bases, defaults filled in), so that
//! lowering never fails.

use std::collections::HashMap;

use effnet_grammar::*;

use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::ir::{Activation, Interpolation, LrDecay, LrSchedule, Optimizer, PaddingMode};

/// The largest whole number any setting may take (channels, resolution, repeats, epochs).
pub const MAX_WHOLE: usize = 65_536;

/// The most blocks a model may expand to (EfficientNetV2-XL has 100).
pub const MAX_BLOCKS: usize = 10_000;

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
    Fused,
    Edge,
    MbConv,
}

impl StageKind {
    pub const ALL: [(&'static str, StageKind); 5] = [
        ("conv", StageKind::Conv),
        ("ds", StageKind::Ds),
        ("fused", StageKind::Fused),
        ("edge", StageKind::Edge),
        ("mbconv", StageKind::MbConv),
    ];
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Conv => "conv",
            StageKind::Ds => "ds",
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
    pub kernel: usize,
    pub expansion: f64,
    pub stride: usize,
    pub channels: usize,
    pub repeats: usize,
    pub se: Option<f64>,
    pub skip: Skip,
    pub activation: Option<Activation>,
    /// This stage's own depth multiplier (`depth D` on the stage line).
    pub depth: f64,
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
    pub bn_eps: f64,
    pub bn_momentum: f64,
    pub padding: PaddingMode,
    pub dropout: f64,
    pub drop_path: f64,
    pub round_channels: ChannelRounding,
    pub round_depth: DepthRounding,
    pub normalize: Option<(Vec<f64>, Vec<f64>)>,
    pub width: f64,
    pub depth: f64,
    pub stage_depths: Option<Vec<f64>>,
    pub stem: StemDef,
    pub stages: Vec<StageDef>,
    pub head: Option<HeadDef>,
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

/// Check a parsed file. On failure the error holds every error and every warning found.
pub fn check(file: &File) -> Result<Checked, Vec<Diagnostic>> {
    let mut cx = Cx::default();
    let models: Vec<&Model> = file
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Model(m) => Some(m),
            Item::Schedule(_) => None,
        })
        .collect();

    // Names first: duplicates, then resolve each model (bases before derived ones).
    let mut by_name: HashMap<&str, &Model> = HashMap::new();
    for m in &models {
        if let Some(first) = by_name.get(m.name.name.as_str()) {
            cx.push(
                Diagnostic::error(
                    "effnet::duplicate_model",
                    format!("model `{}` is defined twice", m.name.name),
                    m.name.span,
                )
                .label("defined again here")
                .with_secondary(first.name.span, "first defined here")
                .help("give each model its own name"),
            );
        } else {
            by_name.insert(&m.name.name, m);
        }
    }
    let mut resolver = Resolver {
        by_name: &by_name,
        done: HashMap::new(),
        in_progress: Vec::new(),
    };
    let mut defs = Vec::new();
    for m in &models {
        if by_name
            .get(m.name.name.as_str())
            .is_some_and(|first| std::ptr::eq(*first, *m))
            && let Some(partial) = resolver.resolve(m, &mut cx)
            && let Some(def) = finish_model(m, partial, &mut cx)
        {
            defs.push(def);
        }
    }

    let mut schedules: Vec<ScheduleDef> = Vec::new();
    for item in &file.items {
        if let Item::Schedule(s) = item
            && let Some(def) = check_schedule(s, &by_name, &mut cx)
        {
            if let Some(prev) = schedules
                .iter()
                .find(|p| p.model == def.model && p.name == def.name)
            {
                cx.push(
                    Diagnostic::error(
                        "effnet::duplicate_schedule",
                        format!(
                            "model `{}` already has a schedule named `{}`",
                            def.model, def.name
                        ),
                        s.span,
                    )
                    .with_secondary(prev.span, "first defined here")
                    .help("name them: `schedule NAME for MODEL { ... }`"),
                );
            } else {
                schedules.push(def);
            }
        }
    }

    if cx.diagnostics.iter().any(Diagnostic::is_error) {
        Err(cx.diagnostics)
    } else {
        Ok(Checked {
            models: defs,
            schedules,
            warnings: cx.diagnostics,
        })
    }
}

#[derive(Default)]
struct Cx {
    diagnostics: Vec<Diagnostic>,
}

impl Cx {
    fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    /// A whole number in `[min, max]`. The upper bounds keep every later product (shapes,
    /// parameter and multiply-add counts) far from overflow.
    fn whole(&mut self, n: &Number, what: &str, min: usize) -> Option<usize> {
        let max = MAX_WHOLE;
        match n.as_usize() {
            Some(v) if v >= min && v <= max => Some(v),
            _ => {
                self.push(
                    Diagnostic::error(
                        "effnet::number",
                        format!(
                            "{what} must be a whole number from {min} to {max}, not {}",
                            n.text
                        ),
                        n.span,
                    )
                    .label(format!("expected a whole number in {min}..={max}")),
                );
                None
            }
        }
    }

    /// A finite number in `[lo, hi]` (or `[lo, hi)` when `hi_open`).
    fn within(&mut self, n: &Number, what: &str, lo: f64, hi: f64, hi_open: bool) -> Option<f64> {
        let v = n.value;
        let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
        if ok {
            Some(v)
        } else {
            let range = if hi.is_infinite() {
                format!("at least {lo}")
            } else if hi_open {
                format!("in [{lo}, {hi})")
            } else {
                format!("in [{lo}, {hi}]")
            };
            self.push(
                Diagnostic::error(
                    "effnet::number",
                    format!("{what} must be {range}, not {}", n.text),
                    n.span,
                )
                .label(format!("expected a number {range}")),
            );
            None
        }
    }

    fn activation(&mut self, id: &Ident) -> Option<Activation> {
        let a = Activation::from_name(&id.name);
        if a.is_none() {
            let names = Activation::ALL.map(|(n, _)| n);
            let mut d = Diagnostic::error(
                "effnet::unknown_activation",
                format!("unknown activation `{}`", id.name),
                id.span,
            )
            .label("not an activation");
            d = match did_you_mean(&id.name, names) {
                Some(s) => d.help(format!(
                    "did you mean `{s}`? The activations are {}",
                    names.join(", ")
                )),
                None => d.help(format!("the activations are {}", names.join(", "))),
            };
            self.push(d);
        }
        a
    }

    fn unknown_key(&mut self, key: &Ident, what: &str, known: &[&str]) {
        let mut d = Diagnostic::error(
            "effnet::unknown_argument",
            format!("`{}` is not an argument of {what}", key.name),
            key.span,
        )
        .label("unknown argument");
        d = match did_you_mean(&key.name, known.iter().copied()) {
            Some(s) => d.help(format!(
                "did you mean `{s}`? {what} takes {}",
                known.join(", ")
            )),
            None => d.help(format!("{what} takes {}", known.join(", "))),
        };
        self.push(d);
    }

    /// The numbers of `name = number` arguments, checking names and duplicates.
    fn kwargs<'a>(
        &mut self,
        args: &'a [KwArg],
        what: &str,
        known: &[&str],
    ) -> HashMap<&'a str, &'a Value> {
        let mut out: HashMap<&str, &Value> = HashMap::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for a in args {
            if !known.contains(&a.key.name.as_str()) {
                self.unknown_key(&a.key, what, known);
                continue;
            }
            if let Some(first) = seen.get(a.key.name.as_str()) {
                self.push(
                    Diagnostic::error(
                        "effnet::duplicate_argument",
                        format!("`{}` is given twice", a.key.name),
                        a.span,
                    )
                    .with_secondary(*first, "first given here"),
                );
                continue;
            }
            seen.insert(&a.key.name, a.span);
            out.insert(&a.key.name, &a.value);
        }
        out
    }

    fn num_arg<'a>(&mut self, v: &'a Value, key: &str) -> Option<&'a Number> {
        match v {
            Value::Number(n) => Some(n),
            Value::Ident(i) => {
                self.push(
                    Diagnostic::error(
                        "effnet::number",
                        format!("`{key}` takes a number, not `{}`", i.name),
                        i.span,
                    )
                    .label("expected a number"),
                );
                None
            }
        }
    }
}

/// A model's settings as written, before defaults: derived models start from their base's.
#[derive(Debug, Clone, Default)]
struct Partial {
    input: Option<(usize, usize, Option<usize>)>,
    /// Where the resolution and the training resolution were written.
    input_spans: Option<(Span, Option<Span>)>,
    classes: Option<usize>,
    activation: Option<Activation>,
    bn_eps: Option<f64>,
    bn_momentum: Option<f64>,
    padding: Option<PaddingMode>,
    dropout: Option<f64>,
    drop_path: Option<f64>,
    round_channels: Option<ChannelRounding>,
    round_depth: Option<DepthRounding>,
    normalize: Option<(Vec<f64>, Vec<f64>)>,
    width: Option<f64>,
    depth: Option<f64>,
    stage_depths: Option<(Vec<f64>, Span)>,
    stem: Option<StemDef>,
    stages: Option<Vec<StageDef>>,
    head: Option<Option<HeadDef>>,
    /// Where the stages were written, for messages about them.
    stages_span: Option<Span>,
    /// A `stem` line exists (it may have had errors, already reported).
    stem_written: bool,
}

struct Resolver<'a> {
    by_name: &'a HashMap<&'a str, &'a Model>,
    done: HashMap<String, Option<Partial>>,
    in_progress: Vec<String>,
}

impl Resolver<'_> {
    fn resolve(&mut self, m: &Model, cx: &mut Cx) -> Option<Partial> {
        if let Some(done) = self.done.get(&m.name.name) {
            return done.clone();
        }
        self.in_progress.push(m.name.name.clone());
        let result = self.resolve_inner(m, cx);
        self.in_progress.pop();
        self.done.insert(m.name.name.clone(), result.clone());
        result
    }

    fn resolve_inner(&mut self, m: &Model, cx: &mut Cx) -> Option<Partial> {
        let mut partial = Partial::default();
        if let Some(d) = &m.derivation {
            let base_name = d.base.name.as_str();
            if self.in_progress.iter().any(|n| n == base_name) {
                let mut cycle: Vec<&str> = self
                    .in_progress
                    .iter()
                    .skip_while(|n| *n != base_name)
                    .map(String::as_str)
                    .collect();
                cycle.push(base_name);
                cx.push(
                    Diagnostic::error(
                        "effnet::derivation_cycle",
                        format!(
                            "models are scaled from each other in a cycle: {}",
                            cycle.join(" -> ")
                        ),
                        d.base.span,
                    )
                    .label("this makes a cycle")
                    .help("one model of the cycle must be written out in full"),
                );
                return None;
            }
            let Some(base) = self.by_name.get(base_name).copied() else {
                let mut diag = Diagnostic::error(
                    "effnet::unknown_model",
                    format!(
                        "`{}` scales model `{base_name}`, which does not exist",
                        m.name.name
                    ),
                    d.base.span,
                )
                .label("no model of this name in the file");
                let names: Vec<&str> = self
                    .by_name
                    .keys()
                    .copied()
                    .filter(|n| *n != m.name.name)
                    .collect();
                if let Some(s) = did_you_mean(base_name, names) {
                    diag = diag.help(format!("did you mean `{s}`?"));
                }
                cx.push(diag);
                return None;
            };
            partial = self.resolve(base, cx)?;
            // The derivation replaces the base's scaling.
            partial.width = None;
            partial.depth = None;
            partial.stage_depths = None;
            scale_args(&d.scale, &mut partial, cx);
        }
        if let Some(body) = &m.body {
            apply_body(body, &mut partial, cx);
        }
        Some(partial)
    }
}

fn scale_args(args: &[ScaleArg], p: &mut Partial, cx: &mut Cx) {
    for a in args {
        match (a.key.name.as_str(), &a.value) {
            ("width", ScaleValue::Number(n)) => {
                p.width = cx.within(n, "the width multiplier", 1e-3, 100.0, false);
            }
            ("depth", ScaleValue::Number(n)) => {
                p.depth = cx.within(n, "the depth multiplier", 1e-3, 100.0, false);
            }
            ("stages", ScaleValue::Tuple(v)) => {
                let vals: Option<Vec<f64>> = v
                    .iter()
                    .map(|n| cx.within(n, "a stage depth multiplier", 1e-3, 100.0, false))
                    .collect();
                p.stage_depths = vals.map(|v| (v, a.span));
            }
            (key, _) => cx.push(
                Diagnostic::error(
                    "effnet::scale",
                    format!(
                        "`{key}` takes {}",
                        if key == "stages" {
                            "a list like `(1.2, 1.6)`"
                        } else {
                            "one number"
                        }
                    ),
                    a.span,
                )
                .label("wrong kind of value"),
            ),
        }
    }
}

fn duplicate(
    cx: &mut Cx,
    seen: &mut HashMap<&'static str, Span>,
    key: &'static str,
    span: Span,
) -> bool {
    if let Some(first) = seen.get(key) {
        cx.push(
            Diagnostic::error(
                "effnet::duplicate_setting",
                format!("`{key}` is set twice"),
                span,
            )
            .label("set again here")
            .with_secondary(*first, "first set here")
            .help("keep one of them"),
        );
        true
    } else {
        seen.insert(key, span);
        false
    }
}

fn apply_body(body: &[ModelStmt], p: &mut Partial, cx: &mut Cx) {
    let mut seen: HashMap<&'static str, Span> = HashMap::new();
    let mut stages: Vec<StageDef> = Vec::new();
    let mut stages_span: Option<Span> = None;
    for stmt in body {
        let kw = stmt.kind.keyword();
        if !matches!(stmt.kind, ModelStmtKind::Stage(_)) && duplicate(cx, &mut seen, kw, stmt.span)
        {
            continue;
        }
        match &stmt.kind {
            ModelStmtKind::Input {
                channels,
                resolution,
                train,
            } => {
                let c = cx.whole(channels, "the number of input channels", 1);
                let r = cx.whole(resolution, "the resolution", 1);
                let t = match train {
                    Some(t) => cx.whole(t, "the training resolution", 1).map(Some),
                    None => Some(None),
                };
                if let (Some(c), Some(r), Some(t)) = (c, r, t) {
                    p.input = Some((c, r, t));
                    p.input_spans = Some((resolution.span, train.as_ref().map(|t| t.span)));
                }
            }
            ModelStmtKind::Classes(n) => {
                if let Some(v) = cx.whole(n, "the number of classes", 1) {
                    p.classes = Some(v);
                }
            }
            ModelStmtKind::Activation(id) => {
                if let Some(a) = cx.activation(id) {
                    p.activation = Some(a);
                }
            }
            ModelStmtKind::Norm { kind, args } => {
                if kind.name != "batch" {
                    let mut d = Diagnostic::error(
                        "effnet::unknown_norm",
                        format!("unknown normalization `{}`", kind.name),
                        kind.span,
                    )
                    .label("not a normalization layer");
                    d = d.help(match did_you_mean(&kind.name, ["batch"]) {
                        Some(_) => "did you mean `batch`? The EfficientNet family uses BatchNorm: `norm batch(eps = 1e-3, momentum = 0.01)`".to_string(),
                        None => "the EfficientNet family uses BatchNorm: `norm batch(eps = 1e-3, momentum = 0.01)`".to_string(),
                    });
                    cx.push(d);
                }
                let kw = cx.kwargs(args, "`norm batch`", &["eps", "momentum"]);
                if let Some(v) = kw.get("eps").and_then(|v| cx.num_arg(v, "eps"))
                    && let Some(e) = cx.within(v, "BatchNorm eps", 0.0, 1.0, true) {
                        if e > 0.0 {
                            p.bn_eps = Some(e);
                        } else {
                            cx.push(Diagnostic::error("effnet::number", "BatchNorm eps must be above 0", v.span).label("must be positive"));
                        }
                    }
                if let Some(v) = kw.get("momentum").and_then(|v| cx.num_arg(v, "momentum"))
                    && let Some(m) = cx.within(v, "BatchNorm momentum", 0.0, 1.0, false) {
                        p.bn_momentum = Some(m);
                    }
            }
            ModelStmtKind::Padding(id) => match id.name.as_str() {
                "same" => p.padding = Some(PaddingMode::Same),
                "symmetric" => p.padding = Some(PaddingMode::Symmetric),
                other => {
                    let mut d = Diagnostic::error(
                        "effnet::unknown_padding",
                        format!("unknown padding `{other}`"),
                        id.span,
                    )
                    .label("expected `same` or `symmetric`");
                    d = d.help(match did_you_mean(other, ["same", "symmetric"]) {
                        Some(s) => format!("did you mean `{s}`? `same` is TensorFlow's (the `tf_` models), `symmetric` PyTorch's"),
                        None => "`same` is TensorFlow's (the `tf_` models), `symmetric` PyTorch's".to_string(),
                    });
                    cx.push(d);
                }
            },
            ModelStmtKind::Dropout(n) => {
                p.dropout = cx.within(n, "dropout", 0.0, 1.0, true).or(p.dropout);
            }
            ModelStmtKind::DropPath(n) => {
                p.drop_path = cx.within(n, "drop_path", 0.0, 1.0, true).or(p.drop_path);
            }
            ModelStmtKind::RoundChannels(args) => {
                let kw = cx.kwargs(args, "`round channels`", &["divisor", "min", "limit"]);
                let mut r = ChannelRounding::default();
                if let Some(n) = kw.get("divisor").and_then(|v| cx.num_arg(v, "divisor")) {
                    r.divisor = cx.whole(n, "the channel divisor", 1).unwrap_or(r.divisor);
                }
                if let Some(n) = kw.get("min").and_then(|v| cx.num_arg(v, "min")) {
                    r.min = cx.whole(n, "the minimum channel count", 1);
                }
                if let Some(n) = kw.get("limit").and_then(|v| cx.num_arg(v, "limit")) {
                    r.limit = cx.within(n, "the round limit", 0.0, 1.0, false).unwrap_or(r.limit);
                }
                p.round_channels = Some(r);
            }
            ModelStmtKind::RoundDepth(id) => match id.name.as_str() {
                "ceil" => p.round_depth = Some(DepthRounding::Ceil),
                "round" => p.round_depth = Some(DepthRounding::Round),
                other => cx.push(
                    Diagnostic::error(
                        "effnet::unknown_rounding",
                        format!("unknown depth rounding `{other}`"),
                        id.span,
                    )
                    .label("expected `ceil` or `round`")
                    .help("timm scales repeats with `ceil(repeats * depth)`; a few models use `round`"),
                ),
            },
            ModelStmtKind::Normalize { mean, std } => {
                let m: Option<Vec<f64>> = mean.iter().map(|n| cx.within(n, "a mean", -1e6, 1e6, false)).collect();
                let s: Option<Vec<f64>> = std
                    .iter()
                    .map(|n| {
                        let v = cx.within(n, "a standard deviation", 0.0, 1e6, false)?;
                        if v > 0.0 {
                            Some(v)
                        } else {
                            cx.push(Diagnostic::error("effnet::number", "a standard deviation must be above 0", n.span).label("must be positive"));
                            None
                        }
                    })
                    .collect();
                if let (Some(m), Some(s)) = (m, s) {
                    if m.len() != s.len() {
                        cx.push(
                            Diagnostic::error(
                                "effnet::normalize",
                                format!("`normalize` has {} means but {} standard deviations", m.len(), s.len()),
                                stmt.span,
                            )
                            .label("lengths differ")
                            .help("give one mean and one standard deviation per input channel"),
                        );
                    } else {
                        p.normalize = Some((m, s));
                    }
                }
            }
            ModelStmtKind::Scale(args) => scale_args(args, p, cx),
            ModelStmtKind::Stem(layer) => {
                p.stem_written = true;
                if let Some(s) = stem_or_head(layer, "stem", cx) {
                    p.stem = Some(StemDef {
                        kernel: s.0,
                        stride: s.1,
                        channels: s.2,
                        fixed: s.3,
                    });
                }
            }
            ModelStmtKind::Head(None) => p.head = Some(None),
            ModelStmtKind::Head(Some(layer)) => {
                if let Some(h) = stem_or_head(layer, "head", cx) {
                    if h.1 != 1 {
                        cx.push(Diagnostic::error("effnet::stride", "the head convolution cannot have a stride", stmt.span).help("drop the `s` parameter; the head is a 1x1 convolution"));
                    }
                    p.head = Some(Some(HeadDef {
                        kernel: h.0,
                        channels: h.2,
                    }));
                }
            }
            ModelStmtKind::Stage(layer) => {
                stages_span = Some(stages_span.map_or(stmt.span, |s| s.to(stmt.span)));
                if let Some(s) = stage(layer, &stmt.docs, stmt.span, cx) {
                    stages.push(s);
                }
            }
        }
    }
    if stages_span.is_some() {
        p.stages = Some(stages);
        p.stages_span = stages_span;
    }
}

fn kernel_ok(n: &Number, cx: &mut Cx) -> Option<usize> {
    match n.as_usize() {
        Some(k) if k >= 1 && k % 2 == 1 && k <= 31 => Some(k),
        _ => {
            cx.push(
                Diagnostic::error(
                    "effnet::kernel",
                    format!("kernel size must be odd and at least 1, not {}", n.text),
                    n.span,
                )
                .label("invalid kernel size")
                .help("EfficientNets use 3x3 and 5x5 kernels: `k3` or `k5`"),
            );
            None
        }
    }
}

fn stride_ok(n: &Number, cx: &mut Cx) -> Option<usize> {
    match n.as_usize() {
        Some(s @ (1 | 2)) => Some(s),
        _ => {
            cx.push(
                Diagnostic::error(
                    "effnet::stride",
                    format!("stride must be 1 or 2, not {}", n.text),
                    n.span,
                )
                .label("invalid stride")
                .help("use `s1` to keep the resolution or `s2` to halve it"),
            );
            None
        }
    }
}

/// The k/e/s parameters of a layer line, each at most once.
fn params(layer: &Layer, cx: &mut Cx) -> HashMap<char, Number> {
    let mut out: HashMap<char, Number> = HashMap::new();
    let mut spans: HashMap<char, Span> = HashMap::new();
    for p in &layer.params {
        if let Some(first) = spans.get(&p.letter) {
            cx.push(
                Diagnostic::error(
                    "effnet::duplicate_setting",
                    format!("`{}` is given twice", p.letter),
                    p.span,
                )
                .with_secondary(*first, "first given here"),
            );
        } else {
            spans.insert(p.letter, p.span);
            out.insert(p.letter, p.value.clone());
        }
    }
    out
}

/// Returns (kernel, stride, channels, fixed).
fn stem_or_head(layer: &Layer, what: &str, cx: &mut Cx) -> Option<(usize, usize, usize, bool)> {
    if layer.kind.name != "conv" {
        cx.push(
            Diagnostic::error(
                "effnet::unknown_block",
                format!("the {what} must be a `conv`, not `{}`", layer.kind.name),
                layer.kind.span,
            )
            .label("expected `conv`")
            .help(format!("write `{what} conv k3 s2 -> 24`")),
        );
    }
    let ps = params(layer, cx);
    let default_k = if what == "head" { 1 } else { 3 };
    let kernel = match ps.get(&'k') {
        Some(n) => kernel_ok(n, cx),
        None => Some(default_k),
    };
    let stride = match ps.get(&'s') {
        Some(n) => stride_ok(n, cx),
        None => Some(1),
    };
    if let Some(e) = ps.get(&'e') {
        cx.push(
            Diagnostic::error(
                "effnet::expansion",
                format!("the {what} has no expansion ratio"),
                e.span,
            )
            .help(format!("drop `e{}`", e.text)),
        );
    }
    let channels = cx.whole(&layer.channels, "the channel count", 1);
    let mut fixed = false;
    for o in &layer.options {
        match o.kind {
            LayerOptKind::Fixed if what == "stem" => fixed = true,
            _ => cx.push(
                Diagnostic::error(
                    "effnet::option",
                    format!("`{}` does not apply to the {what}", o.kind.keyword()),
                    o.span,
                )
                .label("not allowed here")
                .help(if what == "stem" {
                    "the stem takes only `fixed` (not width-scaled)".to_string()
                } else {
                    "the head takes no options".to_string()
                }),
            ),
        }
    }
    Some((kernel?, stride?, channels?, fixed))
}

fn stage(layer: &Layer, docs: &[Doc], span: Span, cx: &mut Cx) -> Option<StageDef> {
    let kind = StageKind::ALL
        .iter()
        .find(|(n, _)| *n == layer.kind.name)
        .map(|(_, k)| *k);
    if kind.is_none() {
        let names = StageKind::ALL.map(|(n, _)| n);
        let mut d = Diagnostic::error(
            "effnet::unknown_block",
            format!("unknown block kind `{}`", layer.kind.name),
            layer.kind.span,
        )
        .label("not a block kind");
        d = d.help(match did_you_mean(&layer.kind.name, names) {
            Some(s) => format!(
                "did you mean `{s}`? The block kinds are {}",
                names.join(", ")
            ),
            None => format!("the block kinds are {}", names.join(", ")),
        });
        cx.push(d);
    }
    let ps = params(layer, cx);
    let kernel = match ps.get(&'k') {
        Some(n) => kernel_ok(n, cx),
        None => {
            cx.push(
                Diagnostic::error(
                    "effnet::kernel",
                    "the stage has no kernel size",
                    layer.kind.span,
                )
                .label("kernel missing")
                .help("add the kernel after the block kind, like `k3`"),
            );
            None
        }
    };
    let stride = match ps.get(&'s') {
        Some(n) => stride_ok(n, cx),
        None => Some(1),
    };
    let expansion = match (kind, ps.get(&'e')) {
        (_, Some(n)) => {
            let e = cx.within(n, "the expansion ratio", 1.0, 64.0, false);
            if let (Some(StageKind::Conv | StageKind::Ds), Some(e)) = (kind, e)
                && e != 1.0
            {
                cx.push(
                    Diagnostic::error(
                        "effnet::expansion",
                        format!(
                            "a `{}` stage has no expansion; `e{}` must be `e1`",
                            layer.kind.name, n.text
                        ),
                        n.span,
                    )
                    .help("use `fused` or `mbconv` for an expanding block"),
                );
            }
            e
        }
        (Some(StageKind::Fused | StageKind::Edge | StageKind::MbConv), None) => {
            cx.push(
                Diagnostic::error(
                    "effnet::expansion",
                    format!("a `{}` stage needs an expansion ratio", layer.kind.name),
                    layer.kind.span,
                )
                .label("expansion missing")
                .help("add it after the kernel, like `k3 e4`"),
            );
            None
        }
        _ => Some(1.0),
    };
    let channels = cx.whole(&layer.channels, "the channel count", 1);
    let mut repeats = Some(1);
    let mut se = None;
    let mut skip = Skip::Auto;
    let mut activation = None;
    let mut depth = 1.0;
    let mut seen: HashMap<&'static str, Span> = HashMap::new();
    for o in &layer.options {
        let key = match o.kind {
            LayerOptKind::Skip | LayerOptKind::NoSkip => "skip",
            _ => o.kind.keyword(),
        };
        if duplicate(cx, &mut seen, key, o.span) {
            continue;
        }
        match &o.kind {
            LayerOptKind::Repeats(n) => repeats = cx.whole(n, "the number of repeats", 1),
            LayerOptKind::Se(n) => {
                if n.value.is_finite() && n.value > 0.0 && n.value <= 1.0 {
                    se = Some(n.value);
                } else {
                    cx.push(
                        Diagnostic::error(
                            "effnet::se_ratio",
                            format!("the squeeze-excitation ratio must be in (0, 1], not {}", n.text),
                            n.span,
                        )
                        .label("out of range")
                        .help("it is relative to the block's input channels; EfficientNets use `se 0.25`"),
                    );
                }
            }
            LayerOptKind::Skip => skip = Skip::On,
            LayerOptKind::NoSkip => skip = Skip::Off,
            LayerOptKind::Act(id) => activation = cx.activation(id),
            LayerOptKind::Depth(n) => {
                depth = cx
                    .within(n, "a stage depth multiplier", 1e-3, 100.0, false)
                    .unwrap_or(1.0)
            }
            LayerOptKind::Fixed => cx.push(
                Diagnostic::error("effnet::option", "`fixed` applies only to the stem", o.span)
                    .label("not allowed on a stage"),
            ),
        }
    }
    if let (Some(StageKind::Conv), Some(_)) = (kind, se) {
        cx.push(
            Diagnostic::error(
                "effnet::se_ratio",
                "a `conv` stage has no squeeze-excitation",
                layer.kind.span,
            )
            .help("use `edge` (timm `er`) or `mbconv` for a block with SE"),
        );
    }
    if let (Some(StageKind::Fused), Some(e), Some(_)) = (kind, expansion, se)
        && e == 1.0
    {
        cx.push(
            Diagnostic::error(
                "effnet::se_ratio",
                "a `fused` stage with `e1` is a single convolution and has no squeeze-excitation",
                layer.kind.span,
            )
            .help("use `edge ... e1` for timm's EdgeResidual with an SE layer"),
        );
    }
    Some(StageDef {
        docs: docs.iter().map(|d| d.text.clone()).collect(),
        kind: kind?,
        kernel: kernel?,
        expansion: expansion?,
        stride: stride?,
        channels: channels?,
        repeats: repeats?,
        se,
        skip,
        activation,
        depth,
        span,
    })
}

fn finish_model(m: &Model, p: Partial, cx: &mut Cx) -> Option<ModelDef> {
    let Some(stem) = p.stem else {
        if p.stem_written {
            return None; // the stem line had errors, already reported
        }
        cx.push(
            Diagnostic::error(
                "effnet::missing_stem",
                format!("model `{}` has no stem", m.name.name),
                m.name.span,
            )
            .label("no `stem` in this model")
            .help("add one, like `stem conv k3 s2 -> 32`"),
        );
        return None;
    };
    let stages = match p.stages {
        Some(s) if !s.is_empty() => s,
        Some(_) => return None, // every stage line had an error, already reported
        None => {
            cx.push(
                Diagnostic::error(
                    "effnet::missing_stages",
                    format!("model `{}` has no stages", m.name.name),
                    m.name.span,
                )
                .label("no `stage` in this model")
                .help("add stages, like `stage mbconv k3 e4 s2 -> 64 x2 se 0.25`"),
            );
            return None;
        }
    };
    let (input_channels, resolution, train_resolution) = p.input.unwrap_or((3, 224, None));
    let (res_span, train_span) = p.input_spans.unwrap_or((m.name.span, None));
    if let Some((depths, span)) = &p.stage_depths
        && depths.len() != stages.len()
    {
        cx.push(
            Diagnostic::error(
                "effnet::scale",
                format!(
                    "{} per-stage depth multipliers for {} stages",
                    depths.len(),
                    stages.len()
                ),
                *span,
            )
            .label("one multiplier per stage")
            .help("give exactly one depth multiplier for each `stage` line"),
        );
        return None;
    }
    if let Some((mean, _)) = &p.normalize
        && mean.len() != input_channels
    {
        cx.push(
            Diagnostic::error(
                "effnet::normalize",
                format!(
                    "`normalize` gives {} values for {} input channels",
                    mean.len(),
                    input_channels
                ),
                m.name.span,
            )
            .help("give one mean and one standard deviation per input channel"),
        );
    }
    let def = ModelDef {
        name: m.name.name.clone(),
        docs: m.docs.iter().map(|d| d.text.clone()).collect(),
        span: m.span,
        input_channels,
        resolution,
        train_resolution,
        classes: p.classes.unwrap_or(1000),
        activation: p.activation.unwrap_or(Activation::Silu),
        bn_eps: p.bn_eps.unwrap_or(1e-5),
        bn_momentum: p.bn_momentum.unwrap_or(0.1),
        padding: p.padding.unwrap_or(PaddingMode::Symmetric),
        dropout: p.dropout.unwrap_or(0.0),
        drop_path: p.drop_path.unwrap_or(0.0),
        round_channels: p.round_channels.unwrap_or_default(),
        round_depth: p.round_depth.unwrap_or(DepthRounding::Ceil),
        normalize: p.normalize,
        width: p.width.unwrap_or(1.0),
        depth: p.depth.unwrap_or(1.0),
        stage_depths: p.stage_depths.map(|(d, _)| d),
        stem,
        stages,
        head: p.head.unwrap_or(None),
    };
    // Scaling multiplies repeats: bound the expanded network so that lowering stays cheap.
    let blocks: f64 = def
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let per_stage = def
                .stage_depths
                .as_ref()
                .and_then(|d| d.get(i))
                .copied()
                .unwrap_or(1.0);
            (s.repeats as f64 * def.depth * s.depth * per_stage).ceil()
        })
        .sum();
    if blocks > MAX_BLOCKS as f64 {
        cx.push(
            Diagnostic::error(
                "effnet::too_deep",
                format!("`{}` expands to {blocks} blocks after depth scaling; at most {MAX_BLOCKS} are supported", def.name),
                m.name.span,
            )
            .help("lower the repeats or the depth multipliers"),
        );
        return None;
    }
    // A resolution the network does not divide evenly loses pixels (or pads) at each stride.
    let total_stride = def.stem.stride * def.stages.iter().map(|s| s.stride).product::<usize>();
    for (what, r, span) in [
        ("evaluation", Some(def.resolution), res_span),
        (
            "training",
            def.train_resolution,
            train_span.unwrap_or(res_span),
        ),
    ] {
        if let Some(r) = r
            && r % total_stride != 0
        {
            cx.push(
                    Diagnostic::warning(
                        "effnet::resolution",
                        format!(
                            "the {what} resolution {r} is not divisible by the network's total stride {total_stride}"
                        ),
                        span,
                    )
                    .label(format!("`{}` downsamples by {total_stride}", def.name))
                    .help(format!(
                        "feature maps will be rounded at each stride; {} or {} divide evenly",
                        r / total_stride * total_stride,
                        (r / total_stride + 1) * total_stride
                    )),
                );
        }
    }
    Some(def)
}

const SCHEDULE_KEYS: [&str; 11] = [
    "epochs",
    "stages",
    "image",
    "randaug",
    "mixup",
    "cutmix",
    "dropout",
    "drop_path",
    "batch",
    "label_smoothing",
    "ema",
];
const SCALAR_KEYS: [&str; 5] = ["epochs", "stages", "label_smoothing", "ema", "grad_clip"];

fn check_schedule(
    s: &Schedule,
    models: &HashMap<&str, &Model>,
    cx: &mut Cx,
) -> Option<ScheduleDef> {
    let mut ok = true;
    if !models.contains_key(s.model.name.as_str()) {
        let mut d = Diagnostic::error(
            "effnet::unknown_model",
            format!("schedule for unknown model `{}`", s.model.name),
            s.model.span,
        )
        .label("no model of this name in the file");
        let names: Vec<&str> = models.keys().copied().collect();
        if let Some(n) = did_you_mean(&s.model.name, names) {
            d = d.help(format!("did you mean `{n}`?"));
        }
        cx.push(d);
        ok = false;
    }
    let mut seen: HashMap<&'static str, Span> = HashMap::new();
    let mut values: HashMap<String, (SettingValue, Span)> = HashMap::new();
    let mut interpolation = None;
    let mut optimizer = None;
    let mut lr = None;
    let all_keys: Vec<&str> = SCHEDULE_KEYS
        .iter()
        .chain(["grad_clip"].iter())
        .copied()
        .collect();
    for stmt in &s.body {
        match &stmt.kind {
            ScheduleStmtKind::Interpolate(id) => {
                if duplicate(cx, &mut seen, "interpolate", stmt.span) {
                    continue;
                }
                interpolation = match id.name.as_str() {
                    "linear" => Some(Interpolation::Linear),
                    "automl" => Some(Interpolation::Automl),
                    other => {
                        cx.push(
                            Diagnostic::error("effnet::interpolation", format!("unknown interpolation `{other}`"), id.span)
                                .label("expected `linear` or `automl`")
                                .help("`linear` is the paper's v0 + (v1 - v0) * i / (M - 1); `automl` the released code's (i + 1) / M for the image size"),
                        );
                        ok = false;
                        None
                    }
                };
            }
            ScheduleStmtKind::Optimizer { kind, args } => {
                if duplicate(cx, &mut seen, "optimizer", stmt.span) {
                    continue;
                }
                optimizer = check_optimizer(kind, args, cx);
                ok &= optimizer.is_some();
            }
            ScheduleStmtKind::Lr {
                peak,
                warmup,
                decay,
            } => {
                if duplicate(cx, &mut seen, "lr", stmt.span) {
                    continue;
                }
                lr = check_lr(peak, warmup.as_ref(), decay.as_ref(), cx);
                ok &= lr.is_some();
            }
            ScheduleStmtKind::Setting { key, value } => {
                let Some(k) = all_keys.iter().find(|k| **k == key.name) else {
                    let mut d = Diagnostic::error(
                        "effnet::unknown_setting",
                        format!("unknown schedule setting `{}`", key.name),
                        key.span,
                    )
                    .label("not a schedule setting");
                    d = d.help(match did_you_mean(&key.name, all_keys.iter().copied()) {
                        Some(n) => format!(
                            "did you mean `{n}`? The settings are {}",
                            all_keys.join(", ")
                        ),
                        None => format!("the settings are {}", all_keys.join(", ")),
                    });
                    cx.push(d);
                    ok = false;
                    continue;
                };
                if duplicate(cx, &mut seen, k, stmt.span) {
                    ok = false;
                    continue;
                }
                if SCALAR_KEYS.contains(k) && !matches!(value, SettingValue::Single(_)) {
                    cx.push(
                        Diagnostic::error(
                            "effnet::schedule_value",
                            format!("`{k}` takes a single number"),
                            value.span(),
                        )
                        .label("not a single number"),
                    );
                    ok = false;
                    continue;
                }
                values.insert(k.to_string(), (value.clone(), stmt.span));
            }
        }
    }
    let name_span = s.name.as_ref().map_or(s.model.span, |n| n.span);
    let epochs = match values.get("epochs") {
        Some((SettingValue::Single(n), _)) => cx.whole(n, "the number of epochs", 1),
        _ => {
            cx.push(
                Diagnostic::error(
                    "effnet::schedule_missing",
                    "the schedule has no `epochs`",
                    name_span,
                )
                .help("add `epochs N`"),
            );
            None
        }
    };
    let stages = match values.get("stages") {
        Some((SettingValue::Single(n), _)) => cx.whole(n, "the number of stages", 1),
        _ => Some(1),
    };
    if let (Some(e), Some(m)) = (epochs, stages)
        && m > e
    {
        let span = values.get("stages").map_or(name_span, |v| v.1);
        cx.push(
            Diagnostic::error(
                "effnet::schedule_value",
                format!("{m} stages do not fit in {e} epochs"),
                span,
            )
            .help("each stage needs at least one epoch"),
        );
        ok = false;
    }
    let m = stages.unwrap_or(1);
    let ranged = |key: &str,
                  lo: f64,
                  hi: f64,
                  whole: bool,
                  cx: &mut Cx|
     -> Option<Option<ScheduleValue>> {
        let Some((v, _)) = values.get(key) else {
            return Some(None);
        };
        let what = format!("`{key}`");
        let check_num = |n: &Number, cx: &mut Cx| -> Option<f64> {
            if whole {
                cx.whole(n, &what, lo as usize).map(|v| v as f64)
            } else {
                cx.within(n, &what, lo, hi, false)
            }
        };
        match v {
            SettingValue::Single(n) => check_num(n, cx).map(|v| Some(ScheduleValue::Fixed(v))),
            SettingValue::Range(a, b) => {
                let (va, vb) = (check_num(a, cx), check_num(b, cx));
                let (va, vb) = (va?, vb?);
                if va > vb {
                    cx.push(
                        Diagnostic::error(
                            "effnet::range",
                            format!("the range of `{key}` goes down: {} -> {}", a.text, b.text),
                            a.span.to(b.span),
                        )
                        .label("start is above end")
                        .help("progressive learning grows each value over training; write `min -> max`, or list every stage's value like `[300, 256]`"),
                    );
                    return None;
                }
                Some(Some(ScheduleValue::Range(va, vb)))
            }
            SettingValue::List(items) => {
                let vals: Option<Vec<f64>> = items.iter().map(|n| check_num(n, cx)).collect();
                let vals = vals?;
                if vals.len() != m {
                    cx.push(
                        Diagnostic::error(
                            "effnet::schedule_value",
                            format!("`{key}` lists {} values for {m} stages", vals.len()),
                            v.span(),
                        )
                        .label(format!("expected {m} values"))
                        .help("give one value per stage, or a range `min -> max`"),
                    );
                    return None;
                }
                Some(Some(ScheduleValue::PerStage(vals)))
            }
        }
    };
    let image = ranged("image", 1.0, f64::INFINITY, true, cx);
    let randaug = ranged("randaug", 0.0, 30.0, false, cx);
    let mixup = ranged("mixup", 0.0, 100.0, false, cx);
    let cutmix = ranged("cutmix", 0.0, 100.0, false, cx);
    let dropout = ranged("dropout", 0.0, 0.99, false, cx);
    let drop_path = ranged("drop_path", 0.0, 0.99, false, cx);
    let batch = ranged("batch", 1.0, f64::INFINITY, true, cx);
    let scalar = |key: &str, lo: f64, hi: f64, cx: &mut Cx| -> Option<Option<f64>> {
        match values.get(key) {
            Some((SettingValue::Single(n), _)) => {
                cx.within(n, &format!("`{key}`"), lo, hi, false).map(Some)
            }
            _ => Some(None),
        }
    };
    let label_smoothing = scalar("label_smoothing", 0.0, 0.99, cx);
    let ema = scalar("ema", 0.0, 1.0, cx);
    let grad_clip = scalar("grad_clip", 0.0, 1e9, cx);
    let image = match image {
        Some(Some(v)) => Some(v),
        Some(None) => {
            cx.push(
                Diagnostic::error(
                    "effnet::schedule_missing",
                    "the schedule has no `image` size",
                    name_span,
                )
                .help("add the image size range, like `image 128 -> 300`"),
            );
            None
        }
        None => None,
    };
    Some(ScheduleDef {
        name: s
            .name
            .as_ref()
            .map_or_else(|| "default".to_string(), |n| n.name.clone()),
        model: s.model.name.clone(),
        docs: s.docs.iter().map(|d| d.text.clone()).collect(),
        span: s.span,
        epochs: epochs?,
        stages: stages?,
        interpolation: interpolation.unwrap_or(Interpolation::Linear),
        image: image?,
        randaug: randaug?.unwrap_or(ScheduleValue::Fixed(0.0)),
        mixup: mixup?.unwrap_or(ScheduleValue::Fixed(0.0)),
        cutmix: cutmix?.unwrap_or(ScheduleValue::Fixed(0.0)),
        dropout: dropout?,
        drop_path: drop_path?,
        batch: batch?,
        optimizer: if ok { optimizer } else { None },
        lr,
        label_smoothing: label_smoothing?,
        ema: ema?,
        grad_clip: grad_clip?,
    })
    .filter(|_| ok)
}

fn check_optimizer(kind: &Ident, args: &[KwArg], cx: &mut Cx) -> Option<Optimizer> {
    let names = ["rmsprop", "adamw", "sgd"];
    let known: &[&str] = match kind.name.as_str() {
        "rmsprop" => &["decay", "momentum", "eps", "weight_decay"],
        "adamw" => &["beta1", "beta2", "eps", "weight_decay"],
        "sgd" => &["momentum", "nesterov", "weight_decay"],
        other => {
            let mut d = Diagnostic::error(
                "effnet::unknown_optimizer",
                format!("unknown optimizer `{other}`"),
                kind.span,
            )
            .label("not an optimizer");
            d = d.help(match did_you_mean(other, names) {
                Some(n) => format!("did you mean `{n}`? The optimizers are rmsprop, adamw and sgd"),
                None => "the optimizers are rmsprop, adamw and sgd".to_string(),
            });
            cx.push(d);
            return None;
        }
    };
    let what = format!("`optimizer {}`", kind.name);
    let kw = cx.kwargs(args, &what, known);
    let mut bad = false;
    let mut get = |key: &str, default: f64, lo: f64, hi: f64, cx: &mut Cx| -> f64 {
        match kw.get(key).and_then(|v| cx.num_arg(v, key)) {
            Some(n) => cx
                .within(n, &format!("`{key}`"), lo, hi, false)
                .unwrap_or_else(|| {
                    bad = true;
                    default
                }),
            None => default,
        }
    };
    let opt = match kind.name.as_str() {
        "rmsprop" => Optimizer::Rmsprop {
            decay: get("decay", 0.9, 0.0, 1.0, cx),
            momentum: get("momentum", 0.9, 0.0, 1.0, cx),
            eps: get("eps", 1e-3, 0.0, 1.0, cx),
            weight_decay: get("weight_decay", 1e-5, 0.0, 1.0, cx),
        },
        "adamw" => Optimizer::Adamw {
            beta1: get("beta1", 0.9, 0.0, 1.0, cx),
            beta2: get("beta2", 0.999, 0.0, 1.0, cx),
            eps: get("eps", 1e-8, 0.0, 1.0, cx),
            weight_decay: get("weight_decay", 0.05, 0.0, 1.0, cx),
        },
        _ => Optimizer::Sgd {
            momentum: get("momentum", 0.9, 0.0, 1.0, cx),
            nesterov: get("nesterov", 0.0, 0.0, 1.0, cx) != 0.0,
            weight_decay: get("weight_decay", 1e-4, 0.0, 1.0, cx),
        },
    };
    (!bad).then_some(opt)
}

fn check_lr(
    peak: &Number,
    warmup: Option<&Number>,
    decay: Option<&Decay>,
    cx: &mut Cx,
) -> Option<LrSchedule> {
    let peak = cx.within(peak, "the learning rate", 0.0, 1e3, false);
    let warmup = match warmup {
        Some(w) => cx.within(w, "the warm-up (epochs)", 0.0, 1e6, false),
        None => Some(0.0),
    };
    let decay = match decay {
        None => Some(LrDecay::Constant),
        Some(d) => match d.kind.name.as_str() {
            "constant" => Some(LrDecay::Constant),
            "cosine" => Some(LrDecay::Cosine),
            _ => {
                let kw = cx.kwargs(&d.args, "`exponential`", &["rate", "every"]);
                let rate = match kw.get("rate").and_then(|v| cx.num_arg(v, "rate")) {
                    Some(n) => cx.within(n, "the decay rate", 0.0, 1.0, false),
                    None => Some(0.97),
                };
                let every = match kw.get("every").and_then(|v| cx.num_arg(v, "every")) {
                    Some(n) => cx.within(n, "the decay period (epochs)", 1e-3, 1e6, false),
                    None => Some(2.4),
                };
                match (rate, every) {
                    (Some(rate), Some(every)) => Some(LrDecay::Exponential { rate, every }),
                    _ => None,
                }
            }
        },
    };
    Some(LrSchedule {
        peak: peak?,
        warmup_epochs: warmup?,
        decay: decay?,
    })
}
