//! ONNX export, checked by running the exported files in tract (an ONNX runtime that shares
//! no code with effnet) against effnet's own logits and timm's: every timm fixture (every
//! block kind, both paddings, SE, odd sizes), every activation in the operators of an old and
//! a new opset, a dynamic batch and resolution with TensorFlow `same` padding, normalization
//! in the graph, timm's names on the initializers, onnxruntime's logits for the same exports
//! (`tests/fixtures/onnx/onnxruntime.json`, made by `tools/onnx_reference.py`), and the errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use effnet_compiler::compile;
use effnet_runtime::Network;
use effnet_runtime::export::{self, ExportError, ExportOptions, Size};
use effnet_runtime::weights::{read_safetensors, validate};

/// Runs an ONNX file in tract at the input's concrete shape.
mod tract_run {
    use tract_onnx::prelude::*;

    pub fn logits(onnx: &[u8], dims: &[usize], data: Vec<f32>) -> Vec<f32> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .expect("tract reads the exported file")
            .with_input_fact(0, f32::fact(dims).into())
            .expect("input fact")
            .into_optimized()
            .expect("tract optimizes the graph")
            .into_runnable()
            .expect("tract plans the graph");
        let input = tract_ndarray::ArrayD::from_shape_vec(dims.to_vec(), data)
            .expect("input shape")
            .into_tensor();
        let out = plan.run(tvec!(input.into())).expect("tract runs the graph");
        out[0]
            .to_array_view::<f32>()
            .expect("f32 logits")
            .iter()
            .copied()
            .collect()
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/runtime")
}

/// A timm fixture: the network with its weights, timm's input and timm's logits.
fn fixture(name: &str) -> (Network, Tensor, Tensor) {
    let spec = fixture_dir().join(format!("{name}.effnet"));
    let text = std::fs::read_to_string(&spec).expect("spec");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", spec.display()));
    let ir = compiled.network(None).expect("one model");
    let weights = spec.with_extension("safetensors");
    let mut tensors = read_safetensors(&weights, &Device::Cpu).expect("fixture weights");
    let input = tensors.remove("__input__").expect("fixture input");
    let logits = tensors.remove("__logits__").expect("fixture logits");
    validate(ir, &tensors, &weights).unwrap_or_else(|e| panic!("{e}"));
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    (Network::from_ir(ir, vb).expect("network"), input, logits)
}

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("tests/fixtures/runtime")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "effnet"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn export_bytes(net: &Network, options: &ExportOptions) -> Vec<u8> {
    let model = export::export(net, options).unwrap_or_else(|e| panic!("export: {e}"));
    export::to_bytes(&model)
}

/// tract's logits for `x` through the exported `onnx`.
fn tract_logits(onnx: &[u8], x: &Tensor) -> Vec<f32> {
    tract_run::logits(onnx, x.dims(), common::values(x))
}

fn effnet_logits(net: &Network, x: &Tensor) -> Vec<f32> {
    common::values(&net.forward_t(x, false).expect("effnet forward"))
}

fn fixed(net: &Network, opset: i64, resolution: usize) -> ExportOptions {
    ExportOptions {
        opset,
        resolution: Size::Fixed(resolution),
        ..ExportOptions::for_network(&net.ir)
    }
}

/// Whether the network has CondConv blocks, whose export needs a fixed batch.
fn conditional(net: &Network) -> bool {
    net.ir.blocks().any(|b| b.layers.routing().is_some())
}

/// `options` with the batch of `x` fixed where the network needs it (CondConv).
fn batch_for(net: &Network, x: &Tensor, options: ExportOptions) -> ExportOptions {
    if conditional(net) {
        ExportOptions {
            batch: Size::Fixed(x.dims()[0]),
            ..options
        }
    } else {
        options
    }
}

/// f32 summation order alone: logits are O(1) (the fixtures' README).
const TOL: f32 = 1e-5;

#[test]
fn every_timm_fixture_runs_in_tract_as_in_effnet_and_timm() {
    let names = fixture_names();
    assert!(names.len() >= 8, "expected the timm fixtures: {names:?}");
    let mut report = Vec::new();
    for name in &names {
        let (net, x, timm) = fixture(name);
        let options = batch_for(&net, &x, fixed(&net, export::DEFAULT_OPSET, x.dims()[3]));
        let onnx = export_bytes(&net, &options);
        let ours = tract_logits(&onnx, &x);
        let vs_effnet = common::max_diff(&ours, &effnet_logits(&net, &x));
        let vs_timm = common::max_diff(&ours, &common::values(&timm));
        report.push(format!(
            "{name}: tract vs effnet {vs_effnet:e}, vs timm {vs_timm:e}"
        ));
        assert!(vs_effnet < TOL && vs_timm < TOL, "{}", report.join("\n"));
    }
    println!("{}", report.join("\n"));
}

/// onnxruntime's logits for effnet's export of each fixture, written by
/// `tools/onnx_reference.py` (which also checks them against timm).
#[test]
fn exports_match_the_committed_onnxruntime_logits() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/onnx/onnxruntime.json");
    let text = std::fs::read_to_string(&path).expect("tests/fixtures/onnx/onnxruntime.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let entries = doc["fixtures"].as_array().expect("fixtures");
    assert!(entries.len() >= 8, "{} entries", entries.len());
    for e in entries {
        let name = e["fixture"].as_str().expect("fixture name");
        let opset = e["opset"].as_i64().expect("opset");
        let dynamic = e["resolution"] == "dynamic";
        let (net, x, _) = fixture(name);
        let mut options = batch_for(&net, &x, fixed(&net, opset, x.dims()[3]));
        if dynamic {
            options.resolution = Size::Dynamic;
        }
        let ort: Vec<f32> = e["onnxruntime_logits"]
            .as_array()
            .expect("logits")
            .iter()
            .flat_map(|row| row.as_array().expect("row").clone())
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        let ours = tract_logits(&export_bytes(&net, &options), &x);
        let diff = common::max_diff(&ours, &ort);
        assert!(
            diff < TOL,
            "{name} opset {opset}: tract vs onnxruntime {diff:e}"
        );
    }
}

/// CondConv (timm's batch-into-groups formulation): a fixed batch, at a fixed or a dynamic
/// resolution (TensorFlow `same` padding decided at run time on the folded input), matches
/// effnet; a dynamic batch is refused, naming the first conditional layer.
#[test]
fn condconv_exports_with_a_fixed_batch_and_refuses_a_dynamic_one() {
    let (net, x, timm) = fixture("fx_cc_same33");
    assert!(conditional(&net));
    let options = ExportOptions {
        batch: Size::Fixed(2),
        resolution: Size::Dynamic,
        ..ExportOptions::for_network(&net.ir)
    };
    let onnx = export_bytes(&net, &options);
    let d = common::max_diff(&tract_logits(&onnx, &x), &common::values(&timm));
    assert!(d < TOL, "vs timm {d:e}");
    // Another size at the same batch: the padding of the stride-2 CondConv depthwise follows.
    let other = common::tensor(&[2, 3, 40, 40], 7).expect("input");
    let d = common::max_diff(&tract_logits(&onnx, &other), &effnet_logits(&net, &other));
    assert!(d < TOL, "40x40 vs effnet {d:e}");
    let err = export::export(&net, &ExportOptions::for_network(&net.ir))
        .expect_err("a dynamic batch cannot be grouped");
    let text = err.to_string();
    assert!(
        text.contains("`blocks.2.0.conv_pw` is a CondConv convolution") && text.contains("--batch"),
        "{text}"
    );
}

#[test]
fn dynamic_batch_and_resolution_pad_same_at_run_time() {
    // TensorFlow `same` padding from odd input 67: stride-2 convolutions pad 1/1 on 67 and 17
    // but 0/1 on 34; other sizes pad otherwise, and one export must get each right.
    let (net, _, _) = fixture("fx_v2b_same67");
    let options = ExportOptions {
        resolution: Size::Dynamic,
        ..ExportOptions::for_network(&net.ir)
    };
    let onnx = export_bytes(&net, &options);
    for (n, r, seed) in [(2, 67, 1), (3, 64, 2), (1, 45, 3)] {
        let x = common::tensor(&[n, 3, r, r], seed).expect("input");
        let diff = common::max_diff(&tract_logits(&onnx, &x), &effnet_logits(&net, &x));
        assert!(diff < TOL, "batch {n}, {r}x{r}: {diff:e}");
    }
}

/// A network with every activation of the language in its stages and SE, both kinds of
/// residual block and stride 2, as `activation` replaces `ACT`.
fn activation_spec(act: &str) -> String {
    format!(
        "model acts {{
    input 3 x 32
    classes 7
    activation {act}
    norm batch(eps = 1e-3, momentum = 0.1)
    padding same
    stem conv k3 s2 -> 8
    stage ds     k3    s1 -> 8  x1 se 0.25
    stage fused  k3 e4 s2 -> 16 x2 se 0.25
    stage mbconv k5 e4 s2 -> 24 x2 se 0.25
    head conv k1 -> 32
}}"
    )
}

fn random_network(spec: &str) -> Network {
    let (ir, tensors) = common::plain_tensors(spec);
    Network::from_ir(
        &ir,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .expect("network")
}

#[test]
fn every_activation_exports_in_old_and_new_opsets() {
    let x = common::tensor(&[2, 3, 32, 32], 9).expect("input");
    for act in ["silu", "relu", "relu6", "hard_swish", "gelu", "mish"] {
        let net = random_network(&activation_spec(act));
        let want = effnet_logits(&net, &x);
        // 13: HardSwish as HardSigmoid and Mul, GELU through Erf, Mish as Softplus, Tanh and
        // Mul; 17: HardSwish itself. (GELU and Mish as one operator need opsets 20 and 18,
        // which tract does not read; onnxruntime runs them in tools/onnx_reference.py.)
        for opset in [export::MIN_OPSET, 13, export::DEFAULT_OPSET] {
            let onnx = export_bytes(&net, &fixed(&net, opset, 32));
            let model = export::from_bytes(&onnx[..]).expect("decodes");
            let ops: BTreeSet<String> = model
                .graph
                .expect("graph")
                .node
                .iter()
                .map(|n| n.op_type.clone().unwrap_or_default())
                .collect();
            match (act, opset >= 14) {
                ("hard_swish", true) => assert!(ops.contains("HardSwish"), "{ops:?}"),
                ("hard_swish", false) => assert!(ops.contains("HardSigmoid"), "{ops:?}"),
                ("gelu", _) => assert!(ops.contains("Erf"), "{ops:?}"),
                ("relu6", _) => assert!(ops.contains("Clip"), "{ops:?}"),
                ("mish", _) => assert!(ops.contains("Softplus") && ops.contains("Tanh"), "{ops:?}"),
                _ => {}
            }
            let diff = common::max_diff(&tract_logits(&onnx, &x), &want);
            assert!(diff < TOL, "{act} at opset {opset}: {diff:e}");
        }
        let native = export::export(&net, &fixed(&net, 20, 32)).expect("opset 20");
        let native: BTreeSet<String> = native
            .graph
            .expect("graph")
            .node
            .iter()
            .map(|n| n.op_type.clone().unwrap_or_default())
            .collect();
        assert_eq!(native.contains("Gelu"), act == "gelu", "{act} at opset 20");
        assert_eq!(native.contains("Mish"), act == "mish", "{act} at opset 20");
    }
}

#[test]
fn normalization_can_be_part_of_the_graph() {
    let spec = activation_spec("silu").replace(
        "padding same",
        "padding same\n    normalize mean(0.485, 0.456, 0.406) std(0.229, 0.224, 0.225)",
    );
    let net = random_network(&spec);
    let pixels = common::tensor(&[2, 3, 32, 32], 4)
        .and_then(|t| t.affine(0.5, 0.5))
        .expect("pixels in [0, 1]");
    let mean = Tensor::new(&[0.485f32, 0.456, 0.406], &Device::Cpu)
        .and_then(|t| t.reshape((1, 3, 1, 1)))
        .expect("mean");
    let std = Tensor::new(&[0.229f32, 0.224, 0.225], &Device::Cpu)
        .and_then(|t| t.reshape((1, 3, 1, 1)))
        .expect("std");
    let normalized = pixels
        .broadcast_sub(&mean)
        .and_then(|t| t.broadcast_div(&std))
        .expect("normalized");
    let want = effnet_logits(&net, &normalized);
    let with = export_bytes(
        &net,
        &ExportOptions {
            normalize: true,
            ..fixed(&net, export::DEFAULT_OPSET, 32)
        },
    );
    let diff = common::max_diff(&tract_logits(&with, &pixels), &want);
    assert!(diff < TOL, "normalization in the graph: {diff:e}");
    // Without it the graph takes the normalized input, as `effnet run` does.
    let without = export_bytes(&net, &fixed(&net, export::DEFAULT_OPSET, 32));
    let diff = common::max_diff(&tract_logits(&without, &normalized), &want);
    assert!(diff < TOL, "normalization outside the graph: {diff:e}");
    let meta: BTreeMap<String, String> = export::from_bytes(&without[..])
        .expect("decodes")
        .metadata_props
        .into_iter()
        .map(|p| (p.key.unwrap_or_default(), p.value.unwrap_or_default()))
        .collect();
    assert_eq!(meta["effnet.normalize_in_graph"], "false");
    assert_eq!(meta["effnet.mean"], "0.485,0.456,0.406");
    assert_eq!(meta["effnet.std"], "0.229,0.224,0.225");
}

#[test]
fn initializers_are_the_networks_tensors_under_timms_names() {
    let (net, _, _) = fixture("fx_v2s_sym64");
    let onnx = export_bytes(&net, &ExportOptions::for_network(&net.ir));
    let model = export::from_bytes(&onnx[..]).expect("decodes");
    assert_eq!(model.opset_import[0].version, Some(export::DEFAULT_OPSET));
    assert_eq!(model.ir_version, Some(8));
    let graph = model.graph.expect("graph");
    let found: BTreeMap<String, Vec<usize>> = graph
        .initializer
        .iter()
        .map(|t| {
            (
                t.name.clone().unwrap_or_default(),
                t.dims.iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    let want: BTreeMap<String, Vec<usize>> = net
        .ir
        .tensors()
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    assert_eq!(found, want);
    // Every value of every tensor, bit for bit (the weights are f32 already).
    for t in &graph.initializer {
        let name = t.name.as_deref().unwrap_or_default();
        let ours = net
            .named_tensors()
            .into_iter()
            .find(|n| n.name == name)
            .expect("named tensor");
        let bytes: Vec<u8> = common::values(&ours.tensor)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(t.raw_data.as_deref(), Some(&bytes[..]), "{name}");
    }
    // Standard operators only, in the default domain.
    let standard = [
        "Add",
        "BatchNormalization",
        "Conv",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "Mul",
        "Sigmoid",
    ];
    for n in &graph.node {
        assert!(
            standard.contains(&n.op_type.as_deref().unwrap_or_default()),
            "{:?}",
            n.op_type
        );
        assert!(n.domain.as_deref().unwrap_or_default().is_empty());
    }
    // Depthwise convolutions are grouped Convs.
    let dw = graph
        .node
        .iter()
        .find(|n| n.name.as_deref() == Some("blocks.2.0.conv_dw"))
        .expect("blocks.2.0.conv_dw");
    let group = dw
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("group"))
        .and_then(|a| a.i);
    assert_eq!(group, Some(64));
}

#[test]
fn same_padding_is_explicit_at_a_fixed_resolution() {
    let (net, _, _) = fixture("fx_v2b_same67");
    let pads = |options: &ExportOptions| -> BTreeMap<String, Vec<i64>> {
        let model = export::export(&net, options).expect("export");
        model
            .graph
            .expect("graph")
            .node
            .into_iter()
            .filter(|n| n.op_type.as_deref() == Some("Conv"))
            .filter_map(|n| {
                let p = n
                    .attribute
                    .iter()
                    .find(|a| a.name.as_deref() == Some("pads"))?;
                Some((n.name.clone().unwrap_or_default(), p.ints.clone()))
            })
            .collect()
    };
    // 67 -> 34 (stride 2 pads 1/1), 34 -> 17 (stride 2 pads 0 before, 1 after).
    let at67 = pads(&fixed(&net, export::DEFAULT_OPSET, 67));
    assert_eq!(at67["conv_stem"], vec![1, 1, 1, 1]);
    assert_eq!(at67["blocks.1.0.conv_exp"], vec![0, 0, 1, 1]);
    let dynamic = pads(&ExportOptions {
        resolution: Size::Dynamic,
        ..ExportOptions::for_network(&net.ir)
    });
    // Stride 2 pads at run time (auto_pad), stride 1 as before.
    assert!(!dynamic.contains_key("conv_stem"));
    assert_eq!(dynamic["blocks.0.0.conv"], at67["blocks.0.0.conv"]);
}

/// A dilated convolution (past `output_stride`) has ONNX's `dilations` and pads for the
/// pixels its kernel spans, at a fixed and at a dynamic resolution; undilated ones carry no
/// `dilations` (the default). The dynamic export runs in tract at other sizes as effnet does.
#[test]
fn dilated_convolutions_export_with_dilations_and_their_padding() {
    let (net, _, _) = fixture("fx_os8_same29");
    let conv_attrs = |options: &ExportOptions| -> BTreeMap<String, BTreeMap<String, Vec<i64>>> {
        let model = export::export(&net, options).expect("export");
        model
            .graph
            .expect("graph")
            .node
            .into_iter()
            .filter(|n| n.op_type.as_deref() == Some("Conv"))
            .map(|n| {
                let attrs = n
                    .attribute
                    .iter()
                    .map(|a| (a.name.clone().unwrap_or_default(), a.ints.clone()))
                    .collect();
                (n.name.clone().unwrap_or_default(), attrs)
            })
            .collect()
    };
    for options in [
        fixed(&net, export::DEFAULT_OPSET, 29),
        ExportOptions {
            resolution: Size::Dynamic,
            ..ExportOptions::for_network(&net.ir)
        },
    ] {
        let convs = conv_attrs(&options);
        // Depthwise of a ds block at dilation 2, a 5x5 depthwise at 4, a conv at 8.
        for (path, d, pad) in [
            ("blocks.3.1.conv_dw", 2, 2),
            ("blocks.4.0.conv", 2, 2),
            ("blocks.5.1.conv_dw", 4, 8),
            ("blocks.6.0.conv_exp", 4, 4),
            ("blocks.7.0.conv_dw", 8, 8),
        ] {
            let attrs = &convs[path];
            assert_eq!(attrs["dilations"], vec![d, d], "{path}");
            assert_eq!(attrs["pads"], vec![pad; 4], "{path}");
            assert_eq!(attrs["strides"], vec![1, 1], "{path}");
        }
        // The block whose stride became dilation convolves undilated, at stride 1.
        assert!(!convs["blocks.3.0.conv_dw"].contains_key("dilations"));
        assert_eq!(convs["blocks.3.0.conv_dw"]["strides"], vec![1, 1]);
        assert!(!convs["conv_stem"].contains_key("dilations"));
    }
    let onnx = export_bytes(
        &net,
        &ExportOptions {
            resolution: Size::Dynamic,
            ..ExportOptions::for_network(&net.ir)
        },
    );
    // (At 17x17 tract itself panics in its im2col, on the 3x3 map of a 17-pixel kernel.)
    for (n, r, seed) in [(2, 29, 1), (1, 40, 2), (3, 33, 3)] {
        let x = common::tensor(&[n, 3, r, r], seed).expect("input");
        let ours = effnet_logits(&net, &x);
        // Away from the input the fixture's BatchNorm was calibrated on, the logits are larger
        // than O(1): f32 summation order, relative to them.
        let scale = ours.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = common::max_diff(&tract_logits(&onnx, &x), &ours);
        assert!(
            diff < TOL * scale,
            "batch {n}, {r}x{r}: {diff:e} (logits up to {scale})"
        );
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let (net, _, _) = fixture("fx_v1_relu32");
    let base = ExportOptions::for_network(&net.ir);
    for opset in [10, 29] {
        let e = export::export(&net, &ExportOptions { opset, ..base }).expect_err("opset");
        assert!(matches!(e, ExportError::Opset(o) if o == opset));
        assert!(e.to_string().contains("opsets 11 to 28"), "{e}");
    }
    let e = export::export(
        &net,
        &ExportOptions {
            normalize: true,
            ..base
        },
    )
    .expect_err("no normalize line");
    assert!(e.to_string().contains("no `normalize` line"), "{e}");
    let e = export::export(
        &net,
        &ExportOptions {
            batch: Size::Fixed(0),
            ..base
        },
    )
    .expect_err("batch 0");
    assert!(e.to_string().contains("batch of 0"), "{e}");
}
