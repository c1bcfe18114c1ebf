//! The compiler commands as a user runs them: exit codes 0 (clean), 1 (user error),
//! 2 (usage), diagnostics on stderr, JSON on stdout, and no panic on any input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn effnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effnet"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("the effnet binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write temp spec");
    p
}

#[test]
fn check_clean_specs_exits_0() {
    let specs: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"))
        .expect("specs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "effnet"))
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["check"];
    args.extend(specs.iter().map(String::as_str));
    let o = effnet(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn check_reports_every_error_with_file_line_col_and_exits_1() {
    let o = effnet(&["check", "tests/fixtures/err/kernel.effnet"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("tests/fixtures/err/kernel.effnet:4:19"), "{e}");
    assert!(e.contains("tests/fixtures/err/kernel.effnet:5:19"), "{e}");
    assert!(e.contains("kernel size must be odd"), "{e}");
    assert!(e.contains("help:"), "{e}");
}

/// A spec's own resolutions are its documented configuration (timm's B1 runs at 240, which 32
/// does not divide): `check` is silent. A resolution the user picks gets the warning: always in
/// `summary`, with `--warnings` in `bench` and `eval`.
#[test]
fn only_a_chosen_resolution_is_warned_about() {
    let o = effnet(&[
        "check",
        "specs/tf_efficientnetv2_b.effnet",
        "specs/efficientnet.effnet",
        "tests/fixtures/ok/resolution_warning.effnet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let summary = |res: &str| {
        let o = effnet(&[
            "summary",
            "tests/fixtures/ok/resolution_warning.effnet",
            "--resolution",
            res,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stderr(&o)
    };
    assert_eq!(summary("100"), "", "the spec's own resolution");
    assert_eq!(summary("96"), "");
    assert_eq!(
        summary("90"),
        "warning: resolution 90 is not divisible by the total stride 8 of `odd_res`: feature \
         maps are rounded at each stride (88 or 96 divide evenly)\n"
    );
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "tests/fixtures/ok/resolution_warning.effnet",
            "--resolution",
            "90",
            "--iters",
            "1",
            "--warmup",
            "0",
        ];
        args.extend(extra);
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stderr(&o)
    };
    assert!(!bench(&[]).contains("warning"), "{}", bench(&[]));
    assert!(
        bench(&["--warnings"]).contains("warning: resolution 90 is not divisible"),
        "{}",
        bench(&["--warnings"])
    );
}

const GOOD_AND_BAD: &str = "\
model good {
    input 1 x 16
    classes 4
    stem conv k3 s2 -> 8
    stage mbconv k3 e2 s2 -> 8 x1
}

model bad {
    input 1 x 16
    classes 4
    stem conv k3 s2 -> 8
    stage mbconv k4 e2 s2 -> 8 x1
}
";

/// A command that uses one model reports only that model: an error in another model of the
/// file is one note line, and does not stop it; the broken model's own command fails with its
/// error.
#[test]
fn commands_report_only_the_model_they_use() {
    let spec = tmp("good_and_bad.effnet", GOOD_AND_BAD);
    let spec = spec.display().to_string();
    for warnings in [false, true] {
        let mut args = vec![
            "bench", &spec, "--model", "good", "--iters", "1", "--warmup", "0",
        ];
        if warnings {
            args.push("--warnings");
        }
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!(
                "note: `{spec}` has 1 error in other models; `effnet check {spec}` shows them\n"
            )
        );
    }
    let o = effnet(&["summary", &spec, "--model", "bad"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("good_and_bad.effnet:12:19"), "{e}");
    assert!(
        e.ends_with(&format!("error: `{spec}` has 1 error in model `bad`\n")),
        "{e}"
    );
    // `check` still reports the file as a whole.
    let o = effnet(&["check", &spec]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("good_and_bad.effnet:12:19"));
}

/// The example: `run` on one B model printed five resolution warnings about the
/// others before its one-line error.
#[test]
fn run_on_a_multi_model_spec_prints_only_its_own_error() {
    let o = effnet(&[
        "run",
        "specs/tf_efficientnetv2_b.effnet",
        "--model",
        "tf_efficientnetv2_b0",
        "--weights",
        "no/such/weights.safetensors",
        "--input",
        "no/such/input.npy",
        "--output",
        "out.npy",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("no/such/weights.safetensors"), "{e}");
}

/// A spec that is not UTF-8 gets a diagnostic at the line and column of its first invalid
/// byte, from every command that reads specs; `fmt` leaves the file alone.
#[test]
fn a_spec_that_is_not_utf8_is_an_error_at_its_line_and_column() {
    let latin1 = "tests/fixtures/encoding/latin1.effnet";
    let before = std::fs::read(latin1).expect("fixture");
    for args in [
        vec!["check", latin1],
        vec!["summary", latin1],
        vec!["fmt", latin1],
    ] {
        let o = effnet(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("effnet::encoding"), "{args:?}: {e}");
        assert!(
            e.contains("tests/fixtures/encoding/latin1.effnet:1:33"),
            "{args:?}: {e}"
        );
        assert!(
            e.contains("byte 0xE9 at line 1, column 33"),
            "{args:?}: {e}"
        );
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
    assert_eq!(std::fs::read(latin1).expect("fixture"), before);
}

#[test]
fn missing_file_is_a_user_error_naming_it() {
    let o = effnet(&["summary", "no/such/spec.effnet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no/such/spec.effnet"), "{}", stderr(&o));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(effnet(&["summary"]).status.code(), Some(2));
    assert_eq!(effnet(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        effnet(&[
            "summary",
            "specs/efficientnetv2_s.effnet",
            "--resolution",
            "abc"
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn summary_json_has_the_totals_and_stages() {
    let o = effnet(&["summary", "specs/efficientnetv2_s.effnet", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["model"], "efficientnetv2_s");
    assert_eq!(v["params"], 21_458_488);
    assert_eq!(v["resolution"], 384);
    assert_eq!(v["stages"].as_array().map(Vec::len), Some(6));
    assert!(v["macs"].as_u64().is_some_and(|m| m > 8_000_000_000));
}

/// The feature maps a spec provides (timm's `features_only` levels of efficientnet_b0: strides
/// 2..32, channels 16, 24, 40, 112, 320), in the table and in --json.
#[test]
fn summary_lists_the_feature_maps() {
    let args = [
        "summary",
        "specs/efficientnet.effnet",
        "--model",
        "efficientnet_b0",
    ];
    let o = effnet(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let table = text
        .split_once("feature maps")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no feature maps in\n{text}"));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 5, "{table}");
    assert_eq!(rows[3], ["3", "4", "blocks.4", "16", "112", "14x14"]);
    let o = effnet(&[args[0], args[1], args[2], args[3], "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let features = v["features"].as_array().expect("features");
    let strides: Vec<u64> = features
        .iter()
        .filter_map(|f| f["stride"].as_u64())
        .collect();
    let channels: Vec<u64> = features
        .iter()
        .filter_map(|f| f["channels"].as_u64())
        .collect();
    assert_eq!(strides, [2, 4, 8, 16, 32]);
    assert_eq!(channels, [16, 24, 40, 112, 320]);
    assert_eq!(features[4]["module"], "blocks.6");
    assert_eq!(features[4]["output"], serde_json::json!([320, 7, 7]));
}

#[test]
fn summary_needs_a_model_name_in_a_multi_model_file() {
    let o = effnet(&["summary", "specs/efficientnet.effnet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--model"), "{}", stderr(&o));
    let o = effnet(&[
        "summary",
        "specs/efficientnet.effnet",
        "--model",
        "efficientnet_b3",
        "--resolution",
        "300",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("12,233,232 parameters"), "{text}");
}

#[test]
fn ir_json_lists_every_tensor_with_timm_names() {
    let o = effnet(&["ir", "specs/tf_efficientnetv2_b0.effnet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["params"], 7_139_704);
    let tensors = v["tensors"].as_array().expect("tensors");
    assert_eq!(tensors[0]["name"], "conv_stem.weight");
    assert!(
        tensors
            .iter()
            .any(|t| t["name"] == "blocks.5.7.se.conv_expand.bias")
    );
    assert_eq!(
        tensors.last().map(|t| t["name"].clone()),
        Some("classifier.bias".into())
    );
}

#[test]
fn garbage_never_panics() {
    let inputs = [
        "",
        "model",
        "model m {",
        "model m { stem conv k3 s2 -> 999999999999999999999999999 stage mbconv k3 e4 s2 -> 8 }",
        "model m { stem conv k3 s2 -> 8 stage mbconv k3 e1e400 s2 -> 8 }",
        "\u{0}\u{1}\u{2}",
        "schedule s for m { epochs 0 }",
        "model a = a scaled width 1",
        "model m { input 3 x 0 stem conv k3 s2 -> 8 stage mbconv k3 e4 s2 -> 8 }",
    ];
    for (i, text) in inputs.iter().enumerate() {
        let p = tmp(&format!("garbage{i}.effnet"), text);
        for cmd in ["check", "summary", "ir"] {
            let o = effnet(&[cmd, &p.display().to_string()]);
            let code = o.status.code();
            assert!(
                matches!(code, Some(0 | 1)),
                "{cmd} on {text:?}: {code:?}\n{}",
                stderr(&o)
            );
            assert!(
                !stderr(&o).contains("panicked"),
                "{cmd} on {text:?}: {}",
                stderr(&o)
            );
        }
    }
}

/// `expand` (the `expand` feature, on by default) prints the typed struct the macro generates.
#[cfg(feature = "expand")]
#[test]
fn expand_prints_the_generated_struct() {
    let o = effnet(&["expand", "tests/fixtures/ok/minimal.effnet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let code = String::from_utf8_lossy(&o.stdout);
    assert!(
        code.starts_with("// #[effnet::model(\"tests/fixtures/ok/minimal.effnet\"")
            && code.contains("pub struct")
            && code.contains("pub fn load"),
        "{code}"
    );
}

/// `effnet import automl` writes automl's conventions (the bundled `tf_efficientnetv2_b0` is
/// automl's `efficientnetv2-b0`: same padding, eps 1e-3, no rounding guard) unless told
/// otherwise, and the written model checks.
#[test]
fn import_automl_writes_automls_conventions() {
    let blocks = "r1_k3_s1_e1_i32_o16_c1 r2_k3_s2_e4_i16_o32_c1 r2_k3_s2_e4_i32_o48_c1 \
                  r3_k3_s2_e4_i48_o96_se0.25 r5_k3_s1_e6_i96_o112_se0.25 \
                  r8_k3_s2_e6_i112_o192_se0.25";
    let o = effnet(&["import", "automl", blocks, "--name", "b0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    for line in ["padding same", "eps = 1e-3", "limit = 0)"] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let o = effnet(&[
        "import",
        "automl",
        blocks,
        "--padding",
        "symmetric",
        "--bn-eps",
        "1e-5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains("padding symmetric") && text.contains("eps = 1e-5"),
        "{text}"
    );
    assert!(
        text.contains("/// Not the conventions of automl's"),
        "{text}"
    );
}

/// The model-level options of `effnet import timm`: EfficientNet-Lite2 from its arch_def and
/// `_gen_efficientnet_lite`'s arguments has timm's 6,092,072 parameters.
#[test]
fn import_timm_takes_every_model_level_option() {
    let arch_def = "[['ds_r1_k3_s1_e1_c16'], ['ir_r2_k3_s2_e6_c24'], ['ir_r2_k5_s2_e6_c40'], \
                    ['ir_r3_k3_s2_e6_c80'], ['ir_r3_k5_s1_e6_c112'], ['ir_r4_k5_s2_e6_c192'], \
                    ['ir_r1_k3_s1_e6_c320']]";
    let out = std::env::temp_dir().join(format!("effnet-lite2-{}.effnet", std::process::id()));
    let o = effnet(&[
        "import",
        "timm",
        arch_def,
        "--name",
        "lite2",
        "--width",
        "1.1",
        "--depth",
        "1.2",
        "--fix-first-last",
        "--fix-stem",
        "--fix-head",
        "--activation",
        "relu6",
        "--resolution",
        "260",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).expect("written");
    for line in [
        "activation relu6",
        "scale width 1.1 stages(1.0, 1.2, 1.2, 1.2, 1.2, 1.2, 1.0)",
        "stem conv k3 s2 -> 32 fixed",
        "head conv k1 -> 1280 fixed",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let o = effnet(&["summary", &out.display().to_string(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("summary --json is JSON");
    assert_eq!(summary["params"], 6_092_072, "{summary}");
    // A per-stage list of the wrong length names both counts.
    let o = effnet(&["import", "timm", arch_def, "--stage-depths", "1.0,1.2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("2 per-stage depth multipliers for 7 stages"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_file(out);
}

/// `effnet import timm --group-norm 8 --group-size 8`: timm's `efficientnet_b0_g8_gn` (B0's
/// arch_def with `GroupNormAct(group_size=8)` and `group_size=8`), its 6,562,660 parameters and
/// no running statistics in `ir`.
#[test]
fn import_timm_takes_group_norm_and_a_group_size() {
    let arch_def = "[['ds_r1_k3_s1_e1_c16_se0.25'], ['ir_r2_k3_s2_e6_c24_se0.25'], \
                    ['ir_r2_k5_s2_e6_c40_se0.25'], ['ir_r3_k3_s2_e6_c80_se0.25'], \
                    ['ir_r3_k5_s1_e6_c112_se0.25'], ['ir_r4_k5_s2_e6_c192_se0.25'], \
                    ['ir_r1_k3_s1_e6_c320_se0.25']]";
    let out = std::env::temp_dir().join(format!("effnet-b0-g8-gn-{}.effnet", std::process::id()));
    let out_s = out.display().to_string();
    let o = effnet(&[
        "import",
        "timm",
        arch_def,
        "--group-norm",
        "8",
        "--group-size",
        "8",
        "-o",
        &out_s,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).expect("written");
    for line in ["norm group(size = 8, eps = 1e-5)", "group_size 8"] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let o = effnet(&["summary", &out_s, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("summary --json is JSON");
    assert_eq!(summary["params"], 6_562_660, "{summary}");
    let o = effnet(&["ir", &out_s]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ir: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ir is JSON");
    // The stem's GroupNorm: 32 channels in 4 groups, no momentum and no running statistics.
    assert_eq!(ir["stem"]["bn"]["groups"], 4, "{}", ir["stem"]);
    assert!(ir["stem"]["bn"].get("momentum").is_none(), "{}", ir["stem"]);
    assert!(!o.stdout.windows(7).any(|w| w == b"running"));
    let _ = std::fs::remove_file(out);
}

/// A mixed kxk convolution shows its kernels in `summary` (MixNet's `k3.5.7.9.11`), in the
/// table and in `--json`; a plain one its size alone.
#[test]
fn summary_shows_mixed_kernels() {
    let o = effnet(&["summary", "specs/mixnet.effnet", "--model", "mixnet_s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains(" 3.5.7.9.11 "), "{text}");
    let o = effnet(&[
        "summary",
        "specs/mixnet.effnet",
        "--model",
        "mixnet_s",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v["stages"][5]["kernels"],
        serde_json::json!([3, 5, 7, 9, 11])
    );
    assert_eq!(v["stages"][5]["kernel"], 11);
    assert!(
        v["stages"][1].get("kernels").is_none(),
        "{}",
        v["stages"][1]
    );
}

/// A reader that stops early (`effnet ir ... | head`) ends the command quietly, as SIGPIPE
/// would (status 141), not with a panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_effnet"))
        .args(["ir", "specs/efficientnetv2_xl.effnet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("some output");
    // The pipe's read end is dropped here, with megabytes of JSON still to write.
    let out = child.wait_with_output().expect("ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// `import timm --pruned FILE` reads timm's pruned layer shapes and writes `prune(...)`; an
/// unreadable file and `--pruned` on automl strings are clear errors.
#[test]
fn import_timm_pruned_reads_the_shapes_file() {
    let dir = std::env::temp_dir().join(format!("effnet-pruned-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let shapes = dir.join("p.txt");
    std::fs::write(
        &shapes,
        "conv_stem.weight:[32, 3, 3, 3]***blocks.0.0.conv_pw.weight:[16, 32, 1, 1]***\
         blocks.1.0.conv_dw.weight:[40, 1, 3, 3]***blocks.1.0.conv_pwl.weight:[20, 40, 1, 1]***\
         conv_head.weight:[1280, 20, 1, 1]",
    )
    .expect("write shapes");
    let arch = "[['ds_r1_k3_s1_e1_c16'], ['ir_r1_k3_s2_e6_c24']]";
    let path = shapes.display().to_string();
    let o = effnet(&["import", "timm", arch, "--pruned", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("prune(out = 20, mid = (40))"), "{text}");
    let missing = dir.join("missing.txt").display().to_string();
    let o = effnet(&["import", "timm", arch, "--pruned", &missing]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("missing.txt"), "{}", stderr(&o));
    let o = effnet(&[
        "import",
        "automl",
        "r1_k3_s11_e1_i32_o16_se0.25",
        "--pruned",
        &path,
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("`--pruned`"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `import timm --blur-pool --global-context` writes `antialias blur` and `attention gc`
/// (timm's `aa_layer='blurpc'`, `se_layer='gc'`), which check.
#[test]
fn import_timm_blur_pool_and_global_context() {
    let o = effnet(&[
        "import",
        "timm",
        "[['ds_r1_k3_s1_e1_c16_se0.25'], ['ir_r2_k3_s2_e6_c24_se0.25']]",
        "--blur-pool",
        "--global-context",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("antialias blur") && text.contains("attention gc"),
        "{text}"
    );
}

/// A stage of several block strings (`then` lines) shows each string's kind, kernel, expansion
/// and repeats on a row of its own, and `--json` lists them as `runs`.
#[test]
fn summary_shows_each_block_string_of_a_stage() {
    let o = effnet(&["summary", "specs/spnasnet.effnet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // blocks.2: ir_r1_k5_s2_e6_c40, then ir_r3_k3_s1_e3_c40.
    let stage2 = rows
        .iter()
        .position(|r| r.first() == Some(&"2"))
        .expect("stage 2 row");
    assert_eq!(&rows[stage2][1..6], ["ir", "5", "6", "2", "1"], "{text}");
    assert_eq!(
        rows[stage2 + 1],
        ["then", "ir", "3", "3", "1", "3"],
        "{text}"
    );
    let o = effnet(&["summary", "specs/spnasnet.effnet", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let runs = &json["stages"][2]["runs"];
    assert_eq!(runs[1]["kernel"], 3, "{json}");
    assert_eq!(runs[1]["repeats"], 3, "{json}");
    assert!(json["stages"][0].get("runs").is_none(), "{json}");
}
