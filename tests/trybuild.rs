//! trybuild: every `tests/fixtures/ok/*.effnet` (and a bundled spec) expands to code that
//! compiles warning-free under `#![deny(warnings)]` and runs; a spec with errors and a missing
//! spec are compile errors that show the spec's location.
//!
//! Compile-fail output is toolchain-sensitive: its `.stderr` files were made with the rustc
//! named in `fail/TOOLCHAIN`, and that part runs only with a rustc of that version (or with
//! `EFFNET_UI=1`; `EFFNET_UI=0` skips it). Regenerate with `TRYBUILD=overwrite`.

use std::path::Path;
use std::process::Command;

fn compile_fail_enabled() -> bool {
    match std::env::var("EFFNET_UI").as_deref() {
        Ok("1") => return true,
        Ok("0") => return false,
        _ => {}
    }
    let wanted = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/fail/TOOLCHAIN");
    let Ok(wanted) = std::fs::read_to_string(&wanted) else {
        return false;
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let ok = version.starts_with(wanted.trim());
    if !ok {
        eprintln!(
            "skipping compile-fail cases: they were recorded with `{}`, this is `{}` \
             (EFFNET_UI=1 runs them anyway)",
            wanted.trim(),
            version.trim()
        );
    }
    ok
}

#[test]
fn trybuild() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    if compile_fail_enabled() {
        t.compile_fail("tests/ui/fail/*.rs");
    }
}
