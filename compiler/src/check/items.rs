//! Which diagnostics concern which model: a model is concerned by its own diagnostics (its
//! schedules' included) and by those of the models it is derived from, since it inherits their
//! settings. This is what lets a command report only the model it uses, and drop the warnings
//! of a model with errors (computed from what is left of it, they would mislead).

use effnet_grammar::{File, Item};

use crate::diagnostic::Diagnostic;

/// The models of a file and the models each one depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Items {
    /// Every model in source order (a name defined twice once), with its lineage: itself, the
    /// model it is derived from, that one's base, and so on (a cycle stops where it repeats).
    lineages: Vec<(String, Vec<String>)>,
}

impl Items {
    pub fn of(file: &File) -> Items {
        let mut bases: Vec<(&str, Option<&str>)> = Vec::new();
        for item in &file.items {
            if let Item::Model(m) = item
                && !bases.iter().any(|(n, _)| *n == m.name.name)
            {
                bases.push((&m.name.name, m.derivation.as_ref().map(|d| &*d.base.name)));
            }
        }
        let base_of = |name: &str| bases.iter().find(|(n, _)| *n == name).and_then(|b| b.1);
        let lineages = bases
            .iter()
            .map(|(name, _)| {
                let mut lineage = vec![name.to_string()];
                let mut next = base_of(name);
                while let Some(base) = next {
                    if lineage.iter().any(|n| n == base) {
                        break;
                    }
                    lineage.push(base.to_string());
                    next = base_of(base);
                }
                (name.to_string(), lineage)
            })
            .collect();
        Items { lineages }
    }

    /// The models, in source order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.lineages.iter().map(|(n, _)| n.as_str())
    }

    /// Whether `d` concerns `model`: it belongs to the model, to one it is derived from, or to
    /// the file as a whole. (A name that is no model, as a schedule's unknown model, is its
    /// own lineage.)
    pub fn concerns(&self, model: &str, d: &Diagnostic) -> bool {
        let Some(item) = d.item.as_deref() else {
            return true;
        };
        match self.lineages.iter().find(|(n, _)| n == model) {
            Some((_, lineage)) => lineage.iter().any(|n| n == item),
            None => item == model,
        }
    }

    /// Whether `model` has an error of its own or inherits one.
    pub fn has_error(&self, model: &str, diagnostics: &[Diagnostic]) -> bool {
        diagnostics
            .iter()
            .any(|d| d.is_error() && self.concerns(model, d))
    }

    /// The diagnostics without the warnings of models (or of a file) that have errors.
    pub fn without_cascades(&self, diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
        let broken: Vec<Option<String>> = diagnostics
            .iter()
            .map(|d| d.item.clone())
            .filter(|item| match item {
                Some(model) => self.has_error(model, &diagnostics),
                None => diagnostics.iter().any(|d| d.is_error() && d.item.is_none()),
            })
            .collect();
        diagnostics
            .into_iter()
            .filter(|d| d.is_error() || !broken.contains(&d.item))
            .collect()
    }
}
