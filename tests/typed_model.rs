//! `#[effnet::model]` end to end: generated structs and the interpreter (`Network::from_ir`)
//! give bit-identical outputs from the same weights (timm fixtures and random weights, eval and
//! train mode), the constants match the IR, and the spec is a build input of the crate.
#![deny(warnings)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use effnet::EffNet;
use effnet::candle::{DType, Device, ModuleT, Tensor};
use effnet::compiler::analysis::summarize;
use effnet::nn::{VarBuilder, VarMap};
use effnet::runtime::{Network, weights};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[effnet::model("specs/tf_efficientnetv2_b0.effnet")]
pub struct B0;

#[effnet::model("specs/tf_efficientnetv2_b.effnet", name = "tf_efficientnetv2_b2")]
pub struct B2;

#[effnet::model("specs/efficientnetv2_s.effnet")]
pub struct V2S;

/// EfficientNet-B0 (V1): `ds` and `ir` blocks with SE, drop_path 0.2 and dropout 0.2, so the
/// train-mode check covers both random paths.
#[effnet::model("specs/efficientnet.effnet", name = "efficientnet_b0")]
pub struct V1B0;

/// `head none`, from a file with several models.
#[effnet::model("tests/fixtures/ok/derived.effnet", name = "deeper_late")]
pub struct DeeperLate;

macro_rules! fixtures {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            #[effnet::model($file)]
            pub struct $name;
        )*
        /// Each runtime fixture: its spec path and a check comparing the typed struct with the
        /// interpreter.
        fn fixture_checks() -> Vec<(&'static str, Box<dyn Fn(&Path) -> TestResult>)> {
            let mut checks: Vec<(&'static str, Box<dyn Fn(&Path) -> TestResult>)> = Vec::new();
            $(
                checks.push((
                    $file,
                    Box::new(|path: &Path| {
                        compare_fixture::<$name>(path, $name::spec_ir()?, $name::load)
                    }),
                ));
            )*
            checks
        }
    };
}

fixtures! {
    FxCcSame33 => "tests/fixtures/runtime/fx_cc_same33.effnet",
    FxConvNohead => "tests/fixtures/runtime/fx_conv_nohead.effnet",
    FxEdgeRw67 => "tests/fixtures/runtime/fx_edge_rw67.effnet",
    // GroupNorm and a model-wide group size: every walk on the candle plan.
    FxGnG822 => "tests/fixtures/runtime/fx_gn_g8_22.effnet",
    FxFixedStem12 => "tests/fixtures/runtime/fx_fixed_stem12.effnet",
    FxV1Relu32 => "tests/fixtures/runtime/fx_v1_relu32.effnet",
    FxV2bSame67 => "tests/fixtures/runtime/fx_v2b_same67.effnet",
    FxV2sSym64 => "tests/fixtures/runtime/fx_v2s_sym64.effnet",
    FxW125D15Limit0 => "tests/fixtures/runtime/fx_w125_d15_limit0.effnet",
    FxW125D15Limit09 => "tests/fixtures/runtime/fx_w125_d15_limit09.effnet",
    // Space-to-depth, blur pooling and global context attention (the last two on candle).
    FxS2dSym25 => "tests/fixtures/runtime/fx_s2d_sym25.effnet",
    FxBlurSym35 => "tests/fixtures/runtime/fx_blur_sym35.effnet",
    FxGcSym29 => "tests/fixtures/runtime/fx_gc_sym29.effnet",
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's target directory, as cargo (and so trybuild) resolves it.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

fn bits(t: &Tensor) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

fn assert_same(what: &str, a: &Tensor, b: &Tensor) -> TestResult {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    assert!(bits(a)? == bits(b)?, "{what}: outputs differ");
    Ok(())
}

fn assert_same_tensors<A: EffNet, B: EffNet>(what: &str, a: &A, b: &B) -> TestResult {
    let (ta, tb) = (a.named_tensors(), b.named_tensors());
    let names = |t: &[effnet::runtime::nn::NamedTensor]| {
        t.iter()
            .map(|n| (n.name.clone(), n.trainable))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ta), names(&tb), "{what}: tensor names");
    for (x, y) in ta.iter().zip(&tb) {
        assert_same(&format!("{what}: {}", x.name), &x.tensor, &y.tensor)?;
    }
    Ok(())
}

/// Eval logits, features, and three train-mode passes (BatchNorm statistics update, stochastic
/// depth and dropout draw from the seeded generators), then eval again: all bit-identical.
fn compare<T: EffNet>(what: &str, typed: &mut T, net: &mut Network, x: &Tensor) -> TestResult {
    assert_eq!(typed.ir(), &net.ir, "{what}: IR");
    assert_same_tensors(what, typed, net)?;
    assert_same(
        &format!("{what}: eval"),
        &typed.forward_t(x, false)?,
        &net.forward_t(x, false)?,
    )?;
    let (fa, fb) = (
        typed.forward_features_t(x, false)?,
        net.forward_features_t(x, false)?,
    );
    assert_eq!(fa.len(), fb.len());
    for (i, (a, b)) in fa.iter().zip(&fb).enumerate() {
        assert_same(&format!("{what}: stage {i}"), a, b)?;
    }
    let levels: Vec<usize> = (0..net.ir.feature_info().len()).collect();
    let (pa, pb) = (
        typed.forward_pyramid_t(x, &levels, false)?,
        net.forward_pyramid_t(x, &levels, false)?,
    );
    assert_eq!(pa.len(), levels.len());
    for (i, (a, b)) in pa.iter().zip(&pb).enumerate() {
        assert_same(&format!("{what}: level {i}"), a, b)?;
    }
    typed.seed(7);
    net.seed(7);
    for step in 0..3 {
        assert_same(
            &format!("{what}: train step {step}"),
            &typed.forward_t(x, true)?,
            &net.forward_t(x, true)?,
        )?;
    }
    assert_same_tensors(&format!("{what} after training"), typed, net)?;
    assert_same(
        &format!("{what}: eval after train"),
        &typed.forward_t(x, false)?,
        &net.forward_t(x, false)?,
    )?;
    Ok(())
}

fn compare_fixture<T: EffNet>(
    path: &Path,
    ir: effnet::compiler::ir::Network,
    load: fn(VarBuilder<'static>) -> effnet::Result<T>,
) -> TestResult {
    let weights_path = path.with_extension("safetensors");
    let data = weights::read_safetensors(&weights_path, &Device::Cpu)?;
    let x = data.get("__input__").ok_or("no __input__")?.clone();
    let expected = data.get("__logits__").ok_or("no __logits__")?.clone();
    let tensors: HashMap<String, Tensor> = data
        .into_iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut net = Network::from_ir(&ir, vb.clone())?;
    let mut typed = load(vb)?;
    let logits = typed.forward_t(&x, false)?;
    let diff = (&logits - &expected)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert!(diff < 1e-4, "{}: {diff} from timm's logits", path.display());
    compare(&path.display().to_string(), &mut typed, &mut net, &x)
}

#[test]
fn typed_matches_interpreter_on_timm_fixtures() -> TestResult {
    let checks = fixture_checks();
    assert_eq!(checks.len(), 13);
    for (file, check) in checks {
        check(&root().join(file))?;
    }
    Ok(())
}

/// Deterministic, varied values for every tensor of a VarMap (BatchNorm variances positive).
fn randomize(vm: &VarMap) -> TestResult {
    let data = vm.data().lock().map_err(|_| "poisoned")?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let n = var.elem_count();
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let v = ((i as f64 * 12.9898 + k as f64 * 78.233).sin() * 43758.5453).fract();
                if name.ends_with("running_var") {
                    (0.5 + v.abs()) as f32
                } else if name.ends_with("weight") && !name.contains("bn") {
                    (v * 0.3) as f32
                } else {
                    (v * 0.5) as f32
                }
            })
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
    }
    Ok(())
}

fn random_pair<T: EffNet>(
    ir: &effnet::compiler::ir::Network,
    load: fn(VarBuilder<'static>) -> effnet::Result<T>,
) -> Result<(T, Network), Box<dyn std::error::Error>> {
    let vm = VarMap::new();
    Network::from_ir(ir, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    randomize(&vm)?;
    // Plain tensors, as loading a weight file gives (variables would keep the runtime off its
    // fused inference kernels).
    let tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .map_err(|_| "poisoned")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let net = Network::from_ir(ir, vb.clone())?;
    Ok((load(vb)?, net))
}

fn input(res: usize, batch: usize) -> Result<Tensor, Box<dyn std::error::Error>> {
    let n = batch * 3 * res * res;
    let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
    Ok(Tensor::from_vec(v, (batch, 3, res, res), &Device::Cpu)?)
}

#[test]
fn typed_matches_interpreter_with_drop_path_and_dropout() -> TestResult {
    let ir = V1B0::spec_ir()?;
    assert!(ir.drop_path > 0.0 && ir.dropout > 0.0);
    let (mut typed, mut net) = random_pair(&ir, V1B0::load)?;
    compare("efficientnet_b0", &mut typed, &mut net, &input(64, 4)?)?;

    let ir = DeeperLate::spec_ir()?;
    assert!(ir.head.is_none());
    let (mut typed, mut net) = random_pair(&ir, DeeperLate::load)?;
    compare("deeper_late", &mut typed, &mut net, &input(48, 2)?)
}

#[test]
fn b0_runs_and_matches_interpreter() -> TestResult {
    let ir = B0::spec_ir()?;
    let (mut typed, mut net) = random_pair(&ir, B0::load)?;
    let x = input(160, 2)?;
    let f = typed.forward_features(&x)?;
    assert_eq!(f.stage0.dims(), &[2, 16, 80, 80]);
    assert_eq!(f.stage5.dims(), &[2, 192, 5, 5]);
    // A stage struct run on its own continues the network's walk exactly.
    let rng = effnet::runtime::nn::NetRng::seeded(0);
    let s1 = typed.stage1.forward_t(&f.stage0, false, 1.0, &rng)?;
    assert_same("B0 stage 1 on its own", &s1, &f.stage1)?;
    assert_eq!(f.into_vec().len(), 6);
    // The inherent API, ModuleT and the trait agree.
    let a = typed.forward(&x)?;
    assert_eq!(a.dims(), &[2, 1000]);
    assert_same("B0 ModuleT", &a, &ModuleT::forward_t(&typed, &x, false)?)?;
    assert_eq!(typed.stage5.blocks.len(), 8);
    compare("B0", &mut typed, &mut net, &x)
}

#[test]
fn constants_match_the_ir() -> TestResult {
    let ir = B0::spec_ir()?;
    assert_eq!(B0::NAME, "tf_efficientnetv2_b0");
    assert_eq!(B0::PARAMS, ir.param_count());
    assert_eq!(B0::PARAMS, 7_139_704); // timm's tf_efficientnetv2_b0
    assert_eq!(B0::MACS, summarize(&ir, 224).macs);
    assert_eq!(B0::INPUT, (3, 224, 224));
    assert_eq!(B0::TRAIN_RESOLUTION, Some(192));
    assert_eq!(B0::NUM_CLASSES, 1000);
    assert_eq!(B0::NUM_FEATURES, 1280);
    assert_eq!(B0::STAGE_BLOCKS, [1, 2, 2, 3, 5, 8]);
    assert_eq!(B0::STAGE_CHANNELS, [16, 32, 48, 96, 112, 192]);
    assert_eq!(B0Stage5::BLOCKS, 8);
    // timm's `features_only` levels of tf_efficientnetv2_b0.
    assert_eq!(B0::FEATURE_STRIDES, [2, 4, 8, 16, 32]);
    assert_eq!(B0::FEATURE_CHANNELS, [16, 32, 48, 112, 192]);
    assert!(B0::SPEC.contains("model tf_efficientnetv2_b0"));
    assert!(B0::SCHEDULES.is_empty());

    let b2 = B2::spec_ir()?;
    assert_eq!(B2::NAME, "tf_efficientnetv2_b2");
    assert_eq!(B2::PARAMS, b2.param_count());
    assert_eq!(B2::INPUT, (3, 260, 260));

    let s = V2S::spec_ir()?;
    assert_eq!(V2S::PARAMS, s.param_count());
    let names: Vec<&str> = V2S::SCHEDULES.iter().map(|s| s.name).collect();
    let expected: Vec<&str> = s.schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, expected);
    for (c, sched) in V2S::SCHEDULES.iter().zip(&s.schedules) {
        assert_eq!(c.epochs, sched.epochs);
        assert_eq!(c.stages.len(), sched.stages.len());
        for (a, b) in c.stages.iter().zip(&sched.stages) {
            assert_eq!(a.epochs, b.epochs);
            assert_eq!(a.image_size, b.image_size);
            assert_eq!(a.randaug.to_bits(), b.randaug.to_bits());
            assert_eq!(a.dropout.to_bits(), b.dropout.to_bits());
            assert_eq!(a.drop_path, b.drop_path);
            assert_eq!(a.batch_size, b.batch_size);
        }
        let last = sched.stage_at(10_000).map(|s| s.image_size);
        assert_eq!(c.stage_at(10_000).map(|s| s.image_size), last);
    }
    assert_eq!(V2S::SCHEDULE_PAPER.name, "paper");
    Ok(())
}

/// `forward_pyramid` returns the requested levels as an array, in the order asked, equal to
/// timm's `features_only` maps (the fixture's `.features.safetensors`); the stem is level 0 of
/// a network whose first stage downsamples. A level out of range is an error naming the valid
/// ones.
#[test]
fn forward_pyramid_returns_the_requested_levels() -> TestResult {
    let path = root().join("tests/fixtures/runtime/fx_conv_nohead.effnet");
    let data = weights::read_safetensors(&path.with_extension("safetensors"), &Device::Cpu)?;
    let x = data.get("__input__").ok_or("no __input__")?.clone();
    let tensors: HashMap<String, Tensor> = data
        .into_iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .collect();
    let typed = FxConvNohead::load(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
    assert_eq!(FxConvNohead::FEATURE_STRIDES, [2, 4, 8, 16]);
    assert_eq!(FxConvNohead::FEATURE_CHANNELS, [8, 16, 24, 32]);
    let timm =
        weights::read_safetensors(&path.with_extension("features.safetensors"), &Device::Cpu)?;
    let [p4, stem, p16] = typed.forward_pyramid(&x, [1, 0, 3])?;
    for (level, ours) in [(1, &p4), (0, &stem), (3, &p16)] {
        let theirs = timm.get(&format!("level{level}")).ok_or("no level")?;
        assert_eq!(ours.dims(), theirs.dims(), "level {level}");
        assert_eq!(ours.dims()[1], FxConvNohead::FEATURE_CHANNELS[level]);
        let diff = (ours - theirs)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let scale = theirs.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(
            diff <= 1e-5 * scale,
            "level {level}: {diff} against timm's max {scale}"
        );
    }
    assert_eq!(stem.dims(), &[2, 8, 32, 32]);
    let e = typed
        .forward_pyramid(&x, [4])
        .err()
        .ok_or("accepted level 4")?;
    assert!(e.to_string().contains("no feature level 4"), "{e}");
    assert!(
        e.to_string()
            .contains("3 (`blocks.3`, stride 16, 32 channels)"),
        "{e}"
    );
    Ok(())
}

#[test]
fn load_reports_missing_weights() {
    let vb = VarBuilder::from_tensors(HashMap::new(), DType::F32, &Device::Cpu);
    match FxV2sSym64::load(vb) {
        Ok(_) => panic!("loaded without weights"),
        Err(e) => assert!(e.to_string().contains("conv_stem.weight"), "{e}"),
    }
}

#[test]
fn wrong_input_is_an_error() -> TestResult {
    let ir = FxV1Relu32::spec_ir()?;
    let (typed, _) = random_pair(&ir, FxV1Relu32::load)?;
    let x = Tensor::zeros((1, 4, 32, 32), DType::F32, &Device::Cpu)?;
    let e = typed.forward(&x).err().ok_or("accepted 4 channels")?;
    assert!(e.to_string().contains("expects input"), "{e}");
    Ok(())
}

/// The spec is a build input: rustc's dep-info for this very test binary lists it (through the
/// `include_str!` the macro emits), so cargo rebuilds the crate when the spec changes.
#[test]
fn spec_is_a_build_input() -> TestResult {
    let exe = std::env::current_exe()?;
    let dep_info = exe.with_extension("d");
    let text = std::fs::read_to_string(&dep_info)
        .map_err(|e| format!("cannot read `{}`: {e}", dep_info.display()))?;
    for spec in [
        "specs/tf_efficientnetv2_b0.effnet",
        "tests/fixtures/ok/derived.effnet",
        "tests/fixtures/runtime/fx_v2b_same67.effnet",
    ] {
        let abs = root().join(spec).canonicalize()?;
        assert!(
            text.contains(&abs.display().to_string()),
            "{} does not list {}",
            dep_info.display(),
            abs.display()
        );
    }
    Ok(())
}

/// The host's target triple, from `rustc -vV` (the toolchain cargo runs).
fn host_triple() -> Result<String, Box<dyn std::error::Error>> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc).arg("-vV").output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .ok_or_else(|| format!("`rustc -vV` printed no host line:\n{text}").into())
}

/// A crate of its own, built twice with cargo: editing the spec recompiles it, and the new
/// constants show. It builds in trybuild's target directory with trybuild's flags
/// (tests/trybuild.rs), so the dependencies trybuild compiled are reused rather than built a
/// second time.
#[test]
fn editing_the_spec_rebuilds_the_crate() -> TestResult {
    let base = root().join("target/tmp/effnet-rebuild-check");
    let krate = base.join("crate");
    std::fs::create_dir_all(krate.join("src"))?;
    let spec = "model m {\n    input 3 x 32\n    classes CLASSES\n    stem conv k3 s2 -> 8\n    \
                stage mbconv k3 e4 s2 -> 16 x1\n}\n";
    std::fs::write(krate.join("m.effnet"), spec.replace("CLASSES", "10"))?;
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"rebuild-check\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\neffnet = {{ path = {:?} }}\n\n[workspace]\n",
            root().display().to_string()
        ),
    )?;
    std::fs::write(
        krate.join("src/main.rs"),
        "#![deny(warnings)]\n#[effnet::model(\"m.effnet\")]\npub struct M;\n\
         fn main() { println!(\"classes {}\", M::NUM_CLASSES); }\n",
    )?;
    // trybuild's rustflags (trybuild 1.0: `--cfg trybuild --verbose -A dead_code`): flags are
    // part of every dependency's build hash, so matching them is what lets the build reuse.
    // trybuild also builds with `--target <host>` and without incremental compilation; the
    // target is part of the output path, so without it every dependency is built again.
    let flags = r#"["--cfg", "trybuild", "--verbose", "-A", "dead_code"]"#;
    let host = host_triple()?;
    let run = || -> Result<(String, String), Box<dyn std::error::Error>> {
        let out = std::process::Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--offline", "--target", &host])
            .arg(format!("--config=build.rustflags={flags}"))
            .arg(format!("--config=target.{host}.rustflags={flags}"))
            .arg("--manifest-path")
            .arg(krate.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir().join("tests/trybuild"))
            .env_remove("RUSTFLAGS")
            .env("CARGO_INCREMENTAL", "0")
            .env("CARGO_TERM_QUIET", "false")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        Ok((String::from_utf8_lossy(&out.stdout).to_string(), stderr))
    };
    let (first, _) = run()?;
    assert_eq!(first.trim(), "classes 10");
    std::fs::write(krate.join("m.effnet"), spec.replace("CLASSES", "12"))?;
    let (second, _) = run()?;
    assert_eq!(
        second.trim(),
        "classes 12",
        "editing the spec did not rebuild"
    );
    Ok(())
}
