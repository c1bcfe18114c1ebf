//! Commands that use one model see only what concerns it: its errors (its own, its schedules',
//! its bases'), never errors or warnings of other models, and no warnings computed from what is
//! left of a model with errors. Plus the two rules that keep spec files quiet: a spec's own
//! resolutions are not warned about, and a file that is not UTF-8 is one clear diagnostic.

use std::path::Path;

use effnet_compiler::codegen::expand_source;
use effnet_compiler::grammar::Span;
use effnet_compiler::{
    Diagnostic, Items, Refusal, SourceFile, chosen_resolution, compile, compile_each, parse,
};

const TWO_MODELS: &str = "\
model good {
    classes 10
    stem conv k3 s2 -> 8
    stage mbconv k3 e4 s2 -> 16 x1
}
model bad {
    classes 10
    stem conv k3 s2 -> 8
    stage mbconv k4 e4 s2 -> 16 x1
}
";

fn spec(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs")
        .join(name);
    std::fs::read_to_string(&path).expect("bundled spec")
}

/// `specs/tf_efficientnetv2_b.effnet` with B0's first MBConv stage at `k4` (line 18, column 19),
/// as the issue's new user wrote it.
fn b_series_with_k4() -> String {
    let text = spec("tf_efficientnetv2_b.effnet");
    let line = "    stage mbconv k3 e4 s2 -> 96  x3  se 0.25";
    assert_eq!(text.lines().nth(17), Some(line), "the spec's line 18 moved");
    text.replacen(line, &line.replace("k3", "k4"), 1)
}

fn refusal_text(r: &Refusal) -> String {
    r.message("spec.effnet", "with --model")
}

#[test]
fn a_model_is_chosen_despite_errors_in_another() {
    assert!(
        compile(TWO_MODELS).is_err(),
        "the file as a whole has an error"
    );
    let c = compile_each(TWO_MODELS);
    let good = c.choose(Some("good")).expect("`good` has no error");
    assert_eq!(good.network.name, "good");
    assert_eq!(good.errors_elsewhere, 1);
    assert!(good.warnings.is_empty());
    let bad = c.choose(Some("bad")).expect_err("`bad` has an error");
    let [d] = bad.diagnostics() else {
        panic!("{bad:?}")
    };
    assert_eq!((d.code, d.item.as_deref()), ("effnet::kernel", Some("bad")));
    assert_eq!(
        refusal_text(&bad),
        "`spec.effnet` has 1 error in model `bad`"
    );
    // Only the good model is lowered.
    let names: Vec<&str> = c.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["good"]);
}

#[test]
fn choosing_needs_a_name_that_exists() {
    let c = compile_each(TWO_MODELS);
    let several = c.choose(None).expect_err("two models");
    assert_eq!(
        refusal_text(&several),
        "`spec.effnet` defines several models (`good`, `bad`); choose one with --model"
    );
    let missing = c.choose(Some("godo")).expect_err("no such model");
    assert_eq!(
        refusal_text(&missing),
        "`spec.effnet` has no model named `godo`; it defines `good`, `bad`"
    );
    // A file with one model, even a broken one, needs no name: its errors are the answer.
    let one = compile_each(&TWO_MODELS[TWO_MODELS.find("model bad").expect("bad")..]);
    assert!(matches!(
        one.choose(None),
        Err(Refusal::Errors { model: Some(m), .. }) if m == "bad"
    ));
}

#[test]
fn a_derived_model_inherits_its_bases_errors_and_nothing_else() {
    let text = b_series_with_k4();
    let c = compile_each(&text);
    for model in [
        "tf_efficientnetv2_b0",
        "tf_efficientnetv2_b1",
        "tf_efficientnetv2_b2",
        "tf_efficientnetv2_b3",
    ] {
        let r = c
            .choose(Some(model))
            .expect_err("every B model has B0's error");
        let [d] = r.diagnostics() else {
            panic!("{model}: {r:?}")
        };
        assert_eq!(d.code, "effnet::kernel", "{model}");
        let file = SourceFile::new("b.effnet", text.as_str());
        assert_eq!(file.line_col(d.primary.span.start), (18, 19), "{model}");
    }
    let r = c.choose(Some("tf_efficientnetv2_b2")).expect_err("refused");
    assert_eq!(
        refusal_text(&r),
        "`spec.effnet` has 1 error in `tf_efficientnetv2_b0`, which model \
         `tf_efficientnetv2_b2` is derived from"
    );
    // `check` sees the same single diagnostic.
    let all = compile(&text).expect_err("the file has an error");
    assert_eq!(all.len(), 1, "{all:?}");
}

#[test]
fn the_macro_reports_only_the_chosen_models_diagnostics() {
    let text = b_series_with_k4();
    let err = expand_source(&text, "b.effnet", "b.effnet", Some("tf_efficientnetv2_b0"))
        .expect_err("B0 has an error");
    assert!(err.contains("b.effnet:18:19"), "{err}");
    assert_eq!(err.matches("effnet::").count(), 1, "{err}");
    assert!(!err.contains("downsample"), "{err}");
    // An error in B3 alone does not stop B1, which does not derive from it.
    let text = spec("tf_efficientnetv2_b.effnet").replacen(
        "dropout 0.3\n    normalize",
        "dropout 1.5\n    normalize",
        1,
    );
    assert!(compile(&text).is_err(), "B3 has an error");
    let code = expand_source(&text, "b.effnet", "b.effnet", Some("tf_efficientnetv2_b1"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(code.contains("pub struct TfEfficientnetv2B1"), "{code}");
    let err = expand_source(&text, "b.effnet", "b.effnet", Some("tf_efficientnetv2_b3"))
        .expect_err("B3 has an error");
    assert!(err.contains("dropout must be in [0, 1)"), "{err}");
}

#[test]
fn a_schedules_errors_belong_to_its_model() {
    let text = format!("{TWO_MODELS}schedule s for good {{ epochs 0 image 64 }}\n");
    let c = compile_each(&text.replace("k4", "k3"));
    let r = c
        .choose(Some("good"))
        .expect_err("its schedule has an error");
    assert!(
        r.diagnostics()
            .iter()
            .all(|d| d.item.as_deref() == Some("good")),
        "{r:?}"
    );
    let bad = c.choose(Some("bad")).expect("`bad` has no schedule");
    assert_eq!(bad.errors_elsewhere, r.diagnostics().len());
}

#[test]
fn a_model_defined_twice_cannot_be_chosen_and_a_syntax_error_stops_every_model() {
    let text = format!(
        "{TWO_MODELS}{}",
        TWO_MODELS
            .replace("model good", "model other")
            .replace("k4", "k3")
            .replace("model bad", "model good")
    );
    let c = compile_each(&text);
    assert!(c.choose(Some("other")).is_ok());
    let dup = c.choose(Some("good")).expect_err("defined twice");
    assert!(
        dup.diagnostics()
            .iter()
            .any(|d| d.code == "effnet::duplicate_model"),
        "{dup:?}"
    );
    let c = compile_each("model m {");
    let r = c.choose(Some("m")).expect_err("syntax error");
    assert!(
        matches!(&r, Refusal::Errors { model: None, diagnostics } if diagnostics[0].code == "effnet::syntax")
    );
    assert_eq!(
        r.message("m.effnet", "with --model"),
        "`m.effnet` has 1 error"
    );
}

/// Warnings computed from a model with errors (its own or its base's) would describe what is
/// left of it: they are dropped; another model's warnings stay.
#[test]
fn warnings_of_a_model_with_errors_are_dropped() {
    let file = parse(
        "model base { stem conv k3 s2 -> 8 stage mbconv k3 e4 s2 -> 16 x1 }\n\
         model wider = base scaled width 1.1\n\
         model other { stem conv k3 s2 -> 8 stage mbconv k3 e4 s2 -> 16 x1 }\n",
    )
    .expect("parses");
    let items = Items::of(&file);
    assert_eq!(
        items.names().collect::<Vec<_>>(),
        ["base", "wider", "other"]
    );
    let at = Span::new(0, 1);
    let diagnostics = vec![
        Diagnostic::error("effnet::kernel", "in base", at).for_item("base"),
        Diagnostic::warning("effnet::test", "in wider", at).for_item("wider"),
        Diagnostic::warning("effnet::test", "in other", at).for_item("other"),
    ];
    let kept: Vec<String> = items
        .without_cascades(diagnostics)
        .into_iter()
        .map(|d| d.message)
        .collect();
    assert_eq!(kept, ["in base", "in other"]);
}

/// A spec's own resolutions are its documented configuration (B1 at 240, B3 at 300): no warning.
/// One picked by hand that the strides do not divide gets one.
#[test]
fn only_a_chosen_resolution_is_warned_about() {
    let compiled = compile(&spec("tf_efficientnetv2_b.effnet")).expect("bundled spec");
    assert!(compiled.warnings().is_empty(), "{:?}", compiled.warnings());
    let b1 = compiled.network(Some("tf_efficientnetv2_b1")).expect("B1");
    assert_eq!((b1.resolution, b1.total_stride()), (240, 32));
    assert_eq!(chosen_resolution(b1, 240), None, "its own eval resolution");
    assert_eq!(
        chosen_resolution(b1, 192),
        None,
        "its own training resolution"
    );
    assert_eq!(chosen_resolution(b1, 256), None, "divisible");
    let w = chosen_resolution(b1, 250).expect("250 is not divisible by 32");
    assert!(
        w.contains("250") && w.contains("32") && w.contains("224 or 256"),
        "{w}"
    );
    let w = chosen_resolution(b1, 20).expect("20 is below 32");
    assert!(w.contains("(32 divides evenly)"), "{w}");
}

#[test]
fn a_spec_that_is_not_utf8_is_an_error_at_its_first_invalid_byte() {
    let ok = SourceFile::from_bytes("ok.effnet", "model café {}".as_bytes().to_vec());
    assert_eq!(
        ok.map(|f| f.text.to_string()).ok().as_deref(),
        Some("model café {}")
    );
    // Columns count characters: `é` before the bad byte is one column.
    let bytes = b"model m {\n  // \xc3\xa9 \xff\xfe\n}\n".to_vec();
    let e = SourceFile::from_bytes("bad.effnet", bytes).expect_err("0xFF is never UTF-8");
    assert_eq!(e.diagnostic.code, "effnet::encoding");
    assert!(e.diagnostic.is_error());
    assert_eq!(e.file.line_col(e.diagnostic.primary.span.start), (2, 8));
    assert!(
        e.diagnostic
            .message
            .contains("byte 0xFF at line 2, column 8"),
        "{}",
        e.diagnostic.message
    );
}

/// The macro reads the spec as bytes: Latin-1 is a compile error at the invalid byte.
#[test]
fn the_macro_reports_a_spec_that_is_not_utf8_at_its_line_and_column() {
    let ctx = effnet_compiler::codegen::Context {
        manifest_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
        call_site_file: None,
    };
    let attr: proc_macro2::TokenStream = r#""tests/fixtures/encoding/latin1.effnet""#
        .parse()
        .expect("tokens");
    let item: proc_macro2::TokenStream = "pub struct Latin1;".parse().expect("tokens");
    let code = effnet_compiler::codegen::expand_attribute(attr, item, &ctx).to_string();
    assert!(code.contains("compile_error"), "{code}");
    assert!(code.contains("latin1.effnet:1:33"), "{code}");
    assert!(code.contains("byte 0xE9 at line 1, column 33"), "{code}");
}
