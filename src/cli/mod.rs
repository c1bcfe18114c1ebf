//! Subcommands. Each returns its exit code; an `Err` is a user error (exit 1) whose message
//! names the file and what was expected.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use effnet_compiler::{Compiled, Diagnostic, SourceFile, compile, render};

mod check;
mod summary;

#[derive(Parser, Debug)]
#[command(name = "effnet", version, about = "EfficientNet model-description compiler and runtime")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check spec files: exit 0 when clean (warnings are printed), 1 with diagnostics.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Per-stage table of a model: blocks, channels, resolution, parameters, multiply-adds.
    Summary {
        file: PathBuf,
        #[arg(long)]
        model: Option<String>,
        /// Input resolution (default: the model's eval resolution).
        #[arg(long)]
        resolution: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Print the IR of a model as JSON.
    Ir {
        file: PathBuf,
        #[arg(long)]
        model: Option<String>,
    },
}

pub fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Check { files } => check::run(&files),
        Command::Summary {
            file,
            model,
            resolution,
            json,
        } => summary::run(&file, model.as_deref(), resolution, json),
        Command::Ir { file, model } => {
            let (_, compiled) = load(&file)?;
            let net = compiled.network(model.as_deref())?;
            let json = serde_json::to_string_pretty(net).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read a spec file with an error that names it.
pub fn read_spec(path: &Path) -> Result<SourceFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read spec `{}`: {e}", path.display()))?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

fn use_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

pub fn print_diagnostics(file: &SourceFile, diagnostics: &[Diagnostic]) {
    if !diagnostics.is_empty() {
        eprint!("{}", render(file, diagnostics, use_color()));
    }
}

/// Read and compile a spec; diagnostics go to stderr, and errors become an `Err`.
pub fn load(path: &Path) -> Result<(SourceFile, Compiled), String> {
    let file = read_spec(path)?;
    match compile(&file.text) {
        Ok(c) => {
            print_diagnostics(&file, c.warnings());
            Ok((file, c))
        }
        Err(diags) => {
            print_diagnostics(&file, &diags);
            let n = diags.iter().filter(|d| d.is_error()).count();
            Err(format!(
                "`{}` has {n} error{}",
                path.display(),
                if n == 1 { "" } else { "s" }
            ))
        }
    }
}
