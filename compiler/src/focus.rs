//! A file compiled model by model, for commands that use one model: the model's own errors stop
//! them, errors elsewhere in the file do not, and only what concerns the model is shown
//! (`effnet check` still shows everything).

use crate::check::{Items, check_each};
use crate::diagnostic::Diagnostic;
use crate::{ir, lower, parse, parse_error_diagnostic};

/// A file compiled model by model.
#[derive(Debug, Clone)]
pub struct Compilation {
    /// Every diagnostic of the file (the warnings of a model with errors left out).
    pub diagnostics: Vec<Diagnostic>,
    /// The networks of the models without errors, in source order.
    pub networks: Vec<ir::Network>,
    items: Items,
}

/// The model a command uses, and what the file says about it.
#[derive(Debug)]
pub struct Chosen<'a> {
    pub network: &'a ir::Network,
    /// Its warnings (a model with errors is refused).
    pub warnings: Vec<&'a Diagnostic>,
    /// How many errors the file has in other models.
    pub errors_elsewhere: usize,
}

/// Why no model can be used.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The model (`None`: the file, as with a syntax error) has errors, shown by `diagnostics`.
    Errors {
        model: Option<String>,
        diagnostics: Vec<Diagnostic>,
    },
    NoSuchModel {
        name: String,
        models: Vec<String>,
    },
    NoModel,
    SeveralModels {
        models: Vec<String>,
    },
}

impl Refusal {
    /// The diagnostics to show before the message.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Refusal::Errors { diagnostics, .. } => diagnostics,
            _ => &[],
        }
    }

    /// One line for the user: `file` as the user named it, `how_to_choose` the way to name a
    /// model (`with --model`, `with name = "..."`).
    pub fn message(&self, file: &str, how_to_choose: &str) -> String {
        let list = |models: &[String]| {
            if models.is_empty() {
                "none".to_string()
            } else {
                models
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        match self {
            Refusal::Errors { model, diagnostics } => {
                let errors = diagnostics.iter().filter(|d| d.is_error());
                let n = errors.clone().count();
                let s = if n == 1 { "" } else { "s" };
                let Some(m) = model else {
                    return format!("`{file}` has {n} error{s}");
                };
                // Name where the errors are: the model, or the models it is derived from.
                let mut bases: Vec<String> = Vec::new();
                for item in errors.clone().filter_map(|d| d.item.as_ref()) {
                    if item != m && !bases.contains(item) {
                        bases.push(item.clone());
                    }
                }
                let own = errors.clone().any(|d| d.item.as_ref() == Some(m));
                let bases = list(&bases).replace(", ", " and ");
                match (own, bases.as_str()) {
                    (_, "none") => format!("`{file}` has {n} error{s} in model `{m}`"),
                    (false, _) => format!(
                        "`{file}` has {n} error{s} in {bases}, which model `{m}` is derived from"
                    ),
                    (true, _) => format!(
                        "`{file}` has {n} error{s} in model `{m}` and in {bases}, which it is \
                         derived from"
                    ),
                }
            }
            Refusal::NoSuchModel { name, models } => {
                format!(
                    "`{file}` has no model named `{name}`; it defines {}",
                    list(models)
                )
            }
            Refusal::NoModel => format!("`{file}` defines no model"),
            Refusal::SeveralModels { models } => format!(
                "`{file}` defines several models ({}); choose one {how_to_choose}",
                list(models)
            ),
        }
    }
}

/// Parse, check and lower `source` model by model. Never fails: what went wrong is in the
/// diagnostics, and [`Compilation::choose`] refuses a model they concern.
pub fn compile_each(source: &str) -> Compilation {
    let file = match parse(source) {
        Ok(file) => file,
        Err(e) => {
            return Compilation {
                diagnostics: vec![parse_error_diagnostic(&e)],
                networks: Vec::new(),
                items: Items::default(),
            };
        }
    };
    let found = check_each(&file);
    let networks = found
        .models
        .iter()
        .map(|m| {
            let schedules: Vec<_> = found
                .schedules
                .iter()
                .filter(|s| s.model == m.name)
                .collect();
            lower(m, &schedules)
        })
        .collect();
    Compilation {
        diagnostics: found.diagnostics,
        networks,
        items: found.items,
    }
}

impl Compilation {
    /// The models the file defines, with errors or not, in source order.
    pub fn model_names(&self) -> Vec<String> {
        self.items.names().map(str::to_string).collect()
    }

    /// The diagnostics that concern `model`: its own (its schedules' included), those of the
    /// models it is derived from, and those of the file as a whole.
    pub fn diagnostics_for(&self, model: &str) -> Vec<&Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| self.items.concerns(model, d))
            .collect()
    }

    /// The model named `name` (or the file's only model), unless what concerns it has errors.
    pub fn choose(&self, name: Option<&str>) -> Result<Chosen<'_>, Refusal> {
        let file_errors: Vec<Diagnostic> = self
            .diagnostics
            .iter()
            .filter(|d| d.item.is_none() && d.is_error())
            .cloned()
            .collect();
        if !file_errors.is_empty() {
            return Err(Refusal::Errors {
                model: None,
                diagnostics: file_errors,
            });
        }
        let models = self.model_names();
        let name = match (name, models.as_slice()) {
            (Some(n), _) if models.iter().any(|m| m == n) => n,
            (Some(n), _) => {
                return Err(Refusal::NoSuchModel {
                    name: n.to_string(),
                    models,
                });
            }
            (None, [one]) => one.as_str(),
            (None, []) => return Err(Refusal::NoModel),
            (None, _) => return Err(Refusal::SeveralModels { models }),
        };
        let concerning = self.diagnostics_for(name);
        if concerning.iter().any(|d| d.is_error()) {
            return Err(Refusal::Errors {
                model: Some(name.to_string()),
                diagnostics: concerning.into_iter().cloned().collect(),
            });
        }
        let Some(network) = self.networks.iter().find(|n| n.name == name) else {
            // Every model without errors is lowered; this would be a bug in `check`.
            return Err(Refusal::Errors {
                model: Some(name.to_string()),
                diagnostics: Vec::new(),
            });
        };
        let errors_elsewhere = self
            .diagnostics
            .iter()
            .filter(|d| d.is_error() && !self.items.concerns(name, d))
            .count();
        Ok(Chosen {
            network,
            warnings: concerning,
            errors_elsewhere,
        })
    }
}
