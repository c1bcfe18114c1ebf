//! `Network::profile_on` (`effnet bench --profile`): the profiled walk returns the plan's
//! logits, and its rows count every operation of the network once per call, by kind.

mod common;

use candle_core::Device;
use effnet_runtime::Plan;
use effnet_runtime::exec::profile::Profile;

#[test]
fn a_profiled_call_returns_the_logits_and_counts_every_operation() {
    let (ir, tensors) = common::plain_tensors(common::SAME);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
    let net = effnet_runtime::Network::from_ir(&ir, vb).expect("net");
    let x = common::tensor(&[2, 3, 19, 19], 7).expect("x");
    for plan in [Plan::CpuFused, Plan::Candle] {
        let want = common::values(&net.forward_on(plan, &x, false).expect("logits"));
        let mut profile = Profile::default();
        for _ in 0..3 {
            let got = net
                .profile_on(Some(plan), &x, &mut profile)
                .expect("profiled");
            assert_eq!(common::values(&got), want, "{plan}: the profiled logits");
        }
        assert_eq!(profile.calls, 3);
        let rows = profile.rows();
        let calls = |pred: &dyn Fn(&str) -> bool| -> usize {
            rows.iter().filter(|r| pred(&r.op)).map(|r| r.calls).sum()
        };
        let stages = net.stage_slices();
        let parts = net.parts(&stages);
        let layers = parts.layers().count();
        let convs = calls(&|op| {
            ["depthwise", "pointwise", "dense", "grouped"]
                .iter()
                .any(|k| op.starts_with(k))
        });
        assert_eq!(convs, layers, "{plan}: {rows:?}");
        let se = parts.blocks().filter(|b| b.se.is_some()).count();
        assert_eq!(calls(&|op| op == "squeeze-excitation"), se, "{plan}");
        assert_eq!(calls(&|op| op == "classifier"), 1, "{plan}");
        // `same` has 5x5 depthwise layers and stride-2 ones, each its own row.
        assert!(rows.iter().any(|r| r.op == "depthwise 5x5"), "{rows:?}");
        assert!(rows.iter().any(|r| r.op.ends_with(" s2")), "{rows:?}");
        assert!(rows.windows(2).all(|w| w[0].seconds >= w[1].seconds));
        assert!(rows.iter().all(|r| r.seconds > 0.0));
    }
}

#[test]
fn profiling_a_training_plan_is_refused_with_the_reason() {
    let (ir, tensors) = common::plain_tensors(common::SYMMETRIC);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
    let net = effnet_runtime::Network::from_ir(&ir, vb).expect("net");
    let x = common::tensor(&[1, 3, 15, 15], 1).expect("x");
    let e = net
        .profile_on(Some(Plan::CpuStep), &x, &mut Profile::default())
        .expect_err("a training plan");
    assert!(e.to_string().contains("cpu-step"), "{e}");
}

/// A profiled training step on the cpu-step plan: the same loss and gradients as the step
/// unprofiled, every layer's forward and backward counted, and the rest of the step in a row
/// of its own; the candle plan refused (its autograd has no walk to time).
#[test]
fn a_profiled_training_step_matches_the_step_and_counts_every_layer() {
    use effnet_runtime::Precision;
    use rand::SeedableRng;
    let net = common::trainable_network(common::SYMMETRIC, &Device::Cpu);
    let params = common::trainable_params(&net);
    let x = common::tensor(&[3, 3, 15, 15], 2).expect("x");
    let t = common::soft_targets(3, net.ir.num_classes, &Device::Cpu);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let (want_loss, want) = net
        .loss_and_grads_on(Plan::CpuStep, &params, &x, &t, &mut rng)
        .expect("step");
    // The running statistics moved; a fresh network takes the same step.
    let net = common::trainable_network(common::SYMMETRIC, &Device::Cpu);
    let params = common::trainable_params(&net);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut profile = Profile::default();
    let (loss, grads) = net
        .profile_step(
            Precision::F32,
            Some(Plan::CpuStep),
            &params,
            &x,
            &t,
            &mut rng,
            &mut profile,
        )
        .expect("profiled step");
    assert_eq!(loss, want_loss);
    for (a, b) in grads.iter().zip(&want) {
        assert_eq!(common::values(a), common::values(b));
    }
    let rows = profile.rows();
    let stages = net.stage_slices();
    let layers = net.parts(&stages).layers().count();
    let count = |prefix: &str| -> usize {
        rows.iter()
            .filter(|r| r.op.starts_with(prefix))
            .map(|r| r.calls)
            .sum()
    };
    assert_eq!(
        count("forward ") - count("forward squeeze"),
        layers,
        "{rows:?}"
    );
    assert_eq!(
        count("backward ") - count("backward squeeze"),
        layers,
        "{rows:?}"
    );
    assert_eq!(count("loss, classifier and the rest"), 1, "{rows:?}");
    let e = net
        .profile_step(
            Precision::F32,
            Some(Plan::Candle),
            &params,
            &x,
            &t,
            &mut rng,
            &mut Profile::default(),
        )
        .expect_err("the candle plan");
    assert!(e.to_string().contains("candle plan"), "{e}");
}
