//! The runtime commands as a user runs them: `run` reproduces timm's logits on a fixture,
//! `predict` classifies a generated PNG, `bench --json` reports a throughput, and user errors
//! exit 1 with the offending file named on stderr.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

const FIXTURE: &str = "tests/fixtures/runtime/fx_v2b_same67";

fn effnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effnet"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the effnet binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("effnet-cli-runtime-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn spec() -> String {
    format!("{FIXTURE}.effnet")
}

/// The fixture's weights alone in `dir/weights.safetensors`, plus its input and logits.
fn fixture_files(dir: &Path) -> (PathBuf, Tensor, Tensor) {
    fixture_files_of(dir, FIXTURE)
}

/// [`fixture_files`] of the fixture at `fixture` (a path without extension).
fn fixture_files_of(dir: &Path, fixture: &str) -> (PathBuf, Tensor, Tensor) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{fixture}.safetensors"));
    let mut t: HashMap<String, Tensor> =
        candle_core::safetensors::load(&src, &Device::Cpu).expect("fixture");
    let x = t.remove("__input__").expect("input");
    let y = t.remove("__logits__").expect("logits");
    let w = dir.join("weights.safetensors");
    candle_core::safetensors::save(&t, &w).expect("save weights");
    (w, x, y)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn run_reproduces_timm_logits() {
    let dir = tmp_dir("run");
    let (w, x, want) = fixture_files(&dir);
    let input = dir.join("x.npy");
    let output = dir.join("y.npy");
    x.write_npy(&input).expect("write input");
    let o = effnet(&[
        "run",
        &spec(),
        "--weights",
        &s(&w),
        "--input",
        &s(&input),
        "--output",
        &s(&output),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = Tensor::read_npy(&output).expect("read output");
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    assert!(diff < 1e-4, "max |diff| {diff}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `run --features` writes each requested level beside OUTPUT, equal to timm's
/// `features_only` maps (the fixture's `.features.safetensors`); both spellings of the list
/// work, and a level out of range is an error naming the valid ones.
#[test]
fn run_writes_the_requested_feature_levels() {
    let dir = tmp_dir("run-features");
    let (w, x, _) = fixture_files(&dir);
    let input = dir.join("x.npy");
    x.write_npy(&input).expect("write input");
    let output = dir.join("feats.npy");
    let run = |levels: &str| {
        effnet(&[
            "run",
            &spec(),
            "--weights",
            &s(&w),
            "--input",
            &s(&input),
            "--output",
            &s(&output),
            "--features",
            levels,
        ])
    };
    let timm: HashMap<String, Tensor> = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{FIXTURE}.features.safetensors")),
        &Device::Cpu,
    )
    .expect("timm's feature maps");
    for (levels, written) in [("1,3", [1, 3].as_slice()), ("[0, 2]", [0, 2].as_slice())] {
        let o = run(levels);
        assert_eq!(o.status.code(), Some(0), "{levels}: {}", stderr(&o));
        assert!(!output.exists(), "--features writes no logits");
        for &i in written {
            let path = dir.join(format!("feats.level{i}.npy"));
            let got = Tensor::read_npy(&path).expect("level file");
            let want = &timm[&format!("level{i}")];
            assert_eq!(got.dims(), want.dims(), "level {i}");
            let max_abs = |t: &Tensor| {
                t.abs()
                    .and_then(|d| d.flatten_all())
                    .and_then(|d| d.max(0))
                    .and_then(|d| d.to_scalar::<f32>())
                    .expect("max")
            };
            let rel = max_abs(&(got - want).expect("diff")) / max_abs(want);
            assert!(rel < 1e-5, "level {i}: {rel} relative to timm");
            assert!(
                stderr(&o).contains(&format!("wrote level {i} (")),
                "{}",
                stderr(&o)
            );
            std::fs::remove_file(path).expect("remove level file");
        }
    }
    let o = run("1,4");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no feature level 4"), "{err}");
    assert!(
        err.contains("3 (`blocks.4`, stride 16, 32 channels)"),
        "{err}"
    );
    let o = run("1,x");
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&o).contains("`x` is not a level index"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// At `output_stride 16` the last levels keep stride 16 (the stage that would go to 32
/// dilates instead): `summary` lists them so, and `run --features` writes timm's maps, of timm's
/// shapes, for them.
#[test]
fn feature_levels_at_output_stride_16_are_timms() {
    const OS16: &str = "tests/fixtures/runtime/fx_os16_sym35";
    let dir = tmp_dir("run-features-os16");
    let (w, x, _) = fixture_files_of(&dir, OS16);
    let input = dir.join("x.npy");
    x.write_npy(&input).expect("write input");
    let output = dir.join("feats.npy");
    let spec = format!("{OS16}.effnet");
    let o = effnet(&["summary", &spec]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("output stride 16"), "{table}");
    let levels: Vec<(String, String)> = table
        .lines()
        .skip_while(|l| !l.starts_with("level"))
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[3].to_string(), f[5].to_string())
        })
        .collect();
    let want = [
        ("2", "18x18"),
        ("4", "9x9"),
        ("8", "5x5"),
        ("16", "3x3"),
        ("16", "3x3"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(levels, want, "{table}");
    let o = effnet(&[
        "run",
        &spec,
        "--weights",
        &s(&w),
        "--input",
        &s(&input),
        "--output",
        &s(&output),
        "--features",
        "3,4",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrote level 4 (`blocks.5`, stride 16, 40 channels)"),
        "{}",
        stderr(&o)
    );
    let timm: HashMap<String, Tensor> = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{OS16}.features.safetensors")),
        &Device::Cpu,
    )
    .expect("timm's feature maps");
    for i in [3, 4] {
        let got = Tensor::read_npy(dir.join(format!("feats.level{i}.npy"))).expect("level file");
        let want = &timm[&format!("level{i}")];
        assert_eq!(got.dims(), want.dims(), "level {i}");
        assert_eq!(got.dims()[2..], [3, 3], "level {i}");
        let max_abs = |t: &Tensor| {
            t.abs()
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_scalar::<f32>())
                .expect("max")
        };
        let rel = max_abs(&(got - want).expect("diff")) / max_abs(want);
        assert!(rel < 1e-5, "level {i}: {rel} relative to timm");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_errors_name_the_file() {
    let dir = tmp_dir("run-errors");
    let (w, x, _) = fixture_files(&dir);
    let input = dir.join("x.npy");
    x.write_npy(&input).expect("write input");
    let output = dir.join("y.npy");
    let run = |weights: &Path, input: &Path| {
        effnet(&[
            "run",
            &spec(),
            "--weights",
            &s(weights),
            "--input",
            &s(input),
            "--output",
            &s(&output),
        ])
    };
    // A missing weights file.
    let missing = dir.join("missing.safetensors");
    let o = run(&missing, &input);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&s(&missing)), "{}", stderr(&o));
    // A weights file that is not safetensors.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, "not safetensors").expect("write");
    let o = run(&junk, &input);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&s(&junk)), "{}", stderr(&o));
    // Four input channels instead of three.
    let bad = dir.join("bad.npy");
    Tensor::zeros((1, 4, 67, 67), candle_core::DType::F32, &Device::Cpu)
        .and_then(|t| t.write_npy(&bad))
        .expect("write bad input");
    let o = run(&w, &bad);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&s(&bad)) && e.contains("channels"), "{e}");
    // Rank 2.
    Tensor::zeros((3, 67), candle_core::DType::F32, &Device::Cpu)
        .and_then(|t| t.write_npy(&bad))
        .expect("write bad input");
    let o = run(&w, &bad);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&s(&bad)), "{}", stderr(&o));
    // Not a .npy file.
    let text = dir.join("input.txt");
    std::fs::write(&text, "1 2 3").expect("write");
    let o = run(&w, &text);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&s(&text)), "{}", stderr(&o));
    // A missing input.
    let nothing = dir.join("nothing.npy");
    let o = run(&w, &nothing);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&s(&nothing)), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn predict_classifies_a_png() {
    let dir = tmp_dir("predict");
    let (w, _, _) = fixture_files(&dir);
    let png = dir.join("image.png");
    let img = image::RgbImage::from_fn(90, 60, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 4) as u8, ((x + y) % 256) as u8])
    });
    img.save(&png).expect("write png");
    let labels = dir.join("labels.txt");
    let names: Vec<String> = (0..10).map(|i| format!("thing{i}")).collect();
    std::fs::write(&labels, names.join("\n")).expect("write labels");
    let o = effnet(&[
        "predict",
        &spec(),
        "--weights",
        &s(&w),
        &s(&png),
        &s(&png),
        "--labels",
        &s(&labels),
        "--top",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches(&s(&png)).count(), 2, "{out}");
    assert_eq!(out.matches("thing").count(), 6, "{out}");
    assert!(out.contains("1.") && out.contains('%'), "{out}");
    // Without labels: class indices.
    let o = effnet(&[
        "predict",
        &spec(),
        "--weights",
        &s(&w),
        &s(&png),
        "--top",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("class ").count(), 2, "{}", stdout(&o));
    // A file that is not an image.
    let bad = dir.join("bad.png");
    std::fs::write(&bad, "not an image").expect("write");
    let o = effnet(&["predict", &spec(), "--weights", &s(&w), &s(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&s(&bad)), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bench_json_reports_a_throughput() {
    for train in [false, true] {
        let mut args = vec![
            "bench",
            "tests/fixtures/runtime/fx_v2s_sym64.effnet",
            "--resolution",
            "32",
            "--batch",
            "2",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--json",
        ];
        if train {
            args.push("--train");
        }
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
        assert_eq!(v["model"], "fx_v2s_sym64");
        assert_eq!(v["resolution"], 32);
        assert_eq!(v["batch"], 2);
        assert_eq!(v["train"], train);
        assert!(v["images_per_sec"].as_f64().is_some_and(|x| x > 0.0), "{v}");
        assert!(v["peak_rss_mb"].as_f64().is_some_and(|x| x > 0.0), "{v}");
        // The plan the facts choose on the CPU in f32: the effnet kernels, no fallback.
        assert_eq!(v["device"], "cpu", "{v}");
        assert!(
            v["device_name"].as_str().is_some_and(|n| !n.is_empty()),
            "{v}"
        );
        assert_eq!(v["dtype"], "f32", "{v}");
        assert_eq!(v["precision"], "f32", "{v}");
        let want = if train { "cpu-step" } else { "cpu-fused" };
        assert_eq!(v["plan"], want, "{v}");
        assert!(v["plan_fallback_reason"].is_null(), "{v}");
        // No GPU pool on the CPU: the key is there, with no figure.
        assert!(v["peak_device_mb"].is_null(), "{v}");
    }
}

/// `bench --profile` adds each kind of operation's share (JSON and table), of an inference or
/// of a training step.
#[test]
fn bench_profile_reports_each_kind_of_operation() {
    let base = [
        "bench",
        "tests/fixtures/runtime/fx_v2s_sym64.effnet",
        "--resolution",
        "32",
        "--batch",
        "2",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--profile",
    ];
    let o = effnet(&[&base[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    let rows = v["profile"].as_array().expect("profile rows");
    let ops: Vec<&str> = rows.iter().filter_map(|r| r["op"].as_str()).collect();
    for op in [
        "depthwise 3x3",
        "pointwise 1x1",
        "dense 3x3 s2",
        "classifier",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    assert!(
        rows.iter()
            .all(|r| r["ms"].as_f64().is_some_and(|m| m >= 0.0))
    );
    let o = effnet(&base);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("profile (2 calls"), "{}", stdout(&o));
    // A training step: forward and backward by kind, and the optimizer's update.
    let o = effnet(&[&base[..], &["--train", "--json"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    let ops: Vec<String> = v["profile"]
        .as_array()
        .expect("profile rows")
        .iter()
        .filter_map(|r| r["op"].as_str().map(String::from))
        .collect();
    for op in [
        "forward depthwise 3x3",
        "backward depthwise 3x3",
        "backward pointwise 1x1",
        "optimizer update",
    ] {
        assert!(ops.iter().any(|o| o == op), "{op} missing from {ops:?}");
    }
    // The candle plan's autograd has no walk to time: said, not a panic.
    let o = effnet(&[&base[..], &["--train", "--plan", "candle"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--profile times"), "{}", stderr(&o));
}

/// `bench --plan` runs a named plan, says which, and refuses one the call cannot use.
#[test]
fn bench_runs_a_named_plan_and_says_why_when_it_cannot() {
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "tests/fixtures/runtime/fx_v2s_sym64.effnet",
            "--resolution",
            "32",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        effnet(&args)
    };
    for extra in [
        &["--plan", "candle"][..],
        &["--plan", "candle", "--train"][..],
    ] {
        let o = bench(extra);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
        assert_eq!(v["plan"], "candle", "{v}");
    }
    let o = bench(&["--plan", "cpu-step"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("runs training steps only"),
        "{}",
        stderr(&o)
    );
    let o = bench(&["--plan", "cpu-fused", "--train"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("runs inference only"), "{}", stderr(&o));
    // f16 weights run inference on the fused plan (widened to f32) but train on candle.
    let o = bench(&["--dtype", "f16", "--train"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    assert_eq!(v["plan"], "candle", "{v}");
    let why = v["plan_fallback_reason"].as_str().unwrap_or_default();
    assert!(why.contains("f16"), "{v}");
}

/// Every command that computes parses `--device` the same way: CUDA in a build without it is
/// one error that says how to rebuild, and an unknown device is a usage error listing both.
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let bench = [
        "bench",
        "tests/fixtures/runtime/fx_v2s_sym64.effnet",
        "--iters",
        "1",
    ];
    let train = [
        "train",
        "specs/efficientnetv2_nano.effnet",
        "--data",
        "data/mnist",
        "--out",
        "target/never-written",
        "--epochs",
        "1",
    ];
    let eval = [
        "eval",
        "specs/efficientnetv2_nano.effnet",
        "--weights",
        "no/such/weights.safetensors",
        "--data",
        "data/mnist",
    ];
    for command in [&bench[..], &train[..], &eval[..]] {
        let mut args = command.to_vec();
        args.extend(["--device", "cuda"]);
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(1), "{command:?}");
        assert!(
            stderr(&o).contains("`--device cuda`: this effnet was built without CUDA support")
                && stderr(&o).contains("--features cuda"),
            "{command:?}: {}",
            stderr(&o)
        );
        let mut args = command.to_vec();
        args.extend(["--device", "gpu"]);
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(2), "{command:?}");
        assert!(
            stderr(&o).contains("[possible values: cpu, cuda]"),
            "{command:?}: {}",
            stderr(&o)
        );
    }
}

/// `--threads N` sizes the one pool every CPU kernel runs on (bench reports it), on every
/// command that computes; 0 is an error.
#[test]
fn threads_sizes_the_compute_pool() {
    let bench = |threads: &str| {
        effnet(&[
            "bench",
            "tests/fixtures/runtime/fx_v2s_sym64.effnet",
            "--resolution",
            "32",
            "--batch",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--train",
            "--json",
            "--threads",
            threads,
        ])
    };
    for n in [1, 3] {
        let o = bench(&n.to_string());
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
        assert_eq!(v["threads"], n, "{v}");
    }
    let o = bench("0");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--threads 0: expected at least 1"),
        "{}",
        stderr(&o)
    );
    for command in [
        &[
            "train",
            "specs/efficientnetv2_nano.effnet",
            "--data",
            "x",
            "--out",
            "y",
        ][..],
        &[
            "eval",
            "specs/efficientnetv2_nano.effnet",
            "--weights",
            "w",
            "--data",
            "x",
        ],
        &[
            "run",
            FIXTURE,
            "--weights",
            "w",
            "--input",
            "x",
            "--output",
            "y",
        ],
        &["predict", FIXTURE, "--weights", "w", "x.png"],
    ] {
        let mut args = command.to_vec();
        args.extend(["--threads", "0"]);
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(1), "{command:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--threads 0: expected at least 1"),
            "{command:?}: {}",
            stderr(&o)
        );
    }
}

/// The main job in miniature: `effnet train` on the bundled digits writes the run directory
/// (weights, metrics.csv with one row per epoch, curves.png, a checkpoint), `--resume` of a
/// finished run trains nothing more, and `effnet eval` of the weights gives a top-1 that the
/// training run's last metrics row agrees with.
#[test]
fn train_then_eval_on_bundled_mnist() {
    let dir = tmp_dir("train");
    let out = dir.join("run");
    let _ = std::fs::remove_dir_all(&out);
    let spec = "specs/efficientnetv2_nano.effnet";
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            spec,
            "--data",
            "data/mnist",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--epochs",
            "3",
            "--train-limit",
            "192",
            "--batch",
            "64",
        ];
        args.extend_from_slice(extra);
        effnet(&args)
    };
    let o = train(&[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("stage") && text.contains("image"),
        "stage table:\n{text}"
    );
    assert!(text.contains("compute cpu ("), "compute line:\n{text}");
    assert!(
        text.contains("training step plan: cpu-step"),
        "plan line:\n{text}"
    );

    let csv = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("epoch,stage,image_size"), "{}", rows[0]);
    assert_eq!(rows.len(), 4, "a header and one row per epoch:\n{csv}");
    let sizes: Vec<usize> = rows[1..]
        .iter()
        .map(|r| {
            r.split(',')
                .nth(2)
                .expect("image_size")
                .parse()
                .expect("number")
        })
        .collect();
    assert_eq!(sizes, [20, 22, 24], "three stages, one epoch each");
    let png = std::fs::read(out.join("curves.png")).expect("curves.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    assert!(out.join("model.safetensors").is_file());

    // Resuming a finished run: nothing left to train, the weights stay.
    let before = std::fs::read(out.join("model.safetensors")).expect("weights");
    let o = train(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        before,
        std::fs::read(out.join("model.safetensors")).expect("weights")
    );

    let weights = out.join("model.safetensors");
    let o = effnet(&[
        "eval",
        spec,
        "--weights",
        weights.to_str().expect("utf-8 path"),
        "--data",
        "data/mnist",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last_top1: f64 = rows[3]
        .split(',')
        .nth(10)
        .expect("test_top1")
        .parse()
        .expect("number");
    let report = stdout(&o);
    let shown = format!("{:.2}%", last_top1 * 100.0);
    assert!(
        report.contains(&shown),
        "eval says {report:?}, training said {shown}"
    );
}

/// Fine-tuning from the command line: `--init` takes a run's weights, `--freeze` and
/// `--lr-scale` add to the schedule and are reported (the frozen parts per epoch too), a
/// resumed run must have the same settings, and a bad flag or weights that do not fit are
/// errors that say where.
#[test]
fn train_fine_tunes_from_weights_with_frozen_parts() {
    let dir = tmp_dir("finetune");
    // A network small enough for a debug build, trained at its 12 px.
    let spec_path = dir.join("digits.effnet");
    std::fs::write(
        &spec_path,
        "model digits {\n    input 1 x 12\n    classes 10\n    normalize mean(0.1307) std(0.3081)\n    \
         stem conv k3 s2 -> 8\n    stage fused k3 e1 s1 -> 8 x1 skip\n    \
         stage fused k3 e4 s2 -> 16 x1\n    stage mbconv k3 e4 s1 -> 24 x1 se 0.25\n    \
         head conv k1 -> 48\n}\n",
    )
    .expect("spec");
    let spec = spec_path.to_str().expect("utf-8 path");
    let run = |out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec![
            "train",
            spec,
            "--data",
            "data/mnist",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--train-limit",
            "64",
            "--batch",
            "32",
        ];
        args.extend_from_slice(extra);
        effnet(&args)
    };
    let o = run("source", &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = dir.join("source/model.safetensors");
    let w = weights.to_str().expect("utf-8 path");
    let tuned = [
        "--epochs",
        "2",
        "--init",
        w,
        "--freeze",
        "stem, stages 0..2 for 1 epoch",
        "--lr-scale",
        "backbone 0.5",
    ];
    let o = run("tuned", &tuned);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    for line in [
        "init from `",
        "fine-tune: freeze stem, stages 0..2 for 1 epoch",
        "fine-tune: lr_scale backbone 0.5",
        "epoch   1: frozen stem, stages 0..2 (BatchNorm in eval mode)",
    ] {
        assert!(text.contains(line), "`{line}` missing:\n{text}");
    }
    assert!(!text.contains("epoch   2: frozen"), "{text}");
    // Resuming with other fine-tuning settings is refused.
    let o = run("tuned", &["--epochs", "2", "--resume"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("fine-tuning"), "{}", stderr(&o));

    // A stage the model does not have, shown in the flag's text.
    let o = run("bad", &["--epochs", "1", "--freeze", "stages 2..9"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("stage 8 does not exist: the model has 3 stages") && err.contains("--freeze"),
        "{err}"
    );
    // Weights of another network: every misfit tensor named.
    let (other, _, _) = fixture_files(&dir);
    let o = run(
        "misfit",
        &[
            "--epochs",
            "1",
            "--init",
            other.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("weights.safetensors") && err.contains("conv_stem.weight"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_names_a_missing_dataset() {
    let dir = tmp_dir("train-missing");
    let o = effnet(&[
        "train",
        "specs/efficientnetv2_nano.effnet",
        "--data",
        "no/such/dataset",
        "--out",
        dir.join("run").to_str().expect("utf-8 path"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no/such/dataset"), "{}", stderr(&o));
}

/// torchvision's `efficientnet_b0` weights (constant: only names and shapes matter here) run
/// through a B0 spec with TensorFlow's `same` padding (timm's `tf_efficientnet_b0`), which is
/// not torchvision's: an error naming both, unless `--keep-spec-conventions`.
#[test]
fn torchvision_weights_meet_the_spec_conventions_or_the_flag() {
    let dir = tmp_dir("torchvision-conventions");
    let bundled = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/efficientnet.effnet"),
    )
    .expect("the bundled spec");
    // timm's B0 alone, with `same` padding.
    let b0_end = bundled.find("\n}\n").expect("the first model ends") + 3;
    let text = bundled[..b0_end].replace("padding symmetric", "padding same");
    assert!(text.contains("padding same"), "{text}");
    let spec_path = dir.join("tf_b0.effnet");
    std::fs::write(&spec_path, &text).expect("write spec");
    let compiled = effnet_compiler::compile(&text).expect("the B0 spec compiles");
    let net = &compiled.networks[0];
    let prefixes = effnet_runtime::weights::torchvision_prefixes(net);
    let mut tensors = HashMap::new();
    for t in net.tensors() {
        let name = prefixes
            .iter()
            .find_map(|(ours, theirs)| {
                t.name
                    .strip_prefix(ours.as_str())
                    .filter(|rest| rest.starts_with('.'))
                    .map(|rest| format!("{theirs}{rest}"))
            })
            .unwrap_or_else(|| panic!("no torchvision name for {}", t.name));
        let value = Tensor::ones(t.shape.as_slice(), candle_core::DType::F32, &Device::Cpu)
            .expect("tensor");
        tensors.insert(name, value);
    }
    let w = dir.join("tv_b0.safetensors");
    candle_core::safetensors::save(&tensors, &w).expect("save weights");
    let input = dir.join("x.npy");
    Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu)
        .and_then(|t| t.write_npy(&input))
        .expect("write input");
    let output = dir.join("y.npy");
    let run = |extra: &[&str]| {
        let (spec, w, input, output) = (s(&spec_path), s(&w), s(&input), s(&output));
        let mut args = vec!["run", &spec, "--weights"];
        args.push(&w);
        args.extend(["--input", &input, "--output", &output]);
        args.extend(extra);
        effnet(&args)
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("padding same") && e.contains("efficientnet_b0"),
        "names the spec's padding and torchvision's network: {e}"
    );
    assert!(
        e.contains("--keep-spec-conventions"),
        "suggests the flag: {e}"
    );
    assert!(!output.exists(), "nothing written on error");
    let o = run(&["--keep-spec-conventions"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let y = Tensor::read_npy(&output).expect("logits written");
    assert_eq!(y.dims(), &[1, 1000]);
    let _ = std::fs::remove_dir_all(dir);
}

/// `check` and `summary` report a space's size and ranges; `search` runs a tiny search to its
/// files, resumes it, and refuses what it cannot do with the file named.
#[test]
fn search_reports_runs_and_resumes() {
    let dir = tmp_dir("search");
    let spec = dir.join("tiny.effnet");
    std::fs::write(
        &spec,
        "model tiny {
    input 1 x 16
    classes 10
    stem conv k3 s2 -> 8
    stage {fused|mbconv} k{3|5} e2 s2 -> 16 x1 se {0|0.25}
    head conv k1 -> 32
}
schedule tiny {
    epochs 2
    image 16 -> 16
    batch 50
    optimizer adamw(weight_decay = 0.0)
}
search quick for tiny {
    strategy random
    candidates 2
    epochs 1
    images 100
}
",
    )
    .expect("write spec");
    let o = effnet(&["check", &s(&spec)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("search space `tiny`: 8 candidates over 3 choices"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("(exact: every candidate measured)"),
        "{}",
        stdout(&o)
    );
    let o = effnet(&["summary", &s(&spec), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["space"]["size"], 8.0);
    assert!(v["space"]["params"]["min"].as_f64() < v["space"]["params"]["max"].as_f64());

    let out = dir.join("run");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "search".to_string(),
            s(&spec),
            "--data".into(),
            "data/fashion".into(),
            "--out".into(),
            s(&out),
            "--test-images".into(),
            "100".into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        effnet(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 candidates"), "{}", stdout(&o));
    for f in ["search.json", "search.csv", "pareto.png", "best_1.effnet"] {
        assert!(out.join(f).exists(), "{f}: {}", stdout(&o));
    }
    // Again without --resume: refused, nothing lost.
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    // Resumed with a larger budget: one more candidate.
    let o = run(&["--resume", "--budget", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("search.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    // The best model trains as it is.
    let o = effnet(&["check", &s(&out.join("best_1.effnet"))]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A file without choices, an unknown strategy, a missing dataset.
    let plain = dir.join("plain.effnet");
    std::fs::write(
        &plain,
        "model p { input 1 x 16 classes 10 stem conv k3 s2 -> 8 head conv k1 -> 16 }",
    )
    .expect("write");
    let o = effnet(&[
        "search",
        &s(&plain),
        "--data",
        "data/fashion",
        "--out",
        &s(&dir.join("x")),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no search space"), "{}", stderr(&o));
    let o = run(&["--strategy", "annealing"]);
    assert!(
        stderr(&o).contains("expected random or evolution"),
        "{}",
        stderr(&o)
    );
    let o = effnet(&[
        "search",
        &s(&spec),
        "--data",
        &s(&dir.join("nodata")),
        "--out",
        &s(&dir.join("y")),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nodata"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Data parallel on CPU ranks: `--devices cpu:0,cpu:1` trains with two ranks, rank 0 writing
/// the run directory once (a checkpoint recording two ranks, one metrics row per epoch), and
/// resuming the finished run trains nothing more; GPU numbers in a build without CUDA, and a batch that does not
/// split over the ranks, are errors that say what to do.
#[test]
fn train_on_two_cpu_ranks() {
    let dir = tmp_dir("train-ranks");
    let out = dir.join("run");
    let _ = std::fs::remove_dir_all(&out);
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "specs/efficientnetv2_nano.effnet",
            "--data",
            "data/mnist",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--train-limit",
            "128",
            "--batch",
            "64",
            "--fixed",
        ];
        args.extend_from_slice(extra);
        effnet(&args)
    };
    let o = train(&["--epochs", "1", "--devices", "cpu:0,cpu:1"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("data parallel: 2 ranks on cpu:0,cpu:1 (CPU threads)"),
        "{text}"
    );
    assert_eq!(
        text.matches("epoch   1/1").count(),
        1,
        "rank 0 logs:\n{text}"
    );
    let csv = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let state = std::fs::read_to_string(out.join("checkpoint/state.json")).expect("state");
    assert!(state.contains("\"ranks\": 2"), "{state}");

    let o = train(&["--epochs", "1", "--devices", "cpu:0,cpu:1", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));

    let o = train(&["--epochs", "2", "--devices", "cpu:0,cpu:1,cpu:2"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("3 ranks") && e.contains("batch of 64 images") && e.contains("multiple of 3"),
        "{e}"
    );

    if !cfg!(feature = "cuda") {
        let o = train(&["--devices", "0,1"]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains("--features nccl") && e.contains("--devices cpu:0,cpu:1"),
            "{e}"
        );
    }
    let o = train(&["--devices", "cpu:0,cpu:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("listed twice"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--sync-bn` trains two CPU ranks with SyncBatchNorm, says so and records it in the
/// checkpoint (a resumed run without it is told); `--collective-timeout` sets the ranks' wait (and must be positive); both
/// apply to the ranks of `--devices` only.
#[test]
fn train_with_sync_bn_on_two_cpu_ranks() {
    let dir = tmp_dir("train-sync-bn");
    let out = dir.join("run");
    let _ = std::fs::remove_dir_all(&out);
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "specs/efficientnetv2_nano.effnet",
            "--data",
            "data/mnist",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--train-limit",
            "64",
            "--batch",
            "32",
            "--fixed",
            "--epochs",
            "1",
        ];
        args.extend_from_slice(extra);
        effnet(&args)
    };
    let o = train(&[
        "--devices",
        "cpu:0,cpu:1",
        "--sync-bn",
        "--collective-timeout",
        "120",
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("BatchNorm statistics synchronized over the ranks (--sync-bn)")
            && text.contains("a collective waits at most 120 s"),
        "{text}"
    );
    let state = std::fs::read_to_string(out.join("checkpoint/state.json")).expect("state");
    assert!(state.contains("\"sync_bn\": true"), "{state}");
    // Resumed without it: said, not silently different.
    let o = train(&["--devices", "cpu:0,cpu:1", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(
            "the checkpoint was trained with BatchNorm statistics synchronized over the ranks \
             (--sync-bn), this run keeps them per rank"
        ),
        "{}",
        stdout(&o)
    );

    let o = train(&["--sync-bn"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--sync-bn applies to the ranks of a data-parallel run"),
        "{}",
        stderr(&o)
    );
    let o = train(&["--devices", "cpu:0,cpu:1", "--collective-timeout", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--collective-timeout 0: expected a positive number of seconds"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
