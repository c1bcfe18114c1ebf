//! Eval mode on the fused CPU kernels against the layers' candle ops, including after a
//! layer's weight is replaced (the fused path keeps its weights prepared between calls).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{max_diff, values as vals};
use effnet_runtime::{Network, Plan, Purpose};

const SPEC: &str = r#"
model fused_eval {
    input 3 x 21
    classes 7
    normalize mean(0.5, 0.5, 0.5) std(0.5, 0.5, 0.5)
    stem conv k3 s2 -> 16
    stage fused  k3 e1 s1 -> 16 x2 skip
    stage fused  k3 e4 s2 -> 24 x2
    stage mbconv k3 e4 s2 -> 40 x2 se 0.25
    stage mbconv k5 e6 s1 -> 72 x1 se 0.25
    head conv k1 -> 200
}
"#;

/// The spec's network with plain (non-`Var`) weights, so that eval mode takes the fused
/// kernels, with BatchNorm statistics away from the identity.
fn plain_network(dev: &Device) -> Network {
    let (ir, tensors) = common::plain_tensors(SPEC);
    Network::from_ir(&ir, VarBuilder::from_tensors(tensors, DType::F32, dev)).expect("net")
}

/// Eval logits on the candle plan, the reference.
fn reference(net: &Network, x: &Tensor) -> Vec<f32> {
    vals(&net.forward_on(Plan::Candle, x, false).expect("reference"))
}

#[test]
fn fused_eval_matches_the_layers_and_follows_new_weights() {
    let dev = Device::Cpu;
    let mut net = plain_network(&dev);
    let x = Tensor::randn(0f32, 1.0, (5, 3, 21, 21), &dev).expect("x");
    assert_eq!(net.plan(&x, Purpose::Infer).plan, Plan::CpuFused);
    let fused = vals(&net.forward_t(&x, false).expect("fused"));
    let want = reference(&net, &x);
    let d = max_diff(&fused, &want);
    assert!(d < 1e-4, "fused eval differs from the layers by {d}");
    // Twice: the second call runs on the weights prepared by the first.
    let again = vals(&net.forward_t(&x, false).expect("fused again"));
    assert_eq!(fused, again);

    // A new weight for the head (a 1x1 convolution) and the stem (3x3, stride 2).
    let head = net.head.as_mut().expect("head");
    let w = head
        .conv
        .plain_weight()
        .affine(-0.5, 0.01)
        .expect("head weight");
    head.conv.set_weight(w);
    let w = net
        .stem
        .conv
        .plain_weight()
        .affine(1.5, 0.0)
        .expect("stem weight");
    net.stem.conv.set_weight(w);
    let fused2 = vals(&net.forward_t(&x, false).expect("fused, new weights"));
    let want2 = reference(&net, &x);
    let d = max_diff(&fused2, &want2);
    assert!(d < 1e-4, "fused eval with new weights differs by {d}");
    assert!(
        max_diff(&fused2, &fused) > 1e-3,
        "the new weights changed nothing: stale prepared weights"
    );
}

/// GELU (the exact, erf form) in the fused kernels' epilogues (the GEMM, depthwise and SE
/// paths) against candle's `gelu_erf`.
#[test]
fn fused_eval_runs_gelu() {
    let dev = Device::Cpu;
    let spec = SPEC.replace("classes 7", "classes 7\n    activation gelu");
    let (ir, tensors) = common::plain_tensors(&spec);
    let net =
        Network::from_ir(&ir, VarBuilder::from_tensors(tensors, DType::F32, &dev)).expect("net");
    let x = Tensor::randn(0f32, 1.0, (3, 3, 21, 21), &dev).expect("x");
    assert_eq!(net.plan(&x, Purpose::Infer).plan, Plan::CpuFused);
    let fused = vals(&net.forward_t(&x, false).expect("fused"));
    let want = reference(&net, &x);
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = max_diff(&fused, &want);
    assert!(d < 1e-4 * scale.max(1.0), "GELU: fused differs by {d}");
}
