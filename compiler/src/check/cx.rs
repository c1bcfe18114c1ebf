//! The checker's context: the diagnostics found so far, and the value checks every part of
//! the language shares (numbers in range, activations, `key = value` arguments, settings given
//! twice).

use std::collections::HashMap;

use effnet_grammar::*;

use super::MAX_WHOLE;
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::ir::Activation;

#[derive(Default)]
pub(super) struct Cx {
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The model being checked: every diagnostic pushed meanwhile belongs to it.
    pub(super) item: Option<String>,
}

impl Cx {
    pub(super) fn push(&mut self, mut d: Diagnostic) {
        if d.item.is_none() {
            d.item.clone_from(&self.item);
        }
        self.diagnostics.push(d);
    }

    /// Check `f` as part of `model` (the item its diagnostics belong to), then go back to the
    /// item before: resolving a derived model resolves its base in the middle of it.
    pub(super) fn within_item<T>(&mut self, model: &str, f: impl FnOnce(&mut Cx) -> T) -> T {
        let outer = self.item.replace(model.to_string());
        let out = f(self);
        self.item = outer;
        out
    }

    /// A whole number in `[min, max]`. The upper bounds keep every later product (shapes,
    /// parameter and multiply-add counts) far from overflow.
    pub(super) fn whole(&mut self, n: &Number, what: &str, min: usize) -> Option<usize> {
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
    pub(super) fn within(
        &mut self,
        n: &Number,
        what: &str,
        lo: f64,
        hi: f64,
        hi_open: bool,
    ) -> Option<f64> {
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

    pub(super) fn activation(&mut self, id: &Ident) -> Option<Activation> {
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

    pub(super) fn unknown_key(&mut self, key: &Ident, what: &str, known: &[&str]) {
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
    pub(super) fn kwargs<'a>(
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

    pub(super) fn num_arg<'a>(&mut self, v: &'a Value, key: &str) -> Option<&'a Number> {
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

pub(super) fn duplicate(
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
