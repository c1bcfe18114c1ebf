//! Snapshots of `#[effnet::model]`'s expansion (formatted with prettyplease, as `effnet expand`
//! prints it) for every model of every `tests/fixtures/ok/*.effnet`, plus the expansion of a
//! spec with errors (`compile_error!` with `effnet check`'s text, and the skeleton).

use std::path::Path;

use effnet_compiler::codegen::{self, Request};
use proc_macro2::Span;
use quote::quote;

/// The fixture path relative to the repository, as a user would write it.
fn relative(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root");
    let path = path.canonicalize().expect("fixture exists");
    path.strip_prefix(&root)
        .unwrap_or(&path)
        .display()
        .to_string()
}

#[test]
fn ok_fixtures_expand() {
    insta::glob!("../../tests/fixtures/ok", "*.effnet", |path| {
        let text = std::fs::read_to_string(path).expect("fixture is readable");
        let name = relative(path);
        let code = codegen::expand_all(&text, &name, &name).unwrap_or_else(|e| panic!("{e}"));
        assert!(!code.contains("compile_error"), "{code}");
        assert!(!code.contains("unwrap"), "{code}");
        insta::assert_snapshot!("expand", code);
    });
}

#[test]
fn err_fixture_expands_to_compile_error_and_skeleton() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/err/kernel.effnet");
    let text = std::fs::read_to_string(&path).expect("fixture is readable");
    let item = syn::parse2(quote!(
        pub struct Bad;
    ))
    .expect("parses");
    let tokens = codegen::generate(&Request {
        item: &item,
        include_path: "tests/fixtures/err/kernel.effnet",
        display_name: "tests/fixtures/err/kernel.effnet",
        text: &text,
        model: None,
        span: Span::call_site(),
    });
    let code = codegen::pretty(tokens).expect("formats");
    assert!(
        code.contains("tests/fixtures/err/kernel.effnet:4:19"),
        "{code}"
    );
    insta::assert_snapshot!("kernel_error", code);
}

/// Every bundled spec expands (each model of it) and formats.
#[test]
fn bundled_specs_expand() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("specs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "effnet") {
            let text = std::fs::read_to_string(&path).expect("spec is readable");
            let name = relative(&path);
            let code =
                codegen::expand_all(&text, &name, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                code.contains("impl ::effnet::__private::EffNet for"),
                "{name}"
            );
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} specs");
}
