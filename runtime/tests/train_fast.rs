//! The fused training forward (`Network::forward_train`) against the layers' own train mode
//! (`forward_t(x, true)`): same logits, same gradients, same BatchNorm running statistics.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{max_diff, values as vals};
use effnet_runtime::Network;
use effnet_runtime::train::soft_cross_entropy;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SPEC: &str = r#"
model parity {
    input 3 x 15
    classes 5
    normalize mean(0.5, 0.5, 0.5) std(0.5, 0.5, 0.5)
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
fn fused_train_forward_matches_the_layers() {
    let dev = Device::Cpu;
    // Two identical networks (same seed), one per path.
    let a = build(&dev);
    let b = build(&dev);
    let x = Tensor::randn(0f32, 1.0, (6, 3, 15, 15), &dev).expect("x");
    let t = (Tensor::ones((6, 5), DType::F32, &dev).expect("t") / 5.0).expect("t");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let la = a.forward_t(&x, true).expect("layers");
    let lb = b.forward_train(&x, &mut rng).expect("fused");
    let d = max_diff(&vals(&la), &vals(&lb));
    assert!(d < 1e-4, "logits differ by {d}");

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
            let scale = va.iter().map(|v| v.abs()).fold(1e-3, f32::max);
            let d = max_diff(&va, &vb);
            assert!(
                d <= 2e-3 * scale,
                "{}: gradient differs by {d} (scale {scale})",
                ta.name
            );
        } else {
            let d = max_diff(&vals(&ta.tensor), &vals(&tb.tensor));
            assert!(d < 1e-5, "{}: running statistic differs by {d}", ta.name);
        }
    }
}

#[test]
fn fused_batchnorm_gradient_matches_finite_differences() {
    // d/dx of sum(BN(x) * r) for a random r, checked by central differences in f32.
    let dev = Device::Cpu;
    let net = build(&dev);
    let bn = &net.stem.bn;
    let x0 = Tensor::randn(0f32, 1.0, (3, 8, 2, 2), &dev).expect("x");
    let r = Tensor::randn(0f32, 1.0, (3, 8, 2, 2), &dev).expect("r");
    let xv = Var::from_tensor(&x0).expect("var");
    let f = |x: &Tensor| -> Tensor {
        effnet_runtime::train::fast::batch_norm_train(bn, x)
            .and_then(|y| y * &r)
            .and_then(|y| y.sum_all())
            .expect("f")
    };
    let g = f(xv.as_tensor()).backward().expect("backward");
    let gx = vals(g.get(xv.as_tensor()).expect("dx"));
    let base = vals(&x0);
    let eps = 1e-2f32;
    for k in [0usize, 5, 17, 40, 95] {
        let mut p = base.clone();
        p[k] += eps;
        let mut m = base.clone();
        m[k] -= eps;
        let fp = f(&Tensor::from_vec(p, (3, 8, 2, 2), &dev).expect("p"))
            .to_scalar::<f32>()
            .expect("fp");
        let fm = f(&Tensor::from_vec(m, (3, 8, 2, 2), &dev).expect("m"))
            .to_scalar::<f32>()
            .expect("fm");
        let num = (fp - fm) / (2.0 * eps);
        assert!(
            (num - gx[k]).abs() < 2e-2,
            "x[{k}]: numeric {num}, analytic {}",
            gx[k]
        );
    }
}

#[test]
fn fused_batchnorm_activation_gradients_match_the_unfused_composition() {
    // BN followed by each activation, fused in one op (or, for GELU, applied after it),
    // against BN then the activation as separate candle ops: values and input gradients.
    use effnet_compiler::ir::Activation;
    use effnet_runtime::layers::activate;
    use effnet_runtime::train::fast::{batch_norm_act_train, batch_norm_train};
    let dev = Device::Cpu;
    let net = build(&dev);
    let bn = &net.stem.bn;
    let x0 = Tensor::randn(0f32, 1.0, (3, 8, 3, 3), &dev).expect("x");
    let r = Tensor::randn(0f32, 1.0, (3, 8, 3, 3), &dev).expect("r");
    for (_, a) in Activation::ALL {
        let run = |fused: bool| -> (Vec<f32>, Vec<f32>) {
            let xv = Var::from_tensor(&x0).expect("var");
            let y = if fused {
                batch_norm_act_train(bn, xv.as_tensor(), Some(a))
            } else {
                batch_norm_train(bn, xv.as_tensor()).and_then(|y| activate(&y, a))
            }
            .expect("forward");
            let g = (&y * &r)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward");
            (vals(&y), vals(g.get(xv.as_tensor()).expect("dx")))
        };
        let (y1, g1) = run(true);
        let (y2, g2) = run(false);
        assert!(max_diff(&y1, &y2) < 1e-5, "{a:?} values");
        assert!(max_diff(&g1, &g2) < 1e-4, "{a:?} gradients");
    }
}
