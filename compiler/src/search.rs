//! Search spaces: models with choices (`stage {fused|mbconv} k{3|5} ... x{1..4}`) and the
//! `search` items that say how `effnet search` explores them.
//!
//! A space is never lowered as such. [`Space::concretize`] turns a model with choices into an
//! ordinary model for one candidate (a pick per choice), and everything downstream (`check`,
//! `lower`, the interpreter, the macro) sees only ordinary models: a space used where a model
//! is expected is its default candidate, every choice at its first alternative.
//!
//! [`check_spaces`] checks a file's spaces and searches: each choice on its own (alternatives
//! listed twice, empty ranges), then every combination of the choices of each line with the
//! other lines at their defaults, so that a space holding an invalid model (an `se` on a `fused
//! e1` stage) is an error at the alternative that makes it so, before any training.

use std::borrow::Cow;
use std::collections::HashSet;

use effnet_grammar::*;
use rand::Rng;

use crate::check::{Findings, check_concrete};
use crate::diagnostic::{Diagnostic, did_you_mean};

/// Combinations of one line's choices checked exhaustively; a line with more is checked one
/// choice at a time (the others at their first alternatives). 6 lines of the paper's space
/// (kind x k x e x repeats x se = 2 x 2 x 3 x 4 x 2 = 96 each) stay far below it.
pub const MAX_LINE_COMBINATIONS: usize = 1024;

/// Candidates evaluated exactly for a space's parameter and MAC range; a larger space is
/// bounded by coordinate search instead.
pub const MAX_ENUMERATED: f64 = 4096.0;

/// One choice of a space: where it is and what it may take.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Index of the statement in the model's body.
    pub stmt: usize,
    /// Index of the choice in that line's `choices`.
    pub choice: usize,
    pub target: ChoiceTarget,
    pub alternatives: Vec<Alternative>,
    /// Written as a range `{A..B}`.
    pub range: bool,
    /// The choice as written.
    pub span: Span,
    /// `stage 3`, `then 3`, `stem`, `head`: the line, for messages and `search.csv` headers.
    pub line: String,
}

impl Point {
    /// Alternative `i` as a stage line writes it: `fused`, `k5`, `x2`, `se 0.25`, `-> 32`.
    pub fn written(&self, i: usize) -> String {
        let v = self.alternatives.get(i).map_or("?", Alternative::text);
        match self.target {
            ChoiceTarget::Kind => v.to_string(),
            ChoiceTarget::Param(c) => format!("{c}{v}"),
            ChoiceTarget::Repeats => format!("x{v}"),
            ChoiceTarget::Se => format!("se {v}"),
            ChoiceTarget::Channels => format!("-> {v}"),
        }
    }

    /// `stage 3 k`, `stage 1 kind`: a column name.
    pub fn name(&self) -> String {
        format!("{} {}", self.line, self.target.describe())
    }
}

/// The choices of one model, in source order.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    pub model: String,
    pub points: Vec<Point>,
}

/// A candidate: the index of the alternative taken at each point.
pub type Picks = Vec<usize>;

impl Space {
    /// The space of `model`, or `None` when it has no choices.
    pub fn of(model: &Model) -> Option<Space> {
        let mut points = Vec::new();
        let mut stage = 0usize;
        for (i, stmt) in model.body.iter().flatten().enumerate() {
            let (layer, line) = match &stmt.kind {
                ModelStmtKind::Stem(l) => (l, "stem".to_string()),
                ModelStmtKind::Stage(l) => {
                    stage += 1;
                    (l, format!("stage {}", stage - 1))
                }
                ModelStmtKind::Then(l) => (l, format!("then {}", stage.saturating_sub(1))),
                ModelStmtKind::Head(Some(l)) => (l, "head".to_string()),
                _ => continue,
            };
            for (c, choice) in layer.choices.iter().enumerate() {
                points.push(Point {
                    stmt: i,
                    choice: c,
                    target: choice.target,
                    alternatives: choice.alternatives.clone(),
                    range: choice.range,
                    span: choice.span,
                    line: line.clone(),
                });
            }
        }
        (!points.is_empty()).then(|| Space {
            model: model.name.name.clone(),
            points,
        })
    }

    /// The spaces of a file's models.
    pub fn all(file: &File) -> Vec<Space> {
        models(file).filter_map(Space::of).collect()
    }

    /// How many candidates the space holds (as a float: the paper's space has ~10^11).
    pub fn size(&self) -> f64 {
        self.points
            .iter()
            .map(|p| p.alternatives.len() as f64)
            .product()
    }

    /// The default candidate: every choice at its first alternative.
    pub fn default_picks(&self) -> Picks {
        vec![0; self.points.len()]
    }

    /// A candidate drawn uniformly.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> Picks {
        self.points
            .iter()
            .map(|p| rng.random_range(0..p.alternatives.len()))
            .collect()
    }

    /// `picks` with one choice moved to another of its alternatives (the mutation of aging
    /// evolution, Real et al. 2019): always a different candidate inside the space.
    pub fn mutate<R: Rng>(&self, picks: &[usize], rng: &mut R) -> Picks {
        let mut out = picks.to_vec();
        let movable: Vec<usize> = (0..self.points.len())
            .filter(|&i| self.points[i].alternatives.len() > 1)
            .collect();
        if movable.is_empty() {
            return out;
        }
        let i = movable[rng.random_range(0..movable.len())];
        let n = self.points[i].alternatives.len();
        // Any alternative but the current one, uniformly.
        let shift = rng.random_range(1..n);
        out[i] = (out[i] + shift) % n;
        out
    }

    /// `stage 1 kind=fused, stage 1 k=3, ...`: a candidate in words.
    pub fn describe(&self, picks: &[usize]) -> Vec<(String, String)> {
        self.points
            .iter()
            .zip(picks)
            .map(|(p, &i)| {
                let v = p.alternatives.get(i).map_or("?", Alternative::text);
                (p.name(), v.to_string())
            })
            .collect()
    }

    /// The model of candidate `picks`: `model` (this space's model) with every choice replaced
    /// by the alternative picked, its spans those of the alternatives.
    pub fn concretize(&self, model: &Model, picks: &[usize]) -> Model {
        let mut out = model.clone();
        let Some(body) = out.body.as_mut() else {
            return out;
        };
        for (p, &pick) in self.points.iter().zip(picks) {
            let Some(stmt) = body.get_mut(p.stmt) else {
                continue;
            };
            let layer = match &mut stmt.kind {
                ModelStmtKind::Stem(l)
                | ModelStmtKind::Stage(l)
                | ModelStmtKind::Then(l)
                | ModelStmtKind::Head(Some(l)) => l,
                _ => continue,
            };
            if let Some(alt) = p.alternatives.get(pick) {
                apply(layer, p.target, alt);
            }
        }
        for stmt in body.iter_mut() {
            if let ModelStmtKind::Stem(l)
            | ModelStmtKind::Stage(l)
            | ModelStmtKind::Then(l)
            | ModelStmtKind::Head(Some(l)) = &mut stmt.kind
            {
                // A choice whose alternative did not apply (a number where a name is needed)
                // leaves the first alternative, which the parser already put in the fields.
                if let Some(i) = l
                    .options
                    .iter()
                    .position(|o| matches!(&o.kind, LayerOptKind::Se(n) if n.value == 0.0))
                    && l.choices.iter().any(|c| c.target == ChoiceTarget::Se)
                {
                    // `se {0|0.25}`: 0 means no squeeze-excitation.
                    l.options.remove(i);
                }
                l.choices.clear();
            }
        }
        out
    }

    /// The file with this space's model replaced by candidate `picks`, every other space by
    /// its default candidate, and no `search` items: an ordinary file.
    pub fn concretize_file(&self, file: &File, picks: &[usize]) -> File {
        let mut out = file.clone();
        out.items.retain(|i| !matches!(i, Item::Search(_)));
        for item in &mut out.items {
            if let Item::Model(m) = item {
                if m.name.name == self.model {
                    *m = self.concretize(m, picks);
                } else if let Some(other) = Space::of(m) {
                    *m = other.concretize(m, &other.default_picks());
                }
            }
        }
        out
    }
}

fn apply(layer: &mut Layer, target: ChoiceTarget, alt: &Alternative) {
    match (target, alt) {
        (ChoiceTarget::Kind, Alternative::Ident(i)) => layer.kind = i.clone(),
        (ChoiceTarget::Param(letter), Alternative::Number(n)) => {
            if let Some(p) = layer.params.iter_mut().find(|p| p.letter == letter) {
                p.values = vec![n.clone()];
            }
        }
        (ChoiceTarget::Channels, Alternative::Number(n)) => layer.channels = n.clone(),
        (ChoiceTarget::Repeats, Alternative::Number(n)) => {
            for o in &mut layer.options {
                if let LayerOptKind::Repeats(v) = &mut o.kind {
                    *v = n.clone();
                }
            }
        }
        (ChoiceTarget::Se, Alternative::Number(n)) => {
            for o in &mut layer.options {
                if let LayerOptKind::Se(v) = &mut o.kind {
                    *v = n.clone();
                }
            }
        }
        _ => {}
    }
}

fn models(file: &File) -> impl Iterator<Item = &Model> {
    file.items.iter().filter_map(|i| match i {
        Item::Model(m) => Some(m),
        _ => None,
    })
}

/// The file with every space replaced by its default candidate: what `check` and `lower` see.
/// Borrowed unchanged when the file has no choices.
pub fn defaults(file: &File) -> Cow<'_, File> {
    let spaces = Space::all(file);
    if spaces.is_empty() {
        return Cow::Borrowed(file);
    }
    let mut out = file.clone();
    for item in &mut out.items {
        if let Item::Model(m) = item
            && let Some(space) = spaces.iter().find(|s| s.model == m.name.name)
        {
            *m = space.concretize(m, &space.default_picks());
        }
    }
    Cow::Owned(out)
}

/// How `effnet search` explores: aging evolution or random sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    Random,
    /// Regularized (aging) evolution (Real et al. 2019): a population of the last `population`
    /// candidates; each new one mutates the best of `sample` drawn from it.
    Evolution {
        population: usize,
        sample: usize,
    },
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::Evolution { .. } => "evolution",
        }
    }
}

/// A measure of a candidate that rewards and constraints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Seconds per training step, measured by the runtime's benchmark.
    StepTime,
    Params,
    Macs,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::StepTime, Metric::Params, Metric::Macs];

    pub fn name(self) -> &'static str {
        match self {
            Metric::StepTime => "step_time",
            Metric::Params => "params",
            Metric::Macs => "macs",
        }
    }

    pub fn from_name(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// `step_time < 1.2 * base`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub metric: Metric,
    /// `<=` rather than `<`.
    pub inclusive: bool,
    pub bound: f64,
    /// The bound is a multiple of the base model's value.
    pub relative: bool,
    pub span: Span,
}

impl Constraint {
    /// Whether `value` satisfies the constraint, `base` being the base model's value.
    pub fn holds(&self, value: f64, base: f64) -> bool {
        let bound = if self.relative {
            self.bound * base
        } else {
            self.bound
        };
        if self.inclusive {
            value <= bound
        } else {
            value < bound
        }
    }

    pub fn text(&self) -> String {
        format!(
            "{} {} {}{}",
            self.metric.name(),
            if self.inclusive { "<=" } else { "<" },
            self.bound,
            if self.relative { " * base" } else { "" }
        )
    }
}

/// The reward of the EfficientNetV2 search (Tan & Le 2021, section 3.3): `A * S^w * P^v`, with
/// `A` the proxy accuracy and each measure normalized by the base model's (`S` the training
/// step time, `P` the parameters; MACs may take an exponent too).
#[derive(Debug, Clone, PartialEq)]
pub struct Reward {
    /// `(measure, exponent)`.
    pub exponents: Vec<(Metric, f64)>,
}

impl Default for Reward {
    /// The paper's `w = -0.07`, `v = -0.05`.
    fn default() -> Self {
        Reward {
            exponents: vec![(Metric::StepTime, -0.07), (Metric::Params, -0.05)],
        }
    }
}

impl Reward {
    /// `accuracy * prod((value / base)^exponent)`. `measure(m)` gives `(value, base)`.
    pub fn score(&self, accuracy: f64, measure: impl Fn(Metric) -> (f64, f64)) -> f64 {
        self.exponents.iter().fold(accuracy, |r, &(m, e)| {
            let (v, b) = measure(m);
            r * (v / b).powf(e)
        })
    }
}

/// A checked `search` item.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDef {
    pub name: String,
    /// The model with choices.
    pub space: String,
    /// The model measures are normalized by (and relative constraints refer to); `None`: the
    /// space's default candidate.
    pub base: Option<String>,
    pub strategy: Strategy,
    /// Candidates trained in all.
    pub candidates: usize,
    /// Proxy training: epochs, image size (`None`: the model's training resolution), batch
    /// size (`None`: the schedule's), training images used (`None`: all).
    pub epochs: usize,
    pub image: Option<usize>,
    pub batch: Option<usize>,
    pub images: Option<usize>,
    pub reward: Reward,
    pub constraints: Vec<Constraint>,
    pub span: Span,
}

impl SearchDef {
    /// The settings when a space has no `search` item.
    pub fn default_for(space: &str) -> SearchDef {
        SearchDef {
            name: format!("{space}_search"),
            space: space.to_string(),
            base: None,
            strategy: Strategy::Evolution {
                population: 8,
                sample: 3,
            },
            candidates: 20,
            epochs: 2,
            image: None,
            batch: None,
            images: None,
            reward: Reward::default(),
            constraints: Vec::new(),
            span: Span::default(),
        }
    }
}

const SETTINGS: [&str; 5] = ["candidates", "epochs", "image", "batch", "images"];

fn whole(n: &Number, what: &str, min: usize, diags: &mut Vec<Diagnostic>) -> Option<usize> {
    match n.as_usize() {
        Some(v) if v >= min && v <= crate::check::MAX_WHOLE => Some(v),
        _ => {
            diags.push(
                Diagnostic::error(
                    "effnet::search",
                    format!(
                        "{what} must be a whole number from {min} to {}, not {}",
                        crate::check::MAX_WHOLE,
                        n.text
                    ),
                    n.span,
                )
                .label("out of range"),
            );
            None
        }
    }
}

/// Check one `search` item against the file's models.
fn check_search(s: &Search, file: &File, diags: &mut Vec<Diagnostic>) -> Option<SearchDef> {
    let before = diags.len();
    let names: Vec<&str> = models(file).map(|m| m.name.name.as_str()).collect();
    let unknown_model = |id: &Ident, diags: &mut Vec<Diagnostic>| {
        let mut d = Diagnostic::error(
            "effnet::search",
            format!("no model named `{}`", id.name),
            id.span,
        )
        .label("unknown model");
        if let Some(m) = did_you_mean(&id.name, names.iter().copied()) {
            d = d.help(format!("did you mean `{m}`?"));
        }
        diags.push(d);
    };
    match models(file).find(|m| m.name.name == s.space.name) {
        None => unknown_model(&s.space, diags),
        Some(m) if Space::of(m).is_none() => diags.push(
            Diagnostic::error(
                "effnet::search",
                format!(
                    "model `{}` has no choices: there is nothing to search",
                    m.name.name
                ),
                s.space.span,
            )
            .label("not a search space")
            .with_secondary(m.name.span, "defined here")
            .help("write choices in its stage lines, like `stage {fused|mbconv} k{3|5} e{1|4|6}`"),
        ),
        Some(_) => {}
    }
    let mut def = SearchDef::default_for(&s.space.name);
    def.name = s.name.name.clone();
    def.span = s.span;
    let mut seen: Vec<(String, Span)> = Vec::new();
    let mut once = |key: &str, span: Span, diags: &mut Vec<Diagnostic>| {
        if let Some((_, first)) = seen.iter().find(|(k, _)| k == key) {
            diags.push(
                Diagnostic::error("effnet::search", format!("`{key}` is given twice"), span)
                    .with_secondary(*first, "first given here"),
            );
        } else {
            seen.push((key.to_string(), span));
        }
    };
    let mut population_span = s.span;
    for stmt in &s.body {
        match &stmt.kind {
            SearchStmtKind::Strategy { kind, args } => {
                once("strategy", stmt.span, diags);
                population_span = stmt.span;
                match kind.name.as_str() {
                    "random" => {
                        def.strategy = Strategy::Random;
                        if let Some(a) = args.first() {
                            diags.push(
                                Diagnostic::error(
                                    "effnet::search",
                                    format!("`random` takes no arguments, not `{}`", a.key.name),
                                    a.span,
                                )
                                .label("not an argument of `random`"),
                            );
                        }
                    }
                    "evolution" => {
                        let (mut population, mut sample) = (8, 3);
                        for a in args {
                            let value = match &a.value {
                                Value::Number(n) => Some(n),
                                Value::Ident(_) => None,
                            };
                            let slot = match a.key.name.as_str() {
                                "population" => &mut population,
                                "sample" => &mut sample,
                                other => {
                                    diags.push(
                                        Diagnostic::error(
                                            "effnet::search",
                                            format!("`evolution` has no argument `{other}`"),
                                            a.key.span,
                                        )
                                        .label("unknown argument")
                                        .help("its arguments are `population` and `sample`"),
                                    );
                                    continue;
                                }
                            };
                            match value {
                                Some(n) => {
                                    if let Some(v) = whole(n, &a.key.name, 1, diags) {
                                        *slot = v;
                                    }
                                }
                                None => diags.push(Diagnostic::error(
                                    "effnet::search",
                                    format!("`{}` must be a number", a.key.name),
                                    a.value.span(),
                                )),
                            }
                        }
                        def.strategy = Strategy::Evolution { population, sample };
                    }
                    other => {
                        let mut d = Diagnostic::error(
                            "effnet::search",
                            format!("unknown search strategy `{other}`"),
                            kind.span,
                        )
                        .label("unknown strategy")
                        .help("the strategies are `random` and `evolution`");
                        if let Some(m) = did_you_mean(other, ["random", "evolution"]) {
                            d = d.help(format!("did you mean `{m}`?"));
                        }
                        diags.push(d);
                    }
                }
            }
            SearchStmtKind::Reward(args) => {
                once("reward", stmt.span, diags);
                let mut exponents = Vec::new();
                for a in args {
                    let Some(metric) = Metric::from_name(&a.key.name) else {
                        diags.push(
                            Diagnostic::error(
                                "effnet::search",
                                format!("the reward has no measure `{}`", a.key.name),
                                a.key.span,
                            )
                            .label("unknown measure")
                            .help("the measures are `step_time`, `params` and `macs`"),
                        );
                        continue;
                    };
                    match &a.value {
                        Value::Number(n) if n.value.is_finite() => {
                            exponents.push((metric, n.value));
                        }
                        v => diags.push(
                            Diagnostic::error(
                                "effnet::search",
                                format!("the exponent of `{}` must be a number", a.key.name),
                                v.span(),
                            )
                            .help("the paper's: `reward(step_time = -0.07, params = -0.05)`"),
                        ),
                    }
                }
                def.reward = Reward { exponents };
            }
            SearchStmtKind::Constraint {
                metric,
                comparison,
                bound,
                relative,
            } => {
                let Some(m) = Metric::from_name(&metric.name) else {
                    diags.push(
                        Diagnostic::error(
                            "effnet::search",
                            format!("no measure named `{}`", metric.name),
                            metric.span,
                        )
                        .label("unknown measure")
                        .help("constraints bound `step_time`, `params` or `macs`"),
                    );
                    continue;
                };
                if !(bound.value.is_finite() && bound.value > 0.0) {
                    diags.push(
                        Diagnostic::error(
                            "effnet::search",
                            format!("a bound must be a positive number, not {}", bound.text),
                            bound.span,
                        )
                        .label("out of range"),
                    );
                    continue;
                }
                def.constraints.push(Constraint {
                    metric: m,
                    inclusive: comparison == "<=",
                    bound: bound.value,
                    relative: *relative,
                    span: stmt.span,
                });
            }
            SearchStmtKind::Base(id) => {
                once("base", stmt.span, diags);
                match models(file).find(|m| m.name.name == id.name) {
                    None => unknown_model(id, diags),
                    Some(m) if Space::of(m).is_some() => diags.push(
                        Diagnostic::error(
                            "effnet::search",
                            format!("the base `{}` is itself a search space", id.name),
                            id.span,
                        )
                        .label("has choices")
                        .help("name a model without choices, or leave `base` out: the space's default candidate is the base"),
                    ),
                    Some(_) => def.base = Some(id.name.clone()),
                }
            }
            SearchStmtKind::Setting { key, value } => {
                if !SETTINGS.contains(&key.name.as_str()) {
                    let mut d = Diagnostic::error(
                        "effnet::search",
                        format!("unknown search setting `{}`", key.name),
                        key.span,
                    )
                    .label("unknown setting")
                    .help(format!(
                        "the settings are {}, and `strategy`, `reward`, `constraint`, `base`",
                        SETTINGS.map(|s| format!("`{s}`")).join(", ")
                    ));
                    if let Some(m) = did_you_mean(&key.name, SETTINGS) {
                        d = d.help(format!("did you mean `{m}`?"));
                    }
                    diags.push(d);
                    continue;
                }
                once(&key.name, stmt.span, diags);
                let SettingValue::Single(n) = value else {
                    diags.push(
                        Diagnostic::error(
                            "effnet::search",
                            format!("`{}` takes one number", key.name),
                            value.span(),
                        )
                        .label("not one number"),
                    );
                    continue;
                };
                let v = whole(n, &format!("`{}`", key.name), 1, diags);
                match key.name.as_str() {
                    "candidates" => def.candidates = v.unwrap_or(def.candidates),
                    "epochs" => def.epochs = v.unwrap_or(def.epochs),
                    "image" => def.image = v,
                    "batch" => def.batch = v,
                    _ => def.images = v,
                }
            }
        }
    }
    if let Strategy::Evolution { population, sample } = def.strategy
        && (sample > population || population < 2)
    {
        diags.push(
            Diagnostic::error(
                "effnet::search",
                format!(
                    "evolution needs a population of 2 at least and a sample no larger than \
                     it, not population {population} and sample {sample}"
                ),
                population_span,
            )
            .help("Real et al. (2019) sample about a quarter of the population"),
        );
    }
    (diags.len() == before).then_some(def)
}

/// What [`check_spaces`] found: the checked searches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Searches {
    pub searches: Vec<SearchDef>,
}

/// Check the choices of every space of `file` and its `search` items, adding what is wrong to
/// `found` (and dropping the models it makes invalid).
pub fn check_spaces(file: &File, found: &mut Findings) {
    let mut diags = Vec::new();
    for m in models(file) {
        let Some(space) = Space::of(m) else { continue };
        let mut own = Vec::new();
        check_choices(&space, &mut own);
        if own.is_empty() {
            check_candidates(file, &space, &found.diagnostics, &mut own);
        }
        diags.extend(own.into_iter().map(|d| d.for_item(&space.model)));
    }
    let mut names: Vec<(&str, Span)> = Vec::new();
    for item in &file.items {
        if let Item::Search(s) = item {
            let mut own = Vec::new();
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == s.name.name) {
                own.push(
                    Diagnostic::error(
                        "effnet::search",
                        format!("search `{}` is defined twice", s.name.name),
                        s.name.span,
                    )
                    .with_secondary(*first, "first defined here"),
                );
            } else {
                names.push((&s.name.name, s.name.span));
            }
            check_search(s, file, &mut own);
            diags.extend(own.into_iter().map(|d| d.for_item(&s.space.name)));
        }
    }
    if diags.is_empty() {
        return;
    }
    found.diagnostics.extend(diags);
    let items = &found.items;
    let diagnostics = &found.diagnostics;
    found
        .models
        .retain(|m| !items.has_error(&m.name, diagnostics));
    let models = &found.models;
    found
        .schedules
        .retain(|s| models.iter().any(|m| m.name == s.model));
}

/// The checked `search` items of a file whose checks passed (see [`check_spaces`]).
pub fn searches(file: &File) -> Vec<SearchDef> {
    let mut diags = Vec::new();
    file.items
        .iter()
        .filter_map(|i| match i {
            Item::Search(s) => check_search(s, file, &mut diags),
            _ => None,
        })
        .collect()
}

/// Each choice on its own: two alternatives at least, none listed twice, ranges in order and
/// of sensible length, names where names go and numbers where numbers go.
fn check_choices(space: &Space, diags: &mut Vec<Diagnostic>) {
    for p in &space.points {
        let texts: Vec<&str> = p.alternatives.iter().map(Alternative::text).collect();
        // The parser keeps only the two ends of an empty or overlong range (each with its own
        // span; a valid range's numbers all point at the whole range).
        if let [Alternative::Number(a), Alternative::Number(b)] = &p.alternatives[..]
            && p.range
            && a.span != b.span
        {
            let why = if a.value > b.value {
                "is empty: its start is after its end".to_string()
            } else {
                format!("has more than {MAX_RANGE_ALTERNATIVES} alternatives")
            };
            diags.push(
                Diagnostic::error(
                    "effnet::choice",
                    format!("the range `{}..{}` {why}", a.text, b.text),
                    p.span,
                )
                .label("invalid range")
                .help("a range `{A..B}` takes A, A+1, ..., B (both ends included)"),
            );
            continue;
        }
        let mut seen = HashSet::new();
        for (alt, text) in p.alternatives.iter().zip(&texts) {
            let key = match alt {
                Alternative::Number(n) => format!("{}", n.value),
                Alternative::Ident(i) => i.name.clone(),
            };
            if !seen.insert(key) {
                diags.push(
                    Diagnostic::error(
                        "effnet::choice",
                        format!("`{text}` is listed twice in this choice"),
                        alt.span(),
                    )
                    .label("listed again")
                    .with_secondary(p.span, "in this choice")
                    .help("each alternative once: a repeated one would be drawn twice as often"),
                );
            }
        }
    }
}

/// Every combination of each line's choices (the other lines at their defaults) checked as an
/// ordinary model: an invalid one is reported with the alternatives that make it.
fn check_candidates(file: &File, space: &Space, known: &[Diagnostic], diags: &mut Vec<Diagnostic>) {
    let mut reported: HashSet<(&'static str, Span, String)> = known
        .iter()
        .map(|d| (d.code, d.primary.span, d.message.clone()))
        .collect();
    let mut lines: Vec<usize> = space.points.iter().map(|p| p.stmt).collect();
    lines.dedup();
    for stmt in lines {
        let idx: Vec<usize> = (0..space.points.len())
            .filter(|&i| space.points[i].stmt == stmt)
            .collect();
        let combos: usize = idx
            .iter()
            .map(|&i| space.points[i].alternatives.len())
            .product();
        let candidates: Vec<Picks> = if combos <= MAX_LINE_COMBINATIONS {
            (0..combos)
                .map(|mut n| {
                    let mut picks = space.default_picks();
                    for &i in &idx {
                        let k = space.points[i].alternatives.len();
                        picks[i] = n % k;
                        n /= k;
                    }
                    picks
                })
                .collect()
        } else {
            idx.iter()
                .flat_map(|&i| {
                    (1..space.points[i].alternatives.len()).map(move |a| {
                        let mut picks = space.default_picks();
                        picks[i] = a;
                        picks
                    })
                })
                .collect()
        };
        for picks in candidates {
            let found = check_concrete(&space.concretize_file(file, &picks));
            for d in found.diagnostics {
                if !d.is_error() || d.item.as_deref() != Some(space.model.as_str()) {
                    continue;
                }
                if !reported.insert((d.code, d.primary.span, d.message.clone())) {
                    continue;
                }
                let chosen: Vec<String> = idx
                    .iter()
                    .map(|&i| space.points[i].written(picks[i]))
                    .collect();
                let mut d = d.help(format!(
                    "the search space `{}` holds this invalid model: {} as `{}`; drop the \
                     alternative, or split the line into two spaces",
                    space.model,
                    space.points[idx[0]].line,
                    chosen.join(" ")
                ));
                for &i in &idx {
                    let p = &space.points[i];
                    if picks[i] != 0 && p.alternatives[picks[i]].span() != d.primary.span {
                        d = d.with_secondary(p.alternatives[picks[i]].span(), "chosen here");
                    }
                }
                diags.push(d);
            }
        }
    }
}

/// The range of a measure over a space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

/// What `check` and `summary` report of a space: its size and the range of parameters and
/// multiply-adds over it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceSummary {
    pub model: String,
    pub size: f64,
    pub choices: usize,
    pub params: Range,
    pub macs: Range,
    /// Every candidate was evaluated (else the ranges come from coordinate search from the
    /// default, the smallest and the largest alternatives: bounds found, not proven).
    pub exact: bool,
    /// Candidates that failed to check while measuring (lines clashing with each other).
    pub invalid: usize,
}

/// Candidate `picks` checked and lowered (with its schedules), or the errors that make it
/// invalid (its lines may clash with each other, which [`check_spaces`] does not try).
pub fn candidate_network(
    file: &File,
    space: &Space,
    picks: &[usize],
) -> Result<crate::ir::Network, Vec<Diagnostic>> {
    let concrete = space.concretize_file(file, picks);
    let found = check_concrete(&concrete);
    let errors: Vec<Diagnostic> = found
        .diagnostics
        .iter()
        .filter(|d| d.is_error() && d.item.as_deref().is_none_or(|i| i == space.model.as_str()))
        .cloned()
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(def) = found.models.iter().find(|m| m.name == space.model) else {
        return Err(Vec::new());
    };
    let schedules: Vec<_> = found
        .schedules
        .iter()
        .filter(|s| s.model == def.name)
        .collect();
    Ok(crate::lower(def, &schedules))
}

/// Parameters and MACs of candidate `picks` at the model's resolution, or `None` when the
/// candidate is not a valid model.
pub fn measure(file: &File, space: &Space, picks: &[usize]) -> Option<(usize, u64)> {
    let net = candidate_network(file, space, picks).ok()?;
    Some((
        net.param_count(),
        crate::analysis::summarize(&net, net.resolution).macs,
    ))
}

/// Size and ranges of `space` (see [`SpaceSummary`]).
pub fn summarize(file: &File, space: &Space) -> SpaceSummary {
    let size = space.size();
    let mut params = Range {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };
    let mut macs = params;
    let mut invalid = 0;
    let mut note = |m: Option<(usize, u64)>| match m {
        Some((p, c)) => {
            params.min = params.min.min(p as f64);
            params.max = params.max.max(p as f64);
            macs.min = macs.min.min(c as f64);
            macs.max = macs.max.max(c as f64);
        }
        None => invalid += 1,
    };
    let exact = size <= MAX_ENUMERATED;
    if exact {
        let n = size as usize;
        for mut k in 0..n {
            let picks: Picks = space
                .points
                .iter()
                .map(|p| {
                    let a = k % p.alternatives.len();
                    k /= p.alternatives.len();
                    a
                })
                .collect();
            note(measure(file, space, &picks));
        }
    } else {
        // Coordinate search: from a start, move each choice to the alternative that lowers
        // (raises) the measure most, until nothing moves. Parameters and MACs grow with
        // kernel, expansion, repeats, width and SE nearly independently per line, so this
        // finds the extremes of such spaces; it is labelled a bound all the same.
        for (measure_index, minimize) in [(0, true), (0, false), (1, true), (1, false)] {
            let key = |m: (usize, u64)| {
                let v = if measure_index == 0 {
                    m.0 as f64
                } else {
                    m.1 as f64
                };
                if minimize { v } else { -v }
            };
            let mut picks = space.default_picks();
            let mut best = measure(file, space, &picks);
            note(best);
            for _pass in 0..4 {
                let mut moved = false;
                for i in 0..space.points.len() {
                    for a in 0..space.points[i].alternatives.len() {
                        if a == picks[i] {
                            continue;
                        }
                        let mut trial = picks.clone();
                        trial[i] = a;
                        let m = measure(file, space, &trial);
                        note(m);
                        if let Some(m) = m
                            && best.is_none_or(|b| key(m) < key(b))
                        {
                            best = Some(m);
                            picks = trial;
                            moved = true;
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }
    SpaceSummary {
        model: space.model.clone(),
        size,
        choices: space.points.len(),
        params,
        macs,
        exact,
        invalid,
    }
}

/// The text of `range` of `source` with the edits inside it applied (edits sorted, disjoint).
fn splice(source: &str, range: Span, edits: &[(Span, String)]) -> String {
    let mut out = String::new();
    let mut at = range.start;
    for (span, text) in edits {
        if span.start < at || span.end > range.end {
            continue;
        }
        out.push_str(&source[at..span.start]);
        out.push_str(text);
        at = span.end;
    }
    out.push_str(&source[at..range.end]);
    out
}

/// Candidate `picks` of `space` as a spec of its own: the space's model with each choice
/// written as the alternative taken, renamed `name`, with `docs` as its doc comment, followed
/// by the space's schedules (now for `name`); formatted as `effnet fmt` writes it, so that
/// `effnet train` takes it as it is. Comments inside the model and schedules are kept.
pub fn candidate_source(
    source: &str,
    file: &File,
    space: &Space,
    picks: &[usize],
    name: &str,
    docs: &[String],
) -> Result<String, String> {
    let model = models(file)
        .find(|m| m.name.name == space.model)
        .ok_or_else(|| format!("no model named `{}`", space.model))?;
    let mut edits: Vec<(Span, String)> = vec![(model.name.span, name.to_string())];
    for (p, &pick) in space.points.iter().zip(picks) {
        let alt = p
            .alternatives
            .get(pick)
            .ok_or_else(|| format!("candidate picks alternative {pick} of `{}`", p.name()))?;
        let drop_se =
            p.target == ChoiceTarget::Se && matches!(alt, Alternative::Number(n) if n.value == 0.0);
        if drop_se {
            // `se {0|0.25}` at 0: the whole option goes.
            let se = model
                .body
                .iter()
                .flatten()
                .nth(p.stmt)
                .and_then(|s| match &s.kind {
                    ModelStmtKind::Stem(l)
                    | ModelStmtKind::Stage(l)
                    | ModelStmtKind::Then(l)
                    | ModelStmtKind::Head(Some(l)) => l.options.iter().find(|o| {
                        matches!(o.kind, LayerOptKind::Se(_))
                            && o.span.start <= p.span.start
                            && p.span.end <= o.span.end
                    }),
                    _ => None,
                });
            if let Some(o) = se {
                edits.push((o.span, String::new()));
                continue;
            }
        }
        edits.push((p.span, alt.text().to_string()));
    }
    edits.sort_by_key(|e| e.0.start);
    // The model from its keyword (its own doc comment is replaced by `docs`).
    let model_start = model.docs.last().map_or(model.span.start, |d| d.span.end);
    let mut text: String = docs.iter().map(|d| format!("/// {d}\n")).collect();
    text.push_str(splice(source, Span::new(model_start, model.span.end), &edits).trim_start());
    for item in &file.items {
        if let Item::Schedule(s) = item
            && s.model.name == space.model
        {
            let renamed = [(s.model.span, name.to_string())];
            text.push_str("\n\n");
            text.push_str(&splice(source, s.span, &renamed));
        }
    }
    text.push('\n');
    crate::format::format_source(&text).map_err(|e| {
        format!(
            "the candidate's spec does not parse ({} at byte {}): a bug in effnet",
            e.message, e.span.start
        )
    })
}
