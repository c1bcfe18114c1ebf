//! One fixture folder drives the parse, IR and diagnostic snapshots: every
//! `tests/fixtures/ok/*.effnet` must compile (its AST, IR and warnings are snapshotted), every
//! `tests/fixtures/err/*.effnet` must fail (its rendered diagnostics are snapshotted), every
//! `tests/fixtures/encoding/*.effnet` is not UTF-8 (its diagnostic is snapshotted).

use std::path::Path;

use effnet_compiler::{SourceFile, compile, parse, render};

fn source(path: &Path) -> SourceFile {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    // Name the file relative to the fixture folder so snapshots do not depend on the checkout.
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .canonicalize()
        .expect("fixture folder exists");
    let path = path.canonicalize().expect("fixture exists");
    let name = path
        .strip_prefix(&base)
        .unwrap_or(&path)
        .display()
        .to_string();
    SourceFile::new(name, text)
}

#[test]
fn ok_fixtures() {
    insta::glob!("../../tests/fixtures/ok", "*.effnet", |path| {
        let file = source(path);
        let ast = parse(&file.text).expect("ok fixture parses");
        insta::assert_json_snapshot!("ast", ast);
        let compiled = match compile(&file.text) {
            Ok(c) => c,
            Err(d) => panic!("{}", render(&file, &d, false)),
        };
        let ir: String = compiled.networks.iter().map(|n| n.to_string()).collect();
        insta::assert_snapshot!("ir", ir);
        insta::assert_snapshot!("warnings", render(&file, compiled.warnings(), false));
    });
}

#[test]
fn err_fixtures() {
    insta::glob!("../../tests/fixtures/err", "*.effnet", |path| {
        let file = source(path);
        let diagnostics = match compile(&file.text) {
            Ok(_) => panic!("{} should not compile", file.name),
            Err(d) => d,
        };
        assert!(diagnostics.iter().any(|d| d.is_error()));
        insta::assert_snapshot!("diagnostics", render(&file, &diagnostics, false));
    });
}

/// A spec that is not UTF-8 (`tests/fixtures/encoding`) is one diagnostic at the line and
/// column of its first invalid byte.
#[test]
fn encoding_fixtures() {
    insta::glob!("../../tests/fixtures/encoding", "*.effnet", |path| {
        let bytes = std::fs::read(path).expect("fixture is readable");
        let name = format!(
            "encoding/{}",
            path.file_name().expect("file name").to_string_lossy()
        );
        let not_utf8 = match SourceFile::from_bytes(name, bytes) {
            Ok(_) => panic!("{} should not be UTF-8", path.display()),
            Err(e) => e,
        };
        assert!(not_utf8.diagnostic.is_error());
        let text = render(&not_utf8.file, &[not_utf8.diagnostic], false);
        insta::assert_snapshot!("encoding", text);
    });
}

/// The `"effnet::..."` codes written in the Rust files under `dir`.
fn codes_in(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("source folder is readable") {
        let path = entry.expect("source entry").path();
        if path.is_dir() {
            codes_in(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source is readable");
            for (i, _) in text.match_indices("\"effnet::") {
                let rest = &text[i + 1..];
                let end = rest.find('"').expect("code string is closed");
                out.insert(rest[..end].to_string());
            }
        }
    }
}

/// Every diagnostic code the compiler emits heads a snapshot, so a new code without a fixture
/// (in `tests/fixtures/err`, or `ok` for a warning) fails here.
#[test]
fn every_diagnostic_code_has_a_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut codes = std::collections::BTreeSet::new();
    codes_in(&root.join("src"), &mut codes);
    codes_in(&root.join("../grammar/src"), &mut codes);
    assert!(codes.len() > 20, "found only {codes:?}");
    let mut snapshots = String::new();
    for entry in std::fs::read_dir(root.join("tests/snapshots")).expect("snapshots exist") {
        let path = entry.expect("snapshot entry").path();
        if path.to_string_lossy().contains("fixtures__") {
            snapshots += &std::fs::read_to_string(&path).expect("snapshot is readable");
        }
    }
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !snapshots.lines().any(|l| l == c.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "no fixture snapshot shows {missing:?}: add a fixture under tests/fixtures/err (or ok, \
         for a warning) that triggers each"
    );
}
