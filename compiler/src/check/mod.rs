//! `check`: every rule of the language, all diagnostics at once. What it returns is validated
//! and fully resolved (derived models merged with their bases, defaults filled in), so that
//! lowering never fails.
//!
//! The driver here checks names (models defined twice, schedules defined twice) and hands each
//! part to the module that knows its rules: `models` (derivations, model bodies, the finished
//! model), `layers` (stem, head and stage lines), `schedules` (training schedules, optimizer,
//! learning rate). `cx` holds the value checks they share, and `defs` what `check` returns.

use std::collections::HashMap;

use effnet_grammar::*;

use crate::diagnostic::Diagnostic;

mod cx;
mod defs;
mod finetune;
mod items;
mod layers;
mod models;
mod resolution;
mod schedules;

pub use finetune::{freeze_flag, lr_scale_flag};

pub use defs::{
    ChannelRounding, Checked, DepthRounding, HeadDef, ModelDef, NormDef, Pruned, ScheduleDef,
    ScheduleValue, Skip, StageDef, StageKind, StemDef,
};
pub use items::Items;
pub use resolution::chosen_resolution;

use cx::Cx;
pub use models::OUTPUT_STRIDES;
use models::{Resolver, finish_model};
use schedules::check_schedule;

/// The largest whole number any setting may take (channels, resolution, repeats, epochs).
pub const MAX_WHOLE: usize = 65_536;

/// The most blocks a model may expand to (EfficientNetV2-XL has 100).
pub const MAX_BLOCKS: usize = 10_000;

/// Check a parsed file. On failure the error holds every error, and the warnings of the models
/// without errors.
pub fn check(file: &File) -> Result<Checked, Vec<Diagnostic>> {
    let found = check_each(file);
    if found.diagnostics.iter().any(Diagnostic::is_error) {
        Err(found.diagnostics)
    } else {
        Ok(Checked {
            models: found.models,
            schedules: found.schedules,
            warnings: found.diagnostics,
        })
    }
}

/// What checking a file found, model by model.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    /// The models free of errors (their own, their schedules', their bases'), in source order.
    pub models: Vec<ModelDef>,
    /// The schedules of those models.
    pub schedules: Vec<ScheduleDef>,
    /// Every diagnostic, each tagged with its model; the warnings of a model with errors are
    /// left out.
    pub diagnostics: Vec<Diagnostic>,
    /// The file's models and what each depends on.
    pub items: Items,
}

/// Check a parsed file model by model: an error in one model leaves the others usable. A model
/// with choices (a search space) is checked as its default candidate, and its choices and the
/// file's `search` items by [`crate::search::check_spaces`].
pub fn check_each(file: &File) -> Findings {
    let concrete = crate::search::defaults(file);
    let mut found = check_concrete(&concrete);
    crate::search::check_spaces(file, &mut found);
    found
}

/// [`check_each`] for a file without choices (`search` items are left to
/// [`crate::search::check_spaces`]).
pub(crate) fn check_concrete(file: &File) -> Findings {
    let mut cx = Cx::default();
    let models: Vec<&Model> = file
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Model(m) => Some(m),
            Item::Schedule(_) | Item::Search(_) => None,
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
                .help("give each model its own name")
                .for_item(&m.name.name),
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
            && let Some(def) = cx.within_item(&m.name.name, |cx| finish_model(m, partial, cx))
        {
            defs.push(def);
        }
    }

    let mut schedules: Vec<ScheduleDef> = Vec::new();
    for item in &file.items {
        // The model's stage count bounds `freeze` and `lr_scale` stage ranges (unknown when
        // the model had errors of its own).
        let stages = |s: &Schedule| {
            defs.iter()
                .find(|d: &&ModelDef| d.name == s.model.name)
                .map(|d| d.stage_count())
        };
        // A schedule's diagnostics belong to its model: `train` uses them together.
        if let Item::Schedule(s) = item
            && let Some(def) = cx.within_item(&s.model.name, |cx| {
                check_schedule(s, &by_name, stages(s), cx)
            })
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
                    .help("name them: `schedule NAME for MODEL { ... }`")
                    .for_item(&def.model),
                );
            } else {
                schedules.push(def);
            }
        }
    }

    let items = Items::of(file);
    let diagnostics = items.without_cascades(cx.diagnostics);
    defs.retain(|m| !items.has_error(&m.name, &diagnostics));
    schedules.retain(|s| defs.iter().any(|m| m.name == s.model));
    Findings {
        models: defs,
        schedules,
        diagnostics,
        items,
    }
}
