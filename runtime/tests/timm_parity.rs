//! Logits against timm's for small networks covering every block kind, both paddings, SE,
//! odd input sizes, stride 2 in fused and conv stages, and width/depth scaling. The fixtures
//! are made by `tools/timm_fixtures.py`: random weights, randomized BatchNorm statistics, a
//! fixed input and timm's logits, all in one safetensors file beside the spec.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use effnet_compiler::compile;
use effnet_runtime::weights::{read_safetensors, validate};
use effnet_runtime::{Network, Plan};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/runtime");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/runtime exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "effnet"))
        .collect();
    specs.sort();
    specs
}

/// The largest difference from timm's logits on the plan the facts choose (cpu-fused) and on
/// the candle plan (what other devices and train mode run): both run every fixture, dilated
/// ones included.
fn run_fixture(spec: &Path) -> f32 {
    let text = std::fs::read_to_string(spec).expect("spec");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", spec.display()));
    let net_ir = compiled.network(None).expect("one model");
    let weights = spec.with_extension("safetensors");
    let mut tensors = read_safetensors(&weights, &Device::Cpu).expect("fixture weights");
    let input = tensors.remove("__input__").expect("fixture input");
    let logits = tensors.remove("__logits__").expect("fixture logits");
    validate(net_ir, &tensors, &weights).unwrap_or_else(|e| panic!("{e}"));
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net = Network::from_ir(net_ir, vb).expect("network builds");
    let fused = net.forward_t(&input, false).expect("forward");
    let candle = net
        .forward_on(Plan::Candle, &input, false)
        .expect("candle forward");
    [fused, candle]
        .into_iter()
        .map(|ours| {
            assert_eq!(ours.dims(), logits.dims());
            (ours - &logits)
                .expect("same shape")
                .abs()
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_scalar::<f32>())
                .expect("max abs diff")
        })
        .fold(0.0, f32::max)
}

#[test]
fn logits_match_timm_for_every_fixture() {
    let specs = fixtures();
    assert!(
        specs.len() >= 6,
        "expected the timm fixtures, found {}",
        specs.len()
    );
    let mut report = Vec::new();
    for spec in &specs {
        let diff = run_fixture(spec);
        report.push(format!("{}: max |diff| {diff:e}", spec.display()));
        assert!(diff < 1e-4, "{}", report.join("\n"));
    }
    println!("{}", report.join("\n"));
}

/// The largest `|ours - timm|` over the largest `|timm|` of one map.
fn relative_diff(ours: &candle_core::Tensor, theirs: &candle_core::Tensor) -> f32 {
    let max_abs = |t: &candle_core::Tensor| {
        t.abs()
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("max abs")
    };
    let diff = (ours - theirs).expect("same shape");
    max_abs(&diff) / max_abs(theirs).max(f32::MIN_POSITIVE)
}

/// Feature maps against timm's `features_only=True` for the fixtures that carry them
/// (`<name>.features.safetensors`: `level{i}` and timm's feature_info in the metadata): every
/// level at once, the levels in a chosen order, and each level alone (the walk stops early).
#[test]
fn feature_maps_match_timm_features_only() {
    let with_maps: Vec<PathBuf> = fixtures()
        .into_iter()
        .filter(|p| p.with_extension("features.safetensors").is_file())
        .collect();
    assert!(
        with_maps.len() >= 3,
        "expected the feature-map fixtures, found {}",
        with_maps.len()
    );
    let mut report = Vec::new();
    for spec in &with_maps {
        let text = std::fs::read_to_string(spec).expect("spec");
        let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", spec.display()));
        let net_ir = compiled.network(None).expect("one model");
        let weights = spec.with_extension("safetensors");
        let mut tensors = read_safetensors(&weights, &Device::Cpu).expect("fixture weights");
        let input = tensors.remove("__input__").expect("fixture input");
        tensors.remove("__logits__");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net = Network::from_ir(net_ir, vb).expect("network builds");
        let maps_path = spec.with_extension("features.safetensors");
        let maps = read_safetensors(&maps_path, &Device::Cpu).expect("feature maps");
        let levels = net_ir.feature_info();
        assert_eq!(
            maps.len(),
            levels.len(),
            "{}: timm has {} levels, ours {levels:?}",
            maps_path.display(),
            maps.len()
        );
        let all: Vec<usize> = (0..levels.len()).collect();
        let ours = net.forward_pyramid(&input, &all).expect("pyramid");
        let reversed: Vec<usize> = all.iter().rev().copied().collect();
        let ours_reversed = net.forward_pyramid(&input, &reversed).expect("pyramid");
        for (i, level) in levels.iter().enumerate() {
            let theirs = &maps[&format!("level{i}")];
            assert_eq!(
                ours[i].dims(),
                theirs.dims(),
                "{}: level {level}",
                spec.display()
            );
            assert_eq!(theirs.dims()[1], level.channels);
            let rel = relative_diff(&ours[i], theirs);
            report.push(format!(
                "{} level {level}: max |diff| / max |timm| {rel:e}",
                spec.display()
            ));
            assert!(rel < 1e-5, "{}", report.join("\n"));
            assert_eq!(
                relative_diff(&ours_reversed[levels.len() - 1 - i], &ours[i]),
                0.0,
                "{}: level {i} in reverse order",
                spec.display()
            );
            let alone = net.forward_pyramid(&input, &[i]).expect("one level");
            assert_eq!(
                relative_diff(&alone[0], &ours[i]),
                0.0,
                "{}: level {i} alone",
                spec.display()
            );
        }
        let err = net
            .forward_pyramid(&input, &[levels.len()])
            .expect_err("out of range")
            .to_string();
        assert!(
            err.contains(&format!("no feature level {}", levels.len())) && err.contains("stride"),
            "{err}"
        );
    }
    println!("{}", report.join("\n"));
}

/// The fixture's network, weights, input and timm's logits; its weights as training variables
/// when `variables` (what the training step needs).
fn load_fixture(
    spec: &Path,
    variables: bool,
) -> (Network, candle_core::Tensor, candle_core::Tensor) {
    let text = std::fs::read_to_string(spec).expect("spec");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{}: {d:?}", spec.display()));
    let net_ir = compiled.network(None).expect("one model");
    let mut tensors =
        read_safetensors(&spec.with_extension("safetensors"), &Device::Cpu).expect("weights");
    let input = tensors.remove("__input__").expect("fixture input");
    let logits = tensors.remove("__logits__").expect("fixture logits");
    let net = if variables {
        let varmap = candle_nn::VarMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap");
            for (name, t) in tensors {
                data.insert(name, candle_core::Var::from_tensor(&t).expect("var"));
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Network::from_ir(net_ir, vb).expect("network builds")
    } else {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Network::from_ir(net_ir, vb).expect("network builds")
    };
    (net, input, logits)
}

/// Freeze every BatchNorm of `net`: the training step then normalizes as eval mode does.
fn freeze_norms(net: &mut Network) {
    let layers = std::iter::once(&mut net.stem)
        .chain(
            net.stages
                .iter_mut()
                .flatten()
                .flat_map(|b| b.layers.iter_mut()),
        )
        .chain(net.head.as_mut());
    for l in layers {
        l.bn.frozen = true;
    }
}

/// Every trainable tensor of `net` as a training variable, in `state_dict` order.
fn trainable_params(net: &Network) -> Vec<effnet_runtime::train::optim::Param> {
    net.named_tensors()
        .into_iter()
        .filter(|t| t.trainable)
        .map(|t| {
            effnet_runtime::train::optim::Param::new(
                t.name,
                candle_core::Var::from_tensor(&t.tensor).expect("var"),
            )
        })
        .collect()
}

/// Label-smoothed soft targets for timm's `[N, K]` logits (sample i's class `(3i + 1) mod K`
/// at 0.95 + 0.05 / K) and the cross-entropy of timm's logits against them: the loss the
/// training step must reproduce.
fn soft_targets_and_timm_loss(logits: &candle_core::Tensor) -> (candle_core::Tensor, f64) {
    let (n, k) = logits.dims2().expect("logits");
    let mut t = vec![0.05f32 / k as f32; n * k];
    for i in 0..n {
        t[i * k + (3 * i + 1) % k] += 0.95;
    }
    let targets = candle_core::Tensor::from_vec(t, (n, k), &Device::Cpu).expect("targets");
    let theirs = effnet_runtime::exec::soft_cross_entropy(logits, &targets)
        .and_then(|l| l.to_scalar::<f32>())
        .expect("timm's loss") as f64;
    (targets, theirs)
}

fn max_abs(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max abs diff")
}

/// The MixNet fixtures (mixed depthwise kernels, two-group 1x1s, `dsa`, group sizes, per-stage
/// activation) and EfficientNet-X's space-to-depth (`s2d`: a 2x2 stride-2 convolution and 2x2
/// depthwise ones, padded TF-`same` in a symmetric network) and timm's blur pool (`antialias
/// blur`, candle only) and global context attention (`attention gc`, candle only) on every plan that runs a network: inference on the plan chosen (the CPU fused
/// kernels, or candle where a grouped convolution sends the network there) and on candle; and
/// the training step's forward with every BatchNorm frozen (so it normalizes as eval mode
/// does), whose loss must be the cross-entropy of timm's logits.
#[test]
fn block_option_fixtures_match_timm_on_every_plan() {
    use effnet_runtime::{Plan, Purpose};
    let specs: Vec<PathBuf> = fixtures()
        .into_iter()
        .filter(|p| {
            ["fx_mix", "fx_s2d", "fx_blur", "fx_gc"]
                .iter()
                .any(|f| p.to_string_lossy().contains(f))
        })
        .collect();
    assert_eq!(
        specs.len(),
        5,
        "the MixNet, space-to-depth, blur-pool and global-context fixtures: {specs:?}"
    );
    let mut report = Vec::new();
    for spec in &specs {
        let name = spec.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        let (net, input, logits) = load_fixture(spec, false);
        let grouped = ["gs", "blur", "gc"].iter().any(|k| name.contains(k));
        let chosen = net.plan(&input, Purpose::Infer).plan;
        // A grouped convolution that is not depthwise, a blur pool and global context
        // attention have no CPU kernel: candle runs them.
        let expected = if grouped {
            Plan::Candle
        } else {
            Plan::CpuFused
        };
        assert_eq!(chosen, expected, "{name}");
        for plan in [Plan::CpuFused, Plan::Candle] {
            if plan == Plan::CpuFused && grouped {
                continue;
            }
            let ours = net.forward_on(plan, &input, false).expect("forward");
            let d = max_abs(&ours, &logits);
            report.push(format!("{name} {plan:?}: max |diff| {d:e}"));
            assert!(d < 1e-4, "{}", report.join("\n"));
        }

        // The training step's forward: eval-mode BatchNorm everywhere, no masks (the fixtures
        // have no dropout or drop-path), soft targets.
        let (mut tnet, input, logits) = load_fixture(spec, true);
        freeze_norms(&mut tnet);
        let params = trainable_params(&tnet);
        let (targets, theirs) = soft_targets_and_timm_loss(&logits);
        let step = tnet.plan(&input, Purpose::TrainStep).plan;
        assert_eq!(
            step,
            if grouped { Plan::Candle } else { Plan::CpuStep },
            "{name}"
        );
        for plan in [Plan::CpuStep, Plan::Candle] {
            if plan == Plan::CpuStep && grouped {
                continue;
            }
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            let (loss, grads) = tnet
                .loss_and_grads_on(plan, &params, &input, &targets, &mut rng)
                .expect("step");
            assert_eq!(grads.len(), params.len());
            report.push(format!(
                "{name} train step {plan:?}: loss {loss} timm {theirs}"
            ));
            assert!(
                (loss - theirs).abs() < 1e-4 * theirs.abs().max(1.0),
                "{}",
                report.join("\n")
            );
        }
    }
    println!("{}", report.join("\n"));
}

/// The GroupNorm fixture (timm's `GroupNormAct` after every convolution, a model-wide group
/// size) on the candle plan, which the facts choose for inference and for the training step:
/// eval-mode logits equal timm's, and so do the train-mode ones (GroupNorm has no running
/// statistics and the fixture no dropout or drop-path, so training mode computes the same);
/// the training step's loss is the cross-entropy of timm's logits, and its gradient of
/// GroupNorm weights and of a grouped convolution agrees with the loss's central difference.
#[test]
fn group_norm_fixture_matches_timm_in_eval_and_train_mode() {
    use effnet_runtime::Purpose;
    let spec = fixtures()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("fx_gn_"))
        .expect("the GroupNorm fixture");
    let (net, input, logits) = load_fixture(&spec, false);
    assert!(net.ir.stem.bn.groups().is_some(), "the stem has GroupNorm");
    for purpose in [Purpose::Infer, Purpose::TrainStep] {
        assert_eq!(net.plan(&input, purpose).plan, Plan::Candle, "{purpose:?}");
    }
    for train in [false, true] {
        let ours = net
            .forward_on(Plan::Candle, &input, train)
            .expect("forward");
        let d = max_abs(&ours, &logits);
        assert!(d < 1e-5, "train mode {train}: max |diff| {d:e}");
    }

    let (tnet, input, logits) = load_fixture(&spec, true);
    let params = trainable_params(&tnet);
    let (targets, theirs) = soft_targets_and_timm_loss(&logits);
    let loss_and_grads = || {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        tnet.loss_and_grads_on(Plan::Candle, &params, &input, &targets, &mut rng)
            .expect("step")
    };
    let (loss, grads) = loss_and_grads();
    assert!(
        (loss - theirs).abs() < 1e-5 * theirs.abs().max(1.0),
        "loss {loss}, timm {theirs}"
    );
    // The stem's and a projection's GroupNorm (with and without the activation after it),
    // and the model-wide group size's grouped depthwise convolution.
    for (name, at) in [
        ("bn1.weight", 3),
        ("blocks.2.1.bn3.bias", 5),
        ("blocks.2.1.conv_dw.weight", 17),
    ] {
        let i = params
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        let g: Vec<f32> = grads[i]
            .flatten_all()
            .and_then(|g| g.to_vec1())
            .expect("grad");
        let var = &params[i].var;
        let dims = var.as_tensor().dims().to_vec();
        let values: Vec<f32> = var
            .as_tensor()
            .flatten_all()
            .and_then(|v| v.to_vec1())
            .expect("values");
        let h = 1e-2f32;
        let at_h = |delta: f32| {
            let mut v = values.clone();
            v[at] += delta;
            let t = candle_core::Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).expect("t");
            var.set(&t).expect("set");
            loss_and_grads().0
        };
        let numeric = (at_h(h) - at_h(-h)) / (2.0 * f64::from(h));
        at_h(0.0);
        let analytic = f64::from(g[at]);
        println!("{name}[{at}]: autograd {analytic:e}, central difference {numeric:e}");
        assert!(
            // f32 losses: the difference quotient carries ~1e-5 of rounding.
            (numeric - analytic).abs() < 0.02 * analytic.abs() + 5e-5,
            "{name}[{at}]: autograd {analytic:e}, central difference {numeric:e}"
        );
    }
}

/// The CondConv fixture (timm's `CondConvResidual`: per-sample kernels mixed from experts on
/// 1x1, depthwise and grouped convolutions, TF `same` padding, batch 2 so that each sample's
/// routing differs): the plans' facts send it to candle (no effnet kernel mixes kernels per
/// sample), whose eval-mode logits match timm's, and whose train-mode logits (batch
/// statistics) match timm's train-mode logits. The training step runs on candle's autograd:
/// with frozen BatchNorm its loss is the cross-entropy of timm's logits, and its gradients of
/// the routing function and of the experts agree with central differences of that loss.
#[test]
fn condconv_fixture_matches_timm_in_eval_and_train_mode() {
    use effnet_runtime::{Plan, Purpose};
    let spec = fixtures()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("fx_cc_"))
        .expect("the CondConv fixture");
    let (net, input, logits) = load_fixture(&spec, false);
    assert_eq!(input.dims()[0], 2, "per-sample routing needs a batch");
    let choice = net.plan(&input, Purpose::Infer);
    assert_eq!(choice.plan, Plan::Candle);
    assert!(
        choice.to_string().contains("is a CondConv convolution"),
        "{choice}"
    );
    // The kernel plans refuse rather than run a CondConv network wrongly.
    assert!(net.forward_on(Plan::CpuFused, &input, false).is_err());
    let eval = net.forward_on(Plan::Candle, &input, false).expect("eval");
    let d = max_abs(&eval, &logits);
    assert!(d < 1e-4, "eval-mode logits vs timm: {d:e}");
    // Train mode: BatchNorm on the batch's statistics, as timm's `model.train()`.
    let train_file = spec.with_extension("train.safetensors");
    let theirs_train = read_safetensors(&train_file, &Device::Cpu)
        .expect("train logits")
        .remove("logits")
        .expect("logits");
    let train = net.forward_on(Plan::Candle, &input, true).expect("train");
    let d = max_abs(&train, &theirs_train);
    assert!(d < 1e-4, "train-mode logits vs timm: {d:e}");
    assert!(
        max_abs(&train, &eval) > 1e-2,
        "train and eval modes must differ"
    );

    // The training step with every BatchNorm frozen (eval-mode normalization).
    let (mut tnet, input, logits) = load_fixture(&spec, true);
    freeze_norms(&mut tnet);
    let params = trainable_params(&tnet);
    let (targets, theirs) = soft_targets_and_timm_loss(&logits);
    assert_eq!(
        tnet.plan(&input, Purpose::TrainStep).plan,
        Plan::Candle,
        "no hand-written CondConv step"
    );
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let loss_and_grads = |rng: &mut rand_chacha::ChaCha8Rng| {
        tnet.loss_and_grads_on(Plan::Candle, &params, &input, &targets, rng)
            .expect("step")
    };
    let (loss, grads) = loss_and_grads(&mut rng);
    assert_eq!(grads.len(), params.len());
    assert!(
        (loss - theirs).abs() < 1e-4 * theirs.abs().max(1.0),
        "loss {loss} vs timm {theirs}"
    );
    // Central differences on the largest-gradient element of a routing function and of each
    // kind of conditional convolution's experts (f64 sums of f32 losses: a step of 1e-2).
    for name in [
        "blocks.2.0.routing_fn.weight",
        "blocks.2.0.conv_pw.weight",
        "blocks.2.1.conv_dw.weight",
        "blocks.3.0.conv_dw.weight",
        "blocks.2.1.conv_pwl.weight",
    ] {
        let i = params
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        let g: Vec<f32> = grads[i]
            .flatten_all()
            .and_then(|g| g.to_vec1())
            .expect("grad");
        let (j, &gj) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .expect("elements");
        assert!(gj.abs() > 1e-4, "{name}: gradient {gj}");
        let var = &params[i].var;
        // Copied out: a flattened view would share the variable's storage.
        let orig: Vec<f32> = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values");
        let shape = var.as_tensor().shape().clone();
        let h = 1e-2f32;
        let mut at = |delta: f32| {
            let mut v = orig.clone();
            v[j] += delta;
            var.set(&candle_core::Tensor::from_vec(v, shape.clone(), &Device::Cpu).expect("t"))
                .expect("set");
            loss_and_grads(&mut rng).0
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
        at(0.0);
        println!("{name}[{j}]: autograd {gj}, central difference {numeric}");
        assert!(
            (numeric - gj as f64).abs() < 1e-3 * (gj.abs() as f64).max(1e-2),
            "{name}[{j}]: autograd {gj}, central difference {numeric}"
        );
    }
}
