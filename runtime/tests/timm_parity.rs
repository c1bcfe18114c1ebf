//! Logits against timm's for small networks covering every block kind, both paddings, SE,
//! odd input sizes, stride 2 in fused and conv stages, and width/depth scaling. The fixtures
//! are made by `tools/timm_fixtures.py`: random weights, randomized BatchNorm statistics, a
//! fixed input and timm's logits, all in one safetensors file beside the spec.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use effnet_compiler::compile;
use effnet_runtime::weights::{read_safetensors, validate};
use effnet_runtime::{Network, Plan};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/runtime");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/runtime exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "effnet"))
        .collect();
    specs.sort();
    specs
}

/// The largest difference from timm's logits on the plan the facts choose (cpu-fused) and on
/// the candle plan (what other devices and train mode run): both run every fixture, dilated
/// ones included.
fn run_fixture(spec: &Path) -> f32 {
    let text = std::fs::read_to_string(spec).expect("spec");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", spec.display()));
    let net_ir = compiled.network(None).expect("one model");
    let weights = spec.with_extension("safetensors");
    let mut tensors = read_safetensors(&weights, &Device::Cpu).expect("fixture weights");
    let input = tensors.remove("__input__").expect("fixture input");
    let logits = tensors.remove("__logits__").expect("fixture logits");
    validate(net_ir, &tensors, &weights).unwrap_or_else(|e| panic!("{e}"));
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net = Network::from_ir(net_ir, vb).expect("network builds");
    let fused = net.forward_t(&input, false).expect("forward");
    let candle = net
        .forward_on(Plan::Candle, &input, false)
        .expect("candle forward");
    [fused, candle]
        .into_iter()
        .map(|ours| {
            assert_eq!(ours.dims(), logits.dims());
            (ours - &logits)
                .expect("same shape")
                .abs()
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_scalar::<f32>())
                .expect("max abs diff")
        })
        .fold(0.0, f32::max)
}

#[test]
fn logits_match_timm_for_every_fixture() {
    let specs = fixtures();
    assert!(
        specs.len() >= 6,
        "expected the timm fixtures, found {}",
        specs.len()
    );
    let mut report = Vec::new();
    for spec in &specs {
        let diff = run_fixture(spec);
        report.push(format!("{}: max |diff| {diff:e}", spec.display()));
        assert!(diff < 1e-4, "{}", report.join("\n"));
    }
    println!("{}", report.join("\n"));
}

/// The largest `|ours - timm|` over the largest `|timm|` of one map.
fn relative_diff(ours: &candle_core::Tensor, theirs: &candle_core::Tensor) -> f32 {
    let max_abs = |t: &candle_core::Tensor| {
        t.abs()
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("max abs")
    };
    let diff = (ours - theirs).expect("same shape");
    max_abs(&diff) / max_abs(theirs).max(f32::MIN_POSITIVE)
}

/// Feature maps against timm's `features_only=True` for the fixtures that carry them
/// (`<name>.features.safetensors`: `level{i}` and timm's feature_info in the metadata): every
/// level at once, the levels in a chosen order, and each level alone (the walk stops early).
#[test]
fn feature_maps_match_timm_features_only() {
    let with_maps: Vec<PathBuf> = fixtures()
        .into_iter()
        .filter(|p| p.with_extension("features.safetensors").is_file())
        .collect();
    assert!(
        with_maps.len() >= 3,
        "expected the feature-map fixtures, found {}",
        with_maps.len()
    );
    let mut report = Vec::new();
    for spec in &with_maps {
        let text = std::fs::read_to_string(spec).expect("spec");
        let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", spec.display()));
        let net_ir = compiled.network(None).expect("one model");
        let weights = spec.with_extension("safetensors");
        let mut tensors = read_safetensors(&weights, &Device::Cpu).expect("fixture weights");
        let input = tensors.remove("__input__").expect("fixture input");
        tensors.remove("__logits__");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net = Network::from_ir(net_ir, vb).expect("network builds");
        let maps_path = spec.with_extension("features.safetensors");
        let maps = read_safetensors(&maps_path, &Device::Cpu).expect("feature maps");
        let levels = net_ir.feature_info();
        assert_eq!(
            maps.len(),
            levels.len(),
            "{}: timm has {} levels, ours {levels:?}",
            maps_path.display(),
            maps.len()
        );
        let all: Vec<usize> = (0..levels.len()).collect();
        let ours = net.forward_pyramid(&input, &all).expect("pyramid");
        let reversed: Vec<usize> = all.iter().rev().copied().collect();
        let ours_reversed = net.forward_pyramid(&input, &reversed).expect("pyramid");
        for (i, level) in levels.iter().enumerate() {
            let theirs = &maps[&format!("level{i}")];
            assert_eq!(
                ours[i].dims(),
                theirs.dims(),
                "{}: level {level}",
                spec.display()
            );
            assert_eq!(theirs.dims()[1], level.channels);
            let rel = relative_diff(&ours[i], theirs);
            report.push(format!(
                "{} level {level}: max |diff| / max |timm| {rel:e}",
                spec.display()
            ));
            assert!(rel < 1e-5, "{}", report.join("\n"));
            assert_eq!(
                relative_diff(&ours_reversed[levels.len() - 1 - i], &ours[i]),
                0.0,
                "{}: level {i} in reverse order",
                spec.display()
            );
            let alone = net.forward_pyramid(&input, &[i]).expect("one level");
            assert_eq!(
                relative_diff(&alone[0], &ours[i]),
                0.0,
                "{}: level {i} alone",
                spec.display()
            );
        }
        let err = net
            .forward_pyramid(&input, &[levels.len()])
            .expect_err("out of range")
            .to_string();
        assert!(
            err.contains(&format!("no feature level {}", levels.len())) && err.contains("stride"),
            "{err}"
        );
    }
    println!("{}", report.join("\n"));
}
