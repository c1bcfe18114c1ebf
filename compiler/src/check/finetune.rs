//! Fine-tuning statements of a schedule, and the same text given to `effnet train --freeze` /
//! `--lr-scale`: the parts they name (`stem`, `stages 0..3`, `head`, `classifier`, `backbone`),
//! checked against the model's stages, the epochs of a `freeze` and the factor of an
//! `lr_scale`.

use effnet_grammar::{self as grammar, Number, Part as AstPart};

use super::cx::Cx;
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::ir::{self, Freeze, LrScale, Part};

/// The part names, in the order the help lists them.
const PART_NAMES: [&str; 5] = ["stem", "stages", "head", "classifier", "backbone"];

/// The largest learning-rate multiplier: past it a "scale" is surely a typo.
const MAX_LR_SCALE: f64 = 1e3;

/// The parts of a `freeze` or `lr_scale`, checked against a model with `stages` stages (when
/// that model is known). `None` after an error (reported).
pub(super) fn parts(parts: &[AstPart], stages: Option<usize>, cx: &mut Cx) -> Option<Vec<Part>> {
    let mut out = Vec::with_capacity(parts.len());
    let mut ok = true;
    for p in parts {
        match part(p, stages, cx) {
            Some(p) => out.push(p),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn part(p: &AstPart, stages: Option<usize>, cx: &mut Cx) -> Option<Part> {
    match p {
        AstPart::Named(id) => match id.name.as_str() {
            "stem" => Some(Part::Stem),
            "head" => Some(Part::Head),
            "classifier" => Some(Part::Classifier),
            "backbone" => Some(Part::Backbone),
            "stages" | "stage" => {
                cx.push(
                    Diagnostic::error(
                        "effnet::part",
                        format!("`{}` needs a stage index or range", id.name),
                        id.span,
                    )
                    .label("which stages?")
                    .help("write one stage like `stages 2`, or a range like `stages 0..3` (3 excluded)"),
                );
                None
            }
            other => {
                let mut d =
                    Diagnostic::error("effnet::part", format!("unknown part `{other}`"), id.span)
                        .label("not a part of the network");
                let list = "the parts are stem, stages A..B, head, classifier and backbone (all but the classifier)";
                d = d.help(match did_you_mean(other, PART_NAMES) {
                    Some(n) => format!("did you mean `{n}`? {}", list.replacen("the", "The", 1)),
                    None => list.to_string(),
                });
                cx.push(d);
                None
            }
        },
        AstPart::Stages { from, to, span } => {
            let a = index(from, cx)?;
            let b = match to {
                Some(t) => index(t, cx)?,
                None => a + 1,
            };
            if b <= a {
                cx.push(
                    Diagnostic::error(
                        "effnet::part",
                        format!("the stage range {a}..{b} is empty"),
                        *span,
                    )
                    .label("no stage in it")
                    .help(if b < a {
                        format!(
                            "ranges go up and exclude their end: `{b}..{}` is stages {b} to {a}",
                            a + 1
                        )
                    } else {
                        format!("a range excludes its end: `stages {a}` is stage {a} alone")
                    }),
                );
                return None;
            }
            if let Some(n) = stages
                && b > n
            {
                let last = b - 1;
                cx.push(
                    Diagnostic::error(
                        "effnet::part",
                        format!(
                            "stage {last} does not exist: the model has {n} stage{} (0..{n})",
                            if n == 1 { "" } else { "s" }
                        ),
                        *span,
                    )
                    .label("out of range")
                    .help(format!(
                        "stages are counted from 0; the last is {}",
                        n.saturating_sub(1)
                    )),
                );
                return None;
            }
            Some(Part::Stages { from: a, to: b })
        }
    }
}

fn index(n: &Number, cx: &mut Cx) -> Option<usize> {
    cx.whole(n, "a stage index", 0)
}

/// `freeze PARTS [for N epochs]`.
pub(super) fn freeze(
    ps: &[AstPart],
    epochs: Option<&Number>,
    stages: Option<usize>,
    cx: &mut Cx,
) -> Option<Freeze> {
    let parts = parts(ps, stages, cx);
    let epochs = match epochs {
        Some(n) => Some(cx.whole(n, "the epochs a part stays frozen", 1)?),
        None => None,
    };
    Some(Freeze {
        parts: parts?,
        epochs,
    })
}

/// `lr_scale PARTS F`, `F` in `(0, MAX_LR_SCALE]`.
pub(super) fn lr_scale(
    ps: &[AstPart],
    scale: &Number,
    stages: Option<usize>,
    cx: &mut Cx,
) -> Option<LrScale> {
    let parts = parts(ps, stages, cx);
    let factor = if scale.value.is_finite() && scale.value > 0.0 {
        cx.within(scale, "the learning-rate scale", 0.0, MAX_LR_SCALE, false)
    } else {
        cx.push(
            Diagnostic::error(
                "effnet::number",
                format!(
                    "the learning-rate scale must be above 0, not {}",
                    scale.text
                ),
                scale.span,
            )
            .label("expected a positive factor")
            .help("to keep a part from training, freeze it: `freeze PARTS`"),
        );
        None
    };
    Some(LrScale {
        parts: parts?,
        scale: factor?,
    })
}

/// A syntax error in a flag's text, worded for a flag rather than a file.
fn flag_syntax_error(e: &grammar::ParseError) -> Vec<Diagnostic> {
    let mut d = crate::parse_error_diagnostic(e);
    d.message = d.message.replace("end of file", "the end of the text");
    d.primary.text = d.primary.text.replace("end of file", "the end of the text");
    vec![d]
}

/// The diagnostics of a flag's text, or its value.
fn flag_result<T>(value: Option<T>, cx: Cx) -> Result<T, Vec<Diagnostic>> {
    match value {
        Some(v) if !cx.diagnostics.iter().any(Diagnostic::is_error) => Ok(v),
        _ => Err(cx.diagnostics),
    }
}

/// `effnet train --freeze TEXT` for `net`: the text of a `freeze` statement after the keyword
/// (`stem, stages 0..3 for 2 epochs`). The diagnostics' spans are in `text`.
pub fn freeze_flag(text: &str, net: &ir::Network) -> Result<Freeze, Vec<Diagnostic>> {
    let flag = grammar::parse_freeze_flag(text).map_err(|e| flag_syntax_error(&e))?;
    let mut cx = Cx::default();
    let f = freeze(
        &flag.parts,
        flag.epochs.as_ref(),
        Some(net.stages.len()),
        &mut cx,
    );
    flag_result(f, cx)
}

/// `effnet train --lr-scale TEXT` for `net`: the text of an `lr_scale` statement after the
/// keyword (`backbone 0.1`). The diagnostics' spans are in `text`.
pub fn lr_scale_flag(text: &str, net: &ir::Network) -> Result<LrScale, Vec<Diagnostic>> {
    let flag = grammar::parse_lr_scale_flag(text).map_err(|e| flag_syntax_error(&e))?;
    let mut cx = Cx::default();
    let l = lr_scale(&flag.parts, &flag.scale, Some(net.stages.len()), &mut cx);
    flag_result(l, cx)
}
