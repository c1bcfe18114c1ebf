//! The effnet compiler: `.effnet` text to checked definitions, the IR and its analyses.
//!
//! Each stage is a public function; [`compile`] chains them:
//! [`parse`] -> [`check()`] -> [`lower()`] -> [`analysis::summarize`]. [`compile_each`] does the
//! same model by model, for a command that uses one model of a file.

#![forbid(unsafe_code)]

pub mod analysis;
pub mod check;
#[cfg(feature = "codegen")]
pub mod codegen;
pub mod defaults;
pub mod diagnostic;
pub mod focus;
pub mod format;
pub mod import;
pub mod ir;
pub mod lower;
pub mod search;

pub use check::{Checked, Findings, Items, check, check_each, chosen_resolution};
pub use diagnostic::{Diagnostic, NotUtf8, Severity, SourceFile, render};
pub use effnet_grammar::{self as grammar, parse};
pub use focus::{Chosen, Compilation, Refusal, compile_each};
pub use lower::lower;

use effnet_grammar::ParseError;

/// The result of compiling one file: every model lowered to the IR, plus warnings.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub checked: Checked,
    pub networks: Vec<ir::Network>,
}

impl Compiled {
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.checked.warnings
    }

    /// The network named `name`, or the only one when `name` is `None`.
    pub fn network(&self, name: Option<&str>) -> Result<&ir::Network, String> {
        match name {
            Some(n) => self
                .networks
                .iter()
                .find(|net| net.name == n)
                .ok_or_else(|| {
                    format!(
                        "no model named `{n}`; the file defines {}",
                        self.model_names()
                    )
                }),
            None => match self.networks.as_slice() {
                [one] => Ok(one),
                [] => Err("the file defines no model".into()),
                _ => Err(format!(
                    "the file defines several models ({}); choose one with --model",
                    self.model_names()
                )),
            },
        }
    }

    fn model_names(&self) -> String {
        self.networks
            .iter()
            .map(|n| format!("`{}`", n.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A syntax error as a diagnostic, like every other problem.
pub fn parse_error_diagnostic(e: &ParseError) -> Diagnostic {
    Diagnostic::error("effnet::syntax", e.message.clone(), e.span).label(e.found.clone())
}

/// Parse, check and lower `source`. On failure, every error (and the warnings of the models
/// without errors).
pub fn compile(source: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let file = parse(source).map_err(|e| vec![parse_error_diagnostic(&e)])?;
    let checked = check(&file)?;
    let networks = checked
        .models
        .iter()
        .map(|m| {
            let schedules: Vec<_> = checked.schedules_for(&m.name).collect();
            lower(m, &schedules)
        })
        .collect();
    Ok(Compiled { checked, networks })
}
