//! Schedules: progressive-learning settings per stage, the optimizer and the learning rate.

use std::collections::HashMap;

use effnet_grammar::*;

use super::cx::{Cx, duplicate};
use super::finetune;
use super::{ScheduleDef, ScheduleValue};
use crate::defaults;
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::ir::{Freeze, Interpolation, LrDecay, LrScale, LrSchedule, Optimizer};

/// The schedule settings, in the order `unknown_setting` lists them.
const SETTING_KEYS: [&str; 12] = [
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
    "grad_clip",
];
/// The settings that take one number (the others take a range or one value per stage too).
const SCALAR_KEYS: [&str; 5] = ["epochs", "stages", "label_smoothing", "ema", "grad_clip"];

/// A schedule: its model must exist, its statements be known and given once, its stages fit
/// in its epochs, and every value be in range; `freeze` and `lr_scale` name stages the model
/// (of `model_stages` stages, when it checked) has. `None` when anything was wrong (reported).
pub(super) fn check_schedule(
    s: &Schedule,
    models: &HashMap<&str, &Model>,
    model_stages: Option<usize>,
    cx: &mut Cx,
) -> Option<ScheduleDef> {
    let mut ok = known_model(s, models, cx);
    let body = read_body(s, model_stages, cx);
    ok &= body.ok;
    let name_span = s.name.as_ref().map_or(s.model.span, |n| n.span);
    let (epochs, stages, fits) = epochs_and_stages(&body, name_span, cx);
    ok &= fits;
    let m = stages.unwrap_or(1);
    let image = body.per_stage("image", Domain::Whole(1), m, cx);
    let randaug = body.per_stage("randaug", Domain::Within(0.0, 30.0), m, cx);
    let mixup = body.per_stage("mixup", Domain::Within(0.0, 100.0), m, cx);
    let cutmix = body.per_stage("cutmix", Domain::Within(0.0, 100.0), m, cx);
    let dropout = body.per_stage("dropout", Domain::Within(0.0, 0.99), m, cx);
    let drop_path = body.per_stage("drop_path", Domain::Within(0.0, 0.99), m, cx);
    let batch = body.per_stage("batch", Domain::Whole(1), m, cx);
    let label_smoothing = body.scalar("label_smoothing", 0.0, 0.99, cx);
    let ema = body.scalar("ema", 0.0, 1.0, cx);
    let grad_clip = body.scalar("grad_clip", 0.0, 1e9, cx);
    let image = required_image(image, name_span, cx);
    Some(ScheduleDef {
        name: s
            .name
            .as_ref()
            .map_or_else(|| defaults::SCHEDULE_NAME.to_string(), |n| n.name.clone()),
        model: s.model.name.clone(),
        docs: s.docs.iter().map(|d| d.text.clone()).collect(),
        span: s.span,
        epochs: epochs?,
        stages: stages?,
        interpolation: body.interpolation.unwrap_or(Interpolation::Linear),
        image: image?,
        randaug: randaug?.unwrap_or(ScheduleValue::Fixed(0.0)),
        mixup: mixup?.unwrap_or(ScheduleValue::Fixed(0.0)),
        cutmix: cutmix?.unwrap_or(ScheduleValue::Fixed(0.0)),
        dropout: dropout?,
        drop_path: drop_path?,
        batch: batch?,
        optimizer: if ok { body.optimizer } else { None },
        lr: body.lr,
        label_smoothing: label_smoothing?,
        ema: ema?,
        grad_clip: grad_clip?,
        freeze: body.freeze,
        lr_scale: body.lr_scale,
    })
    .filter(|_| ok)
}

/// Whether the schedule's model is defined in the file (reported when not).
fn known_model(s: &Schedule, models: &HashMap<&str, &Model>, cx: &mut Cx) -> bool {
    if models.contains_key(s.model.name.as_str()) {
        return true;
    }
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
    false
}

/// A schedule body's statements, each given at most once.
struct Body<'a> {
    /// The settings as written (checked later, against the number of stages).
    values: HashMap<&'static str, (&'a SettingValue, Span)>,
    interpolation: Option<Interpolation>,
    optimizer: Option<Optimizer>,
    lr: Option<LrSchedule>,
    /// Any number of each, in source order.
    freeze: Vec<Freeze>,
    lr_scale: Vec<LrScale>,
    /// False once a statement had an error that leaves the schedule unusable.
    ok: bool,
}

/// Read the statements of `s`: names known, none twice, scalar settings given one number;
/// interpolation, optimizer and learning rate checked on the way.
fn read_body<'a>(s: &'a Schedule, model_stages: Option<usize>, cx: &mut Cx) -> Body<'a> {
    let mut body = Body {
        values: HashMap::new(),
        interpolation: None,
        optimizer: None,
        lr: None,
        freeze: Vec::new(),
        lr_scale: Vec::new(),
        ok: true,
    };
    let mut seen: HashMap<&'static str, Span> = HashMap::new();
    for stmt in &s.body {
        match &stmt.kind {
            ScheduleStmtKind::Interpolate(id) => {
                if duplicate(cx, &mut seen, "interpolate", stmt.span) {
                    continue;
                }
                body.interpolation = interpolation(id, cx);
                body.ok &= body.interpolation.is_some();
            }
            ScheduleStmtKind::Optimizer { kind, args } => {
                if duplicate(cx, &mut seen, "optimizer", stmt.span) {
                    continue;
                }
                body.optimizer = check_optimizer(kind, args, cx);
                body.ok &= body.optimizer.is_some();
            }
            ScheduleStmtKind::Lr {
                peak,
                warmup,
                decay,
            } => {
                if duplicate(cx, &mut seen, "lr", stmt.span) {
                    continue;
                }
                body.lr = check_lr(peak, warmup.as_ref(), decay.as_ref(), cx);
                body.ok &= body.lr.is_some();
            }
            ScheduleStmtKind::Freeze { parts, epochs } => {
                match finetune::freeze(parts, epochs.as_ref(), model_stages, cx) {
                    Some(f) => body.freeze.push(f),
                    None => body.ok = false,
                }
            }
            ScheduleStmtKind::LrScale { parts, scale } => {
                match finetune::lr_scale(parts, scale, model_stages, cx) {
                    Some(l) => body.lr_scale.push(l),
                    None => body.ok = false,
                }
            }
            ScheduleStmtKind::Setting { key, value } => {
                let Some(k) = setting_key(key, cx) else {
                    body.ok = false;
                    continue;
                };
                if duplicate(cx, &mut seen, k, stmt.span) {
                    body.ok = false;
                    continue;
                }
                if SCALAR_KEYS.contains(&k) && !matches!(value, SettingValue::Single(_)) {
                    cx.push(
                        Diagnostic::error(
                            "effnet::schedule_value",
                            format!("`{k}` takes a single number"),
                            value.span(),
                        )
                        .label("not a single number"),
                    );
                    body.ok = false;
                    continue;
                }
                body.values.insert(k, (value, stmt.span));
            }
        }
    }
    body
}

/// `interpolate linear` or `interpolate automl`.
fn interpolation(id: &Ident, cx: &mut Cx) -> Option<Interpolation> {
    match id.name.as_str() {
        "linear" => Some(Interpolation::Linear),
        "automl" => Some(Interpolation::Automl),
        other => {
            cx.push(
                Diagnostic::error("effnet::interpolation", format!("unknown interpolation `{other}`"), id.span)
                    .label("expected `linear` or `automl`")
                    .help("`linear` is the paper's v0 + (v1 - v0) * i / (M - 1); `automl` the released code's (i + 1) / M for the image size"),
            );
            None
        }
    }
}

/// The setting `key` names, or `None` (reported) when it names none.
fn setting_key(key: &Ident, cx: &mut Cx) -> Option<&'static str> {
    if let Some(k) = SETTING_KEYS.iter().find(|k| **k == key.name) {
        return Some(k);
    }
    let mut d = Diagnostic::error(
        "effnet::unknown_setting",
        format!("unknown schedule setting `{}`", key.name),
        key.span,
    )
    .label("not a schedule setting");
    d = d.help(match did_you_mean(&key.name, SETTING_KEYS) {
        Some(n) => format!(
            "did you mean `{n}`? The settings are {}",
            SETTING_KEYS.join(", ")
        ),
        None => format!("the settings are {}", SETTING_KEYS.join(", ")),
    });
    cx.push(d);
    None
}

/// `epochs` (required) and `stages` (default 1), and whether the stages fit in the epochs
/// (each stage needs one).
fn epochs_and_stages(
    body: &Body,
    name_span: Span,
    cx: &mut Cx,
) -> (Option<usize>, Option<usize>, bool) {
    let epochs = match body.values.get("epochs") {
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
    let stages = match body.values.get("stages") {
        Some((SettingValue::Single(n), _)) => cx.whole(n, "the number of stages", 1),
        _ => Some(1),
    };
    if let (Some(e), Some(m)) = (epochs, stages)
        && m > e
    {
        let span = body.values.get("stages").map_or(name_span, |v| v.1);
        cx.push(
            Diagnostic::error(
                "effnet::schedule_value",
                format!("{m} stages do not fit in {e} epochs"),
                span,
            )
            .help("each stage needs at least one epoch"),
        );
        return (epochs, stages, false);
    }
    (epochs, stages, true)
}

/// The numbers a setting may take.
#[derive(Clone, Copy)]
enum Domain {
    /// A whole number from the given minimum up to `MAX_WHOLE`.
    Whole(usize),
    /// A finite number in `[lo, hi]`.
    Within(f64, f64),
}

impl Domain {
    fn check(self, n: &Number, what: &str, cx: &mut Cx) -> Option<f64> {
        match self {
            Domain::Whole(min) => cx.whole(n, what, min).map(|v| v as f64),
            Domain::Within(lo, hi) => cx.within(n, what, lo, hi, false),
        }
    }
}

impl Body<'_> {
    /// A progressive-learning setting: one value for every stage, a range `min -> max` to
    /// interpolate, or a list of one value per stage (`stages` of them). `Some(None)` when it
    /// is not set, `None` after an error (reported).
    fn per_stage(
        &self,
        key: &str,
        domain: Domain,
        stages: usize,
        cx: &mut Cx,
    ) -> Option<Option<ScheduleValue>> {
        let Some((v, _)) = self.values.get(key) else {
            return Some(None);
        };
        let what = format!("`{key}`");
        match v {
            SettingValue::Single(n) => domain
                .check(n, &what, cx)
                .map(|v| Some(ScheduleValue::Fixed(v))),
            SettingValue::Range(a, b) => {
                let (va, vb) = (domain.check(a, &what, cx), domain.check(b, &what, cx));
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
                let vals: Option<Vec<f64>> =
                    items.iter().map(|n| domain.check(n, &what, cx)).collect();
                let vals = vals?;
                if vals.len() != stages {
                    cx.push(
                        Diagnostic::error(
                            "effnet::schedule_value",
                            format!("`{key}` lists {} values for {stages} stages", vals.len()),
                            v.span(),
                        )
                        .label(format!("expected {stages} values"))
                        .help("give one value per stage, or a range `min -> max`"),
                    );
                    return None;
                }
                Some(Some(ScheduleValue::PerStage(vals)))
            }
        }
    }

    /// A one-number setting in `[lo, hi]`: `Some(None)` when not set, `None` after an error.
    fn scalar(&self, key: &str, lo: f64, hi: f64, cx: &mut Cx) -> Option<Option<f64>> {
        match self.values.get(key) {
            Some((SettingValue::Single(n), _)) => {
                cx.within(n, &format!("`{key}`"), lo, hi, false).map(Some)
            }
            _ => Some(None),
        }
    }
}

/// The image size is the one progressive setting a schedule must give.
fn required_image(
    image: Option<Option<ScheduleValue>>,
    name_span: Span,
    cx: &mut Cx,
) -> Option<ScheduleValue> {
    match image {
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
    }
}

/// `optimizer NAME(key = value, ...)`: every argument left out takes the optimizer's default
/// ([`Optimizer::named`]).
fn check_optimizer(kind: &Ident, args: &[KwArg], cx: &mut Cx) -> Option<Optimizer> {
    let Some(defaults) = Optimizer::named(&kind.name) else {
        let mut d = Diagnostic::error(
            "effnet::unknown_optimizer",
            format!("unknown optimizer `{}`", kind.name),
            kind.span,
        )
        .label("not an optimizer");
        d = d.help(match did_you_mean(&kind.name, Optimizer::NAMES) {
            Some(n) => format!("did you mean `{n}`? The optimizers are rmsprop, adamw and sgd"),
            None => "the optimizers are rmsprop, adamw and sgd".to_string(),
        });
        cx.push(d);
        return None;
    };
    let known: &[&str] = match defaults {
        Optimizer::Rmsprop { .. } => &["decay", "momentum", "eps", "weight_decay"],
        Optimizer::Adamw { .. } => &["beta1", "beta2", "eps", "weight_decay"],
        Optimizer::Sgd { .. } => &["momentum", "nesterov", "weight_decay"],
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
    let opt = match defaults {
        Optimizer::Rmsprop {
            decay,
            momentum,
            eps,
            weight_decay,
        } => Optimizer::Rmsprop {
            decay: get("decay", decay, 0.0, 1.0, cx),
            momentum: get("momentum", momentum, 0.0, 1.0, cx),
            eps: get("eps", eps, 0.0, 1.0, cx),
            weight_decay: get("weight_decay", weight_decay, 0.0, 1.0, cx),
        },
        Optimizer::Adamw {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => Optimizer::Adamw {
            beta1: get("beta1", beta1, 0.0, 1.0, cx),
            beta2: get("beta2", beta2, 0.0, 1.0, cx),
            eps: get("eps", eps, 0.0, 1.0, cx),
            weight_decay: get("weight_decay", weight_decay, 0.0, 1.0, cx),
        },
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => Optimizer::Sgd {
            momentum: get("momentum", momentum, 0.0, 1.0, cx),
            nesterov: get("nesterov", f64::from(u8::from(nesterov)), 0.0, 1.0, cx) != 0.0,
            weight_decay: get("weight_decay", weight_decay, 0.0, 1.0, cx),
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
                    None => Some(defaults::EXPONENTIAL_RATE),
                };
                let every = match kw.get("every").and_then(|v| cx.num_arg(v, "every")) {
                    Some(n) => cx.within(n, "the decay period (epochs)", 1e-3, 1e6, false),
                    None => Some(defaults::EXPONENTIAL_EVERY),
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
