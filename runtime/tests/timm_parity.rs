//! Logits against timm's for small networks covering every block kind, both paddings, SE,
//! odd input sizes, stride 2 in fused and conv stages, and width/depth scaling. The fixtures
//! are made by `tools/timm_fixtures.py`: random weights, randomized BatchNorm statistics, a
//! fixed input and timm's logits, all in one safetensors file beside the spec.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use effnet_compiler::compile;
use effnet_runtime::Network;
use effnet_runtime::weights::{read_safetensors, validate};

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
    let ours = net.forward_t(&input, false).expect("forward");
    assert_eq!(ours.dims(), logits.dims());
    (ours - logits)
        .expect("same shape")
        .abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max abs diff")
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
