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
    #[error("{}", conventions_message(.path, .model, .torchvision, .mismatches))]
    TorchvisionConventions {
        path: PathBuf,
        /// The spec's model.
        model: String,
        /// The torchvision network the weights are.
        torchvision: String,
        /// One line per setting: the spec's value and torchvision's.
        mismatches: Vec<String>,
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

fn conventions_message(
    path: &std::path::Path,
    model: &str,
    torchvision: &str,
    mismatches: &[String],
) -> String {
    let mut s = format!(
        "`{}` holds torchvision's `{torchvision}` (its tensor names and shapes), but the spec's \
         model `{model}` would not compute torchvision's numbers from it:",
        path.display()
    );
    for m in mismatches {
        s.push_str(&format!("\n  {m}"));
    }
    s.push_str(&format!(
        "\nuse `{torchvision}` from specs/torchvision/efficientnet.effnet, or change these \
         settings in the spec, or pass --keep-spec-conventions to run with the spec's settings"
    ));
    s
}
