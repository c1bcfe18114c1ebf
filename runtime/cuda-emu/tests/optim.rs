//! The fused optimizer and EMA kernels (one launch a tensor), run on the CPU ([`EMU`]), against
//! the optimizers' candle ops (`effnet_runtime::train::optim`, themselves checked against
//! PyTorch in `runtime/tests/train_optim.rs`): every optimizer and form, weight decay on and
//! off by tensor, per-tensor learning-rate scales, a tensor frozen for a while (its own step
//! count, AdamW's bias correction), gradient clipping's factor, switching between the two
//! paths, and the state saved and restored mid-run.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};

use candle_core::{Device, Tensor, Var};
use effnet_compiler::ir::Optimizer as OptimizerSpec;
use effnet_cuda_emu::EMU;
use effnet_runtime::exec::cuda::CudaKernels;
use effnet_runtime::nn::NamedTensor;
use effnet_runtime::train::ema::Ema;
use effnet_runtime::train::optim::{Optimizer, Param};

const SHAPES: [&[usize]; 4] = [&[8, 3, 3, 3], &[8], &[5, 8, 1, 1], &[300]];

/// The same parameters twice (one set per path): conv weights (decayed) and 1-D ones (not),
/// the third at a tenth of the learning rate.
fn params() -> Vec<Param> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, dims)| {
            let t = common::tensor(dims, i as u64).expect("tensor");
            let mut p = Param::new(format!("p{i}"), Var::from_tensor(&t).expect("var"));
            if i == 2 {
                p.lr_scale = 0.1;
            }
            p
        })
        .collect()
}

fn grads(step: usize) -> Vec<Tensor> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, dims)| common::tensor(dims, 1000 + 10 * step as u64 + i as u64).expect("grad"))
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flatten").to_vec1().expect("f32")
}

/// The largest difference between two tensor lists relative to the largest magnitude.
fn rel_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    let (mut diff, mut scale) = (0.0f32, 1e-12f32);
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.dims(), y.dims());
        for (u, v) in flat(x).iter().zip(flat(y)) {
            diff = diff.max((u - v).abs());
            scale = scale.max(v.abs());
        }
    }
    diff / scale
}

fn weights(ps: &[Param]) -> Vec<Tensor> {
    ps.iter().map(|p| p.var.as_tensor().clone()).collect()
}

fn state(opt: &Optimizer, ps: &[Param]) -> Vec<Tensor> {
    let mut s = opt.state(ps).expect("state");
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s.into_iter()
        .filter(|(n, _)| !n.ends_with(".step"))
        .map(|(_, t)| t)
        .collect()
}

/// Eight steps; parameter 1 frozen for steps 2-4; clipping's factor on odd steps.
fn run(
    spec: &OptimizerSpec,
    path: impl Fn(usize) -> Option<&'static dyn CudaKernels>,
) -> (Optimizer, Vec<Param>) {
    let mut ps = params();
    let mut opt = Optimizer::new(spec.clone(), &ps).expect("optimizer");
    for step in 0..8 {
        ps[1].frozen = (2..5).contains(&step);
        let scale = if step % 2 == 1 { 0.37 } else { 1.0 };
        let lr = 0.05 / (1.0 + step as f64);
        opt.step_on(&ps, &grads(step), lr, scale, path(step))
            .expect("step");
    }
    (opt, ps)
}

const EMU_KERNELS: &dyn CudaKernels = &EMU;

#[test]
fn fused_updates_match_candle_ops_for_every_optimizer() {
    for (name, spec) in common::optimizer_specs() {
        let (want_opt, want) = run(&spec, |_| None);
        let (got_opt, got) = run(&spec, |_| Some(EMU_KERNELS));
        let dw = rel_diff(&weights(&got), &weights(&want));
        let ds = rel_diff(&state(&got_opt, &got), &state(&want_opt, &want));
        assert!(dw < 1e-6, "{name}: weights {dw:e} apart");
        assert!(ds < 1e-6, "{name}: state {ds:e} apart");
        assert_eq!(got_opt.param_steps, want_opt.param_steps, "{name}");
        // The update moved the weights (the comparison is not of two unchanged copies).
        let moved = rel_diff(&weights(&got), &weights(&params()));
        assert!(moved > 1e-3, "{name}: the weights moved only {moved:e}");
    }
}

#[test]
fn fused_and_candle_steps_interleave_and_the_state_survives_a_checkpoint() {
    for (name, spec) in common::optimizer_specs() {
        let (_, want) = run(&spec, |_| None);
        // Candle's ops for steps 3 and 4, the kernels otherwise: the packed state must follow.
        let (_, mixed) = run(&spec, |s| (!(3..5).contains(&s)).then_some(EMU_KERNELS));
        let d = rel_diff(&weights(&mixed), &weights(&want));
        assert!(d < 1e-6, "{name}: interleaved, {d:e} apart");

        // Four fused steps, the state saved and loaded into a fresh optimizer, four more.
        let mut ps = params();
        let mut opt = Optimizer::new(spec.clone(), &ps).expect("optimizer");
        for step in 0..8 {
            if step == 4 {
                // Through a file, as a checkpoint goes: the slots are views into the kernels'
                // packed output (offsets and all).
                let path = std::env::temp_dir().join(format!(
                    "effnet-optim-{}-{}.safetensors",
                    std::process::id(),
                    name.replace(' ', "-")
                ));
                let state: HashMap<String, Tensor> =
                    opt.state(&ps).expect("state").into_iter().collect();
                candle_core::safetensors::save(&state, &path).expect("save");
                let saved = candle_core::safetensors::load(&path, &Device::Cpu).expect("load");
                std::fs::remove_file(&path).expect("remove");
                let mut fresh = Optimizer::new(spec.clone(), &ps).expect("optimizer");
                fresh
                    .load_state(&ps, saved, opt.steps, "test")
                    .expect("load");
                opt = fresh;
            }
            ps[1].frozen = (2..5).contains(&step);
            let scale = if step % 2 == 1 { 0.37 } else { 1.0 };
            let lr = 0.05 / (1.0 + step as f64);
            opt.step_on(&ps, &grads(step), lr, scale, Some(EMU_KERNELS))
                .expect("step");
        }
        let d = rel_diff(&weights(&ps), &weights(&want));
        assert!(d < 1e-6, "{name}: resumed, {d:e} apart");
    }
}

#[test]
fn fused_optimizer_refuses_a_wrong_dtype_or_size_with_the_tensor_named() {
    let spec = OptimizerSpec::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let ps = params();
    let mut opt = Optimizer::new(spec, &ps).expect("optimizer");
    let mut gs = grads(0);
    gs[2] = gs[2].narrow(0, 0, 4).expect("narrow");
    let err = opt
        .step_on(&ps, &gs, 0.1, 1.0, Some(EMU_KERNELS))
        .expect_err("a gradient of the wrong size");
    assert!(err.to_string().contains("the gradient"), "{err}");
    let mut gs = grads(0);
    gs[0] = gs[0].to_dtype(candle_core::DType::F64).expect("f64");
    let err = opt
        .step_on(&ps, &gs, 0.1, 1.0, Some(EMU_KERNELS))
        .expect_err("an f64 gradient");
    assert!(err.to_string().contains("expected f32"), "{err}");
}

#[test]
fn fused_ema_matches_candle_ops_and_skips_frozen_tensors() {
    let start: Vec<NamedTensor> = params()
        .into_iter()
        .map(|p| NamedTensor {
            name: p.name,
            tensor: p.var.as_tensor().clone(),
            trainable: true,
        })
        .collect();
    let mut want = Ema::new(0.99, &start).expect("ema");
    let mut got = want.clone();
    let frozen: HashSet<String> = ["p1".to_string()].into();
    for step in 0..5 {
        let current: Vec<NamedTensor> = start
            .iter()
            .zip(grads(step))
            .map(|(t, g)| NamedTensor {
                name: t.name.clone(),
                tensor: g,
                trainable: true,
            })
            .collect();
        want.update_on(&current, &frozen, None).expect("candle");
        got.update_on(&current, &frozen, Some(EMU_KERNELS))
            .expect("fused");
    }
    let ts = |e: &Ema| e.tensors.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    let d = rel_diff(&ts(&got), &ts(&want));
    assert!(d < 1e-6, "EMA {d:e} apart");
    assert_eq!(
        flat(&got.tensors[1].1),
        flat(&start[1].tensor),
        "frozen moved"
    );
    assert!(rel_diff(&ts(&got), &ts(&Ema::new(0.99, &start).expect("ema"))) > 1e-2);
}
