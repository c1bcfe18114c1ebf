//! Timing probe for the training step (ignored by default):
//! `cargo test --release -p effnet-runtime --test train_speed -- --ignored --nocapture`
//! with `SPEC`, `SIZE`, `BATCH`, `STEPS` in the environment.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use effnet_compiler::compile;
use effnet_runtime::Network;
use effnet_runtime::train::{
    DEFAULT_OPTIMIZER, Optimizer, Param, init::init_varmap, soft_cross_entropy,
};

#[test]
#[ignore]
fn step_time() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let spec = env("SPEC", "specs/efficientnetv2_nano.effnet");
    let size: usize = env("SIZE", "16").parse().expect("SIZE");
    let batch: usize = env("BATCH", "64").parse().expect("BATCH");
    let steps: usize = env("STEPS", "10").parse().expect("STEPS");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&spec);
    let text = std::fs::read_to_string(&path).expect("spec");
    let compiled = compile(&text).expect("compiles");
    let ir = compiled.network(None).expect("model");
    let dev = Device::Cpu;
    let vm = init_varmap(ir, 0, &dev).expect("init");
    let net = Network::from_ir(
        ir,
        candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .expect("net");
    let params: Vec<Param> = net
        .named_tensors()
        .into_iter()
        .filter(|t| t.trainable)
        .map(|t| {
            Param::new(
                t.name,
                candle_core::Var::from_tensor(&t.tensor).expect("var"),
            )
        })
        .collect();
    let mut opt = Optimizer::new(DEFAULT_OPTIMIZER, &params).expect("opt");
    let x = Tensor::randn(0f32, 1.0, (batch, ir.input_channels, size, size), &dev).expect("x");
    let y = Tensor::ones((batch, ir.num_classes), DType::F32, &dev).expect("y");
    let y = (y / ir.num_classes as f64).expect("y");
    let (mut tf, mut tb, mut to) = (0.0, 0.0, 0.0);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let logits = if std::env::var("SLOW").is_ok() {
            net.forward_t(&x, true)
        } else {
            net.forward_train(&x, &mut rng)
        }
        .expect("fwd");
        let loss = soft_cross_entropy(&logits, &y).expect("loss");
        let _ = loss.to_scalar::<f32>().expect("loss value");
        let t1 = Instant::now();
        let g = loss.backward().expect("bwd");
        let gs: Vec<Tensor> = params
            .iter()
            .map(|p| g.get(p.var.as_tensor()).cloned().expect("grad"))
            .collect();
        let t2 = Instant::now();
        opt.step(&params, &gs, 1e-3).expect("step");
        let t3 = Instant::now();
        if i >= 2 {
            tf += (t1 - t0).as_secs_f64();
            tb += (t2 - t1).as_secs_f64();
            to += (t3 - t2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let t = tf + tb + to;
    println!(
        "{spec} {size}px batch {batch}: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms per step; {:.0} img/s",
        1e3 * tf / n,
        1e3 * tb / n,
        1e3 * to / n,
        n * batch as f64 / t
    );
    let t0 = Instant::now();
    for _ in 0..steps {
        let _ = net
            .forward_t(&x, false)
            .expect("eval")
            .to_vec2::<f32>()
            .expect("logits");
    }
    println!(
        "eval forward {:.1} ms per batch",
        1e3 * t0.elapsed().as_secs_f64() / n
    );
}
