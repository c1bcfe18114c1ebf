//! The `effnet` command line.

use std::process::ExitCode;

use clap::Parser;

mod cli;

// candle allocates a fresh buffer per operation; mimalloc is markedly faster than glibc's
// allocator for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
