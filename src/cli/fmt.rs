//! `effnet fmt FILES [--check]`: rewrite spec files in the canonical layout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use effnet_compiler::format::format_file;
use effnet_compiler::{parse, parse_error_diagnostic};

/// Format each file in place (only when it changes), or with `check` only report the files that
/// would change. Exit 1 when a file cannot be read or has a syntax error (its diagnostic is
/// printed), or with `check` when any would change; an `Err` only when a file cannot be written.
pub fn run(files: &[PathBuf], check: bool) -> Result<ExitCode, String> {
    let mut failed = false;
    for path in files {
        // An unreadable file is reported and counted; the others are still formatted.
        let spec = match super::read_spec(path) {
            Ok(spec) => spec,
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
                continue;
            }
        };
        let file = match parse(&spec.text) {
            Ok(file) => file,
            Err(e) => {
                super::print_diagnostics(&spec, &[parse_error_diagnostic(&e)]);
                failed = true;
                continue;
            }
        };
        let formatted = format_file(&file, &spec.text);
        if formatted == *spec.text {
            continue;
        }
        if check {
            println!("would reformat: {}", path.display());
            failed = true;
        } else {
            write_atomically(path, &formatted)?;
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Write to a temporary file next to `path`, then rename it over `path`, so that an interrupted
/// run never leaves a half-written spec.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.effnet-fmt-{}.tmp", std::process::id()));
    // Keep the file's permissions.
    let perms = std::fs::metadata(path).map(|m| m.permissions()).ok();
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
    if let Some(p) = perms {
        // Best effort: the content matters, the mode is a courtesy.
        let _ = std::fs::set_permissions(&tmp, p);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace `{}`: {e}", path.display())
    })
}
