//! The `effnet` command line.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

// candle allocates a fresh buffer per operation; mimalloc is markedly faster than glibc's
// allocator for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3); the Rust bindings do not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory in the process instead of handing it back to the OS after 10 ms
/// (mimalloc's default). A training step frees and reallocates the same large buffers every
/// iteration; returned memory comes back as fresh pages that the kernel must zero, which was
/// 10-18% of a step (BENCHMARKS.md). An explicit `MIMALLOC_PURGE_DELAY` still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores the option's value; any option and value are
        // accepted.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// A reader that stops early (`effnet summary ... | head`) closes the pipe; Rust ignores
/// SIGPIPE, so the next `println!` panics with "failed printing to stdout: Broken pipe". That is
/// the reader's choice, not an error: end quietly, as a command killed by SIGPIPE would
/// (exit status 141), and leave every other panic to the default hook.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    keep_freed_memory();
    quiet_on_closed_pipe();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
