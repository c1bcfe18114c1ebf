//! The train-mode forward walk: `forward_t(x, true)` (masks from the network's own generator)
//! and `forward_train(x, rng)` (the trainer's explicit generator) are one walk on the candle
//! plan, so with the same seed they give the same logits, gradients and running statistics;
//! a plan the facts do not allow is refused with the reason.

mod common;

use candle_core::{DType, Device, Tensor};
use common::values as vals;
use effnet_runtime::train::soft_cross_entropy;
use effnet_runtime::{Network, Plan, Purpose};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SPEC: &str = r#"
model parity {
    input 3 x 15
    classes 5
    normalize mean(0.5, 0.5, 0.5) std(0.5, 0.5, 0.5)
    dropout 0.3
    drop_path 0.3
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage fused  k3 e4 s2 -> 16 x1
    stage mbconv k3 e4 s2 -> 24 x2 se 0.25
    head conv k1 -> 32
}
"#;

fn build(dev: &Device) -> Network {
    common::trainable_network(SPEC, dev)
}

#[test]
fn own_and_explicit_generators_draw_the_same_train_forward() {
    let dev = Device::Cpu;
    // Two identical networks (same seed); `a` draws from its own generator.
    let mut a = build(&dev);
    let b = build(&dev);
    a.seed(11);
    let x = Tensor::randn(0f32, 1.0, (6, 3, 15, 15), &dev).expect("x");
    let t = (Tensor::ones((6, 5), DType::F32, &dev).expect("t") / 5.0).expect("t");
    assert_eq!(a.plan(&x, Purpose::TrainForward).plan, Plan::Candle);
    let la = a.forward_t(&x, true).expect("own generator");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let lb = b.forward_train(&x, &mut rng).expect("explicit generator");
    assert_eq!(
        vals(&la),
        vals(&lb),
        "the two generators drew different masks"
    );
    // Both generators are at the same point afterwards.
    assert_eq!(
        rand::Rng::random::<u64>(&mut a.rng_state()),
        rand::Rng::random::<u64>(&mut rng)
    );

    let ga = soft_cross_entropy(&la, &t)
        .and_then(|l| l.backward())
        .expect("grads a");
    let gb = soft_cross_entropy(&lb, &t)
        .and_then(|l| l.backward())
        .expect("grads b");
    for (ta, tb) in a.named_tensors().iter().zip(b.named_tensors().iter()) {
        assert_eq!(ta.name, tb.name);
        if ta.trainable {
            let va = vals(ga.get(&ta.tensor).expect("grad a"));
            let vb = vals(gb.get(&tb.tensor).expect("grad b"));
            assert_eq!(va, vb, "{}: gradients differ", ta.name);
        } else {
            assert_eq!(vals(&ta.tensor), vals(&tb.tensor), "{}", ta.name);
        }
    }
}

#[test]
fn a_plan_the_facts_do_not_allow_is_an_error_that_says_why() {
    let dev = Device::Cpu;
    // `Var` parameters: eval mode must stay differentiable, so the fused plan is refused.
    let net = build(&dev);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 15, 15), &dev).expect("x");
    let choice = net.plan(&x, Purpose::Infer);
    assert_eq!(choice.plan, Plan::Candle);
    let why = choice.fallback_reason.clone().expect("a reason");
    assert!(why.contains("training variables"), "{why}");
    let e = net
        .forward_on(Plan::CpuFused, &x, false)
        .expect_err("fused on variables");
    assert!(e.to_string().contains("training variables"), "{e}");
    // The cpu-step plan runs training steps, not forwards.
    let e = net
        .forward_on(Plan::CpuStep, &x, true)
        .expect_err("step plan");
    assert!(e.to_string().contains("cpu-step"), "{e}");
    // The candle plan runs anything.
    net.forward_on(Plan::Candle, &x, false).expect("candle");
}
