//! Weight loading against the timm fixtures: one error listing every problem, errors that name
//! the file, torchvision names, half-precision files, `num_batches_tracked`, save/load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use effnet_compiler::{compile, ir};
use effnet_runtime::{Error, Network, weights};

const FIXTURE: &str = "fx_v2s_sym64";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/runtime")
}

/// The fixture's IR, its timm-named tensors (without `__input__` / `__logits__`), its input
/// and timm's logits.
fn fixture(name: &str) -> (ir::Network, HashMap<String, Tensor>, Tensor, Tensor) {
    let dir = fixture_dir();
    let text = std::fs::read_to_string(dir.join(format!("{name}.effnet"))).expect("spec");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{name}: {d:?}"));
    let net = compiled.network(None).expect("one model").clone();
    let mut t = weights::read_safetensors(&dir.join(format!("{name}.safetensors")), &Device::Cpu)
        .expect("fixture weights");
    let x = t.remove("__input__").expect("input");
    let y = t.remove("__logits__").expect("logits");
    (net, t, x, y)
}

fn tmp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("effnet-weights-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(tensors, path).expect("save safetensors");
}

fn logits(ir: &ir::Network, path: &Path, dtype: DType, x: &Tensor) -> Tensor {
    let vb = weights::load(ir, path, dtype, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let net = Network::from_ir(ir, vb).expect("network builds");
    net.forward_t(&x.to_dtype(dtype).expect("cast"), false)
        .and_then(|y| y.to_dtype(DType::F32))
        .expect("forward")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).expect("same shape"))
}

#[test]
fn every_problem_is_reported_at_once() {
    let (ir, mut t, _, _) = fixture(FIXTURE);
    let missing = "blocks.1.0.conv_exp.weight";
    let reshaped = "conv_head.weight";
    assert!(t.remove(missing).is_some());
    let head = t.get(reshaped).expect("head weight").clone();
    let expected = head.dims().to_vec();
    let flat = head.flatten_all().expect("flatten");
    t.insert(reshaped.into(), flat.clone());
    t.insert(
        "extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).expect("zeros"),
    );
    let dir = tmp_dir("report");
    let path = dir.join("bad.safetensors");
    save(&t, &path);
    let err = match weights::load(&ir, &path, DType::F32, &Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("bad weights loaded"),
    };
    match &err {
        Error::Weights {
            missing: m,
            unexpected: u,
            mismatched: s,
            ..
        } => {
            assert_eq!(m, &vec![missing.to_string()]);
            assert_eq!(u, &vec!["extra.weight".to_string()]);
            assert_eq!(
                s,
                &vec![(reshaped.to_string(), expected.clone(), flat.dims().to_vec())]
            );
        }
        other => panic!("expected a weights error, got {other}"),
    }
    let msg = err.to_string();
    for needle in [
        path.display().to_string(),
        missing.to_string(),
        "extra.weight".to_string(),
        reshaped.to_string(),
        format!("expected {expected:?}"),
        format!("found {:?}", flat.dims()),
    ] {
        assert!(msg.contains(&needle), "`{needle}` not in:\n{msg}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_file_that_is_not_safetensors_is_named() {
    let (ir, ..) = fixture(FIXTURE);
    let dir = tmp_dir("notsafe");
    let path = dir.join("weights.safetensors");
    std::fs::write(&path, b"this is not a safetensors file at all").expect("write");
    let err = match weights::load(&ir, &path, DType::F32, &Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("garbage loaded"),
    };
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let missing = dir.join("missing.safetensors");
    let err = match weights::load(&ir, &missing, DType::F32, &Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("a missing file loaded"),
    };
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn torchvision_names_give_identical_logits() {
    let dir = tmp_dir("torchvision");
    // Two fixtures: V2 blocks (cn, er, ir with SE, head) and V1 blocks (ds with and without SE).
    for name in [FIXTURE, "fx_v1_relu32"] {
        let (ir, t, x, _) = fixture(name);
        let timm_path = dir.join(format!("{name}_timm.safetensors"));
        save(&t, &timm_path);
        let mut prefixes = weights::torchvision_prefixes(&ir);
        // Longest prefix first, so `blocks.0.0.bn1` wins over `bn1`.
        prefixes.sort_by_key(|(ours, _)| std::cmp::Reverse(ours.len()));
        let tv: HashMap<String, Tensor> = t
            .iter()
            .map(|(k, v)| {
                let renamed = prefixes
                    .iter()
                    .find_map(|(ours, theirs)| {
                        k.strip_prefix(ours.as_str())
                            .filter(|rest| rest.starts_with('.'))
                            .map(|rest| format!("{theirs}{rest}"))
                    })
                    .unwrap_or_else(|| panic!("no torchvision name for {k}"));
                (renamed, v.clone())
            })
            .collect();
        assert!(
            tv.keys()
                .all(|k| k.starts_with("features.") || k.starts_with("classifier."))
        );
        assert_eq!(tv.len(), t.len(), "renaming is one to one");
        let tv_path = dir.join(format!("{name}_tv.safetensors"));
        save(&tv, &tv_path);
        let a = logits(&ir, &timm_path, DType::F32, &x);
        let b = logits(&ir, &tv_path, DType::F32, &x);
        assert_eq!(max_diff(&a, &b), 0.0, "{name}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn half_precision_weights_give_close_logits() {
    let (ir, t, x, want) = fixture(FIXTURE);
    let dir = tmp_dir("half");
    let scale = max_abs(&want);
    for dtype in [DType::F16, DType::BF16] {
        let half: HashMap<String, Tensor> = t
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dtype).expect("cast")))
            .collect();
        let path = dir.join(format!("{dtype:?}.safetensors"));
        save(&half, &path);
        // Half-precision file, computed in f32.
        let y = logits(&ir, &path, DType::F32, &x);
        let rel = max_diff(&y, &want) / scale;
        assert!(rel < 5e-2, "{dtype:?} weights in f32: relative error {rel}");
        // And computed in that dtype.
        let y = logits(&ir, &path, dtype, &x);
        let rel = max_diff(&y, &want) / scale;
        assert!(rel < 5e-2, "{dtype:?} compute: relative error {rel}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn num_batches_tracked_is_ignored() {
    let (ir, mut t, x, want) = fixture(FIXTURE);
    for bn in ["bn1", "bn2", "blocks.0.0.bn1"] {
        t.insert(
            format!("{bn}.num_batches_tracked"),
            Tensor::new(&[7i64], &Device::Cpu)
                .and_then(|v| v.reshape(()))
                .expect("scalar"),
        );
    }
    let dir = tmp_dir("nbt");
    let path = dir.join("w.safetensors");
    save(&t, &path);
    let y = logits(&ir, &path, DType::F32, &x);
    assert!(max_diff(&y, &want) < 1e-4);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn save_then_load_round_trips() {
    let (ir, t, x, _) = fixture(FIXTURE);
    let net = Network::from_ir(&ir, VarBuilder::from_tensors(t, DType::F32, &Device::Cpu))
        .expect("network builds");
    let before = net.forward_t(&x, false).expect("forward");
    let dir = tmp_dir("roundtrip");
    let path = dir.join("saved.safetensors");
    weights::save(&net.named_tensors(), &path).expect("save");
    let back = weights::read_safetensors(&path, &Device::Cpu).expect("read back");
    assert_eq!(back.len(), net.named_tensors().len());
    let after = logits(&ir, &path, DType::F32, &x);
    assert_eq!(max_diff(&before, &after), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}
