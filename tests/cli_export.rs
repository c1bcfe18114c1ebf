//! `effnet export` as a user runs it: a timm fixture written as an ONNX file that decodes with
//! timm's names and the requested shapes, and the user errors (an opset out of range, weights
//! that do not fit the spec, normalization the spec does not have) exiting 1 with a message
//! that names the problem. What the exported graph computes is tested in
//! runtime/tests/export_onnx.rs (tract, onnxruntime, timm).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use effnet_runtime::export;
use effnet_runtime::export::onnx::{
    ModelProto, tensor_shape_proto::dimension::Value as Dim, type_proto,
};

const FIXTURE: &str = "tests/fixtures/runtime/fx_v2b_same67";

fn effnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effnet"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the effnet binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("effnet-cli-export-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A fixture's weights alone (without its input and logits) in `dir`.
fn weights(dir: &Path, fixture: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{fixture}.safetensors"));
    let mut t: HashMap<String, Tensor> =
        candle_core::safetensors::load(&src, &Device::Cpu).expect("fixture");
    t.remove("__input__");
    t.remove("__logits__");
    let name = Path::new(fixture)
        .file_name()
        .expect("name")
        .to_string_lossy();
    let w = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&t, &w).expect("save weights");
    w
}

/// The input's dimensions as written: numbers or symbols.
fn input_dims(m: &ModelProto) -> Vec<String> {
    let graph = m.graph.as_ref().expect("graph");
    let Some(type_proto::Value::TensorType(t)) =
        graph.input[0].r#type.as_ref().and_then(|t| t.value.clone())
    else {
        panic!("input is not a tensor");
    };
    t.shape
        .expect("shape")
        .dim
        .into_iter()
        .map(|d| match d.value {
            Some(Dim::DimValue(v)) => v.to_string(),
            Some(Dim::DimParam(p)) => p,
            None => "?".into(),
        })
        .collect()
}

#[test]
fn export_writes_an_onnx_file_with_timm_names() {
    let dir = tmp_dir("ok");
    let w = weights(&dir, FIXTURE);
    let out = dir.join("fx.onnx");
    let spec = format!("{FIXTURE}.effnet");
    let o = effnet(&["export", &spec, "--weights", &s(&w), "--onnx", &s(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("opset 17"), "{}", stderr(&o));
    let m = export::from_bytes(&std::fs::read(&out).expect("written")[..]).expect("decodes");
    assert_eq!(input_dims(&m), ["batch", "3", "67", "67"]);
    let names: Vec<String> = m
        .graph
        .expect("graph")
        .initializer
        .into_iter()
        .filter_map(|t| t.name)
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n == "blocks.3.0.se.conv_reduce.weight")
    );
    assert!(names.iter().any(|n| n == "bn2.running_var"));

    let o = effnet(&[
        "export",
        &spec,
        "--weights",
        &s(&w),
        "--onnx",
        &s(&out),
        "--opset",
        "11",
        "--batch",
        "4",
        "--resolution",
        "dynamic",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = export::from_bytes(&std::fs::read(&out).expect("written")[..]).expect("decodes");
    assert_eq!(input_dims(&m), ["4", "3", "height", "width"]);
    assert_eq!(m.opset_import[0].version, Some(11));
    assert_eq!(m.ir_version, Some(6));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn export_errors_say_what_is_wrong() {
    let dir = tmp_dir("errors");
    let w = weights(&dir, FIXTURE);
    let out = dir.join("fx.onnx");
    let spec = format!("{FIXTURE}.effnet");
    let export = |weights: &Path, extra: &[&str]| {
        let mut args = vec![
            "export".to_string(),
            spec.clone(),
            "--weights".into(),
            s(weights),
            "--onnx".into(),
            s(&out),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        effnet(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = export(&w, &["--opset", "9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("opset 9 is out of range: effnet writes ONNX opsets 11 to 28"),
        "{}",
        stderr(&o)
    );
    // Another fixture's weights: the error names the file and the tensors.
    let other = weights(&dir, "tests/fixtures/runtime/fx_v1_relu32");
    let o = export(&other, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&s(&other)) && e.contains("do not fit") && e.contains("missing:"),
        "{e}"
    );
    // The fixture has no `normalize` line to put in the graph.
    let o = export(&w, &["--normalize"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no `normalize` line"), "{}", stderr(&o));
    // Usage errors.
    for bad in [["--batch", "0"], ["--resolution", "big"]] {
        let o = export(&w, &bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        assert!(
            stderr(&o).contains("expected `dynamic` or a positive number"),
            "{}",
            stderr(&o)
        );
    }
    assert!(!out.exists(), "no file is written on an error");
    let _ = std::fs::remove_dir_all(dir);
}

/// A CondConv network exports at a fixed batch (its convolutions are grouped over the batch,
/// as timm computes them), and without `--batch` the error names the layer and the fix.
#[test]
fn condconv_exports_with_a_fixed_batch_only() {
    let dir = tmp_dir("condconv");
    let fixture = "tests/fixtures/runtime/fx_cc_same33";
    let w = weights(&dir, fixture);
    let out = dir.join("cc.onnx");
    let spec = format!("{fixture}.effnet");
    let o = effnet(&["export", &spec, "--weights", &s(&w), "--onnx", &s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("`blocks.2.0.conv_pw` is a CondConv convolution") && e.contains("--batch N"),
        "{e}"
    );
    assert!(!out.exists(), "no file is written on an error");
    let o = effnet(&[
        "export",
        &spec,
        "--weights",
        &s(&w),
        "--onnx",
        &s(&out),
        "--batch",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = export::from_bytes(&std::fs::read(&out).expect("written")[..]).expect("decodes");
    assert_eq!(input_dims(&m), ["2", "3", "33", "33"]);
    let names: Vec<String> = m
        .graph
        .expect("graph")
        .initializer
        .into_iter()
        .filter_map(|t| t.name)
        .collect();
    for n in ["blocks.2.0.routing_fn.weight", "blocks.2.1.conv_dw.weight"] {
        assert!(names.iter().any(|x| x == n), "no initializer {n}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
