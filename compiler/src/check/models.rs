//! Models: names and derivations (`model b0 = a(width 1.1)`), the settings of a model body,
//! and the finished model with its defaults filled in and its size bounded.

use std::collections::HashMap;

use effnet_grammar::*;

use super::cx::{Cx, duplicate};
use super::layers::{stage, stem_or_head};
use super::{
    ChannelRounding, DepthRounding, HeadDef, MAX_BLOCKS, ModelDef, NormDef, StageDef, StemDef,
};
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::ir::{self, Activation, PaddingMode};
use crate::lower::scale_stage_repeats;

/// A model's settings as written, before defaults: derived models start from their base's.
#[derive(Debug, Clone, Default)]
pub(super) struct Partial {
    input: Option<(usize, usize, Option<usize>)>,
    classes: Option<usize>,
    activation: Option<Activation>,
    norm_eps: Option<f64>,
    bn_momentum: Option<f64>,
    /// `norm group(size = N)`: GroupNorm with N channels per group (where `size` was written);
    /// `None`: BatchNorm.
    norm_group: Option<(usize, Span)>,
    group_size: Option<(usize, Span)>,
    padding: Option<PaddingMode>,
    output_stride: Option<usize>,
    /// `antialias blur` (true) or `none`.
    blur_pool: Option<bool>,
    /// `attention gc` (true) or `se`.
    global_context: Option<bool>,
    dropout: Option<f64>,
    drop_path: Option<f64>,
    round_channels: Option<ChannelRounding>,
    round_depth: Option<DepthRounding>,
    normalize: Option<(Vec<f64>, Vec<f64>)>,
    width: Option<f64>,
    depth: Option<f64>,
    stage_depths: Option<(Vec<f64>, Span)>,
    /// The experts multiplier and where it was written.
    experts: Option<(usize, Span)>,
    stem: Option<StemDef>,
    stages: Option<Vec<StageDef>>,
    head: Option<Option<HeadDef>>,
    /// Where the stages were written, for messages about them.
    stages_span: Option<Span>,
    /// A `stem` line exists (it may have had errors, already reported).
    stem_written: bool,
    /// A stage line had an error and is left out: comparing the stage count with the
    /// per-stage multipliers would report an error that is not there.
    stages_incomplete: bool,
    /// The `input` line had an error: the channel count is a default, not what was written.
    input_invalid: bool,
}

pub(super) struct Resolver<'a> {
    pub(super) by_name: &'a HashMap<&'a str, &'a Model>,
    pub(super) done: HashMap<String, Option<Partial>>,
    pub(super) in_progress: Vec<String>,
}

impl Resolver<'_> {
    pub(super) fn resolve(&mut self, m: &Model, cx: &mut Cx) -> Option<Partial> {
        if let Some(done) = self.done.get(&m.name.name) {
            return done.clone();
        }
        self.in_progress.push(m.name.name.clone());
        let result = cx.within_item(&m.name.name, |cx| self.resolve_inner(m, cx));
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
                        "`{}` {} model `{base_name}`, which does not exist",
                        m.name.name,
                        if d.scale.is_empty() {
                            "derives from"
                        } else {
                            "scales"
                        }
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
            // `scaled` replaces the base's scaling; without it (`model flowers = b0 { classes
            // 5 }`) the base is kept as it is, scaling included, and only the body overrides.
            if !d.scale.is_empty() {
                partial.width = None;
                partial.depth = None;
                partial.stage_depths = None;
                partial.experts = None;
                scale_args(&d.scale, &mut partial, cx);
            }
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
            ("experts", ScaleValue::Number(n)) => {
                p.experts = cx
                    .whole(n, "the experts multiplier", 1)
                    .map(|e| (e, a.span));
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

/// `norm batch(eps = E, momentum = M)` or `norm group(size = N, eps = E)`. What the line does
/// not say is kept from the base model when the kind stays, and is the default when it changes.
fn norm(kind: &Ident, args: &[KwArg], p: &mut Partial, cx: &mut Cx) {
    let group = match kind.name.as_str() {
        "batch" => false,
        "group" => true,
        other => {
            let kinds = "`batch` (BatchNorm2d: `norm batch(eps = 1e-3, momentum = 0.01)`) or \
                         `group` (timm's GroupNormAct: `norm group(size = 8, eps = 1e-5)`)";
            cx.push(
                Diagnostic::error(
                    "effnet::unknown_norm",
                    format!("unknown normalization `{other}`"),
                    kind.span,
                )
                .label("not a normalization layer")
                .help(match did_you_mean(other, ["batch", "group"]) {
                    Some(s) => format!("did you mean `{s}`? The normalizations are {kinds}"),
                    None => format!("the normalizations are {kinds}"),
                }),
            );
            return;
        }
    };
    if group != p.norm_group.is_some() {
        p.norm_eps = None;
        p.bn_momentum = None;
    }
    let (what, known): (&str, &[&str]) = if group {
        ("`norm group`", &["size", "eps"])
    } else {
        ("`norm batch`", &["eps", "momentum"])
    };
    let kw = cx.kwargs(args, what, known);
    let name = if group { "GroupNorm" } else { "BatchNorm" };
    if let Some(v) = kw.get("eps").and_then(|v| cx.num_arg(v, "eps"))
        && let Some(e) = cx.within(v, &format!("{name} eps"), 0.0, 1.0, true)
    {
        if e > 0.0 {
            p.norm_eps = Some(e);
        } else {
            cx.push(
                Diagnostic::error(
                    "effnet::number",
                    format!("{name} eps must be above 0"),
                    v.span,
                )
                .label("must be positive"),
            );
        }
    }
    if let Some(v) = kw.get("momentum").and_then(|v| cx.num_arg(v, "momentum"))
        && let Some(m) = cx.within(v, "BatchNorm momentum", 0.0, 1.0, false)
    {
        p.bn_momentum = Some(m);
    }
    if !group {
        p.norm_group = None;
        return;
    }
    match kw.get("size") {
        Some(v) => {
            if let Some(n) = cx.num_arg(v, "size")
                && let Some(size) = cx.whole(n, "the GroupNorm group size", 1)
            {
                p.norm_group = Some((size, n.span));
            }
        }
        None => cx.push(
            Diagnostic::error(
                "effnet::norm_group_size",
                "`norm group` needs its group size: the channels in each group",
                kind.span,
            )
            .label("no `size`")
            .help("timm's `GroupNormAct(group_size=8)` is `norm group(size = 8)`"),
        ),
    }
}

fn apply_body(body: &[ModelStmt], p: &mut Partial, cx: &mut Cx) {
    let mut seen: HashMap<&'static str, Span> = HashMap::new();
    let mut stages: Vec<StageDef> = Vec::new();
    let mut stages_span: Option<Span> = None;
    let mut stages_incomplete = false;
    for stmt in body {
        let kw = stmt.kind.keyword();
        if !matches!(stmt.kind, ModelStmtKind::Stage(_) | ModelStmtKind::Then(_))
            && duplicate(cx, &mut seen, kw, stmt.span)
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
                    p.input_invalid = false;
                } else {
                    p.input_invalid = true;
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
            ModelStmtKind::Norm { kind, args } => norm(kind, args, p, cx),
            ModelStmtKind::GroupSize(n) => {
                // timm's `num_groups`: 0 is one group, 1 depthwise, N groups of N channels each.
                if let Some(g) = cx.whole(n, "the group size", 0) {
                    p.group_size = Some((g, n.span));
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
            ModelStmtKind::OutputStride(n) => match n.as_usize() {
                Some(v) if OUTPUT_STRIDES.contains(&v) => p.output_stride = Some(v),
                _ => cx.push(
                    Diagnostic::error(
                        "effnet::output_stride",
                        format!("the output stride must be 8, 16 or 32, not {}", n.text),
                        n.span,
                    )
                    .label("not an output stride timm builds")
                    .help(
                        "timm's `output_stride`: 32 (the default) downsamples by 32; 16 and 8 \
                         turn the strides past them into dilation (for dense prediction)",
                    ),
                ),
            },
            ModelStmtKind::Antialias(i) => match i.name.as_str() {
                "blur" => p.blur_pool = Some(true),
                "none" => p.blur_pool = Some(false),
                other => cx.push(
                    Diagnostic::error(
                        "effnet::antialias",
                        format!("unknown anti-aliasing `{other}`"),
                        i.span,
                    )
                    .label("not `blur` or `none`")
                    .help(
                        "`antialias blur` is timm's `aa_layer='blurpc'`: strided blocks convolve \
                         at stride 1 and blur-pool (a 3x3 binomial filter) at their stride",
                    ),
                ),
            },
            ModelStmtKind::Attention(i) => match i.name.as_str() {
                "se" => p.global_context = Some(false),
                "gc" => p.global_context = Some(true),
                other => cx.push(
                    Diagnostic::error(
                        "effnet::attention",
                        format!("unknown channel attention `{other}`"),
                        i.span,
                    )
                    .label("not `se` or `gc`")
                    .help(
                        "`attention se` is squeeze-excitation (the default); `attention gc` is \
                         timm's global context attention (`se_layer='gc'`)",
                    ),
                ),
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
                        fixed: h.3,
                    }));
                }
            }
            ModelStmtKind::Stage(layer) => {
                stages_span = Some(stages_span.map_or(stmt.span, |s| s.to(stmt.span)));
                match stage(layer, &stmt.docs, stmt.span, cx) {
                    Some(s) => stages.push(s),
                    None => stages_incomplete = true,
                }
            }
            ModelStmtKind::Then(layer) => {
                let first = stages_span.is_none();
                stages_span = Some(stages_span.map_or(stmt.span, |s| s.to(stmt.span)));
                if first {
                    cx.push(
                        Diagnostic::error(
                            "effnet::then",
                            "`then` continues a stage, but no `stage` line comes before it",
                            stmt.span,
                        )
                        .label("nothing to continue")
                        .help("start the stage with `stage`; `then` adds more blocks to it"),
                    );
                    stages_incomplete = true;
                    continue;
                }
                if let Some(o) = layer
                    .options
                    .iter()
                    .find(|o| matches!(o.kind, LayerOptKind::Depth(_)))
                {
                    cx.push(
                        Diagnostic::error(
                            "effnet::then",
                            "a stage is depth-scaled as a whole: `depth` belongs on its `stage` line",
                            o.span,
                        )
                        .label("not on a `then` line")
                        .help("timm scales a stage's total repeats, then shares them out over its block strings"),
                    );
                }
                match stage(layer, &stmt.docs, stmt.span, cx) {
                    Some(s) => stages.push(StageDef {
                        continues: true,
                        ..s
                    }),
                    None => stages_incomplete = true,
                }
            }
        }
    }
    if stages_span.is_some() {
        p.stages = Some(stages);
        p.stages_span = stages_span;
        p.stages_incomplete = stages_incomplete;
    }
}

pub(super) fn finish_model(m: &Model, p: Partial, cx: &mut Cx) -> Option<ModelDef> {
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
    // timm's `experts_multiplier` multiplies `cc` stages only: on a model without them it does
    // nothing, which is worth saying.
    if let Some((e, span)) = p.experts
        && e > 1
        && !stages.iter().any(|s| s.experts.is_some())
    {
        cx.push(
            Diagnostic::warning(
                "effnet::experts",
                format!(
                    "`experts {e}` has no effect: `{}` has no CondConv stage",
                    m.name.name
                ),
                span,
            )
            .label("multiplies no experts")
            .help("the multiplier applies to `mbconv` stages with `cc N` (timm's `cc`)"),
        );
    }
    let (input_channels, resolution, train_resolution) = p.input.unwrap_or((3, 224, None));
    let stage_count = stages.iter().filter(|s| !s.continues).count();
    if let Some((depths, span)) = &p.stage_depths
        && depths.len() != stage_count
        && !p.stages_incomplete
    {
        cx.push(
            Diagnostic::error(
                "effnet::scale",
                format!(
                    "{} per-stage depth multipliers for {} stages",
                    depths.len(),
                    stage_count
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
        && !p.input_invalid
    {
        cx.push(
            Diagnostic::error(
                "effnet::normalize",
                format!(
                    "`normalize` gives {} values for {} input channel{}",
                    mean.len(),
                    input_channels,
                    if input_channels == 1 { "" } else { "s" }
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
        norm: match p.norm_group {
            Some((size, span)) => NormDef::Group {
                size,
                eps: p.norm_eps.unwrap_or(1e-5),
                span,
            },
            None => NormDef::Batch {
                eps: p.norm_eps.unwrap_or(1e-5),
                momentum: p.bn_momentum.unwrap_or(0.1),
            },
        },
        group_size: p.group_size,
        padding: p.padding.unwrap_or(PaddingMode::Symmetric),
        output_stride: p.output_stride.unwrap_or(32),
        blur_pool: p.blur_pool.unwrap_or(false),
        global_context: p.global_context.unwrap_or(false),
        dropout: p.dropout.unwrap_or(0.0),
        drop_path: p.drop_path.unwrap_or(0.0),
        round_channels: p.round_channels.unwrap_or_default(),
        round_depth: p.round_depth.unwrap_or(DepthRounding::Ceil),
        normalize: p.normalize,
        width: p.width.unwrap_or(1.0),
        depth: p.depth.unwrap_or(1.0),
        stage_depths: p.stage_depths.map(|(d, _)| d),
        experts: p.experts.map_or(1, |(e, _)| e),
        stem,
        stages,
        head: p.head.unwrap_or(None),
    };
    // Scaling multiplies repeats: bound the expanded network so that lowering stays cheap.
    let blocks: f64 = def
        .stage_groups()
        .into_iter()
        .enumerate()
        .map(|(g, range)| {
            let per_stage = def
                .stage_depths
                .as_ref()
                .and_then(|d| d.get(g))
                .copied()
                .unwrap_or(1.0);
            let lines: Vec<usize> = def.stages[range.clone()]
                .iter()
                .map(|s| s.repeats)
                .collect();
            let own = def.stages[range.start].depth;
            scale_stage_repeats(&lines, def.depth * own * per_stage, def.round_depth)
                .iter()
                .map(|&n| n as f64)
                .sum::<f64>()
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
    // timm's builder caps the total stride at its output stride and turns every further stride
    // into dilation, silently (even at its default 32); lowering does the same. A spec that
    // did not ask for it is told where it starts: writing `output_stride` says it is meant.
    if p.output_stride.is_none() {
        let mut total = def.stem.stride;
        for s in &def.stages {
            let next = total.saturating_mul(s.stride);
            if next > def.output_stride {
                cx.push(
                    Diagnostic::warning(
                        "effnet::dilation",
                        format!(
                            "`{}` would downsample by {next} here, past its output stride {}: \
                             from this stage on its strides become dilation, as timm's builder does",
                            def.name, def.output_stride
                        ),
                        s.span,
                    )
                    .label(format!("stride {} after a total of {total}", s.stride))
                    .help(format!(
                        "write `output_stride {}` to say the dilation is meant, or make this stage `s1`",
                        def.output_stride
                    )),
                );
                break;
            }
            total = next;
        }
    }
    if !pruned_widths_fit(&def, cx) || !channels_split(&def, cx) {
        return None;
    }
    Some(def)
}

/// A `prune(...)` list has one width per block of its line after depth scaling.
fn pruned_widths_fit(def: &ModelDef, cx: &mut Cx) -> bool {
    let mut ok = true;
    for (line, n) in def.stages.iter().zip(crate::lower::line_repeats(def)) {
        let Some(p) = &line.prune else { continue };
        for (what, list) in [("mid", &p.mid), ("se", &p.se)] {
            if !list.is_empty() && list.len() != n {
                ok = false;
                cx.push(
                    Diagnostic::error(
                        "effnet::prune",
                        format!(
                            "`prune` lists {} `{what}` widths for a line of {n} block{} in `{}`",
                            list.len(),
                            if n == 1 { "" } else { "s" },
                            def.name
                        ),
                        p.span,
                    )
                    .label(format!("{n} expected"))
                    .help("give one width per block, counted after depth scaling"),
                );
            }
        }
    }
    ok
}

/// What does not split in one convolution of a block from `line`: (code, message, help).
fn conv_problem(
    model: &str,
    (gs, written): (Option<usize>, &str),
    conv_name: &str,
    c: &ir::Conv,
) -> Option<(&'static str, String, &'static str)> {
    if let Some(p) = c
        .mixed
        .iter()
        .find(|p| p.in_channels == 0 || p.out_channels == 0)
    {
        return Some((
            "effnet::mixed_kernel",
            format!(
                "`{}` of `{}` splits {} channels into {} groups: its {}x{} group gets none",
                c.path,
                model,
                c.in_channels.min(c.out_channels),
                c.mixed.len(),
                p.kernel,
                p.kernel
            ),
            "use fewer kernels than the block has channels",
        ));
    }
    // `gs N` makes the kxk convolution `channels / N` groups (timm's `num_groups`, which counts
    // an EdgeResidual's expanded channels): N must divide them, and the groups both sides.
    let gs = gs.filter(|&g| g > 0)?;
    let counted = match conv_name {
        "conv_dw" | "conv" => c.in_channels,
        "conv_exp" => c.out_channels,
        _ => return None,
    };
    let g = c.groups.max(1);
    let whole = counted.is_multiple_of(gs)
        && c.in_channels.is_multiple_of(g)
        && c.out_channels.is_multiple_of(g);
    (!whole).then(|| {
        (
            "effnet::group_size",
            format!(
                "`{written} {gs}` does not divide `{}` of `{}`: {} input and {} output channels",
                c.path, model, c.in_channels, c.out_channels
            ),
            "choose a group size that divides the block's channels after width scaling",
        )
    })
}

/// Group sizes, mixed kernels and GroupNorm split channels that are known only after width
/// scaling: lower the model (which cannot fail) and check every block's convolutions, reporting
/// at the stage line each block came from, once per line (at the model's `group_size` line,
/// with the stage line, when the group size is the model's), and every normalization layer,
/// once, at the `norm` line's `size`. False when something does not split.
fn channels_split(def: &ModelDef, cx: &mut Cx) -> bool {
    let uses_groups = def.group_size.is_some()
        || matches!(def.norm, NormDef::Group { .. })
        || def.stages.iter().any(|s| {
            s.group_size.is_some()
                || [&s.kernels, &s.exp_kernels, &s.proj_kernels]
                    .iter()
                    .any(|k| k.len() > 1)
        });
    if !uses_groups {
        return true;
    }
    let net = crate::lower::lower(def, &[]);
    let mut blocks = net.blocks();
    let mut ok = true;
    for (line, n) in def.stages.iter().zip(crate::lower::line_repeats(def)) {
        let gs = match (line.group_size, def.group_size) {
            (Some(g), _) => (Some(g), "gs"),
            (None, Some((g, _))) => (Some(g), "group_size"),
            (None, None) => (None, "gs"),
        };
        let problem = blocks.by_ref().take(n).find_map(|b| {
            b.layers
                .conv_bns()
                .into_iter()
                .find_map(|l| conv_problem(&def.name, gs, l.conv_name, l.conv))
        });
        if let Some((code, message, help)) = problem {
            ok = false;
            let d = match def.group_size {
                Some((_, span)) if line.group_size.is_none() && code == "effnet::group_size" => {
                    Diagnostic::error(code, message, span)
                        .label("the model's group size")
                        .with_secondary(line.span, "a block of this stage")
                }
                _ => Diagnostic::error(code, message, line.span).label("here"),
            };
            cx.push(d.help(help));
        }
    }
    if let NormDef::Group { size, span, .. } = def.norm {
        let norms = std::iter::once(&net.stem.bn)
            .chain(
                net.blocks()
                    .flat_map(|b| b.layers.conv_bns().into_iter().map(|l| l.bn)),
            )
            .chain(net.head.as_ref().map(|h| &h.bn));
        if let Some(bad) = norms.into_iter().find(|b| !b.channels.is_multiple_of(size)) {
            ok = false;
            cx.push(
                Diagnostic::error(
                    "effnet::norm_group_size",
                    format!(
                        "GroupNorm groups of {size} channels do not divide `{}` of `{}`: {} channels",
                        bad.path, def.name, bad.channels
                    ),
                    span,
                )
                .label("channels per group")
                .help(
                    "choose a size that divides every layer's channels after width scaling \
                     (timm's GroupNormAct asserts it); `round channels(divisor = ...)` makes \
                     the widths multiples of the divisor",
                ),
            );
        }
    }
    ok
}

/// The output strides timm's EfficientNet builder is built with (`output_stride`; 32 is its
/// default).
pub const OUTPUT_STRIDES: [usize; 3] = [8, 16, 32];
