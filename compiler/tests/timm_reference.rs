//! Every bundled spec against timm: the parameter count, the (name, shape) list of the
//! `state_dict` in order, the norm eps and GroupNorm groups, block classes, resolutions and the feature pyramid
//! (`features_only`). The reference files
//! are produced by `tools/timm_reference.py` with timm itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use effnet_compiler::ir::{BlockKind, Network, PaddingMode};
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
        if path.extension().is_some_and(|e| e == "json")
            && name != "arch_defs"
            && name != "output_stride"
        {
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
        // Normalization: timm's GroupNorm layers with their group counts, in module order;
        // every other model is BatchNorm throughout.
        let theirs: Vec<(String, usize)> = r
            .get("norm_groups")
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .map(|g| {
                        let path = g[0].as_str().expect("path").to_string();
                        (path, g[1].as_u64().expect("groups") as usize)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let norms = std::iter::once(&net.stem.bn)
            .chain(
                net.blocks()
                    .flat_map(|b| b.layers.conv_bns().into_iter().map(|l| l.bn)),
            )
            .chain(net.head.as_ref().map(|h| &h.bn));
        let ours: Vec<(String, usize)> = norms
            .filter_map(|n| n.groups().map(|g| (n.path.clone(), g)))
            .collect();
        if ours != theirs {
            failures.push(format!(
                "{name}: GroupNorm layers {ours:?} vs timm {theirs:?}"
            ));
        }
        // Block classes: ConvBnAct / DepthwiseSeparableConv / EdgeResidual / InvertedResidual
        // (CondConvResidual where it routes experts).
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
                BlockKind::MbConv if b.layers.routing().is_some() => "CondConvResidual",
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
        // Feature pyramid: timm's `features_only=True` feature_info, level by level. timm's
        // `stage` counts the stem as 0, so `blocks.S` is its stage S + 1.
        let theirs: Vec<(usize, String, usize, usize, usize)> = r["feature_info"]
            .as_array()
            .expect("feature_info")
            .iter()
            .map(|f| {
                let n = |i: usize| f[i].as_u64().expect("number") as usize;
                let module = f[1].as_str().expect("module").to_string();
                (n(0), module, n(2), n(3), n(4))
            })
            .collect();
        let ours: Vec<(usize, String, usize, usize, usize)> = net
            .feature_info()
            .into_iter()
            .map(|l| {
                let stage = l.stage.map_or(0, |s| s + 1);
                (l.index, l.module, l.stride, l.channels, stage)
            })
            .collect();
        if ours != theirs {
            failures.push(format!(
                "{name}: feature levels {ours:?} vs timm {theirs:?}"
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

/// `timm.create_model(name, output_stride=8 / 16)` against the bundled spec derived with that
/// `output_stride` (`tests/reference/timm/output_stride.json`): every block's kxk convolution
/// with timm's stride, dilation and padding, and the feature levels with their capped
/// reductions, over every block kind, both paddings and a stage of several block strings.
#[test]
fn output_stride_strides_dilations_and_levels_match_timm() {
    let path = root().join("tests/reference/timm/output_stride.json");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("readable")).expect("json");
    let models = r["models"].as_object().expect("models");
    assert!(models.len() >= 5, "{} models", models.len());
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, per) in models {
        // The spec file that defines the model, with a model derived from it at each stride.
        let text = std::fs::read_dir(root().join("specs"))
            .expect("specs/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "effnet"))
            .map(|p| std::fs::read_to_string(p).expect("spec"))
            .find(|t| t.contains(&format!("model {name} ")))
            .unwrap_or_else(|| panic!("no bundled spec defines {name}"));
        for (os, want) in per.as_object().expect("output strides") {
            let src = format!("{text}\nmodel os_check = {name} {{\n    output_stride {os}\n}}\n");
            let compiled = compile(&src).unwrap_or_else(|d| panic!("{name} at {os}: {d:?}"));
            let net = compiled.network(Some("os_check")).expect("derived model");
            let n = |v: &Value| v.as_u64().expect("number") as usize;
            if net.stem.conv.stride != n(&want["stem_stride"]) {
                failures.push(format!("{name} at {os}: stem stride"));
            }
            // Each block's kxk convolution: the one its SE follows.
            let ours: Vec<String> = net
                .blocks()
                .map(|b| {
                    let l = b.layers.conv_bns()[b.layers.se_after()];
                    let c = l.conv;
                    let pad = if net.padding == PaddingMode::Same && c.stride > 1 {
                        "dynamic".to_string()
                    } else {
                        let (p, _, _) = net.padding.resolve(64, c.kernel, c.stride, c.dilation);
                        p.to_string()
                    };
                    format!(
                        "{}.{} s{} d{} p{pad}",
                        b.path, l.conv_name, c.stride, c.dilation
                    )
                })
                .collect();
            let theirs: Vec<String> = want["convs"]
                .as_array()
                .expect("convs")
                .iter()
                .map(|c| {
                    let pad = match &c[3] {
                        Value::String(s) => s.clone(),
                        v => n(v).to_string(),
                    };
                    format!(
                        "{} s{} d{} p{pad}",
                        c[0].as_str().expect("path"),
                        n(&c[1]),
                        n(&c[2])
                    )
                })
                .collect();
            if ours != theirs {
                failures.push(format!(
                    "{name} at {os}:\n  ours {ours:?}\n  timm {theirs:?}"
                ));
            }
            let ours: Vec<(usize, String, usize, usize)> = net
                .feature_info()
                .into_iter()
                .map(|l| (l.index, l.module, l.stride, l.channels))
                .collect();
            let theirs: Vec<(usize, String, usize, usize)> = want["feature_info"]
                .as_array()
                .expect("feature_info")
                .iter()
                .map(|f| {
                    (
                        n(&f[0]),
                        f[1].as_str().expect("module").to_string(),
                        n(&f[2]),
                        n(&f[3]),
                    )
                })
                .collect();
            if ours != theirs {
                failures.push(format!(
                    "{name} at {os}: levels {ours:?} vs timm {theirs:?}"
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} networks checked");
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

/// The summary's parameters are the network's (timm's count) for every bundled model, and a
/// CondConv model's multiply-adds are its plain twin's plus the routing linears and the mixing
/// of every sample's kernels (one multiply-add per expert weight).
#[test]
fn summaries_count_every_parameter_and_condconvs_routing() {
    let nets = bundled();
    for (name, net) in &nets {
        let s = effnet_compiler::analysis::summarize(net, net.resolution);
        assert_eq!(s.params, net.param_count(), "{name}");
    }
    let cc = &nets["efficientnet_cc_b0_8e"];
    let plain = &nets["efficientnet_b0"];
    let (a, b) = (
        effnet_compiler::analysis::summarize(cc, 224),
        effnet_compiler::analysis::summarize(plain, 224),
    );
    let mut extra = 0u64;
    for blk in cc.blocks() {
        if let Some(r) = blk.layers.routing() {
            extra += (r.in_features * r.out_features) as u64;
            for l in blk.layers.conv_bns() {
                extra += (l.conv.experts * l.conv.weight_shape().iter().product::<usize>()) as u64;
            }
        }
    }
    assert_eq!(
        cc.blocks().filter(|b| b.layers.routing().is_some()).count(),
        8
    );
    assert_eq!(a.macs, b.macs + extra);
}

/// The levels of a network whose first stage downsamples start at the stem (timm takes `bn1`'s
/// output then), a stride-1 stage is not a level of its own, and a bad index names the valid ones.
#[test]
fn feature_levels_follow_timms_rule() {
    let text = "model m {\n    classes 10\n    stem conv k3 s2 -> 8\n    stage conv k3 e1 s2 -> 16 x2\n    stage mbconv k3 e4 s2 -> 24 x2 se 0.25\n    stage mbconv k3 e4 s1 -> 32 x1 se 0.25\n    stage mbconv k3 e6 s2 -> 48 x2 se 0.25\n    head conv k1 -> 64\n}\n";
    let compiled = compile(text).expect("compiles");
    let net = compiled.network(None).expect("one model");
    let levels: Vec<(Option<usize>, String, usize, usize)> = net
        .feature_info()
        .into_iter()
        .map(|l| (l.stage, l.module, l.stride, l.channels))
        .collect();
    let want = [
        (None, "bn1", 2, 8),
        (Some(0), "blocks.0", 4, 16),
        (Some(2), "blocks.2", 8, 32),
        (Some(3), "blocks.3", 16, 48),
    ];
    let want: Vec<(Option<usize>, String, usize, usize)> = want
        .iter()
        .map(|&(s, m, st, c)| (s, m.to_string(), st, c))
        .collect();
    assert_eq!(levels, want);
    let picked = net.feature_levels(&[3, 1]).expect("valid levels");
    assert_eq!(
        picked.iter().map(|l| l.index).collect::<Vec<_>>(),
        vec![3, 1]
    );
    let err = net.feature_levels(&[1, 4]).expect_err("4 is out of range");
    assert!(err.contains("no feature level 4"), "{err}");
    assert!(
        err.contains("3 (`blocks.3`, stride 16, 48 channels)"),
        "{err}"
    );
    let err = net.feature_levels(&[2, 2]).expect_err("twice");
    assert!(err.contains("level 2 is requested twice"), "{err}");
    assert!(net.feature_levels(&[]).is_err());
    // The summary lists the same levels with their sizes at its resolution.
    let s = effnet_compiler::analysis::summarize(net, 64);
    let sizes: Vec<[usize; 3]> = s.features.iter().map(|f| f.output).collect();
    assert_eq!(
        sizes,
        vec![[8, 32, 32], [16, 16, 16], [32, 8, 8], [48, 4, 4]]
    );
}
