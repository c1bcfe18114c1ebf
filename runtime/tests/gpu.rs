//! On a GPU: the cuda-fused plan (effnet's CUDA kernels) against the candle plan on the CPU,
//! for every block kind, both paddings, odd sizes, batch 1 and 7, logits and stage features;
//! the cuda-step plan against the cpu-step plan (one step's loss, gradients and BatchNorm
//! statistics; and twenty optimizer steps' losses within 1e-4); the fused optimizer kernels
//! against candle's ops on the GPU; bf16 and f16 inference against f32; cuDNN's three
//! convolution passes against candle on the CPU (a build with `--features cudnn`).
//! Needs a build with `--features cuda` and a visible GPU; anywhere else each test prints one
//! line saying why it skipped and passes. `tools/gpu-check.sh` runs this binary on the lent
//! GPU (the kernels' arithmetic is checked without a GPU by `effnet-cuda-emu`).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{max_diff, values as vals};
use effnet_compiler::ir::Optimizer as OptimizerSpec;
use effnet_runtime::train::optim::{Optimizer, Param};
use effnet_runtime::{Network, Plan, Purpose};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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

/// `--dtype bf16 | f16` on the GPU: the cuda-fused plan with half-precision weights, maps and
/// GEMMs against the f32 network on the CPU, within the bounds the emulated kernels meet
/// (`runtime/cuda-emu/tests/plans.rs`: 5e-3 measured for bf16, 6e-4 for f16).
#[test]
fn half_precision_inference_on_the_gpu_stays_near_f32() {
    let Some(gpu) = gpu() else { return };
    let (ir, tensors) = common::plain_tensors(SAME);
    let cpu = &networks(SAME, &[&Device::Cpu])[0];
    let x = Tensor::randn(0f32, 1.0, (3, 3, 19, 19), &Device::Cpu).expect("x");
    let want = vals(&cpu.forward_on(Plan::Candle, &x, false).expect("cpu"));
    for (dtype, bound) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
        let on: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.to_device(&gpu).expect("to device")))
            .collect();
        let net = Network::from_ir(&ir, VarBuilder::from_tensors(on, dtype, &gpu)).expect("net");
        let xg = x.to_device(&gpu).expect("x to gpu");
        assert_eq!(
            net.plan(&xg, Purpose::Infer).plan,
            Plan::CudaFused,
            "{dtype:?}"
        );
        let got = net.forward_t(&xg, false).expect("half on the gpu");
        let got = got
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&Device::Cpu));
        let d = rel(&vals(&got.expect("to cpu")), &want);
        eprintln!("{dtype:?} logits on the GPU against f32 on the CPU: {d:.2e} relative");
        assert!(d > 0.0 && d < bound, "{dtype:?}: {d} relative");
    }
}

/// The device set up as `effnet` sets it up (event tracking off, the pool keeping freed
/// memory), and the pool's high watermark counting a 64 MB tensor.
#[test]
fn the_configured_gpu_reports_its_peak_memory() {
    let Some(gpu) = gpu() else { return };
    effnet_runtime::exec::cuda::configure_device(&gpu).expect("configure");
    let t = Tensor::zeros((16, 1 << 20), DType::F32, &gpu).expect("64 MB");
    gpu.synchronize().expect("sync");
    let peak = effnet_runtime::exec::cuda::peak_device_bytes(&gpu);
    drop(t);
    let peak = peak.expect("the pool's high watermark");
    assert!(peak >= 64 << 20, "peak {peak} bytes");
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

/// The spec's network as training variables on `dev` (the same values on every device), and
/// its trainable parameters.
fn trainable(spec: &str, dev: &Device) -> (Network, Vec<Param>) {
    let (ir, tensors) = common::plain_tensors(spec);
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().expect("varmap");
        for (k, v) in &tensors {
            let t = v.to_device(dev).expect("to device");
            data.insert(k.clone(), Var::from_tensor(&t).expect("var"));
        }
    }
    let net = Network::from_ir(&ir, VarBuilder::from_varmap(&vm, DType::F32, dev)).expect("net");
    let params = common::trainable_params(&net);
    (net, params)
}

fn targets(n: usize, classes: usize) -> Tensor {
    common::soft_targets(n, classes, &Device::Cpu)
}

#[test]
fn cuda_step_matches_the_cpu_step_on_every_block_kind() {
    let Some(gpu) = gpu() else { return };
    for (spec, n, size) in [(SAME, 7, 19), (SAME, 1, 20), (SYMMETRIC, 5, 21)] {
        let (cpu_net, cpu_params) = trainable(spec, &Device::Cpu);
        let (gpu_net, gpu_params) = trainable(spec, &gpu);
        let x = Tensor::randn(0f32, 1.0, (n, 3, size, size), &Device::Cpu).expect("x");
        let t = targets(n, cpu_net.ir.num_classes);
        let (xg, tg) = (x.to_device(&gpu).expect("x"), t.to_device(&gpu).expect("t"));
        assert_eq!(gpu_net.plan(&xg, Purpose::TrainStep).plan, Plan::CudaStep);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (want, want_g) = cpu_net
            .loss_and_grads_on(Plan::CpuStep, &cpu_params, &x, &t, &mut rng)
            .expect("cpu step");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (got, got_g) = gpu_net
            .loss_and_grads(&gpu_params, &xg, &tg, &mut rng)
            .expect("cuda step");
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{size} px batch {n}: loss cpu {want}, cuda {got}"
        );
        for ((p, a), b) in cpu_params.iter().zip(&want_g).zip(&got_g) {
            let b = vals(&b.to_device(&Device::Cpu).expect("to cpu"));
            let d = rel(&b, &vals(a));
            assert!(
                d < 1e-3,
                "{size} px batch {n}: `{}` gradient differs by {d}",
                p.name
            );
        }
        for (a, b) in cpu_net.named_tensors().iter().zip(gpu_net.named_tensors()) {
            if !a.trainable {
                let b = vals(&b.tensor.to_device(&Device::Cpu).expect("to cpu"));
                let d = max_diff(&b, &vals(&a.tensor));
                assert!(d < 1e-4, "{size} px batch {n}: `{}` differs by {d}", a.name);
            }
        }
    }
}

/// The issue's check: the same seed and data, twenty steps of the trainer's optimizer (SGD
/// with Nesterov momentum and weight decay: on the GPU its fused kernel, on the CPU candle's
/// ops), the losses on CUDA (f32) within 1e-4 relative of the CPU's.
#[test]
fn twenty_training_steps_on_cuda_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (n, size) = (8, 21);
    let (cpu_net, cpu_params) = trainable(SYMMETRIC, &Device::Cpu);
    let (gpu_net, gpu_params) = trainable(SYMMETRIC, &gpu);
    let spec = OptimizerSpec::Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    let mut cpu_opt = Optimizer::new(spec.clone(), &cpu_params).expect("optimizer");
    let mut gpu_opt = Optimizer::new(spec, &gpu_params).expect("optimizer");
    let (mut rng_c, mut rng_g) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
    for step in 0..20 {
        let x = Tensor::randn(0f32, 1.0, (n, 3, size, size), &Device::Cpu).expect("x");
        let t = targets(n, cpu_net.ir.num_classes);
        let (xg, tg) = (x.to_device(&gpu).expect("x"), t.to_device(&gpu).expect("t"));
        let (lc, gc) = cpu_net
            .loss_and_grads(&cpu_params, &x, &t, &mut rng_c)
            .expect("cpu step");
        let (lg, gg) = gpu_net
            .loss_and_grads(&gpu_params, &xg, &tg, &mut rng_g)
            .expect("cuda step");
        assert!(
            (lg - lc).abs() <= 1e-4 * lc.abs().max(1e-3),
            "step {step}: loss cpu {lc}, cuda {lg}"
        );
        cpu_opt.step(&cpu_params, &gc, 0.02).expect("cpu update");
        gpu_opt.step(&gpu_params, &gg, 0.02).expect("cuda update");
    }
}

/// The fused optimizer kernels on the GPU against candle's ops on the same GPU, five updates
/// of every parameter of a network by each optimizer, with clipping's factor.
#[test]
fn fused_optimizer_updates_match_candle_ops_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let fused = effnet_runtime::exec::cuda::kernels_on(&gpu);
    assert!(fused.is_some(), "no kernels on {gpu:?}");
    for (name, spec) in common::optimizer_specs() {
        let (_, a) = trainable(SYMMETRIC, &gpu);
        let (_, b) = trainable(SYMMETRIC, &gpu);
        let mut oa = Optimizer::new(spec.clone(), &a).expect("optimizer");
        let mut ob = Optimizer::new(spec.clone(), &b).expect("optimizer");
        for _ in 0..5 {
            let grads: Vec<Tensor> = a
                .iter()
                .map(|p| Tensor::randn(0f32, 1.0, p.var.as_tensor().dims(), &gpu).expect("grad"))
                .collect();
            oa.step_on(&a, &grads, 0.01, 0.5, fused).expect("fused");
            ob.step_on(&b, &grads, 0.01, 0.5, None).expect("candle");
        }
        for (pa, pb) in a.iter().zip(&b) {
            let (wa, wb) = (vals(pa.var.as_tensor()), vals(pb.var.as_tensor()));
            let d = rel(&wa, &wb);
            assert!(d < 1e-5, "{name}: `{}` {d:e} apart", pa.name);
        }
    }
}

/// The convolution `g` (symmetric padding) of NHWC `x` with `[o, k, k, c]` `w` on the CPU by
/// candle, and its input and weight gradients for the output gradient `dy`: the reference
/// for the cuDNN library.
fn cpu_conv(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &effnet_runtime::ops::ConvGeom,
) -> (Tensor, Tensor, Tensor) {
    let nchw = x
        .permute((0, 3, 1, 2))
        .and_then(|t| t.pad_with_zeros(2, g.pad.top, g.pad.bottom))
        .and_then(|t| t.pad_with_zeros(3, g.pad.left, g.pad.right))
        .and_then(|t| t.contiguous())
        .expect("x");
    let xv = Var::from_tensor(&nchw).expect("x var");
    let wv = Var::from_tensor(&w.permute((0, 3, 1, 2)).expect("w").contiguous().expect("w"))
        .expect("w var");
    let y = xv.conv2d(&wv, 0, g.stride, g.dilation, 1).expect("conv");
    let dyc = dy.permute((0, 3, 1, 2)).expect("dy");
    let grads = (&y * &dyc)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward");
    let dx = grads.get(&xv).expect("dx");
    let (_, _, hp, wp) = dx.dims4().expect("dims");
    let dx = dx
        .narrow(2, g.pad.top, hp - g.pad.top - g.pad.bottom)
        .and_then(|t| t.narrow(3, g.pad.left, wp - g.pad.left - g.pad.right))
        .and_then(|t| t.permute((0, 2, 3, 1)))
        .expect("dx");
    let dw = grads
        .get(&wv)
        .expect("dw")
        .permute((0, 2, 3, 1))
        .expect("dw");
    (y.permute((0, 2, 3, 1)).expect("y"), dx, dw)
}

/// cuDNN's forward, backward-data and backward-filter (the `cudnn` feature) against candle's
/// convolution on the CPU: the stem's and Fused-MBConv's windows, stride 2, dilation, odd and
/// non-square sizes, batch 1 and 7; f32 within 1e-4 (FMA math, no TF32), bf16 within 2e-2.
/// Each shape runs twice: the second call takes the plan the first chose.
#[test]
fn cudnn_convolutions_match_candle_on_the_cpu() {
    use effnet_runtime::exec::cuda::DenseConv;
    use effnet_runtime::ops::{ConvGeom, Padding2d};
    let Some(gpu) = gpu() else { return };
    let Some(lib) = DenseConv::Cudnn.library() else {
        eprintln!("skipped: this build has no cuDNN (build with --features cudnn)");
        return;
    };
    let cases = [
        // (n, c, h, w, o, k, stride, dilation, pad)
        (1, 3, 19, 19, 24, 3, 2, 1, 1),
        (7, 3, 20, 17, 16, 3, 2, 1, 0),
        (7, 24, 15, 13, 96, 3, 1, 1, 1),
        (3, 16, 11, 9, 24, 5, 2, 1, 2),
        (2, 8, 13, 13, 12, 3, 1, 2, 2),
    ];
    for (i, &(n, c, h, w, o, k, stride, dilation, pad)) in cases.iter().enumerate() {
        let g = ConvGeom {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            dilation,
            pad: Padding2d::symmetric(pad),
        };
        let (oh, ow) = g.out_hw().expect("out");
        let x = common::tensor(&[n, h, w, c], 10 + i as u64).expect("x");
        let wt = common::tensor(&[o, k, k, c], 20 + i as u64).expect("w");
        let dy = common::tensor(&[n, oh, ow, o], 30 + i as u64).expect("dy");
        let (y, dx, dw) = cpu_conv(&x, &wt, &dy, &g);
        for (dtype, bound) in [(DType::F32, 1e-4f32), (DType::BF16, 2e-2)] {
            let on = |t: &Tensor| {
                t.to_dtype(dtype)
                    .and_then(|t| t.to_device(&gpu))
                    .expect("to gpu")
            };
            let back = |t: Tensor| {
                vals(
                    &t.to_dtype(DType::F32)
                        .and_then(|t| t.to_device(&Device::Cpu))
                        .expect("back"),
                )
            };
            for round in 0..2 {
                let got = [
                    ("forward", lib.forward(&on(&x), &on(&wt), &g), &y),
                    (
                        "input gradient",
                        lib.input_grad(&on(&dy), &on(&wt), &g),
                        &dx,
                    ),
                    (
                        "weight gradient",
                        lib.weight_grad(&on(&x), &on(&dy), &g),
                        &dw,
                    ),
                ];
                for (what, got, want) in got {
                    let got = got.unwrap_or_else(|e| panic!("case {i} {what}: {e}"));
                    assert_eq!(got.dims(), want.dims(), "case {i} {what}");
                    assert_eq!(got.dtype(), dtype, "case {i} {what}");
                    let d = rel(&back(got), &vals(want));
                    assert!(
                        d < bound,
                        "case {i} ({g:?}) {what} in {dtype:?}, call {round}: relative error {d}"
                    );
                }
            }
        }
    }
}
