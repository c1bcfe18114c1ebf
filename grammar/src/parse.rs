//! Text -> pest pairs -> typed AST. This is the only module that walks pest pairs.

use pest::Parser as _;
use pest::iterators::Pair;
use pest_derive::Parser;

use crate::ast::*;

#[derive(Parser)]
#[grammar = "effnet.pest"]
struct EffnetParser;

/// A syntax error: where, and what the parser expected there.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub span: Span,
    /// One line, e.g. "expected `->` or a layer parameter (`k3`, `e4`, `s2`)".
    pub message: String,
    /// What was found at the error position, for the label.
    pub found: String,
}

/// Parse a whole file into the AST. All syntax problems are reported through the one error pest
/// finds first: after a syntax error the rest of the file cannot be trusted.
pub fn parse(source: &str) -> Result<File, ParseError> {
    let mut pairs =
        EffnetParser::parse(Rule::file, source).map_err(|e| convert_error(source, e))?;
    // `file` always produces exactly one pair when parsing succeeds.
    let Some(file) = pairs.next() else {
        return Ok(File {
            items: vec![],
            comments: vec![],
        });
    };
    let mut comments = Vec::new();
    for p in file.clone().into_inner().flatten() {
        if p.as_rule() == Rule::COMMENT {
            let text = p.as_str().trim_start_matches("//").to_string();
            comments.push(Comment {
                text,
                span: span(&p),
            });
        }
    }
    let mut items = Vec::new();
    for p in children(file) {
        match p.as_rule() {
            Rule::model => items.push(Item::Model(model(p))),
            Rule::schedule => items.push(Item::Schedule(schedule(p))),
            Rule::search => items.push(Item::Search(search(p))),
            _ => {}
        }
    }
    Ok(File { items, comments })
}

fn span(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

/// Inner pairs without comments and keyword tokens, which carry no data.
fn children(p: Pair<Rule>) -> impl Iterator<Item = Pair<Rule>> {
    p.into_inner()
        .filter(|c| !matches!(c.as_rule(), Rule::COMMENT | Rule::EOI) && !is_keyword(c.as_rule()))
}

fn is_keyword(rule: Rule) -> bool {
    matches!(rule, Rule::arrow) || format!("{rule:?}").starts_with("kw_")
}

fn ident(p: Pair<Rule>) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span(&p),
    }
}

fn number(p: Pair<Rule>) -> Number {
    let text = p.as_str().to_string();
    // The grammar admits only digits, one dot and an exponent, which f64 parsing accepts;
    // a huge literal parses to infinity, which the checks reject with its span.
    let value = text.parse::<f64>().unwrap_or(f64::NAN);
    Number {
        value,
        text,
        span: span(&p),
    }
}

fn docs_and_rest(p: Pair<Rule>) -> (Vec<Doc>, Vec<Pair<Rule>>) {
    let mut docs = Vec::new();
    let mut rest = Vec::new();
    for c in children(p) {
        if c.as_rule() == Rule::doc {
            let sp = span(&c);
            let text = c
                .into_inner()
                .next()
                .map(|t| t.as_str())
                .unwrap_or("")
                .trim_end();
            let text = text.strip_prefix(' ').unwrap_or(text).to_string();
            docs.push(Doc { text, span: sp });
        } else {
            rest.push(c);
        }
    }
    (docs, rest)
}

fn model(p: Pair<Rule>) -> Model {
    let sp = span(&p);
    let (docs, rest) = docs_and_rest(p);
    let mut name = None;
    let mut derivation = None;
    let mut body = None;
    for c in rest {
        match c.as_rule() {
            Rule::ident => name = Some(ident(c)),
            Rule::derivation => {
                let dsp = span(&c);
                let mut base = None;
                let mut scale = Vec::new();
                for d in children(c) {
                    match d.as_rule() {
                        Rule::ident => base = Some(ident(d)),
                        Rule::scale_arg => scale.push(scale_arg(d)),
                        _ => {}
                    }
                }
                derivation = base.map(|base| Derivation {
                    base,
                    scale,
                    span: dsp,
                });
            }
            Rule::model_body => body = Some(children(c).map(model_stmt).collect()),
            _ => {}
        }
    }
    Model {
        docs,
        // The grammar requires the name; an empty one can only come from a grammar change.
        name: name.unwrap_or(Ident {
            name: String::new(),
            span: sp,
        }),
        derivation,
        body,
        span: sp,
    }
}

fn scale_arg(p: Pair<Rule>) -> ScaleArg {
    let sp = span(&p);
    let mut key = Ident {
        name: String::new(),
        span: sp,
    };
    let mut value = ScaleValue::Tuple(vec![]);
    for c in children(p) {
        match c.as_rule() {
            Rule::scale_key => key = ident(c),
            Rule::number => value = ScaleValue::Number(number(c)),
            Rule::tuple => value = ScaleValue::Tuple(children(c).map(number).collect()),
            _ => {}
        }
    }
    ScaleArg {
        key,
        value,
        span: sp,
    }
}

fn kwargs(p: Pair<Rule>) -> Vec<KwArg> {
    children(p)
        .map(|kw| {
            let sp = span(&kw);
            let mut it = children(kw);
            let key = it.next().map(ident).unwrap_or(Ident {
                name: String::new(),
                span: sp,
            });
            let value = match it.next() {
                Some(v) if v.as_rule() == Rule::number => Value::Number(number(v)),
                Some(v) => Value::Ident(ident(v)),
                None => Value::Ident(Ident {
                    name: String::new(),
                    span: sp,
                }),
            };
            KwArg {
                key,
                value,
                span: sp,
            }
        })
        .collect()
}

fn model_stmt(p: Pair<Rule>) -> ModelStmt {
    let sp = span(&p);
    let (docs, rest) = docs_and_rest(p);
    let kind = rest
        .into_iter()
        .next()
        .map(model_stmt_kind)
        .unwrap_or(ModelStmtKind::Head(None));
    ModelStmt {
        docs,
        kind,
        span: sp,
    }
}

fn numbers(p: Pair<Rule>) -> Vec<Number> {
    children(p)
        .filter(|c| c.as_rule() == Rule::number)
        .map(number)
        .collect()
}

fn first_ident(p: Pair<Rule>) -> Ident {
    let sp = span(&p);
    children(p)
        .find(|c| c.as_rule() == Rule::ident)
        .map(ident)
        .unwrap_or(Ident {
            name: String::new(),
            span: sp,
        })
}

fn prune_arg(p: Pair<Rule>) -> PruneArg {
    let sp = span(&p);
    let mut key = None;
    let mut values = Vec::new();
    let mut list = false;
    for c in children(p) {
        match c.as_rule() {
            Rule::ident => key = Some(ident(c)),
            Rule::number => values.push(number(c)),
            Rule::tuple => {
                list = true;
                values.extend(children(c).map(number));
            }
            _ => {}
        }
    }
    PruneArg {
        key: key.unwrap_or(Ident {
            name: String::new(),
            span: sp,
        }),
        values,
        list,
        span: sp,
    }
}

fn first_number(p: Pair<Rule>) -> Number {
    let sp = span(&p);
    numbers(p).into_iter().next().unwrap_or(Number {
        value: f64::NAN,
        text: String::new(),
        span: sp,
    })
}

fn model_stmt_kind(p: Pair<Rule>) -> ModelStmtKind {
    match p.as_rule() {
        Rule::input => {
            let mut n = numbers(p).into_iter();
            let channels = n.next();
            let resolution = n.next();
            let train = n.next();
            match (channels, resolution) {
                (Some(channels), Some(resolution)) => ModelStmtKind::Input {
                    channels,
                    resolution,
                    train,
                },
                _ => ModelStmtKind::Head(None),
            }
        }
        Rule::classes => ModelStmtKind::Classes(first_number(p)),
        Rule::activation => ModelStmtKind::Activation(first_ident(p)),
        Rule::norm => {
            let mut kind = None;
            let mut args = Vec::new();
            let sp = span(&p);
            for c in children(p) {
                match c.as_rule() {
                    Rule::ident => kind = Some(ident(c)),
                    Rule::kwargs => args = kwargs(c),
                    _ => {}
                }
            }
            ModelStmtKind::Norm {
                kind: kind.unwrap_or(Ident {
                    name: String::new(),
                    span: sp,
                }),
                args,
            }
        }
        Rule::padding => ModelStmtKind::Padding(first_ident(p)),
        Rule::output_stride => ModelStmtKind::OutputStride(first_number(p)),
        Rule::antialias => ModelStmtKind::Antialias(first_ident(p)),
        Rule::attention => ModelStmtKind::Attention(first_ident(p)),
        Rule::group_size => ModelStmtKind::GroupSize(first_number(p)),
        Rule::dropout => ModelStmtKind::Dropout(first_number(p)),
        Rule::drop_path => ModelStmtKind::DropPath(first_number(p)),
        Rule::round => {
            // `round channels(...)` keeps its kwargs; `round depth MODE` its mode.
            let is_channels = p
                .clone()
                .into_inner()
                .any(|c| c.as_rule() == Rule::kw_channels);
            if is_channels {
                ModelStmtKind::RoundChannels(
                    children(p)
                        .find(|c| c.as_rule() == Rule::kwargs)
                        .map(kwargs)
                        .unwrap_or_default(),
                )
            } else {
                ModelStmtKind::RoundDepth(first_ident(p))
            }
        }
        Rule::normalize => {
            let mut tuples = children(p).filter(|c| c.as_rule() == Rule::tuple);
            let mean = tuples.next().map(numbers).unwrap_or_default();
            let std = tuples.next().map(numbers).unwrap_or_default();
            ModelStmtKind::Normalize { mean, std }
        }
        Rule::scale => ModelStmtKind::Scale(
            children(p)
                .filter(|c| c.as_rule() == Rule::scale_arg)
                .map(scale_arg)
                .collect(),
        ),
        Rule::stem => ModelStmtKind::Stem(layer(p)),
        Rule::stage => ModelStmtKind::Stage(layer(p)),
        Rule::then_stage => ModelStmtKind::Then(layer(p)),
        Rule::head => {
            let is_none = p.clone().into_inner().any(|c| c.as_rule() == Rule::none);
            if is_none {
                ModelStmtKind::Head(None)
            } else {
                ModelStmtKind::Head(Some(layer(p)))
            }
        }
        _ => ModelStmtKind::Head(None),
    }
}

fn layer(p: Pair<Rule>) -> Layer {
    let sp = span(&p);
    let mut kind = None;
    let mut params = Vec::new();
    let mut channels = None;
    let mut options = Vec::new();
    let mut choices = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::ident => kind = Some(ident(c)),
            Rule::name_choice => {
                let choice = Choice {
                    target: ChoiceTarget::Kind,
                    alternatives: children(c.clone())
                        .map(|a| Alternative::Ident(ident(a)))
                        .collect(),
                    range: false,
                    span: span(&c),
                };
                kind = choice.alternatives.first().and_then(|a| match a {
                    Alternative::Ident(i) => Some(i.clone()),
                    Alternative::Number(_) => None,
                });
                choices.push(choice);
            }
            Rule::layer_param => {
                let psp = span(&c);
                let mut letter = ' ';
                let mut values = Vec::new();
                for q in c.into_inner() {
                    match q.as_rule() {
                        Rule::param_letter | Rule::kernel_letter => {
                            letter = q.as_str().chars().next().unwrap_or(' ')
                        }
                        Rule::number => values.push(number(q)),
                        // Each kernel of a list is a number of its own, with its own span.
                        Rule::kernels => values.extend(q.into_inner().map(number)),
                        Rule::num_choice => values.extend(number_choice(
                            q,
                            ChoiceTarget::Param(letter),
                            &mut choices,
                        )),
                        _ => {}
                    }
                }
                if !values.is_empty() {
                    params.push(LayerParam {
                        letter,
                        values,
                        span: psp,
                    });
                }
            }
            Rule::number => channels = Some(number(c)),
            Rule::num_choice => channels = number_choice(c, ChoiceTarget::Channels, &mut choices),
            Rule::layer_opt => {
                if let Some(o) = c.into_inner().next() {
                    let osp = span(&o);
                    let kind = match o.as_rule() {
                        Rule::repeats => LayerOptKind::Repeats(option_number(
                            o,
                            ChoiceTarget::Repeats,
                            &mut choices,
                        )),
                        Rule::se => {
                            LayerOptKind::Se(option_number(o, ChoiceTarget::Se, &mut choices))
                        }
                        Rule::skip => LayerOptKind::Skip,
                        Rule::noskip => LayerOptKind::NoSkip,
                        Rule::act => LayerOptKind::Act(first_ident(o)),
                        Rule::depth => LayerOptKind::Depth(first_number(o)),
                        Rule::fc => LayerOptKind::ForceIn(first_number(o)),
                        Rule::gs => LayerOptKind::GroupSize(first_number(o)),
                        Rule::s2d => LayerOptKind::SpaceToDepth,
                        Rule::prune => LayerOptKind::Prune(children(o).map(prune_arg).collect()),
                        Rule::cc => LayerOptKind::Experts(first_number(o)),
                        _ => LayerOptKind::Fixed,
                    };
                    options.push(LayerOpt { kind, span: osp });
                }
            }
            _ => {}
        }
    }
    Layer {
        kind: kind.unwrap_or(Ident {
            name: String::new(),
            span: sp,
        }),
        params,
        channels: channels.unwrap_or(Number {
            value: f64::NAN,
            text: String::new(),
            span: sp,
        }),
        options,
        choices,
    }
}

/// A `num_choice` pair: records the choice and returns its first alternative, which stands
/// for the value in the layer's fields.
fn number_choice(p: Pair<Rule>, target: ChoiceTarget, choices: &mut Vec<Choice>) -> Option<Number> {
    let sp = span(&p);
    let mut alternatives = Vec::new();
    let mut range = false;
    for c in children(p) {
        match c.as_rule() {
            Rule::number => alternatives.push(Alternative::Number(number(c))),
            Rule::choice_range => {
                range = true;
                let ends: Vec<(usize, Span)> = c
                    .into_inner()
                    .filter(|i| i.as_rule() == Rule::index)
                    .map(|i| (i.as_str().parse::<usize>().unwrap_or(usize::MAX), span(&i)))
                    .collect();
                if let [(a, a_sp), (b, b_sp)] = ends[..] {
                    // Each number of the range points at the whole range `A..B`; an empty or
                    // huge range is the checker's to report (it sees `range` and the ends).
                    let whole = a_sp.to(b_sp);
                    let count = b.saturating_sub(a).saturating_add(1);
                    if a <= b && count <= crate::MAX_RANGE_ALTERNATIVES {
                        for v in a..=b {
                            alternatives.push(Alternative::Number(Number {
                                value: v as f64,
                                text: v.to_string(),
                                span: whole,
                            }));
                        }
                    } else {
                        for (v, s) in [(a, a_sp), (b, b_sp)] {
                            alternatives.push(Alternative::Number(Number {
                                value: v as f64,
                                text: v.to_string(),
                                span: s,
                            }));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let first = alternatives.first().and_then(|a| match a {
        Alternative::Number(n) => Some(n.clone()),
        Alternative::Ident(_) => None,
    });
    choices.push(Choice {
        target,
        alternatives,
        range,
        span: sp,
    });
    first
}

/// The number of `x4` or `se 0.25`, or the first alternative of its choice.
fn option_number(p: Pair<Rule>, target: ChoiceTarget, choices: &mut Vec<Choice>) -> Number {
    let sp = span(&p);
    for c in children(p.clone()) {
        match c.as_rule() {
            Rule::number => return number(c),
            Rule::num_choice => {
                if let Some(n) = number_choice(c, target, choices) {
                    return n;
                }
            }
            _ => {}
        }
    }
    Number {
        value: f64::NAN,
        text: String::new(),
        span: sp,
    }
}

fn schedule(p: Pair<Rule>) -> Schedule {
    let sp = span(&p);
    let (docs, rest) = docs_and_rest(p);
    let mut idents = Vec::new();
    let mut body = Vec::new();
    for c in rest {
        match c.as_rule() {
            Rule::ident => idents.push(ident(c)),
            Rule::schedule_body => body = children(c).map(schedule_stmt).collect(),
            _ => {}
        }
    }
    // `schedule MODEL {}` or `schedule NAME for MODEL {}`.
    let (name, model) = match idents.len() {
        2 => {
            let model = idents.pop();
            (idents.pop(), model)
        }
        _ => (None, idents.pop()),
    };
    Schedule {
        docs,
        name,
        model: model.unwrap_or(Ident {
            name: String::new(),
            span: sp,
        }),
        body,
        span: sp,
    }
}

fn schedule_stmt(p: Pair<Rule>) -> ScheduleStmt {
    let sp = span(&p);
    let (docs, rest) = docs_and_rest(p);
    let kind = match rest.into_iter().next() {
        Some(c) => match c.as_rule() {
            Rule::interpolate => ScheduleStmtKind::Interpolate(first_ident(c)),
            Rule::optimizer => {
                let mut kind = None;
                let mut args = Vec::new();
                for q in children(c) {
                    match q.as_rule() {
                        Rule::ident => kind = Some(ident(q)),
                        Rule::kwargs => args = kwargs(q),
                        _ => {}
                    }
                }
                ScheduleStmtKind::Optimizer {
                    kind: kind.unwrap_or(Ident {
                        name: String::new(),
                        span: sp,
                    }),
                    args,
                }
            }
            Rule::lr => {
                let mut nums = Vec::new();
                let mut decay = None;
                for q in children(c) {
                    match q.as_rule() {
                        Rule::number => nums.push(number(q)),
                        Rule::decay => {
                            let dsp = span(&q);
                            let mut kind = None;
                            let mut args = Vec::new();
                            for r in children(q) {
                                match r.as_rule() {
                                    Rule::decay_kind => kind = Some(ident(r)),
                                    Rule::kwargs => args = kwargs(r),
                                    _ => {}
                                }
                            }
                            decay = kind.map(|kind| Decay {
                                kind,
                                args,
                                span: dsp,
                            });
                        }
                        _ => {}
                    }
                }
                let mut nums = nums.into_iter();
                let peak = nums.next().unwrap_or(Number {
                    value: f64::NAN,
                    text: String::new(),
                    span: sp,
                });
                ScheduleStmtKind::Lr {
                    peak,
                    warmup: nums.next(),
                    decay,
                }
            }
            Rule::freeze => {
                let (parts, mut nums) = parts_and_numbers(c);
                ScheduleStmtKind::Freeze {
                    parts,
                    epochs: nums.pop(),
                }
            }
            Rule::lr_scale => {
                let (parts, mut nums) = parts_and_numbers(c);
                ScheduleStmtKind::LrScale {
                    parts,
                    scale: nums.pop().unwrap_or(Number {
                        value: f64::NAN,
                        text: String::new(),
                        span: sp,
                    }),
                }
            }
            _ => setting(c),
        },
        None => ScheduleStmtKind::Interpolate(Ident {
            name: String::new(),
            span: sp,
        }),
    };
    ScheduleStmt {
        docs,
        kind,
        span: sp,
    }
}

/// The parts of a `freeze` or `lr_scale` (statement or flag), and the numbers after them.
fn parts_and_numbers(p: Pair<Rule>) -> (Vec<Part>, Vec<Number>) {
    let mut parts = Vec::new();
    let mut nums = Vec::new();
    for c in children(p) {
        match c.as_rule() {
            Rule::parts => parts = children(c).filter_map(part).collect(),
            Rule::number => nums.push(number(c)),
            _ => {}
        }
    }
    (parts, nums)
}

fn part(p: Pair<Rule>) -> Option<Part> {
    let c = children(p).next()?;
    match c.as_rule() {
        // `stem` and `head` are keywords, which `children` leaves out: the rule's own text.
        Rule::part_name => Some(Part::Named(Ident {
            name: c.as_str().to_string(),
            span: span(&c),
        })),
        Rule::part_stages => {
            let range = children(c).find(|r| r.as_rule() == Rule::stage_range)?;
            let sp = span(&range);
            let mut idx = children(range).map(number);
            Some(Part::Stages {
                from: idx.next()?,
                to: idx.next(),
                span: sp,
            })
        }
        _ => None,
    }
}

/// Parse the text of `effnet train --freeze` (`stem, stages 0..3 for 2 epochs`).
pub fn parse_freeze_flag(text: &str) -> Result<FreezeFlag, ParseError> {
    let mut pairs =
        EffnetParser::parse(Rule::freeze_flag, text).map_err(|e| convert_error(text, e))?;
    let (parts, mut nums) = match pairs.next() {
        Some(p) => parts_and_numbers(p),
        None => (Vec::new(), Vec::new()),
    };
    Ok(FreezeFlag {
        parts,
        epochs: nums.pop(),
    })
}

/// Parse the text of `effnet train --lr-scale` (`backbone 0.1`).
pub fn parse_lr_scale_flag(text: &str) -> Result<LrScaleFlag, ParseError> {
    let mut pairs =
        EffnetParser::parse(Rule::lr_scale_flag, text).map_err(|e| convert_error(text, e))?;
    let (parts, mut nums) = match pairs.next() {
        Some(p) => parts_and_numbers(p),
        None => (Vec::new(), Vec::new()),
    };
    let scale = nums.pop().unwrap_or(Number {
        value: f64::NAN,
        text: String::new(),
        span: Span::new(0, text.len()),
    });
    Ok(LrScaleFlag { parts, scale })
}

fn search(p: Pair<Rule>) -> Search {
    let sp = span(&p);
    let (docs, rest) = docs_and_rest(p);
    let mut idents = Vec::new();
    let mut body = Vec::new();
    for c in rest {
        match c.as_rule() {
            Rule::ident => idents.push(ident(c)),
            Rule::search_body => body = children(c).map(search_stmt).collect(),
            _ => {}
        }
    }
    let empty = Ident {
        name: String::new(),
        span: sp,
    };
    let mut idents = idents.into_iter();
    Search {
        docs,
        name: idents.next().unwrap_or(empty.clone()),
        space: idents.next().unwrap_or(empty),
        body,
        span: sp,
    }
}

fn search_stmt(p: Pair<Rule>) -> SearchStmt {
    let sp = span(&p);
    let (docs, rest) = docs_and_rest(p);
    let empty = Ident {
        name: String::new(),
        span: sp,
    };
    let kind = match rest.into_iter().next() {
        Some(c) => match c.as_rule() {
            Rule::strategy => {
                let mut kind = empty.clone();
                let mut args = Vec::new();
                for d in children(c) {
                    match d.as_rule() {
                        Rule::ident => kind = ident(d),
                        Rule::kwargs => args = kwargs(d),
                        _ => {}
                    }
                }
                SearchStmtKind::Strategy { kind, args }
            }
            Rule::reward => SearchStmtKind::Reward(
                children(c)
                    .filter(|d| d.as_rule() == Rule::reward_arg)
                    .map(|a| {
                        let asp = span(&a);
                        let mut key = empty.clone();
                        let mut value = Value::Ident(empty.clone());
                        for d in children(a) {
                            match d.as_rule() {
                                Rule::ident => key = ident(d),
                                Rule::signed => value = Value::Number(number(d)),
                                _ => {}
                            }
                        }
                        KwArg {
                            key,
                            value,
                            span: asp,
                        }
                    })
                    .collect(),
            ),
            Rule::constraint => {
                let mut metric = empty.clone();
                let mut comparison = String::new();
                let mut bound = None;
                let mut relative = false;
                for d in c.into_inner() {
                    match d.as_rule() {
                        Rule::ident => metric = ident(d),
                        Rule::comparison => comparison = d.as_str().to_string(),
                        Rule::number => bound = Some(number(d)),
                        Rule::kw_base => relative = true,
                        _ => {}
                    }
                }
                SearchStmtKind::Constraint {
                    metric,
                    comparison,
                    bound: bound.unwrap_or(Number {
                        value: f64::NAN,
                        text: String::new(),
                        span: sp,
                    }),
                    relative,
                }
            }
            Rule::search_base => SearchStmtKind::Base(first_ident(c)),
            _ => match setting(c) {
                ScheduleStmtKind::Setting { key, value } => SearchStmtKind::Setting { key, value },
                _ => SearchStmtKind::Base(empty),
            },
        },
        None => SearchStmtKind::Base(empty),
    };
    SearchStmt {
        docs,
        kind,
        span: sp,
    }
}

fn setting(p: Pair<Rule>) -> ScheduleStmtKind {
    let sp = span(&p);
    let mut key = Ident {
        name: String::new(),
        span: sp,
    };
    let mut value = SettingValue::List(vec![]);
    for c in children(p) {
        match c.as_rule() {
            Rule::ident => key = ident(c),
            Rule::number => value = SettingValue::Single(number(c)),
            Rule::range => {
                let mut n = numbers(c).into_iter();
                if let (Some(a), Some(b)) = (n.next(), n.next()) {
                    value = SettingValue::Range(a, b);
                }
            }
            Rule::list => value = SettingValue::List(numbers(c)),
            _ => {}
        }
    }
    ScheduleStmtKind::Setting { key, value }
}

/// How a rule is named in "expected ..." messages.
fn rule_display(rule: Rule) -> String {
    let name = format!("{rule:?}");
    if let Some(kw) = name.strip_prefix("kw_") {
        return format!("`{kw}`");
    }
    match rule {
        Rule::EOI => "end of file".into(),
        Rule::ident => "a name".into(),
        Rule::number => "a number".into(),
        Rule::tuple => "a list of numbers in parentheses".into(),
        Rule::kwarg | Rule::kwargs => "arguments in parentheses, like `(eps = 1e-3)`".into(),
        Rule::doc => "a doc comment".into(),
        Rule::model => "`model`".into(),
        Rule::schedule => "`schedule`".into(),
        Rule::search => "`search`".into(),
        Rule::search_body => "`{`".into(),
        Rule::search_stmt => {
            "a search statement (`strategy`, `candidates`, `epochs`, `image`, `reward`, \
             `constraint`, `base`)"
                .into()
        }
        Rule::name_choice | Rule::num_choice => {
            "a choice like `{fused|mbconv}`, `{3|5}` or `{1..4}`".into()
        }
        Rule::choice_range => "a range like `1..4`".into(),
        Rule::comparison => "`<` or `<=`".into(),
        Rule::reward_arg => "a measure and its exponent, like `step_time = -0.07`".into(),
        Rule::signed => "a number (exponents may be negative)".into(),
        Rule::times => "`*`".into(),
        Rule::derivation => "`=` (a model derived from another)".into(),
        Rule::parts | Rule::part | Rule::part_name | Rule::part_stages => {
            "a part (`stem`, `stages 0..3`, `head`, `classifier`, `backbone`)".into()
        }
        Rule::stage_range | Rule::index => "a stage index or range like `0..3`".into(),
        Rule::model_body | Rule::schedule_body => "`{`".into(),
        Rule::model_stmt => {
            "a model statement (`input`, `classes`, `stem`, `stage`, `head`, ...)".into()
        }
        Rule::schedule_stmt => {
            "a schedule statement (`epochs`, `stages`, `image 128 -> 300`, ...)".into()
        }
        Rule::scale_arg | Rule::scale_key => "`width`, `depth`, `stages` or `experts`".into(),
        Rule::layer_param | Rule::param_letter | Rule::kernel_letter => {
            "a layer parameter (`k3` kernel, `e4` expansion, `s2` stride)".into()
        }
        Rule::kernels | Rule::kernel => "kernel sizes like `3` or `3.5.7`".into(),
        Rule::arrow => "`->`".into(),
        Rule::layer_opt => {
            "a stage option (`x2`, `se 0.25`, `skip`, `noskip`, `act`, `depth`, `fc`, `gs`, `s2d`, `prune`, `cc`)"
                .into()
        }
        Rule::repeats => "repeats like `x2`".into(),
        Rule::none => "`none`".into(),
        Rule::range => "a range like `128 -> 300`".into(),
        Rule::list => "a list like `[1, 2]`".into(),
        Rule::decay | Rule::decay_kind => "`exponential`, `cosine` or `constant`".into(),
        Rule::skip => "`skip`".into(),
        Rule::noskip => "`noskip`".into(),
        Rule::fixed => "`fixed`".into(),
        _ => format!("`{}`", name.replace('_', " ")),
    }
}

fn convert_error(source: &str, e: pest::error::Error<Rule>) -> ParseError {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // The offending token: the run of non-space characters at the position.
    let tail = source.get(start..).unwrap_or("");
    let token: String = tail
        .chars()
        .take_while(|c| !c.is_whitespace())
        .take(30)
        .collect();
    let end = if end > start {
        end
    } else {
        start + token.len()
    };
    let message = match &e.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => {
            let mut expected: Vec<String> = positives
                .iter()
                .filter(|r| !matches!(r, Rule::WHITESPACE | Rule::COMMENT))
                .map(|r| rule_display(*r))
                .collect();
            expected.dedup();
            let mut seen = std::collections::HashSet::new();
            expected.retain(|s| seen.insert(s.clone()));
            if !expected.is_empty() {
                format!("expected {}", join_or(&expected))
            } else if !negatives.is_empty() {
                let names: Vec<String> = negatives.iter().map(|r| rule_display(*r)).collect();
                format!("unexpected {}", join_or(&names))
            } else {
                "syntax error".into()
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let found = if token.is_empty() {
        "end of file".to_string()
    } else {
        format!("found `{token}`")
    };
    ParseError {
        span: Span::new(start, end.min(source.len()).max(start)),
        message,
        found,
    }
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}
