//! Runtime errors. Each names the file or tensor it is about and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{}", weights_message(.path, .missing, .unexpected, .mismatched))]
    Weights {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// (name, expected shape, found shape)
        mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    },
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn weights_message(
    path: &std::path::Path,
    missing: &[String],
    unexpected: &[String],
    mismatched: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut s = format!(
        "the weights in `{}` do not fit the network: {} missing, {} unexpected, {} of the wrong shape",
        path.display(),
        missing.len(),
        unexpected.len(),
        mismatched.len()
    );
    for m in missing {
        s.push_str(&format!("\n  missing:    {m}"));
    }
    for u in unexpected {
        s.push_str(&format!("\n  unexpected: {u}"));
    }
    for (name, want, got) in mismatched {
        s.push_str(&format!(
            "\n  shape:      {name}: expected {want:?}, found {got:?}"
        ));
    }
    s
}
