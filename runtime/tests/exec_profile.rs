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
            let got = net.profile_on(Some(plan), &x, &mut profile).expect("profiled");
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
