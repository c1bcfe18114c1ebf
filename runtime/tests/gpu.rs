//! On a GPU: the cuda-fused plan (effnet's CUDA kernels) against the candle plan on the CPU,
//! for every block kind, both paddings, odd sizes, batch 1 and 7, logits and stage features.
//! Needs a build with `--features cuda` and a visible GPU; anywhere else each test prints one
//! line saying why it skipped and passes. `tools/gpu-check.sh` runs this binary on the lent
//! GPU (the kernels' arithmetic is checked without a GPU by `effnet-cuda-emu`).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{max_diff, values as vals};
use effnet_runtime::{Network, Plan, Purpose};

/// Every block kind, "same" padding (asymmetric on stride 2), SE in MBConv and ds blocks, a
/// 5x5 depthwise, ReLU6 and hard-swish.
const SAME: &str = r#"
model same {
    input 3 x 19
    classes 7
    activation relu6
    padding same
    norm batch(eps = 1e-3, momentum = 0.01)
    stem conv k3 s2 -> 16
    stage conv   k3 s1 -> 16 x1 skip
    stage ds     k5 s1 -> 16 x1 se 0.25
    stage edge   k3 e2 s1 -> 16 x1
    stage fused  k3 e4 s2 -> 24 x2
    stage mbconv k5 e6 s2 -> 40 x2 se 0.25 act hard_swish
    head conv k1 -> 64
}
"#;

/// Fused-MBConv early, MBConv + SE later, symmetric padding, SiLU, a 1x1 head.
const SYMMETRIC: &str = r#"
model symmetric {
    input 3 x 21
    classes 5
    stem conv k3 s2 -> 16
    stage fused  k3 e1 s1 -> 16 x2 skip
    stage fused  k3 e4 s2 -> 24 x2
    stage mbconv k3 e4 s2 -> 40 x3 se 0.25
    head conv k1 -> 96
}
"#;

fn gpu() -> Option<Device> {
    if !cfg!(feature = "cuda") {
        eprintln!("skipped: this build has no CUDA (build with --features cuda)");
        return None;
    }
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no GPU ({e})");
            None
        }
    }
}

/// The spec's network on `devs` (the same weights on each: `common::plain_tensors`).
fn networks(spec: &str, devs: &[&Device]) -> Vec<Network> {
    let (ir, tensors) = common::plain_tensors(spec);
    devs.iter()
        .map(|d| {
            let on: HashMap<String, Tensor> = tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.to_device(d).expect("to device")))
                .collect();
            Network::from_ir(&ir, VarBuilder::from_tensors(on, DType::F32, d)).expect("net")
        })
        .collect()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    max_diff(a, b) / scale
}

#[test]
fn cuda_fused_matches_the_cpu_on_every_block_kind() {
    let Some(gpu) = gpu() else { return };
    for (spec, size) in [(SAME, 19), (SAME, 20), (SYMMETRIC, 21)] {
        let nets = networks(spec, &[&Device::Cpu, &gpu]);
        let (cpu_net, gpu_net) = (&nets[0], &nets[1]);
        for batch in [1, 7] {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu).expect("x");
            let xg = x.to_device(&gpu).expect("x to gpu");
            assert_eq!(gpu_net.plan(&xg, Purpose::Infer).plan, Plan::CudaFused);
            let want = vals(&cpu_net.forward_on(Plan::Candle, &x, false).expect("cpu"));
            let got = gpu_net.forward_t(&xg, false).expect("gpu");
            let got = vals(&got.to_device(&Device::Cpu).expect("to cpu"));
            let d = rel(&got, &want);
            assert!(
                d < 1e-4,
                "{size} px batch {batch}: logits differ by {d} (relative)"
            );

            let fc = cpu_net.forward_features_t(&x, false).expect("cpu features");
            let fg = gpu_net
                .forward_features_t(&xg, false)
                .expect("gpu features");
            for (i, (a, b)) in fg.iter().zip(&fc).enumerate() {
                let a = vals(&a.to_device(&Device::Cpu).expect("to cpu"));
                let d = rel(&a, &vals(b));
                assert!(
                    d < 1e-4,
                    "{size} px batch {batch}: stage {i} differs by {d}"
                );
            }
        }
    }
}

#[test]
fn the_candle_plan_runs_on_the_gpu_too() {
    let Some(gpu) = gpu() else { return };
    let nets = networks(SYMMETRIC, &[&Device::Cpu, &gpu]);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 21, 21), &Device::Cpu).expect("x");
    let xg = x.to_device(&gpu).expect("x to gpu");
    let want = vals(&nets[0].forward_on(Plan::Candle, &x, false).expect("cpu"));
    let got = nets[1]
        .forward_on(Plan::Candle, &xg, false)
        .expect("gpu candle");
    let d = rel(&vals(&got.to_device(&Device::Cpu).expect("to cpu")), &want);
    assert!(d < 1e-4, "candle on the GPU differs by {d}");
}
