//! One fixture folder drives the parse, IR and diagnostic snapshots: every
//! `tests/fixtures/ok/*.effnet` must compile (its AST, IR and warnings are snapshotted), every
//! `tests/fixtures/err/*.effnet` must fail (its rendered diagnostics are snapshotted).

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
