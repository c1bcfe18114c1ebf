//! The `.effnet` language: its pest grammar and the typed, spanned AST.
//!
//! `parse` is the only entry point; nothing outside this crate sees pest.

#![forbid(unsafe_code)]

pub mod ast;
mod parse;

pub use ast::*;
pub use parse::{ParseError, parse, parse_freeze_flag, parse_lr_scale_flag};

/// The most alternatives a range choice `{A..B}` expands to; a longer (or empty) range keeps
/// only its two ends, for the checker to report.
pub const MAX_RANGE_ALTERNATIVES: usize = 1024;
