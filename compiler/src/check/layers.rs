//! Layer lines: the stem, the head and each `stage` (block kind, kernel, stride, expansion,
//! channels and options such as repeats, squeeze-excitation and skip).

use std::collections::HashMap;

use effnet_grammar::*;

use super::cx::{Cx, duplicate};
use super::{Pruned, Skip, StageDef, StageKind};
use crate::diagnostic::{Diagnostic, did_you_mean};

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

/// Every kernel of a `k`, `a` or `p` list, checked one by one at its own span.
fn kernels_ok(p: &LayerParam, cx: &mut Cx) -> Option<Vec<usize>> {
    let ks: Vec<Option<usize>> = p.values.iter().map(|n| kernel_ok(n, cx)).collect();
    ks.into_iter().collect()
}

/// A single kernel where a list is not allowed (the stem, the head, a `conv` block).
fn single_kernel(p: &LayerParam, what: &str, cx: &mut Cx) -> Option<usize> {
    if p.values.len() > 1 {
        cx.push(
            Diagnostic::error(
                "effnet::mixed_kernel",
                format!("{what} has one kernel size, not {}", p.values.len()),
                p.span,
            )
            .label("mixed kernels")
            .help("mixed kernels (timm's MixConv) split a depthwise convolution: use `ds` or `mbconv`"),
        );
        return None;
    }
    kernel_ok(&p.values[0], cx)
}

/// The k/e/s parameters of a layer line, each at most once.
fn params(layer: &Layer, cx: &mut Cx) -> HashMap<char, LayerParam> {
    let mut out: HashMap<char, LayerParam> = HashMap::new();
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
            out.insert(p.letter, p.clone());
        }
    }
    out
}

/// Returns (kernel, stride, channels, fixed).
pub(super) fn stem_or_head(
    layer: &Layer,
    what: &str,
    cx: &mut Cx,
) -> Option<(usize, usize, usize, bool)> {
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
        Some(p) => single_kernel(p, &format!("the {what}"), cx),
        None => Some(default_k),
    };
    let stride = match ps.get(&'s') {
        Some(p) => stride_ok(&p.values[0], cx),
        None => Some(1),
    };
    for letter in ['a', 'p'] {
        if let Some(p) = ps.get(&letter) {
            cx.push(
                Diagnostic::error(
                    "effnet::kernel",
                    format!("the {what} has no expansion or projection kernel"),
                    p.span,
                )
                .help(format!("drop `{letter}`")),
            );
        }
    }
    if let Some(e) = ps.get(&'e').map(|p| &p.values[0]) {
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
            LayerOptKind::Fixed => fixed = true,
            _ => cx.push(
                Diagnostic::error(
                    "effnet::option",
                    format!("`{}` does not apply to the {what}", o.kind.keyword()),
                    o.span,
                )
                .label("not allowed here")
                .help(format!("the {what} takes only `fixed` (not width-scaled)")),
            ),
        }
    }
    Some((kernel?, stride?, channels?, fixed))
}

pub(super) fn stage(layer: &Layer, docs: &[Doc], span: Span, cx: &mut Cx) -> Option<StageDef> {
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
    let kernels = match ps.get(&'k') {
        Some(p) => kernels_ok(p, cx),
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
        Some(p) => stride_ok(&p.values[0], cx),
        None => Some(1),
    };
    let expansion = match (kind, ps.get(&'e').map(|p| &p.values[0])) {
        (_, Some(n)) => {
            let e = cx.within(n, "the expansion ratio", 1.0, 64.0, false);
            if let (Some(StageKind::Conv | StageKind::Ds | StageKind::Dsa), Some(e)) = (kind, e)
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
    let mut force_in = None;
    let mut group_size = None;
    let mut space_to_depth = false;
    let mut prune = None;
    let mut experts = None;
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
            LayerOptKind::Skip if kind == Some(StageKind::Dsa) => cx.push(
                Diagnostic::error(
                    "effnet::option",
                    "a `dsa` block never has a residual connection",
                    o.span,
                )
                .label("not allowed on a `dsa` stage")
                .help(
                    "timm's `dsa` is `ds` with an activated pointwise conv and no skip; use `ds`",
                ),
            ),
            LayerOptKind::Skip => skip = Skip::On,
            LayerOptKind::NoSkip => skip = Skip::Off,
            LayerOptKind::Act(id) => activation = cx.activation(id),
            LayerOptKind::Depth(n) => {
                depth = cx
                    .within(n, "a stage depth multiplier", 1e-3, 100.0, false)
                    .unwrap_or(1.0)
            }
            LayerOptKind::Fixed => cx.push(
                Diagnostic::error(
                    "effnet::option",
                    "`fixed` applies only to the stem and the head",
                    o.span,
                )
                .label("not allowed on a stage"),
            ),
            LayerOptKind::GroupSize(n) => group_size = cx.whole(n, "the group size", 0),
            // timm builds the space-to-depth convolution into its depthwise-separable and
            // inverted-residual blocks only (`DepthwiseSeparableConv`, `InvertedResidual`).
            LayerOptKind::SpaceToDepth => match kind {
                Some(StageKind::Ds | StageKind::Dsa | StageKind::MbConv) => space_to_depth = true,
                Some(_) => cx.push(
                    Diagnostic::error(
                        "effnet::option",
                        "`s2d` applies only to `ds`, `dsa` and `mbconv` stages",
                        o.span,
                    )
                    .label("not allowed on this stage")
                    .help("timm's space-to-depth (`d1`) is built into its ds and ir blocks"),
                ),
                None => {}
            },
            LayerOptKind::Prune(args) => prune = pruned(args, o.span, kind, expansion, cx),
            LayerOptKind::Experts(n) => experts = experts_option(kind, n, o.span, cx),
            LayerOptKind::ForceIn(n) => {
                let edge = matches!(kind, Some(StageKind::Edge))
                    || (matches!(kind, Some(StageKind::Fused)) && expansion != Some(1.0));
                if edge {
                    force_in = cx.whole(n, "the forced input width", 1);
                } else if kind.is_some() {
                    cx.push(
                        Diagnostic::error(
                            "effnet::option",
                            "`fc` applies only to blocks with an expansion convolution: `edge`, \
                             or `fused` with an expansion above 1",
                            o.span,
                        )
                        .label("not allowed on this stage")
                        .help("timm's `fc` (force_in_chs) is an EdgeResidual (`er`) option"),
                    );
                }
            }
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
    // `fused ... e1` is timm's `cn`: a single kxk convolution, like `conv`.
    let single_conv = matches!(kind, Some(StageKind::Conv))
        || (matches!(kind, Some(StageKind::Fused)) && expansion == Some(1.0));
    let kernels = match (ps.get(&'k'), kernels) {
        (Some(p), Some(ks)) if ks.len() > 1 && single_conv => {
            single_kernel(p, "a single-convolution block", cx);
            None
        }
        (_, ks) => ks,
    };
    let kernel_list = |letter: char, allowed: bool, what: &str, cx: &mut Cx| match ps.get(&letter) {
        None => Some(vec![1]),
        Some(p) if allowed => kernels_ok(p, cx),
        Some(p) => {
            if kind.is_some() {
                cx.push(
                    Diagnostic::error(
                        "effnet::kernel",
                        format!("a `{}` stage has no {what}", layer.kind.name),
                        p.span,
                    )
                    .label(format!("`{letter}` not allowed here"))
                    .help(if letter == 'a' {
                        "`a` (timm's expansion kernel) applies only to `mbconv`"
                    } else {
                        "`p` (timm's projection kernel) applies to `ds`, `dsa`, `edge`, `fused` and `mbconv`"
                    }),
                );
            }
            None
        }
    };
    let exp_kernels = kernel_list(
        'a',
        matches!(kind, Some(StageKind::MbConv)),
        "1x1 expansion convolution",
        cx,
    );
    let proj_kernels = kernel_list('p', !single_conv, "projection convolution", cx);
    // timm's MixedConv2d is depthwise (group size 1) or one group per kernel (group size 0).
    let gs_span = layer
        .options
        .iter()
        .find(|o| matches!(o.kind, LayerOptKind::GroupSize(_)))
        .map_or(layer.kind.span, |o| o.span);
    if let (Some(ks), Some(g)) = (&kernels, group_size)
        && ks.len() > 1
        && g > 1
    {
        cx.push(
            Diagnostic::error(
                "effnet::group_size",
                format!("mixed kernels take `gs 1` (depthwise) or `gs 0` (one group), not `gs {g}`"),
                gs_span,
            )
            .label("not with mixed kernels")
            .help("timm's MixedConv2d splits the channels by kernel; each split is depthwise or dense"),
        );
    }
    let edge_like = matches!(kind, Some(StageKind::Edge | StageKind::Fused)) && !single_conv;
    if let (Some(ks), Some(1)) = (&kernels, group_size)
        && ks.len() > 1
        && edge_like
    {
        cx.push(
            Diagnostic::error(
                "effnet::group_size",
                "an expansion convolution with mixed kernels cannot be depthwise",
                gs_span,
            )
            .label("not with mixed kernels")
            .help("drop `gs 1`: the expansion changes the channel count"),
        );
    }
    if let Some(p) = &prune
        && !p.se.is_empty()
        && se.is_none()
    {
        cx.push(
            Diagnostic::error(
                "effnet::prune",
                "`prune` gives SE widths to a stage without squeeze-excitation",
                p.span,
            )
            .label("`se` widths here")
            .help("add the stage's `se` ratio, or drop `se = (...)`"),
        );
    }
    if space_to_depth
        && let Some(st) = stride
        && st != 1
    {
        let at = layer
            .params
            .iter()
            .find(|p| p.letter == 's')
            .map_or(layer.kind.span, |p| p.span);
        cx.push(
            Diagnostic::error(
                "effnet::stride",
                format!("a space-to-depth block takes stride 1, not {st}"),
                at,
            )
            .label("with `s2d`")
            .help("its 2x2 stride-2 convolution already halves the resolution: write `s1`"),
        );
    }
    if space_to_depth
        && let Some(ks) = &kernels
        && ks.len() > 1
    {
        let at = layer
            .params
            .iter()
            .find(|p| p.letter == 'k')
            .map_or(layer.kind.span, |p| p.span);
        cx.push(
            Diagnostic::error(
                "effnet::kernel",
                "a space-to-depth block cannot have mixed kernels",
                at,
            )
            .label("mixed kernels with `s2d`")
            .help("space-to-depth halves the depthwise kernel, `(k + 1) / 2`: give one kernel"),
        );
    }
    // timm's `create_conv2d` does not make a mixed convolution conditional (it asserts).
    if let (Some(_), Some(ks)) = (experts, &kernels)
        && [
            ks,
            exp_kernels.as_ref().unwrap_or(ks),
            proj_kernels.as_ref().unwrap_or(ks),
        ]
        .iter()
        .any(|k| k.len() > 1)
        && let Some(o) = layer
            .options
            .iter()
            .find(|o| matches!(o.kind, LayerOptKind::Experts(_)))
    {
        cx.push(
            Diagnostic::error(
                "effnet::experts",
                "CondConv experts cannot be combined with mixed kernels",
                o.span,
            )
            .label("not with mixed kernels")
            .help("timm's `create_conv2d` has no conditional MixedConv2d: use a single kernel per convolution"),
        );
    }
    let kernels = kernels?;
    Some(StageDef {
        docs: docs.iter().map(|d| d.text.clone()).collect(),
        kind: kind?,
        kernel: kernels.iter().copied().max().unwrap_or(1),
        kernels,
        exp_kernels: exp_kernels?,
        proj_kernels: proj_kernels?,
        group_size,
        expansion: expansion?,
        stride: stride?,
        channels: channels?,
        repeats: repeats?,
        se,
        skip,
        activation,
        depth,
        force_in,
        space_to_depth,
        prune,
        experts,
        continues: false,
        span,
    })
}

/// `prune(out = C, mid = (..), se = (..))`: each key once, whole widths, `mid` only where the
/// block has an expansion.
fn pruned(
    args: &[PruneArg],
    span: Span,
    kind: Option<StageKind>,
    expansion: Option<f64>,
    cx: &mut Cx,
) -> Option<Pruned> {
    let mut out = Pruned {
        out: None,
        mid: Vec::new(),
        se: Vec::new(),
        span,
    };
    let mut seen: HashMap<&'static str, Span> = HashMap::new();
    let mut ok = true;
    for a in args {
        let key: &'static str = match a.key.name.as_str() {
            "out" => "out",
            "mid" => "mid",
            "se" => "se",
            other => {
                cx.push(
                    Diagnostic::error(
                        "effnet::prune",
                        format!("`prune` has no width `{other}`"),
                        a.key.span,
                    )
                    .label("not a pruned width")
                    .help("`prune` takes `out` (the stage's output width), `mid` (each block's expanded width) and `se` (each block's SE width)"),
                );
                ok = false;
                continue;
            }
        };
        if duplicate(cx, &mut seen, key, a.span) {
            ok = false;
            continue;
        }
        let widths: Vec<Option<usize>> = a
            .values
            .iter()
            .map(|n| cx.whole(n, "a pruned width", 1))
            .collect();
        let Some(widths) = widths.into_iter().collect::<Option<Vec<usize>>>() else {
            ok = false;
            continue;
        };
        match key {
            "out" if a.list => {
                cx.push(
                    Diagnostic::error(
                        "effnet::prune",
                        "`out` is one width for the whole stage, not a list",
                        a.span,
                    )
                    .label("a list")
                    .help("a stage's blocks share their output width (the residuals add them)"),
                );
                ok = false;
            }
            "out" => out.out = widths.first().copied(),
            "mid" => {
                let expands = matches!(kind, Some(StageKind::MbConv | StageKind::Edge))
                    || (kind == Some(StageKind::Fused) && expansion != Some(1.0));
                if kind.is_some() && !expands {
                    cx.push(
                        Diagnostic::error(
                            "effnet::prune",
                            "`mid` prunes an expansion, and this stage's blocks have none",
                            a.span,
                        )
                        .label("no expansion to prune")
                        .help("`mid` applies to `mbconv`, `edge` and `fused` stages with an expansion"),
                    );
                    ok = false;
                }
                out.mid = widths;
            }
            _ => out.se = widths,
        }
    }
    ok.then_some(out)
}

/// `cc N`: CondConv experts, on `mbconv` only (timm builds a `CondConvResidual` from `ir`
/// blocks alone: its other blocks take no `num_experts`), at least one (timm's `cc0` is a plain
/// block; write no `cc` for that).
fn experts_option(kind: Option<StageKind>, n: &Number, span: Span, cx: &mut Cx) -> Option<usize> {
    match kind {
        Some(StageKind::MbConv) => {}
        Some(k) => {
            cx.push(
                Diagnostic::error(
                    "effnet::experts",
                    format!("a `{}` stage cannot be CondConv", k.name()),
                    span,
                )
                .label("`cc` not allowed on this stage")
                .help("timm's `cc` (CondConvResidual) applies only to `ir` blocks: use `mbconv`"),
            );
            return None;
        }
        None => return None,
    }
    match n.as_usize() {
        Some(0) => {
            cx.push(
                Diagnostic::error("effnet::experts", "a CondConv stage needs at least one expert", n.span)
                    .label("zero experts")
                    .help("write `cc 4` for four experts, or no `cc` for a plain `mbconv` block (timm's `cc0`)"),
            );
            None
        }
        _ => cx.whole(n, "the number of experts", 1),
    }
}
