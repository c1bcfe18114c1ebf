//! The training loop end to end on a tiny network and a slice of the bundled MNIST: resuming
//! from a checkpoint reproduces an uninterrupted run exactly, the loss falls, BatchNorm's
//! running statistics are updated in train mode and used in eval mode, and a diverging run
//! stops with a clear error.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use effnet_compiler::compile;
use effnet_compiler::ir::Network as IrNetwork;
use effnet_runtime::Network;
use effnet_runtime::data::{self, Dataset, Split};
use effnet_runtime::train::init::init_varmap;
use effnet_runtime::train::{TrainError, TrainOptions, Trainer, checkpoint};

const SPEC: &str = r#"
model tiny {
    input 1 x 12
    classes 10
    dropout 0.1
    drop_path 0.1
    normalize mean(0.1307) std(0.3081)
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage mbconv k3 e2 s2 -> 16 x1 se 0.25
    head conv k1 -> 32
}

schedule default for tiny {
    epochs 3
    stages 3
    image 8 -> 12
    randaug 2 -> 6
    mixup 0 -> 0.2
    cutmix 0 -> 1
    dropout 0 -> 0.1
    drop_path 0.05
    batch 32
    optimizer rmsprop(decay = 0.9, momentum = 0.9, eps = 1e-3, weight_decay = 1e-5)
    lr 0.01 warmup 0.5 exponential(rate = 0.9, every = 1)
    label_smoothing 0.1
    ema 0.99
    grad_clip 5
}

schedule plain for tiny {
    epochs 4
    stages 1
    image 12 -> 12
    batch 32
    optimizer adamw(weight_decay = 0.01)
    lr 0.02 cosine
}
"#;

fn ir() -> IrNetwork {
    compile(SPEC)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .network(Some("tiny"))
        .expect("tiny")
        .clone()
}

fn mnist(split: Split, n: usize) -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    data::load(&dir, split).expect("bundled MNIST").truncate(n)
}

fn trainer(schedule: &str, seed: u64) -> Trainer {
    let net = ir();
    let s = net
        .schedules
        .iter()
        .find(|s| s.name == schedule)
        .expect("schedule")
        .clone();
    let opts = TrainOptions {
        seed,
        workers: 2,
        eval_batch_size: 64,
        ..TrainOptions::default()
    };
    Trainer::new(
        &net,
        s,
        opts,
        mnist(Split::Train, 192),
        Some(mnist(Split::Test, 64)),
    )
    .expect("trainer")
}

fn temp_dir(name: &str) -> PathBuf {
    common::fresh_temp_dir("train", name)
}

use common::named_values as values;

#[test]
fn resuming_reproduces_the_uninterrupted_run() {
    let mut none = |_: effnet_runtime::train::Event| {};
    // Two epochs straight.
    let mut a = trainer("default", 7);
    a.run_epoch(&mut none).expect("epoch 1");
    let a2 = a.run_epoch(&mut none).expect("epoch 2");

    // One epoch, a checkpoint, a fresh process-like trainer resuming for the second.
    let dir = temp_dir("resume");
    let mut b = trainer("default", 7);
    b.out_dir = Some(dir.clone());
    let b1 = b.run_epoch(&mut none).expect("epoch 1");
    b.save_checkpoint(&dir).expect("checkpoint");
    assert!(dir.join("checkpoint/weights.safetensors").is_file());
    assert!(dir.join("checkpoint/optimizer.safetensors").is_file());
    assert!(dir.join("checkpoint/ema.safetensors").is_file());
    assert!(dir.join("model.safetensors").is_file());
    drop(b);

    // A different seed on the command line is replaced by the checkpoint's.
    let mut c = trainer("default", 999);
    c.resume(&dir).expect("resume");
    assert_eq!((c.epoch, c.opts.seed), (1, 7));
    // The history comes back from JSON (serde_json's float parsing may be off by an ulp).
    assert_eq!(c.history.len(), 1);
    assert_eq!(
        (c.history[0].epoch, c.history[0].stage),
        (b1.epoch, b1.stage)
    );
    assert!((c.history[0].train_loss - b1.train_loss).abs() < 1e-12);
    let c2 = c.run_epoch(&mut none).expect("epoch 2 after resume");

    assert_eq!(a.history[0].train_loss, b1.train_loss, "same first epoch");
    assert_eq!(
        c2.train_loss, a2.train_loss,
        "the resumed epoch's loss is bit-identical"
    );
    assert_eq!(c2.test_top1, a2.test_top1);
    assert_eq!(
        values(c.weights(false)),
        values(a.weights(false)),
        "same weights"
    );
    assert_eq!(values(c.weights(true)), values(a.weights(true)), "same EMA");
    assert_eq!(c.step, a.step);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_a_checkpoint_of_another_schedule() {
    let mut none = |_: effnet_runtime::train::Event| {};
    let dir = temp_dir("mismatch");
    let mut b = trainer("default", 1);
    b.max_steps(2);
    b.run_epoch(&mut none).expect("epoch");
    b.save_checkpoint(&dir).expect("checkpoint");
    let mut other = trainer("plain", 1);
    let e = other.resume(&dir).expect_err("other schedule").to_string();
    assert!(e.contains("schedule") && e.contains("state.json"), "{e}");
    let e = checkpoint::find(&temp_dir("nothing"))
        .expect_err("none")
        .to_string();
    assert!(e.contains("no checkpoint"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Limit steps per epoch (helper for the quick tests).
trait MaxSteps {
    fn max_steps(&mut self, n: usize);
}

impl MaxSteps for Trainer {
    fn max_steps(&mut self, n: usize) {
        self.opts.max_steps_per_epoch = Some(n);
    }
}

#[test]
fn loss_falls_in_a_short_run() {
    let mut t = trainer("plain", 3);
    let mut steps = 0;
    let mut count = |e: effnet_runtime::train::Event| {
        if let effnet_runtime::train::Event::Step { .. } = e {
            steps += 1;
        }
    };
    while !t.done() {
        t.run_epoch(&mut count).expect("epoch");
    }
    assert_eq!(steps, 4 * (192 / 32));
    let first = t.history[0].train_loss;
    let last = t.history[3].train_loss;
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    let acc = t.history[3].test_top1.expect("evaluated");
    assert!(acc > 0.2, "test top-1 {acc} after 4 short epochs");
}

#[test]
fn batchnorm_statistics_update_in_train_mode_and_serve_eval() {
    let ir = ir();
    let dev = Device::Cpu;
    let vm = init_varmap(&ir, 0, &dev).expect("init");
    let net = Network::from_ir(
        &ir,
        candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .expect("net");
    let x = Tensor::randn(0f32, 1.0, (8, 1, 12, 12), &dev).expect("x");
    let before = net
        .forward_t(&x, false)
        .expect("eval")
        .to_vec2::<f32>()
        .expect("v");

    // The stem's batch statistics, computed by hand.
    // The stem is a 3x3 stride-2 convolution with symmetric padding 1 and no bias.
    let conv = x
        .conv2d(net.stem.conv.plain_weight(), 1, 2, 1, 1)
        .expect("conv");
    let mean = conv
        .mean((0, 2, 3))
        .expect("mean")
        .to_vec1::<f32>()
        .expect("v");
    let n = (8 * 6 * 6) as f32;
    let var = conv
        .broadcast_sub(&conv.mean_keepdim((0, 2, 3)).expect("m"))
        .and_then(|c| c.sqr())
        .and_then(|c| c.sum((0, 2, 3)))
        .and_then(|c| c.to_vec1::<f32>())
        .expect("var");
    net.forward_t(&x, true).expect("train");
    let rm = net
        .stem
        .bn
        .running()
        .expect("BatchNorm")
        .mean
        .as_tensor()
        .to_vec1::<f32>()
        .expect("rm");
    let rv = net
        .stem
        .bn
        .running()
        .expect("BatchNorm")
        .var
        .as_tensor()
        .to_vec1::<f32>()
        .expect("rv");
    for c in 0..8 {
        // PyTorch's update with momentum 0.1 from mean 0 / var 1, unbiased batch variance.
        assert!((rm[c] - 0.1 * mean[c]).abs() < 1e-5, "channel {c}");
        assert!(
            (rv[c] - (0.9 + 0.1 * var[c] / (n - 1.0))).abs() < 1e-4,
            "channel {c}"
        );
    }
    // Eval mode now normalizes with the new statistics: different logits, same weights.
    let after = net
        .forward_t(&x, false)
        .expect("eval")
        .to_vec2::<f32>()
        .expect("v");
    assert_ne!(before, after);
    // And eval mode leaves the statistics alone.
    net.forward_t(&x, false).expect("eval");
    assert_eq!(
        net.stem
            .bn
            .running()
            .expect("BatchNorm")
            .mean
            .as_tensor()
            .to_vec1::<f32>()
            .expect("rm"),
        rm
    );
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let mut t = trainer("plain", 0);
    t.lr.peak = 1e30;
    t.out_dir = Some(temp_dir("diverge"));
    let mut none = |_: effnet_runtime::train::Event| {};
    let mut err = None;
    for _ in 0..3 {
        match t.run_epoch(&mut none) {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    match err {
        Some(TrainError::Diverged { .. }) => {}
        other => panic!("expected a divergence error, got {other:?}"),
    }
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("training diverged") && msg.contains("checkpoint"),
        "{msg}"
    );
}

/// A CondConv network trains end to end: the step runs on candle's autograd (the plan says
/// why), one epoch moves the experts and the routing function, and a checkpoint round trip
/// gives a resumed trainer the same weights and EMA, CondConv tensors included.
#[test]
fn a_condconv_network_trains_saves_and_resumes() {
    let spec = SPEC.replace(
        "stage mbconv k3 e2 s2 -> 16 x1 se 0.25",
        "stage mbconv k3 e2 s2 -> 16 x1 se 0.25 cc 2",
    );
    let net = compile(&spec)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .network(Some("tiny"))
        .expect("tiny")
        .clone();
    let schedule = net
        .schedules
        .iter()
        .find(|s| s.name == "plain")
        .expect("schedule")
        .clone();
    let make = || {
        Trainer::new(
            &net,
            schedule.clone(),
            TrainOptions {
                seed: 3,
                workers: 2,
                eval_batch_size: 64,
                ..TrainOptions::default()
            },
            mnist(Split::Train, 96),
            Some(mnist(Split::Test, 32)),
        )
        .expect("trainer")
    };
    let mut t = make();
    let plan = t.step_plan().expect("plan");
    assert_eq!(plan.plan, effnet_runtime::Plan::Candle);
    assert!(plan.to_string().contains("CondConv"), "{plan}");
    let before = values(t.weights(false));
    let mut none = |_: effnet_runtime::train::Event| {};
    let m = t.run_epoch(&mut none).expect("epoch");
    assert!(m.train_loss.is_finite());
    let after = values(t.weights(false));
    for name in ["blocks.1.0.routing_fn.weight", "blocks.1.0.conv_dw.weight"] {
        let get = |vs: &[(String, Vec<f32>)]| {
            vs.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no tensor {name}"))
        };
        assert_ne!(get(&before), get(&after), "{name} did not train");
    }
    let dir = temp_dir("condconv");
    t.out_dir = Some(dir.clone());
    t.save_checkpoint(&dir).expect("checkpoint");
    let mut r = make();
    r.resume(&dir).expect("resume");
    assert_eq!(values(r.weights(false)), after);
    assert_eq!(values(r.weights(true)), values(t.weights(true)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mixed precision is the cuda-step plan's: on the CPU the trainer refuses it before any
/// work, and a step asked for it says which plan the call runs instead.
#[test]
fn mixed_precision_is_refused_off_the_gpu_with_the_reason() {
    let net = ir();
    let s = net.schedules[0].clone();
    let opts = TrainOptions {
        precision: effnet_runtime::Precision::Bf16,
        ..TrainOptions::default()
    };
    let e = match Trainer::new(&net, s, opts, mnist(Split::Train, 16), None) {
        Ok(_) => panic!("bf16 training accepted on the CPU"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("--precision bf16") && e.contains("GPU"), "{e}");

    let t = trainer("plain", 1);
    let x = Tensor::zeros((2, net.input_channels, 28, 28), DType::F32, &Device::Cpu).expect("x");
    let y = effnet_runtime::exec::one_hot(&[0, 1], net.num_classes, &Device::Cpu).expect("y");
    let params = common::trainable_params(&t.net);
    let mut rng = effnet_runtime::data::sample_rng(0, &[]);
    let e = t
        .net
        .loss_and_grads_in(effnet_runtime::Precision::Bf16, &params, &x, &y, &mut rng)
        .expect_err("bf16 step on the CPU");
    assert!(
        e.to_string().contains("mixed precision") && e.to_string().contains("cpu-step"),
        "{e}"
    );
}
