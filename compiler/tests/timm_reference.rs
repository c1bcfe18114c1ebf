//! Every bundled spec against timm: the parameter count, the (name, shape) list of the
//! `state_dict` in order, BatchNorm eps, block classes and resolutions. The reference files
//! are produced by `tools/timm_reference.py` with timm itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use effnet_compiler::ir::{BlockKind, Network};
use effnet_compiler::{SourceFile, compile, render};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every network of every spec in `specs/`, by name.
fn bundled() -> HashMap<String, Network> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(root().join("specs")).expect("specs/ exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().is_some_and(|e| e == "effnet") {
            let text = std::fs::read_to_string(&path).expect("readable spec");
            let compiled = compile(&text).unwrap_or_else(|d| {
                panic!(
                    "{}",
                    render(
                        &SourceFile::new(path.display().to_string(), text.clone()),
                        &d,
                        false
                    )
                )
            });
            for n in compiled.networks {
                out.insert(n.name.clone(), n);
            }
        }
    }
    out
}

fn references() -> Vec<(String, Value)> {
    let dir = root().join("tests/reference/timm");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/reference/timm exists") {
        let path = entry.expect("readable dir entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if path.extension().is_some_and(|e| e == "json") && name != "arch_defs" {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("readable"))
                .expect("json");
            out.push((name, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_reference_model_is_bundled_and_matches_timm() {
    let nets = bundled();
    let refs = references();
    assert!(
        refs.len() >= 23,
        "expected the timm reference files, found {}",
        refs.len()
    );
    let mut failures = Vec::new();
    for (name, r) in &refs {
        let Some(net) = nets.get(name) else {
            failures.push(format!("{name}: no bundled spec defines it"));
            continue;
        };
        let params = r["params"].as_u64().expect("params") as usize;
        if net.param_count() != params {
            failures.push(format!(
                "{name}: {} params, timm {params}",
                net.param_count()
            ));
        }
        let theirs: Vec<(String, Vec<usize>)> = r["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .map(|t| {
                let shape = t[1]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dim") as usize)
                    .collect();
                (t[0].as_str().expect("name").to_string(), shape)
            })
            .collect();
        let ours: Vec<(String, Vec<usize>)> = net
            .tensors()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        if ours != theirs {
            let first = ours
                .iter()
                .zip(&theirs)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("{a:?} vs timm {b:?}"))
                .unwrap_or_else(|| format!("{} tensors vs timm {}", ours.len(), theirs.len()));
            failures.push(format!("{name}: state_dict differs: {first}"));
        }
        let eps = r["bn_eps"].as_f64().expect("bn_eps");
        if (net.stem.bn.eps - eps).abs() > 1e-12 {
            failures.push(format!("{name}: bn eps {} vs timm {eps}", net.stem.bn.eps));
        }
        // Block classes: ConvBnAct / DepthwiseSeparableConv / EdgeResidual / InvertedResidual.
        let classes: HashMap<&str, &str> = r["blocks"]
            .as_array()
            .expect("blocks")
            .iter()
            .map(|b| (b[0].as_str().expect("path"), b[1].as_str().expect("class")))
            .collect();
        for b in net.blocks() {
            let want = match b.kind {
                BlockKind::Conv => "ConvBnAct",
                BlockKind::DepthwiseSeparable => "DepthwiseSeparableConv",
                BlockKind::Edge => "EdgeResidual",
                BlockKind::MbConv => "InvertedResidual",
            };
            if classes.get(b.path.as_str()) != Some(&want) {
                failures.push(format!(
                    "{name}: {} is {want}, timm has {:?}",
                    b.path,
                    classes.get(b.path.as_str())
                ));
            }
        }
        // Resolutions: timm's test size (or input size) is our eval resolution.
        let cfg = &r["default_cfg"];
        let eval = cfg
            .get("test_input_size")
            .filter(|v| !v.is_null())
            .unwrap_or(&cfg["input_size"]);
        let eval = eval[1].as_u64().expect("size") as usize;
        if net.resolution != eval {
            failures.push(format!(
                "{name}: eval resolution {} vs timm {eval}",
                net.resolution
            ));
        }
        let mean: Vec<f64> = cfg["mean"]
            .as_array()
            .expect("mean")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        let ours_mean = net.normalize.as_ref().map(|n| n.mean.clone());
        if ours_mean.as_ref() != Some(&mean) {
            failures.push(format!("{name}: mean {ours_mean:?} vs timm {mean:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "mismatches with timm:\n{}",
        failures.join("\n")
    );
}

#[test]
fn v2_s_multiply_adds_match_automl() {
    // automl's README: EfficientNetV2-S at 384 is 8.4 G FLOPs (multiply-adds).
    let nets = bundled();
    let s = effnet_compiler::analysis::summarize(&nets["efficientnetv2_s"], 384);
    assert_eq!(s.params, 21_458_488);
    assert!((8.3e9..8.5e9).contains(&(s.macs as f64)), "{} MACs", s.macs);
}
