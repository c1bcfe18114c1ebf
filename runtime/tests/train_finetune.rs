//! Fine-tuning: starting from pretrained weights (a new classifier when the class count
//! differs, every other mismatch an error), frozen parts that provably do not change (weights,
//! BatchNorm statistics, their EMA) on both training plans, per-part learning-rate scales, and
//! a fine-tuned run beating training from scratch on a new task at the same small budget.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use effnet_compiler::compile;
use effnet_compiler::ir::{Network as IrNetwork, Optimizer as Spec};
use effnet_runtime::data::{self, Dataset, Split};
use effnet_runtime::train::optim::{Optimizer, Param};
use effnet_runtime::train::{Event, TrainOptions, Trainer};
use effnet_runtime::weights::LoadOptions;

/// A digits network, a 5-class model derived from it without scaling (the fine-tuning
/// target), and schedules that freeze and rescale parts.
const SPEC: &str = r#"
model digits {
    input 1 x 12
    classes 10
    normalize mean(0.1307) std(0.3081)
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x1 skip
    stage fused  k3 e4 s2 -> 16 x1
    stage mbconv k3 e4 s1 -> 24 x1 se 0.25
    head conv k1 -> 48
}

model five = digits { classes 5 }

schedule pretrain for digits {
    epochs 3
    image 12
    batch 32
    optimizer adamw(weight_decay = 0.01)
    lr 0.01 cosine
}

schedule frozen for digits {
    epochs 2
    image 12
    batch 16
    optimizer sgd(momentum = 0.9, weight_decay = 0.05)
    lr 0.05
    freeze stem, stages 0 
    freeze head for 1 epoch
    ema 0.9
}

schedule scratch for five {
    epochs 2
    image 12
    batch 16
    optimizer adamw(weight_decay = 0.01)
    lr 0.03 cosine
}

schedule finetune for five {
    epochs 2
    image 12
    batch 16
    optimizer adamw(weight_decay = 0.01)
    lr 0.03 cosine
    freeze stem, stages 0..3
}
"#;

fn ir(spec: &str, model: &str) -> IrNetwork {
    compile(spec)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .network(Some(model))
        .expect("model")
        .clone()
}

fn mnist(split: Split) -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    data::load(&dir, split).expect("bundled MNIST")
}

/// The first `n` images of the digits in `keep`, labelled by their position in `keep` (a new
/// task) or, with `relabel` false, by the digit (the 10-class model's own labels).
fn digits(split: Split, keep: &[usize], n: usize, relabel: bool) -> Dataset {
    digits_after(split, keep, 0, n, relabel)
}

/// [`digits`] from the images after the first `skip` of the split.
fn digits_after(split: Split, keep: &[usize], skip: usize, n: usize, relabel: bool) -> Dataset {
    let mut d = mnist(split);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (img, &l) in d.images.iter().zip(&d.labels).skip(skip) {
        if let Some(pos) = keep.iter().position(|&k| k == l) {
            images.push(img.clone());
            labels.push(if relabel { pos } else { l });
            if images.len() == n {
                break;
            }
        }
    }
    if relabel {
        d.classes = keep.iter().map(|k| k.to_string()).collect();
    }
    d.images = images;
    d.labels = labels;
    d
}

fn trainer(
    model: &str,
    schedule: &str,
    seed: u64,
    train: Dataset,
    test: Option<Dataset>,
) -> Trainer {
    let net = ir(SPEC, model);
    let s = net
        .schedules
        .iter()
        .find(|s| s.name == schedule)
        .expect("schedule")
        .clone();
    let opts = TrainOptions {
        seed,
        workers: 2,
        eval_batch_size: 128,
        ..TrainOptions::default()
    };
    Trainer::new(&net, s, opts, train, test).expect("trainer")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
}

fn by_name(ts: Vec<(String, Tensor)>) -> HashMap<String, Vec<f32>> {
    ts.into_iter().map(|(n, t)| (n, values(&t))).collect()
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("effnet-finetune-{name}-{}", std::process::id()))
}

fn none(_: Event) {}

/// Runs the `frozen` schedule for two epochs (the head frozen in the first only) and checks
/// what changed, on the plan the activation selects (SiLU: the hand-written step; Mish:
/// candle's autograd).
fn frozen_parts_stay(spec: &str) {
    let net = ir(spec, "digits");
    let s = net
        .schedules
        .iter()
        .find(|s| s.name == "frozen")
        .expect("schedule")
        .clone();
    let opts = TrainOptions {
        seed: 4,
        workers: 1,
        max_steps_per_epoch: Some(3),
        evaluate: false,
        ..TrainOptions::default()
    };
    let train = digits(Split::Train, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 64, false);
    let mut t = Trainer::new(&net, s, opts, train, None).expect("trainer");
    let start = by_name(t.weights(false));
    let frozen = |name: &str| {
        name.starts_with("conv_stem.") || name.starts_with("bn1.") || name.starts_with("blocks.0.")
    };
    let head = |name: &str| name.starts_with("conv_head.") || name.starts_with("bn2.");

    t.run_epoch(&mut none).expect("epoch 1");
    let after1 = by_name(t.weights(false));
    let ema1 = by_name(t.weights(true));
    for (name, v) in &after1 {
        if frozen(name) || head(name) {
            assert_eq!(v, &start[name], "`{name}` changed while frozen");
            assert_eq!(
                &ema1[name], &start[name],
                "the EMA of `{name}` changed while frozen"
            );
        }
    }
    // The rest trained (weights and BatchNorm statistics alike).
    for name in [
        "blocks.1.0.conv_exp.weight",
        "blocks.1.0.bn1.running_var",
        "classifier.weight",
    ] {
        assert_ne!(after1[name], start[name], "`{name}` did not train");
    }

    t.run_epoch(&mut none).expect("epoch 2");
    let after2 = by_name(t.weights(false));
    for (name, v) in &after2 {
        if frozen(name) {
            assert_eq!(v, &start[name], "`{name}` changed while frozen");
        }
    }
    for name in ["conv_head.weight", "bn2.weight", "bn2.running_mean"] {
        assert_ne!(
            after2[name], start[name],
            "`{name}` did not train once unfrozen"
        );
    }
}

#[test]
fn frozen_parts_do_not_change_on_the_hand_written_step() {
    frozen_parts_stay(SPEC);
}

#[test]
fn frozen_parts_do_not_change_on_candle_autograd() {
    let mish = SPEC.replacen("classes 10", "classes 10\n    activation mish", 1);
    frozen_parts_stay(&mish);
}

fn param(name: &str, v: &[f32]) -> Param {
    let t = Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).expect("t");
    Param::new(name, Var::from_tensor(&t).expect("var"))
}

fn grad(v: &[f32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).expect("g")
}

#[test]
fn lr_scale_multiplies_the_step_and_frozen_skips_it() {
    let sgd = Spec::Sgd {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.1,
    };
    let mut params = vec![
        param("a", &[1.0, -2.0]),
        param("b", &[1.0, -2.0]),
        param("c", &[1.0, -2.0]),
    ];
    params[1].lr_scale = 0.25;
    params[2].frozen = true;
    let mut opt = Optimizer::new(sgd, &params).expect("opt");
    let g = grad(&[0.5, 0.5]);
    opt.step(&params, &[g.clone(), g.clone(), g], 0.4)
        .expect("step");
    let moved = |p: &Param, start: [f32; 2]| -> Vec<f32> {
        values(p.var.as_tensor())
            .iter()
            .zip(start)
            .map(|(v, s)| s - v)
            .collect()
    };
    // SGD with L2 weight decay: step lr * (g + wd * w).
    let full = [0.4 * (0.5 + 0.1), 0.4 * (0.5 - 0.2)];
    let da = moved(&params[0], [1.0, -2.0]);
    let db = moved(&params[1], [1.0, -2.0]);
    for i in 0..2 {
        assert!((da[i] - full[i]).abs() < 1e-6, "{da:?}");
        assert!((db[i] - 0.25 * full[i]).abs() < 1e-6, "{db:?}");
    }
    assert_eq!(
        values(params[2].var.as_tensor()),
        vec![1.0, -2.0],
        "frozen, weight decay included"
    );
}

/// AdamW counts steps per parameter: a parameter unfrozen after a while takes the first,
/// bias-corrected step a fresh optimizer would (as PyTorch, where a parameter without a
/// gradient is skipped, step count included), and the count survives a checkpoint.
#[test]
fn adamw_bias_correction_counts_a_frozen_parameters_own_steps() {
    let adamw = Spec::Adamw {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut late = vec![param("w", &[1.0, 1.0])];
    late[0].frozen = true;
    let mut opt = Optimizer::new(adamw.clone(), &late).expect("opt");
    for _ in 0..5 {
        opt.step(&late, &[grad(&[0.3, -0.2])], 0.1)
            .expect("frozen step");
    }
    assert_eq!(values(late[0].var.as_tensor()), vec![1.0, 1.0]);
    // Through the saved state, as a resumed run would have it.
    let state: HashMap<String, Tensor> = opt.state(&late).expect("state").into_iter().collect();
    assert!(state.contains_key("w.step"));
    let mut resumed = Optimizer::new(adamw.clone(), &late).expect("opt");
    resumed
        .load_state(&late, state, opt.steps, "memory")
        .expect("load");
    late[0].frozen = false;
    resumed
        .step(&late, &[grad(&[0.3, -0.2])], 0.1)
        .expect("step");

    let fresh = vec![param("w", &[1.0, 1.0])];
    let mut opt = Optimizer::new(adamw, &fresh).expect("opt");
    opt.step(&fresh, &[grad(&[0.3, -0.2])], 0.1).expect("step");
    assert_eq!(
        values(late[0].var.as_tensor()),
        values(fresh[0].var.as_tensor())
    );
    // A first Adam step moves each weight by about the learning rate.
    assert!((values(fresh[0].var.as_tensor())[0] - 0.9).abs() < 1e-4);
}

#[test]
fn init_takes_every_tensor_and_a_new_classifier_for_another_class_count() {
    // Weights of the 10-class model, as a file.
    let source = trainer(
        "digits",
        "pretrain",
        11,
        digits(Split::Train, &[0, 1], 32, false),
        None,
    );
    let path = temp_file("init.safetensors");
    let named: Vec<effnet_runtime::nn::NamedTensor> = source
        .weights(false)
        .into_iter()
        .map(|(name, tensor)| effnet_runtime::nn::NamedTensor {
            name,
            tensor,
            trainable: true,
        })
        .collect();
    effnet_runtime::weights::save(&named, &path).expect("save");
    let file = by_name(source.weights(false));

    let train = digits(Split::Train, &[5, 6, 7, 8, 9], 32, true);
    let mut t = trainer("five", "finetune", 2, train.clone(), None);
    let fresh = by_name(t.weights(false));
    let init = t.init_from(&path, LoadOptions::default()).expect("init");
    assert_eq!(init.new_classifier, Some((10, 5)));
    assert!(!init.torchvision_names);
    let report = init.to_string();
    assert!(
        report.contains("classifier is new") && report.contains("10 classes"),
        "{report}"
    );
    let now = by_name(t.weights(false));
    let ema = by_name(t.weights(true));
    for (name, v) in &now {
        if name.starts_with("classifier.") {
            assert_eq!(v, &fresh[name], "`{name}` keeps its fresh initialization");
        } else {
            assert_eq!(v, &file[name], "`{name}` comes from the file");
            assert_eq!(&ema[name], &file[name], "the EMA starts from the file too");
        }
    }
    assert_eq!(init.tensors, now.len() - 2);

    // The same class count takes the classifier too.
    let mut same = trainer(
        "digits",
        "pretrain",
        3,
        digits(Split::Train, &[0, 1], 32, false),
        None,
    );
    let init = same.init_from(&path, LoadOptions::default()).expect("init");
    assert_eq!(init.new_classifier, None);
    assert_eq!(by_name(same.weights(false)), file);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn init_names_every_other_mismatch() {
    // A wider stem: everything it touches has another shape.
    let other = SPEC.replace("stem conv k3 s2 -> 8", "stem conv k3 s2 -> 16");
    let net = ir(&other, "digits");
    let vm = effnet_runtime::train::init::init_varmap(&net, 1, &Device::Cpu).expect("init");
    let path = temp_file("mismatch.safetensors");
    let mut tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.remove("bn2.running_var");
    tensors.insert(
        "extra.weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).expect("t"),
    );
    candle_core::safetensors::save(&tensors, &path).expect("save");
    let mut t = trainer(
        "five",
        "finetune",
        2,
        digits(Split::Train, &[5, 6, 7, 8, 9], 16, true),
        None,
    );
    let e = t
        .init_from(&path, LoadOptions::default())
        .expect_err("mismatch")
        .to_string();
    for needle in [
        "conv_stem.weight",
        "bn1.weight",
        "bn2.running_var",
        "extra.weight",
        "mismatch.safetensors",
    ] {
        assert!(e.contains(needle), "`{needle}` not named in: {e}");
    }
    // A classifier whose features differ is not a new class count: an error too.
    let mut c: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let bad = Tensor::zeros((10, 47), candle_core::DType::F32, &Device::Cpu).expect("t");
    c.insert("classifier.weight".into(), bad);
    let ok_net = ir(SPEC, "digits");
    let ok = effnet_runtime::train::init::init_varmap(&ok_net, 1, &Device::Cpu).expect("init");
    for (k, v) in ok.data().lock().expect("varmap").iter() {
        if k != "classifier.weight" {
            c.insert(k.clone(), v.as_tensor().clone());
        }
    }
    candle_core::safetensors::save(&c, &path).expect("save");
    let e = t
        .init_from(&path, LoadOptions::default())
        .expect_err("features")
        .to_string();
    assert!(e.contains("classifier.weight"), "{e}");
    let _ = std::fs::remove_file(&path);
}

const ALL_DIGITS: [usize; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

/// Transfer, as the issue puts it: a network trained on the bundled digits (10 classes, the
/// first 3,000 training images) fine-tuned to a new task, the digits 5-9 as 5 classes (a new
/// classifier), on 160 other training images for 2 epochs; against the same network trained
/// from scratch on the new task with the same images, epochs, optimizer, learning rate and
/// seed. Fine-tuned all through, and with the stem and stages frozen (BatchNorm in eval mode,
/// only the head and the classifier training). Everything is seeded: the figures are the same
/// on every run (BENCHMARKS.md, "Fine-tuning").
#[test]
fn fine_tuning_beats_training_from_scratch_on_a_new_task() {
    const PRETRAIN_IMAGES: usize = 3000;
    let mut pre = trainer(
        "digits",
        "pretrain",
        21,
        digits(Split::Train, &ALL_DIGITS, PRETRAIN_IMAGES, false),
        None,
    );
    while !pre.done() {
        pre.run_epoch(&mut none).expect("pretraining");
    }
    let path = temp_file("pretrained.safetensors");
    let named: Vec<effnet_runtime::nn::NamedTensor> = pre
        .weights(false)
        .into_iter()
        .map(|(name, tensor)| effnet_runtime::nn::NamedTensor {
            name,
            tensor,
            trainable: true,
        })
        .collect();
    effnet_runtime::weights::save(&named, &path).expect("save");

    let new_task = digits_after(Split::Train, &[5, 6, 7, 8, 9], PRETRAIN_IMAGES, 160, true);
    let test = digits(Split::Test, &[5, 6, 7, 8, 9], 400, true);
    let run = |schedule: &str, init: bool| -> f64 {
        let mut t = trainer("five", schedule, 5, new_task.clone(), Some(test.clone()));
        if init {
            let i = t.init_from(&path, LoadOptions::default()).expect("init");
            assert_eq!(i.new_classifier, Some((10, 5)));
        }
        let mut last = None;
        while !t.done() {
            last = t.run_epoch(&mut none).expect("epoch").test_top1;
        }
        last.expect("evaluated")
    };
    let scratch = run("scratch", false);
    let fine_tuned = run("scratch", true);
    let frozen = run("finetune", true);
    println!(
        "new task (digits 5-9, 160 images, 2 epochs): from scratch {:.1}%, fine-tuned {:.1}%, \
         fine-tuned with stem and stages frozen {:.1}%",
        100.0 * scratch,
        100.0 * fine_tuned,
        100.0 * frozen
    );
    assert!(
        fine_tuned >= scratch + 0.10,
        "fine-tuned {fine_tuned:.3} does not beat from scratch {scratch:.3} by 10 points"
    );
    assert!(
        frozen >= scratch + 0.15,
        "fine-tuned with frozen stages {frozen:.3} does not beat from scratch {scratch:.3} by \
         15 points"
    );
    let _ = std::fs::remove_file(&path);
}

/// A fine-tuning run resumed from its checkpoint continues as the uninterrupted run does (the
/// parts frozen in the epoch follow from the checkpoint's epoch), and a checkpoint is refused
/// by a run with other fine-tuning settings.
#[test]
fn resuming_a_fine_tuning_run_reproduces_it() {
    let data = || digits(Split::Train, &ALL_DIGITS, 48, false);
    let quick = |t: &mut Trainer| {
        t.opts.max_steps_per_epoch = Some(2);
        t.opts.evaluate = false;
    };
    let mut a = trainer("digits", "frozen", 8, data(), None);
    quick(&mut a);
    a.run_epoch(&mut none).expect("epoch 1");
    a.run_epoch(&mut none).expect("epoch 2");

    let dir = temp_file("resume");
    let _ = std::fs::remove_dir_all(&dir);
    let mut b = trainer("digits", "frozen", 8, data(), None);
    quick(&mut b);
    b.run_epoch(&mut none).expect("epoch 1");
    b.save_checkpoint(&dir).expect("checkpoint");
    let mut c = trainer("digits", "frozen", 8, data(), None);
    quick(&mut c);
    c.resume(&dir).expect("resume");
    c.run_epoch(&mut none).expect("epoch 2");
    assert_eq!(by_name(c.weights(false)), by_name(a.weights(false)));
    assert_eq!(by_name(c.weights(true)), by_name(a.weights(true)));

    // The same schedule with one more `freeze`: not the run the checkpoint holds.
    let mut d = trainer("digits", "frozen", 8, data(), None);
    d.schedule.freeze.push(effnet_compiler::ir::Freeze {
        parts: vec![effnet_compiler::ir::Part::Classifier],
        epochs: None,
    });
    let e = d.resume(&dir).expect_err("other settings").to_string();
    assert!(
        e.contains("fine-tuning") && e.contains("freeze classifier"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// torchvision's weights (names mapped to timm's) with 1000 classes start a 5-class model
/// derived from torchvision's `efficientnet_b0`.
#[test]
fn init_takes_torchvision_weights() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/torchvision/efficientnet.effnet"))
        .expect("the torchvision spec")
        + "\nmodel b0_five = efficientnet_b0 {\n    classes 5\n}\n";
    let b0 = ir(&text, "efficientnet_b0");
    let five = ir(&text, "b0_five");
    let prefixes = effnet_runtime::weights::torchvision_prefixes(&b0);
    let torchvision_name = |name: &str| {
        prefixes
            .iter()
            .find_map(|(ours, theirs)| {
                name.strip_prefix(ours.as_str())
                    .filter(|rest| rest.starts_with('.'))
                    .map(|rest| format!("{theirs}{rest}"))
            })
            .unwrap_or_else(|| panic!("no torchvision name for {name}"))
    };
    let source = effnet_runtime::train::init::init_tensors(&b0, 9, &Device::Cpu).expect("init");
    let file: HashMap<String, Tensor> = source
        .iter()
        .map(|(n, t)| (torchvision_name(n), t.clone()))
        .collect();
    let path = temp_file("torchvision.safetensors");
    candle_core::safetensors::save(&file, &path).expect("save");

    let schedule = five.training_schedule(None, Some(1)).expect("schedule");
    let opts = TrainOptions {
        evaluate: false,
        ..TrainOptions::default()
    };
    let train = digits(Split::Train, &[5, 6, 7, 8, 9], 8, true);
    let mut t = Trainer::new(&five, schedule, opts, train, None).expect("trainer");
    let init = t.init_from(&path, LoadOptions::default()).expect("init");
    assert!(init.torchvision_names);
    assert_eq!(init.new_classifier, Some((1000, 5)));
    let now = by_name(t.weights(false));
    for (name, v) in &source {
        if !name.starts_with("classifier.") {
            assert_eq!(now[name], values(v), "`{name}`");
        }
    }
    let _ = std::fs::remove_file(&path);
}
