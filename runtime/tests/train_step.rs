//! The training-step walk on the CPU kernels (`Plan::CpuStep`, NHWC, backward by hand)
//! against candle's autograd through the forward walk (`Plan::Candle`): same loss, same
//! gradient for every trainable tensor, same BatchNorm running statistics, with the same
//! drop-path and dropout masks.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_diff, values as vals};
use effnet_runtime::train::optim::Param;
use effnet_runtime::{Network, Plan, Purpose};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use common::{SAME, SYMMETRIC};

/// MixNet's options: mixed depthwise kernels (stride 2 with "same" padding, one kernel per
/// split), two-group 1x1 expansion and projection, a dense mixed expansion in an edge block,
/// `dsa` and per-stage activation. The hand-written step runs each mixed convolution as one
/// (its parts centred in zeros) and must cut each part's gradient out of that one's.
const MIXED: &str = r#"
model mixed {
    input 3 x 17
    classes 6
    activation relu
    padding same
    drop_path 0.2
    stem conv k3 s2 -> 16
    stage dsa    k3 s1 -> 16 x1
    stage ds     k3.5 p1.1 s1 -> 16 x1
    stage mbconv k3.5.7 a1.1 p1.1 e4 s2 -> 24 x2 se 0.5 act silu
    stage edge   k3.5 e4 p1.1 s2 -> 32 x1
    head conv k1 -> 48
}
"#;

/// `output_stride 8`: every block kind past the cap, dilated (2 to 8): the depthwise of `ds`
/// and `mbconv` (a 5x5 spanning 9 pixels of a 3x3 map) and the kxk convolution of `conv`,
/// `fused` and `edge`; the `ds` and `conv` blocks whose stride became 1 get their residual;
/// TensorFlow "same" padding (the dilated convolutions pad `d * (k - 1) / 2`), drop-path.
const DILATED: &str = r#"
model dilated {
    input 3 x 21
    classes 6
    activation silu
    padding same
    output_stride 8
    drop_path 0.2
    round channels(divisor = 4, min = 8, limit = 0)
    stem conv k3 s2 -> 8
    stage fused  k3 e4 s2 -> 12 x1
    stage mbconv k3 e3 s2 -> 12 x1
    stage ds     k3 s2 -> 12 x2 se 0.5
    stage mbconv k5 e3 s1 -> 16 x2 se 0.25
    stage conv   k3 s2 -> 16 x1 skip
    stage edge   k3 e2 s1 -> 16 x1
    stage fused  k3 e1 s2 -> 20 x1
    stage mbconv k3 e2 s1 -> 20 x1
    head conv k1 -> 24
}
"#;

fn build(spec: &str, dev: &Device) -> (Network, Vec<Param>) {
    let net = common::trainable_network(spec, dev);
    let params = common::trainable_params(&net);
    (net, params)
}

use common::soft_targets as targets;

fn compare(spec: &str, n: usize, size: usize) {
    compare_prepared(spec, n, size, |_| {});
}

/// `compare`, with both networks changed by `prepare` first (the same way).
fn compare_prepared(spec: &str, n: usize, size: usize, prepare: impl Fn(&mut Network)) {
    let dev = Device::Cpu;
    let (mut a, params_a) = build(spec, &dev);
    let (mut b, params_b) = build(spec, &dev);
    prepare(&mut a);
    prepare(&mut b);
    let probe = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).expect("x");
    assert_eq!(b.plan(&probe, Purpose::TrainStep).plan, Plan::CpuStep);
    let classes = a.ir.num_classes;
    // A fixed input: with ReLU a value rounded to either side of zero routes its gradient
    // differently on the two plans, so a random draw can land a kink between them.
    let x = common::tensor(&[n, 3, size, size], (n * 100 + size) as u64).expect("x");
    let t = targets(n, classes, &dev);

    // candle's autograd on network `a`.
    let mut rng_a = ChaCha8Rng::seed_from_u64(7);
    let (loss_a, grads_a) = a
        .loss_and_grads_on(Plan::Candle, &params_a, &x, &t, &mut rng_a)
        .expect("autograd");

    // The hand-written step on network `b`.
    let mut rng_b = ChaCha8Rng::seed_from_u64(7);
    let (loss_b, grads_b) = b
        .loss_and_grads_on(Plan::CpuStep, &params_b, &x, &t, &mut rng_b)
        .expect("step");
    assert!(
        (loss_a - loss_b).abs() < 1e-4 * loss_a.abs().max(1.0),
        "loss: autograd {loss_a}, hand-written {loss_b}"
    );
    // Both drew the same number of masks from their generators.
    assert_eq!(
        rand::Rng::random::<u64>(&mut rng_a),
        rand::Rng::random::<u64>(&mut rng_b)
    );

    let mut checked = 0;
    let mut gi = 0;
    for (ta, tb) in a.named_tensors().iter().zip(b.named_tensors().iter()) {
        assert_eq!(ta.name, tb.name);
        if ta.trainable {
            assert_eq!(params_a[gi].name, ta.name);
            let va = vals(&grads_a[gi]);
            assert_eq!(params_b[gi].name, tb.name);
            let vb = vals(&grads_b[gi]);
            gi += 1;
            let scale = va.iter().map(|v| v.abs()).fold(1e-4, f32::max);
            let d = max_diff(&va, &vb);
            assert!(
                d <= 2e-3 * scale,
                "{}: gradient differs by {d} (largest {scale})",
                ta.name
            );
            checked += 1;
        } else {
            let d = max_diff(&vals(&ta.tensor), &vals(&tb.tensor));
            assert!(d < 1e-4, "{}: running statistic differs by {d}", ta.name);
        }
    }
    assert_eq!(gi, params_b.len());
    assert!(checked > 20, "only {checked} gradients compared");
}

#[test]
fn hand_step_matches_autograd_symmetric_padding() {
    compare(SYMMETRIC, 6, 15);
}

#[test]
fn hand_step_matches_autograd_same_padding_every_block_kind() {
    compare(SAME, 5, 18);
    // An odd size: "same" pads asymmetrically on every stride-2 layer.
    compare(SAME, 3, 19);
}

#[test]
fn hand_step_matches_autograd_with_mixed_kernels() {
    compare(MIXED, 4, 17);
}

/// GELU (the exact, erf form) on the hand-written step: its forward and derivative against
/// candle's `gelu_erf` and autograd.
#[test]
fn hand_step_matches_autograd_with_gelu() {
    let gelu = SYMMETRIC.replace("classes 5", "classes 5\n    activation gelu");
    compare(&gelu, 6, 15);
}

#[test]
fn hand_step_matches_autograd_dilated_past_the_output_stride() {
    let dev = Device::Cpu;
    let (net, _) = build(DILATED, &dev);
    let dilations: Vec<usize> = net.ir.blocks().map(|b| b.dilation).collect();
    assert_eq!(dilations, [1, 1, 1, 2, 2, 2, 2, 4, 4, 8], "{}", net.ir);
    compare(DILATED, 4, 21);
}

/// Fine-tuning's frozen BatchNorm layers run in eval mode in a training step: normalized with
/// their running statistics (here moved away from the identity), which stay as they are, and
/// differentiated as the fixed affine map they then are. The stem, the first stage and the
/// head are frozen; the stages between train in train mode.
#[test]
fn hand_step_matches_autograd_with_frozen_batchnorm() {
    let freeze = |net: &mut Network| {
        let layers = std::iter::once(&mut net.stem)
            .chain(net.stages[0].iter_mut().flat_map(|b| b.layers.iter_mut()))
            .chain(net.head.as_mut());
        for (i, l) in layers.enumerate() {
            let c = l.bn.spec.channels;
            let mean: Vec<f32> = (0..c).map(|j| 0.05 * ((i + j) % 5) as f32 - 0.1).collect();
            let var: Vec<f32> = (0..c)
                .map(|j| 0.5 + 0.1 * ((i * 3 + j) % 7) as f32)
                .collect();
            let dev = Device::Cpu;
            l.bn.running()
                .expect("BatchNorm")
                .mean
                .set(&Tensor::from_vec(mean, c, &dev).expect("mean"))
                .expect("set mean");
            l.bn.running()
                .expect("BatchNorm")
                .var
                .set(&Tensor::from_vec(var, c, &dev).expect("var"))
                .expect("set var");
            l.bn.frozen = true;
        }
    };
    compare_prepared(SYMMETRIC, 6, 15, freeze);
    // The frozen statistics are the ones set, on both plans.
    let dev = Device::Cpu;
    for plan in [Plan::Candle, Plan::CpuStep] {
        let (mut net, params) = build(SYMMETRIC, &dev);
        freeze(&mut net);
        let before: Vec<Vec<f32>> = [&net.stem.bn, &net.head.as_ref().expect("head").bn]
            .iter()
            .flat_map(|bn| {
                [
                    vals(bn.running().expect("BatchNorm").mean.as_tensor()),
                    vals(bn.running().expect("BatchNorm").var.as_tensor()),
                ]
            })
            .collect();
        let x = Tensor::randn(0f32, 1.0, (4, 3, 15, 15), &dev).expect("x");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        net.loss_and_grads_on(plan, &params, &x, &targets(4, 5, &dev), &mut rng)
            .expect("step");
        let after: Vec<Vec<f32>> = [&net.stem.bn, &net.head.as_ref().expect("head").bn]
            .iter()
            .flat_map(|bn| {
                [
                    vals(bn.running().expect("BatchNorm").mean.as_tensor()),
                    vals(bn.running().expect("BatchNorm").var.as_tensor()),
                ]
            })
            .collect();
        assert_eq!(
            before, after,
            "{plan:?}: a frozen BatchNorm's statistics moved"
        );
        // An unfrozen one did move.
        let bn = &net.stages[1][0].layers[0].bn;
        assert_ne!(
            vals(bn.running().expect("BatchNorm").var.as_tensor()),
            vec![1.0; bn.spec.channels]
        );
    }
}

/// With the stem and the first stage's parameters frozen, the hand-written step stops its
/// backward at the second stage: their gradients stay zero, and every other gradient and the
/// loss are the ones of the full backward, bit for bit.
#[test]
fn hand_step_skips_the_backward_of_a_frozen_prefix() {
    let dev = Device::Cpu;
    let (a, params_a) = build(SYMMETRIC, &dev);
    let (b, mut params_b) = build(SYMMETRIC, &dev);
    let prefix = |name: &str| {
        name.starts_with("conv_stem.") || name.starts_with("bn1.") || name.starts_with("blocks.0.")
    };
    for p in &mut params_b {
        p.frozen = prefix(&p.name);
    }
    let x = Tensor::randn(0f32, 1.0, (4, 3, 15, 15), &dev).expect("x");
    let t = targets(4, 5, &dev);
    let (la, ga) = a
        .loss_and_grads_on(
            Plan::CpuStep,
            &params_a,
            &x,
            &t,
            &mut ChaCha8Rng::seed_from_u64(3),
        )
        .expect("full");
    let (lb, gb) = b
        .loss_and_grads_on(
            Plan::CpuStep,
            &params_b,
            &x,
            &t,
            &mut ChaCha8Rng::seed_from_u64(3),
        )
        .expect("frozen prefix");
    assert_eq!(la, lb);
    let mut skipped = 0;
    for ((p, ga), gb) in params_b.iter().zip(&ga).zip(&gb) {
        if prefix(&p.name) {
            assert!(
                vals(gb).iter().all(|&v| v == 0.0),
                "`{}` was computed",
                p.name
            );
            assert!(
                vals(ga).iter().any(|&v| v != 0.0),
                "`{}` is zero anyway",
                p.name
            );
            skipped += 1;
        } else {
            assert_eq!(vals(ga), vals(gb), "`{}`", p.name);
        }
    }
    assert!(skipped >= 6, "{skipped}");
    // A frozen block after a trainable one still passes its gradient on: nothing skipped.
    let (c, mut params_c) = build(SYMMETRIC, &dev);
    for p in &mut params_c {
        p.frozen = p.name.starts_with("blocks.0.");
    }
    let (_, gc) = c
        .loss_and_grads_on(
            Plan::CpuStep,
            &params_c,
            &x,
            &t,
            &mut ChaCha8Rng::seed_from_u64(3),
        )
        .expect("frozen middle");
    assert_eq!(
        gc.iter().map(vals).collect::<Vec<_>>(),
        ga.iter().map(vals).collect::<Vec<_>>()
    );
}

#[test]
fn hand_step_declines_what_it_cannot_run() {
    let dev = Device::Cpu;
    // Mish has no kernel: the plan says so, the hand-written step refuses it, and the
    // trainer's entry point falls back to candle's autograd and still trains.
    let mish = SYMMETRIC.replace("classes 5", "classes 5\n    activation mish");
    let (net, params) = build(&mish, &dev);
    let x = Tensor::zeros((2, 3, 15, 15), DType::F32, &dev).expect("x");
    let choice = net.plan(&x, Purpose::TrainStep);
    assert_eq!(choice.plan, Plan::Candle);
    let why = choice.fallback_reason.clone().expect("a reason");
    assert!(why.contains("mish"), "{why}");
    assert!(
        choice.to_string().starts_with("candle (fallback: "),
        "{choice}"
    );
    let t = targets(2, 5, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = net
        .loss_and_grads_on(Plan::CpuStep, &params, &x, &t, &mut rng)
        .expect_err("Mish on the hand-written step");
    assert!(e.to_string().contains("mish"), "{e}");
    let (loss, grads) = net
        .loss_and_grads(&params, &x, &t, &mut rng)
        .expect("mish through autograd");
    assert!(loss.is_finite() && grads.len() == params.len());
    // GroupNorm: no CPU kernel in inference or in the step; the reason names the layer, and
    // the fallbacks run (GroupNorm's train mode is its eval mode: no statistics to update).
    let gn = SYMMETRIC.replace("classes 5", "classes 5\n    norm group(size = 8)");
    let (ir, tensors) = common::plain_tensors(&gn);
    let plain = Network::from_ir(
        &ir,
        candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &dev),
    )
    .expect("network");
    let (net, params) = build(&gn, &dev);
    for (net, purpose) in [(&plain, Purpose::Infer), (&net, Purpose::TrainStep)] {
        let choice = net.plan(&x, purpose);
        assert_eq!(
            choice.to_string(),
            "candle (fallback: `bn1` is a GroupNorm, which has no cpu kernel)",
            "{purpose:?}"
        );
    }
    let e = plain
        .forward_on(Plan::CpuFused, &x, false)
        .expect_err("GroupNorm on the fused kernels");
    assert!(e.to_string().contains("GroupNorm"), "{e}");
    assert!(
        plain.forward_t(&x, false).is_ok(),
        "the candle fallback runs"
    );
    let e = net
        .loss_and_grads_on(Plan::CpuStep, &params, &x, &t, &mut rng)
        .expect_err("GroupNorm on the hand-written step");
    assert!(e.to_string().contains("GroupNorm"), "{e}");
    let (loss, grads) = net
        .loss_and_grads(&params, &x, &t, &mut rng)
        .expect("GroupNorm through autograd");
    assert!(loss.is_finite() && grads.len() == params.len());
    assert!(
        !net.named_tensors()
            .iter()
            .any(|t| t.name.contains("running")),
        "GroupNorm has no running statistics"
    );
    // f64 input: not the hand-written path either.
    let (net, _) = build(SYMMETRIC, &dev);
    let x64 = x.to_dtype(DType::F64).expect("f64");
    let choice = net.plan(&x64, Purpose::TrainStep);
    assert_eq!(choice.plan, Plan::Candle);
    assert!(choice.to_string().contains("f64"), "{choice}");
}

#[test]
fn hand_step_names_a_wrong_target_shape() {
    let dev = Device::Cpu;
    let (net, params) = build(SYMMETRIC, &dev);
    let x = Tensor::zeros((2, 3, 15, 15), DType::F32, &dev).expect("x");
    let t = targets(2, 4, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = net
        .loss_and_grads_on(Plan::CpuStep, &params, &x, &t, &mut rng)
        .expect_err("wrong targets");
    assert!(e.to_string().contains("targets must be [2, 5]"), "{e}");
}
