use std::path::PathBuf;
use std::process::ExitCode;

use effnet_compiler::compile;

use super::{print_diagnostics, read_spec};

pub fn run(files: &[PathBuf]) -> Result<ExitCode, String> {
    let mut failed = 0usize;
    for path in files {
        let file = match read_spec(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        match compile(&file.text) {
            Ok(c) => {
                print_diagnostics(&file, c.warnings());
                for net in &c.networks {
                    if let Some(sp) = super::space_summary(&file.text, &net.name) {
                        println!("{}: {}", file.name, super::space_line(&sp));
                    }
                }
            }
            Err(diags) => {
                print_diagnostics(&file, &diags);
                failed += 1;
            }
        }
    }
    if failed == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {failed} of {} file{} failed to check",
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        );
        Ok(ExitCode::from(1))
    }
}
