//! torchvision's EfficientNets: the bundled specs (`specs/torchvision/efficientnet.effnet`)
//! against torchvision itself (`tests/reference/torchvision/`, written by
//! `tools/torchvision_reference.py`), and the check that torchvision-named weights meet a spec
//! with torchvision's BatchNorm eps and padding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use effnet_compiler::{compile, ir};
use effnet_runtime::weights::{self, LoadOptions, torchvision};
use effnet_runtime::{Error, Network};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bundled() -> HashMap<String, ir::Network> {
    let text = std::fs::read_to_string(root().join("specs/torchvision/efficientnet.effnet"))
        .expect("the torchvision spec");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{d:?}"));
    compiled
        .networks
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect()
}

/// `net`'s tensors in timm's state_dict order, under torchvision's names.
fn torchvision_named(net: &ir::Network) -> Vec<(String, Vec<usize>)> {
    let prefixes = weights::torchvision_prefixes(net);
    net.tensors()
        .into_iter()
        .map(|t| {
            let name = prefixes
                .iter()
                .find_map(|(ours, theirs)| {
                    t.name
                        .strip_prefix(ours.as_str())
                        .filter(|rest| rest.starts_with('.'))
                        .map(|rest| format!("{theirs}{rest}"))
                })
                .unwrap_or_else(|| panic!("no torchvision name for {}", t.name));
            (name, t.shape)
        })
        .collect()
}

#[test]
fn every_torchvision_efficientnet_is_bundled_and_matches_torchvision() {
    let nets = bundled();
    let dir = root().join("tests/reference/torchvision");
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/reference/torchvision") {
        let path = entry.expect("dir entry").path();
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("readable")).expect("json");
        let name = r["model"].as_str().expect("model");
        let Some(net) = nets.get(name) else {
            failures.push(format!(
                "{name}: not in specs/torchvision/efficientnet.effnet"
            ));
            continue;
        };
        checked += 1;
        let params = r["params"].as_u64().expect("params") as usize;
        if net.param_count() != params {
            failures.push(format!(
                "{name}: {} params, torchvision {params}",
                net.param_count()
            ));
        }
        // torchvision's state_dict order is timm's with the SE between depthwise and
        // projection, as ours: compare the lists as they are.
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
        let ours = torchvision_named(net);
        if ours != theirs {
            let first = ours
                .iter()
                .zip(&theirs)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("{a:?} vs torchvision {b:?}"))
                .unwrap_or_else(|| format!("{} tensors vs {}", ours.len(), theirs.len()));
            failures.push(format!("{name}: state_dict differs: {first}"));
        }
        let eps = r["bn_eps"].as_f64().expect("bn_eps");
        let momentum = r["bn_momentum"].as_f64().expect("bn_momentum");
        for b in net.blocks() {
            for l in b.layers.conv_bns() {
                if l.bn.eps != eps || l.bn.momentum() != Some(momentum) {
                    failures.push(format!(
                        "{name}: {} eps {} momentum {:?}, torchvision {eps} {momentum}",
                        l.bn.path,
                        l.bn.eps,
                        l.bn.momentum()
                    ));
                }
            }
        }
        if net.padding != ir::PaddingMode::Symmetric {
            failures.push(format!("{name}: padding {}", net.padding.name()));
        }
        let crop = r["crop_size"].as_u64().expect("crop_size") as usize;
        if net.resolution != crop {
            failures.push(format!(
                "{name}: resolution {}, torchvision's crop {crop}",
                net.resolution
            ));
        }
        let mean: Vec<f64> = r["mean"]
            .as_array()
            .expect("mean")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        if net.normalize.as_ref().map(|n| &n.mean) != Some(&mean) {
            failures.push(format!("{name}: mean differs from torchvision's {mean:?}"));
        }
    }
    assert_eq!(checked, 11, "the eleven torchvision EfficientNets");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Zero-valued torchvision-named weights for `net`, with `classes` outputs.
fn zero_weights(net: &ir::Network) -> HashMap<String, Tensor> {
    torchvision_named(net)
        .into_iter()
        .map(|(name, shape)| {
            let t = Tensor::zeros(shape, DType::F32, &Device::Cpu).expect("zeros");
            (name, t)
        })
        .collect()
}

fn network(text: &str, name: &str) -> ir::Network {
    let compiled = compile(text).unwrap_or_else(|d| panic!("{d:?}"));
    compiled.network(Some(name)).expect("model").clone()
}

#[test]
fn torchvision_weights_are_recognised_with_any_class_count() {
    let nets = bundled();
    for name in ["efficientnet_b0", "efficientnet_v2_s"] {
        let tensors = zero_weights(&nets[name]);
        assert_eq!(
            torchvision::identify(&tensors).map(|n| n.name.as_str()),
            Some(name)
        );
    }
    // A torchvision B0 fine-tuned to 5 classes is still torchvision's B0.
    let five = network(
        &std::fs::read_to_string(root().join("specs/torchvision/efficientnet.effnet"))
            .expect("spec")
            .replace("classes 1000", "classes 5"),
        "efficientnet_b0",
    );
    let tensors = zero_weights(&five);
    assert_eq!(
        torchvision::identify(&tensors).map(|n| n.name.as_str()),
        Some("efficientnet_b0")
    );
    // timm's own names are not torchvision's.
    let timm: HashMap<String, Tensor> = five
        .tensors()
        .into_iter()
        .map(|t| {
            let z = Tensor::zeros(t.shape, DType::F32, &Device::Cpu).expect("zeros");
            (t.name, z)
        })
        .collect();
    assert!(!torchvision::has_torchvision_names(&timm));
}

#[test]
fn a_spec_with_other_eps_or_padding_is_an_error_that_names_both_values() {
    let dir = std::env::temp_dir().join(format!("effnet-torchvision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = std::fs::read_to_string(root().join("specs/torchvision/efficientnet.effnet"))
        .expect("spec");
    let tv_b0 = network(&text, "efficientnet_b0");
    let path = dir.join("tv_b0.safetensors");
    candle_core::safetensors::save(&zero_weights(&tv_b0), &path).expect("save");

    // torchvision's own spec, and timm's B0 (the same conventions), load.
    let timm_b0 = network(
        &std::fs::read_to_string(root().join("specs/efficientnet.effnet")).expect("spec"),
        "efficientnet_b0",
    );
    for net in [&tv_b0, &timm_b0] {
        let vb = weights::load(net, &path, DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", net.name));
        Network::from_ir(net, vb).expect("builds");
    }

    // The same network with TensorFlow's eps and padding: both settings are named.
    let tf_like = network(
        &text.replacen("eps = 1e-5", "eps = 1e-3", 1).replacen(
            "padding symmetric",
            "padding same",
            1,
        ),
        "efficientnet_b0",
    );
    let err = match weights::load(&tf_like, &path, DType::F32, &Device::Cpu) {
        Err(e) => e,
        Ok(_) => panic!("torchvision weights loaded into a `same`-padded eps 1e-3 spec"),
    };
    assert!(matches!(err, Error::TorchvisionConventions { .. }), "{err}");
    let msg = err.to_string();
    for want in [
        "torchvision's `efficientnet_b0`",
        "`norm batch(eps = 1e-3)`",
        "eps = 1e-5",
        "`padding same`",
        "--keep-spec-conventions",
        &path.display().to_string(),
    ] {
        assert!(msg.contains(want), "`{want}` missing from:\n{msg}");
    }

    // Unless the caller keeps the spec's settings.
    let keep = LoadOptions {
        keep_spec_conventions: true,
    };
    weights::load_with(&tf_like, &path, DType::F32, &Device::Cpu, keep)
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(dir);
}
