//! Importers: timm's arch_defs and automl's block strings give the networks timm builds
//! (parameter counts from timm 1.0.31), and bad block strings give clear errors.

use std::path::Path;

use effnet_compiler::compile;
use effnet_compiler::format::format_source;
use effnet_compiler::import::{
    DepthRound, ImportError, ImportOptions, Padding, import_automl, import_timm,
};

/// Compile imported text and return its parameter count.
fn params(text: &str) -> usize {
    let compiled = compile(text).unwrap_or_else(|d| panic!("does not compile: {d:#?}\n{text}"));
    compiled.network(None).expect("one model").param_count()
}

/// timm's `arch_def` written as the Python literal in timm's source, from
/// `tests/reference/timm/arch_defs.json` (generated with timm).
fn timm_arch_def(model: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/timm/arch_defs.json");
    let text = std::fs::read_to_string(&path).expect("arch_defs.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let stages = json["models"][model]["arch_def"]
        .as_array()
        .unwrap_or_else(|| panic!("no arch_def for {model}"));
    let stages: Vec<String> = stages
        .iter()
        .map(|s| {
            let blocks: Vec<String> = s
                .as_array()
                .expect("a list")
                .iter()
                .map(|b| format!("'{}'", b.as_str().expect("a string")))
                .collect();
            format!("[{}]", blocks.join(", "))
        })
        .collect();
    format!("[\n    {},\n]", stages.join(",\n    "))
}

struct Case {
    model: &'static str,
    stem: usize,
    head: usize,
    width: f64,
    depth: f64,
    round_limit: f64,
    tf: bool,
    params: usize,
}

const fn case(model: &'static str, stem: usize, head: usize, params: usize) -> Case {
    Case {
        model,
        stem,
        head,
        width: 1.0,
        depth: 1.0,
        round_limit: 0.9,
        tf: false,
        params,
    }
}

const fn scaled(mut c: Case, width: f64, depth: f64) -> Case {
    c.width = width;
    c.depth = depth;
    c
}

const fn tf_b(mut c: Case) -> Case {
    c.round_limit = 0.0;
    c.tf = true;
    c
}

const CASES: &[Case] = &[
    case("efficientnetv2_s", 24, 1280, 21_458_488),
    case("efficientnetv2_m", 24, 1280, 54_139_356),
    case("efficientnetv2_l", 32, 1280, 118_515_272),
    case("efficientnetv2_xl", 32, 1280, 208_119_808),
    case("efficientnetv2_rw_s", 24, 1792, 23_941_296),
    scaled(case("efficientnetv2_rw_t", 24, 1280, 13_649_388), 0.8, 0.9),
    tf_b(case("tf_efficientnetv2_b0", 32, 1280, 7_139_704)),
    tf_b(scaled(
        case("tf_efficientnetv2_b1", 32, 1280, 8_141_052),
        1.0,
        1.1,
    )),
    tf_b(scaled(
        case("tf_efficientnetv2_b2", 32, 1280, 10_096_086),
        1.1,
        1.2,
    )),
    tf_b(scaled(
        case("tf_efficientnetv2_b3", 32, 1280, 14_358_406),
        1.2,
        1.4,
    )),
    case("efficientnet_b0", 32, 1280, 5_288_548),
    scaled(case("efficientnet_b1", 32, 1280, 7_794_184), 1.0, 1.1),
    scaled(case("efficientnet_b2", 32, 1280, 9_109_994), 1.1, 1.2),
    scaled(case("efficientnet_b3", 32, 1280, 12_233_232), 1.2, 1.4),
    scaled(case("efficientnet_b4", 32, 1280, 19_341_616), 1.4, 1.8),
    scaled(case("efficientnet_b5", 32, 1280, 30_389_784), 1.6, 2.2),
    scaled(case("efficientnet_b6", 32, 1280, 43_040_704), 1.8, 2.6),
    scaled(case("efficientnet_b7", 32, 1280, 66_347_960), 2.0, 3.1),
];

fn options(c: &Case) -> ImportOptions {
    ImportOptions {
        stem: Some(c.stem),
        head: Some(c.head),
        width: c.width,
        depth: c.depth,
        round_limit: Some(c.round_limit),
        padding: Some(if c.tf {
            Padding::Same
        } else {
            Padding::Symmetric
        }),
        bn_eps: Some(if c.tf { 1e-3 } else { 1e-5 }),
        ..ImportOptions::default()
    }
}

#[test]
fn timm_arch_defs_give_timms_parameter_counts() {
    let mut wrong = Vec::new();
    for c in CASES {
        let arch_def = timm_arch_def(c.model);
        let text = import_timm(c.model, &arch_def, &options(c))
            .unwrap_or_else(|e| panic!("{}: {e}", c.model));
        // The output is formatted, and names the model as asked.
        assert_eq!(format_source(&text).expect("parses"), text, "{}", c.model);
        assert!(text.contains(&format!("model {} {{", c.model)), "{text}");
        let n = params(&text);
        if n != c.params {
            wrong.push(format!(
                "{}: {n} parameters, timm has {}\n{text}",
                c.model, c.params
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The arch_def of efficientnetv2_s as written in timm's `_gen_efficientnetv2_s`, comments included.
const V2_S_SOURCE: &str = r#"[
        ['cn_r2_k3_s1_e1_c24_skip'],
        ['er_r4_k3_s2_e4_c48'],
        ['er_r4_k3_s2_e4_c64'],
        ['ir_r6_k3_s2_e4_c128_se0.25'],
        ['ir_r9_k3_s1_e6_c160_se0.25'],
        ['ir_r15_k3_s2_e6_c256_se0.25'],  # the last stage
    ]"#;

#[test]
fn timm_efficientnetv2_s_output() {
    let opts = ImportOptions {
        stem: Some(24),
        resolution: 384,
        ..ImportOptions::default()
    };
    let text = import_timm("efficientnetv2_s", V2_S_SOURCE, &opts).expect("imports");
    let expected = "/// Imported from timm block strings by `effnet import timm`.
/// The conventions of timm's native models: PyTorch's symmetric padding, BatchNorm eps 1e-5, channels rounded with a 0.9 guard.
model efficientnetv2_s {
    input 3 x 384
    classes 1000
    activation silu
    norm batch(eps = 1e-5, momentum = 0.1)
    padding symmetric
    round channels(divisor = 8, limit = 0.9)

    stem conv k3 s2 -> 24
    stage conv   k3 s1 -> 24  x2  skip     // timm cn_r2_k3_s1_e1_c24_skip
    stage fused  k3 e4 s2 -> 48  x4        // timm er_r4_k3_s2_e4_c48
    stage fused  k3 e4 s2 -> 64  x4        // timm er_r4_k3_s2_e4_c64
    stage mbconv k3 e4 s2 -> 128 x6  se 0.25  // timm ir_r6_k3_s2_e4_c128_se0.25
    stage mbconv k3 e6 s1 -> 160 x9  se 0.25  // timm ir_r9_k3_s1_e6_c160_se0.25
    stage mbconv k3 e6 s2 -> 256 x15 se 0.25  // timm ir_r15_k3_s2_e6_c256_se0.25
    head conv k1 -> 1280
}
";
    // Trailing comments of a run are aligned; compute rather than hand-count the padding.
    let normalize = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(normalize(&text), normalize(expected), "got:\n{text}");
    let comment_cols: Vec<usize> = text.lines().filter_map(|l| l.find("// timm")).collect();
    assert_eq!(comment_cols.len(), 6);
    assert!(comment_cols.windows(2).all(|w| w[0] == w[1]), "{text}");
    assert_eq!(params(&text), 21_458_488);

    // The same network as the bundled spec, block for block.
    let spec = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/efficientnetv2_s.effnet"),
    )
    .expect("spec");
    let spec = compile(&spec).expect("spec compiles");
    let spec_net = spec.network(Some("efficientnetv2_s")).expect("model");
    let imported = compile(&text).expect("compiles");
    let net = imported.network(None).expect("model");
    assert_eq!(
        serde_json::to_value(net.tensors()).expect("json"),
        serde_json::to_value(spec_net.tensors()).expect("json")
    );
}

#[test]
fn timm_flat_lists_and_block_kinds() {
    // One block string per stage, separated by spaces or commas, quoted or not.
    let flat =
        "ds_r1_k3_s1_e1_c16_se0.25, 'ir_r2_k3_s2_e6_c24_se0.25' \"ir_r2_k5_s2_e6_c40_se0.25\"
        ir_r3_k3_s2_e6_c80_se0.25 ir_r3_k5_s1_e6_c112_se0.25 ir_r4_k5_s2_e6_c192_se0.25
        ir_r1_k3_s1_e6_c320_se0.25";
    let opts = ImportOptions {
        stem: Some(32),
        ..ImportOptions::default()
    };
    let text = import_timm("efficientnet_b0", flat, &opts).expect("imports");
    assert!(
        text.contains("stage ds     k3 s1 -> 16  x1  se 0.25"),
        "{text}"
    );
    assert_eq!(params(&text), 5_288_548);

    // `er` with e1 is timm's EdgeResidual (two convs): `edge`, not `fused e1`.
    let text = import_timm(
        "rw",
        "er_r2_k3_s1_e1_c24 er_r1_k3_s2_e4_c48_noskip ir_r1_k3_s1_e4_c48_nre ds_r1_k3_s1_e1_c48_noskip_nhs",
        &opts,
    )
    .expect("imports");
    assert!(text.contains("stage edge   k3 e1 s1 -> 24  x2 "), "{text}");
    assert!(
        text.contains("stage fused  k3 e4 s2 -> 48  x1  noskip "),
        "{text}"
    );
    assert!(
        text.contains("stage mbconv k3 e4 s1 -> 48  x1  act relu "),
        "{text}"
    );
    assert!(
        text.contains("stage ds     k3 s1 -> 48  x1  noskip act hard_swish "),
        "{text}"
    );
    params(&text);

    // `head none` and the other options.
    let opts = ImportOptions {
        stem: Some(16),
        head: None,
        classes: 10,
        resolution: 64,
        padding: Some(Padding::Same),
        bn_eps: Some(1e-3),
        round_limit: Some(0.0),
        width: 1.25,
        depth: 1.5,
        ..ImportOptions::default()
    };
    let text = import_timm(
        "tiny",
        "[['cn_r1_k3_s1_c16'], ['ir_r1_k3_s2_e4_c24_se0.25_a1_p1']]",
        &opts,
    )
    .expect("imports");
    for line in [
        "input 3 x 64",
        "classes 10",
        "norm batch(eps = 1e-3, momentum = 0.1)",
        "padding same",
        "round channels(divisor = 8, limit = 0)",
        "scale width 1.25 depth 1.5",
        "stem conv k3 s2 -> 16",
        "stage conv   k3 s1 -> 16  x1",
        "head none",
    ] {
        assert!(text.contains(line), "`{line}` missing:\n{text}");
    }
    // A `cn` block without `skip` has no residual: no option.
    assert!(!text.contains("skip"), "{text}");
    params(&text);
}

const AUTOML_V2_S: &str = "r2_k3_s1_e1_i24_o24_c1 r4_k3_s2_e4_i24_o48_c1 r4_k3_s2_e4_i48_o64_c1 \
r6_k3_s2_e4_i64_o128_se0.25 r9_k3_s1_e6_i128_o160_se0.25 r15_k3_s2_e6_i160_o256_se0.25";

#[test]
fn automl_block_strings_give_timms_parameter_counts() {
    // V2-S: the stem defaults to the first block's input filters (24).
    let text = import_automl("v2s", AUTOML_V2_S, &ImportOptions::default()).expect("imports");
    assert!(text.contains("stem conv k3 s2 -> 24"), "{text}");
    // automl's fused e1 is a single conv: `fused e1`, with the standard residual rule.
    assert!(text.contains("stage fused  k3 e1 s1 -> 24  x2  "), "{text}");
    assert_eq!(format_source(&text).expect("parses"), text);
    assert_eq!(params(&text), 21_458_488);

    // As a Python list, with an explicit stem.
    let list = format!(
        "['{}']",
        AUTOML_V2_S
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("', '")
    );
    let opts = ImportOptions {
        stem: Some(24),
        ..ImportOptions::default()
    };
    assert_eq!(import_automl("v2s", &list, &opts).expect("imports"), text);

    // V2-B0 (automl's `efficientnetv2-b0`), rounded without timm's guard.
    let b0 = "r1_k3_s1_e1_i32_o16_c1 r2_k3_s2_e4_i16_o32_c1 r2_k3_s2_e4_i32_o48_c1 \
              r3_k3_s2_e4_i48_o96_se0.25 r5_k3_s1_e6_i96_o112_se0.25 r8_k3_s2_e6_i112_o192_se0.25";
    // automl's own conventions are the defaults: `same` padding, eps 1e-3, no guard.
    let text = import_automl("b0", b0, &ImportOptions::default()).expect("imports");
    assert_eq!(params(&text), 7_139_704);
    for line in [
        "padding same",
        "norm batch(eps = 1e-3, momentum = 0.1)",
        "round channels(divisor = 8, limit = 0)",
        "/// The conventions of automl's efficientnetv2: TensorFlow's `same` padding",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // EfficientNet-B0 in automl's V1 notation (`s11`, `s22`; MBConv e1 is a `ds` block).
    let v1 = "r1_k3_s11_e1_i32_o16_se0.25 r2_k3_s22_e6_i16_o24_se0.25 r2_k5_s22_e6_i24_o40_se0.25 \
              r3_k3_s22_e6_i40_o80_se0.25 r3_k5_s11_e6_i80_o112_se0.25 r4_k5_s22_e6_i112_o192_se0.25 \
              r1_k3_s11_e6_i192_o320_se0.25";
    let text = import_automl("b0", v1, &ImportOptions::default()).expect("imports");
    assert!(text.contains("stage ds     k3 s1 -> 16"), "{text}");
    assert_eq!(params(&text), 5_288_548);
    // automl V1 keeps the 0.9 guard in its round_filters.
    for line in [
        "padding same",
        "norm batch(eps = 1e-3, momentum = 0.1)",
        "round channels(divisor = 8, limit = 0.9)",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

/// The same blocks and the same width multiplier give automl's channel counts only with
/// automl's rounding: V2-B3 (width 1.2) rounds 1.2 * 40 = 48 either way but 1.2 * 16 = 19.2 to
/// 16 without the guard and to 24 with it.
#[test]
fn automl_imports_carry_automls_conventions_and_say_when_overridden() {
    let blocks = "r1_k3_s1_e1_i32_o16_c1 r2_k3_s2_e4_i16_o32_c1";
    let automl = ImportOptions {
        width: 1.2,
        head: None,
        ..ImportOptions::default()
    };
    let text = import_automl("m", blocks, &automl).expect("imports");
    assert!(text.contains("limit = 0)"), "{text}");
    let timm_rounding = ImportOptions {
        round_limit: Some(0.9),
        padding: Some(Padding::Symmetric),
        ..automl.clone()
    };
    let other = import_automl("m", blocks, &timm_rounding).expect("imports");
    assert!(
        other.contains("/// Not the conventions of automl's efficientnetv2: PyTorch's symmetric"),
        "{other}"
    );
    assert_ne!(params(&text), params(&other));
    // timm's native conventions stay timm's default.
    let timm = import_timm("m", "ir_r1_k3_s1_e6_c16", &ImportOptions::default()).expect("imports");
    for line in [
        "padding symmetric",
        "norm batch(eps = 1e-5, momentum = 0.1)",
        "limit = 0.9)",
    ] {
        assert!(timm.contains(line), "{line} in\n{timm}");
    }
}

fn timm_err(arch_def: &str) -> ImportError {
    import_timm("m", arch_def, &ImportOptions::default()).expect_err("must fail")
}

fn automl_err(blocks: &str) -> ImportError {
    import_automl("m", blocks, &ImportOptions::default()).expect_err("must fail")
}

#[test]
fn timm_errors() {
    // An unknown key names the block string, the token and the known keys.
    let e = timm_err("[['ir_r1_k3_s1_e6_c16_z1']]");
    assert!(
        matches!(&e, ImportError::UnknownKey { block, token, .. } if block == "ir_r1_k3_s1_e6_c16_z1" && token == "z1"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("ir_r1_k3_s1_e6_c16_z1") && msg.contains("`z1`"),
        "{msg}"
    );
    assert!(
        msg.contains("known keys") && msg.contains("se (SE ratio)"),
        "{msg}"
    );

    // Unknown block types.
    for block in ["uir_r1_k3_s1_e4_c16", "xx"] {
        let e = timm_err(block);
        assert!(
            matches!(e, ImportError::UnknownBlockType { .. }),
            "{block}: {e:?}"
        );
        assert!(e.to_string().contains("cn, er, ir, ds, dsa"), "{e}");
    }
    // A mixed kernel must be whole numbers.
    let e = timm_err("ir_r1_k3.x_s1_e6_c16");
    assert!(
        matches!(
            e,
            ImportError::UnknownKey { .. } | ImportError::BadValue { .. }
        ),
        "{e:?}"
    );
    let e = timm_err("ir_r1_k3..5_s1_e6_c16");
    assert!(matches!(e, ImportError::BadValue { .. }), "{e:?}");

    // MixNet's options and the other block-string options: `dsa`, `gs`, `a`/`p` lists; `a`
    // where timm ignores it (every type but `ir`) is dropped.
    let text = import_timm(
        "m",
        "[['dsa_r1_k3_s1_c16_a1.1'], ['ir_r2_k3.5.7_a1.1_p1.1_s2_e6_c24_gs1_nsw'], ['cn_r1_k3_s1_c48_gs8']]",
        &ImportOptions::default(),
    )
    .expect("imports");
    for line in [
        "stage dsa    k3 s1 -> 16",
        "stage mbconv k3.5.7 a1.1 p1.1 e6 s2 -> 24  x2  act silu gs 1",
        "stage conv   k3 s1 -> 48  x1  gs 8",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let net = compile(&text).expect("compiles").networks.remove(0);
    let dw = &net.stages[1].blocks[0].layers.conv_bns()[1];
    assert_eq!(dw.conv.mixed.len(), 3, "{text}");
    assert!(!net.stages[0].blocks[0].residual);

    // Several block strings in one stage.
    // Several block strings in one stage: a `stage` line, then `then` lines, numbered as one
    // stage (`blocks.1.0` .. `blocks.1.2`).
    let text = import_timm(
        "m",
        "[['ir_r1_k3_s1_e6_c16'], ['ir_r1_k3_s2_e6_c24', 'ir_r2_k3_s1_e6_c24_se0.25']]",
        &ImportOptions::default(),
    )
    .expect("imports");
    assert!(text.contains("\n    then  mbconv k3 e6 s1 -> 24"), "{text}");
    let compiled = compile(&text).expect("compiles");
    let net = compiled.network(None).expect("one model");
    assert_eq!(net.stages.len(), 2, "{text}");
    let paths: Vec<&str> = net.stages[1]
        .blocks
        .iter()
        .map(|b| b.path.as_str())
        .collect();
    assert_eq!(paths, ["blocks.1.0", "blocks.1.1", "blocks.1.2"]);

    // Bad values and missing keys.
    assert!(matches!(
        timm_err("ir_r1_k3_s22_e6_c16"),
        ImportError::BadValue { .. }
    ));
    assert!(matches!(
        timm_err("ir_r1_k3.0_s1_e6_c16"),
        ImportError::BadValue { .. }
    ));
    assert!(matches!(
        timm_err("ir_r1_k3_s1_e6_c16_gsx"),
        ImportError::UnknownKey { .. }
    ));
    assert!(matches!(
        timm_err("ir_r1_k3_s1_e6_c16_c24"),
        ImportError::BadValue { .. }
    ));
    assert!(matches!(
        timm_err("ir_r1_k3_s1_e6_c16_nxx"),
        ImportError::UnknownKey { .. }
    ));
    // Mish (`nmi`) is an activation the language has.
    let text =
        import_timm("m", "ir_r1_k3_s1_e6_c16_nmi", &ImportOptions::default()).expect("nmi imports");
    assert!(text.contains("act mish"), "{text}");
    params(&text);
    assert!(matches!(
        timm_err("er_r1_k3_s1_e6_c16_fc"),
        ImportError::UnknownKey { .. }
    ));
    let e = timm_err("ir_k3_s1_e6_c16");
    assert!(
        matches!(e, ImportError::MissingKey { key: "r", .. }),
        "{e:?}"
    );
    let e = timm_err("ir_r1_k3_s1_c16");
    assert!(
        matches!(e, ImportError::MissingKey { key: "e", .. }),
        "{e:?}"
    );

    // Malformed lists.
    for bad in [
        "[['ir_r1_k3_s1_e6_c16']",
        "[['ir_r1_k3_s1_e6_c16]]",
        "[[]]",
        "",
        "[[['a']]]",
        "[a + b]",
    ] {
        let e = timm_err(bad);
        assert!(
            matches!(e, ImportError::Syntax(_) | ImportError::Empty),
            "{bad:?}: {e:?}"
        );
    }

    // Bad names and options.
    for name in ["2b", "stage", "a-b", ""] {
        let e = import_timm(name, "ir_r1_k3_s1_e6_c16", &ImportOptions::default()).expect_err(name);
        assert!(matches!(e, ImportError::BadName(_)), "{e:?}");
    }
    let opts = ImportOptions {
        width: 0.0,
        ..ImportOptions::default()
    };
    assert!(matches!(
        import_timm("m", "ir_r1_k3_s1_e6_c16", &opts),
        Err(ImportError::BadOption(_))
    ));
    let opts = ImportOptions {
        output_stride: Some(12),
        ..ImportOptions::default()
    };
    let e = import_timm("m", "ir_r1_k3_s1_e6_c16", &opts).expect_err("output stride 12");
    assert!(e.to_string().contains("8, 16 or 32"), "{e}");
}

/// `output_stride` (timm's `create_model(..., output_stride=16)`) is written into the model,
/// which then dilates where timm does: EfficientNet-B0's sixth stage from its second block.
/// timm's `cc` (CondConv experts) on `ir` strings and its `experts_multiplier`: written as
/// `cc N` and `scale ... experts M`; `cc0` is a plain block; on another block type an error.
#[test]
fn timm_import_takes_condconv_experts() {
    let opts = ImportOptions {
        experts: 2,
        ..ImportOptions::default()
    };
    let text = import_timm(
        "cc",
        "[['ds_r1_k3_s1_e1_c16_se0.25'], ['ir_r2_k5_s2_e6_c40_se0.25_cc4'], ['ir_r1_k3_s1_e6_c40_cc0']]",
        &opts,
    )
    .expect("imports");
    assert!(
        text.contains("scale width 1.0 depth 1.0 experts 2"),
        "{text}"
    );
    assert!(text.contains("x2  se 0.25 cc 4"), "{text}");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{d:#?}"));
    let net = compiled.network(None).expect("one model");
    let experts: Vec<(&str, usize)> = net
        .blocks()
        .map(|b| {
            (
                b.path.as_str(),
                b.layers.routing().map_or(0, |r| r.out_features),
            )
        })
        .collect();
    assert_eq!(
        experts,
        [
            ("blocks.0.0", 0),
            ("blocks.1.0", 8),
            ("blocks.1.1", 8),
            ("blocks.2.0", 0)
        ]
    );
    let err = import_timm(
        "cc",
        "[['er_r1_k3_s1_e4_c24_cc4']]",
        &ImportOptions::default(),
    )
    .expect_err("cc on er");
    assert!(err.to_string().contains("`cc` (CondConv experts)"), "{err}");
}

#[test]
fn timm_import_takes_the_output_stride() {
    let opts = ImportOptions {
        output_stride: Some(16),
        ..ImportOptions::default()
    };
    let text = import_timm(
        "efficientnet_b0_os16",
        &timm_arch_def("efficientnet_b0"),
        &opts,
    )
    .expect("imports");
    assert!(text.contains("\n    output_stride 16\n"), "{text}");
    let compiled = compile(&text).unwrap_or_else(|d| panic!("{d:#?}"));
    let net = compiled.network(None).expect("one model");
    assert_eq!(net.output_stride, 16);
    assert_eq!(net.total_stride(), 16);
    let dilated: Vec<(&str, usize)> = net
        .blocks()
        .filter(|b| b.dilation > 1)
        .map(|b| (b.path.as_str(), b.dilation))
        .collect();
    assert_eq!(
        dilated,
        [
            ("blocks.5.1", 2),
            ("blocks.5.2", 2),
            ("blocks.5.3", 2),
            ("blocks.6.0", 2)
        ]
    );
    // Not asked for: none written (timm's default 32).
    let text = import_timm(
        "efficientnet_b0",
        &timm_arch_def("efficientnet_b0"),
        &ImportOptions::default(),
    )
    .expect("imports");
    assert!(!text.contains("output_stride"), "{text}");
}

#[test]
fn automl_errors() {
    // Broken chaining: the second block takes 24 filters, the first gives 16.
    let e = automl_err("r1_k3_s1_e1_i32_o16 r1_k3_s2_e6_i24_o24");
    assert_eq!(
        e,
        ImportError::Chaining {
            block: "r1_k3_s2_e6_i24_o24".into(),
            expected: 16,
            found: 24
        }
    );
    assert!(
        e.to_string().contains("`i24`") && e.to_string().contains("`o16`"),
        "{e}"
    );

    // Unknown keys name the string and the key.
    let e = automl_err("r1_k3_s1_e1_i32_o16_f1");
    assert!(
        matches!(&e, ImportError::UnknownKey { block, token, .. } if block == "r1_k3_s1_e1_i32_o16_f1" && token == "f1"),
        "{e:?}"
    );
    assert!(e.to_string().contains("i (input filters)"), "{e}");

    assert!(matches!(
        automl_err("r1_k3_s12_e1_i32_o16"),
        ImportError::BadValue { .. }
    ));
    assert!(matches!(
        automl_err("r1_k3_s1_e1_i32_o16_c2"),
        ImportError::BadValue { .. }
    ));
    assert!(matches!(
        automl_err("r1_k3_s1_e1_o16"),
        ImportError::MissingKey { key: "i", .. }
    ));
}

#[test]
fn imported_models_check_or_fail_in_compile() {
    // An SE on a fused e1 stage imports (it is what automl wrote) but does not check: the
    // `effnet import` command reports it.
    let text = import_automl(
        "m",
        "r1_k3_s1_e1_i32_o16_c1_se0.25",
        &ImportOptions::default(),
    )
    .expect("imports");
    assert!(compile(&text).is_err(), "{text}");
}

/// Every model timm's builder makes in `tests/reference/timm/arch_defs.json`, imported with the
/// arguments its `_gen_*` function passed (captured by tools/timm_reference.py), has timm's
/// parameter count: every model-level option the language has goes through the importer.
#[test]
fn every_captured_timm_model_imports_with_its_generator_arguments() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/timm");
    let text = std::fs::read_to_string(root.join("arch_defs.json")).expect("arch_defs.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let models = json["models"].as_object().expect("models");
    assert!(models.len() >= 60, "{} models", models.len());
    // GroupNorm, a model-wide group size and channel divisor 16 are among them.
    for gn in [
        "efficientnet_b0_g8_gn",
        "efficientnet_b3_g8_gn",
        "efficientnet_b0_g16_evos",
    ] {
        assert!(models.contains_key(gn), "{gn} is not captured");
    }
    let mut wrong = Vec::new();
    for (name, m) in models {
        let f = |k: &str| m[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        let (depth, stage_depths) = match &m["depth_multiplier"] {
            serde_json::Value::Array(v) => {
                (1.0, Some(v.iter().filter_map(|d| d.as_f64()).collect()))
            }
            d => (d.as_f64().expect("depth"), None),
        };
        let activation = match m["act_layer"].as_str().expect("act_layer") {
            "SiLU" | "Swish" => "silu",
            "ReLU6" => "relu6",
            // EfficientNet's default act_layer.
            "ReLU" | "None" => "relu",
            other => panic!("{name}: activation {other}"),
        };
        let width = f("channel_multiplier");
        let opts = ImportOptions {
            stem: Some(f("stem_size") as usize),
            head: Some(f("num_features") as usize),
            width,
            depth,
            padding: Some(if m["pad_type"] == "same" {
                Padding::Same
            } else {
                Padding::Symmetric
            }),
            bn_eps: Some(f("bn_eps")),
            round_limit: Some(f("round_limit")),
            activation: activation.to_string(),
            fix_stem: m["fix_stem"].as_bool().expect("fix_stem"),
            // `num_features` is what the generator computed (scaled or not): keep it.
            fix_head: true,
            divisor: f("channel_divisor") as usize,
            depth_round: if m["depth_trunc"] == "round" {
                DepthRound::Round
            } else {
                DepthRound::Ceil
            },
            stage_depths,
            fix_first_last: m["fix_first_last"].as_bool().unwrap_or(false),
            pruned: m["pruned"].as_str().map(str::to_string),
            blur_pool: match m.get("aa_layer").and_then(|a| a.as_str()) {
                Some("blurpc") => true,
                Some(other) => panic!("{name}: aa_layer {other}"),
                None => false,
            },
            global_context: match m.get("se_layer").and_then(|a| a.as_str()) {
                Some("gc") => true,
                Some(other) => panic!("{name}: se_layer {other}"),
                None => false,
            },
            norm_group_size: match m.get("norm_layer").and_then(|n| n.as_str()) {
                Some("GroupNormAct") => Some(f("norm_group_size") as usize),
                Some(other) => panic!("{name}: norm layer {other}"),
                None => None,
            },
            group_size: m
                .get("group_size")
                .map(|g| g.as_u64().expect("group_size") as usize),
            // Recorded only where it is not 1 (the CondConv models).
            experts: m["experts_multiplier"].as_u64().map_or(1, |e| e as usize),
            ..ImportOptions::default()
        };
        let arch_def = timm_arch_def(name);
        let text = match import_timm(name, &arch_def, &opts) {
            Ok(t) => t,
            Err(e) => {
                wrong.push(format!("{name}: {e}"));
                continue;
            }
        };
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("{name}.json"))).expect("reference"),
        )
        .expect("json");
        let want = reference["params"].as_u64().expect("params") as usize;
        let got = params(&text);
        if got != want {
            wrong.push(format!("{name}: {got} parameters, timm {want}\n{text}"));
        }
        // The state_dict names and shapes too: GroupNorm has timm's parameter count with
        // BatchNorm's, but not its running statistics.
        let compiled = compile(&text).expect("compiles");
        let ours: Vec<serde_json::Value> = compiled
            .network(None)
            .expect("one model")
            .tensors()
            .into_iter()
            .map(|t| serde_json::json!([t.name, t.shape]))
            .collect();
        if reference["tensors"].as_array() != Some(&ours) {
            wrong.push(format!(
                "{name}: the state_dict differs from timm's\n{text}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Pruned layer shapes (timm's `_pruned/*.txt` format) become `prune(...)` on the lines they
/// narrow, and shapes that do not fit are clear errors.
#[test]
fn pruned_shapes_become_prune_options() {
    let arch = "[['ds_r1_k3_s1_e1_c16_se0.25'], ['ir_r2_k3_s2_e6_c24_se0.25']]";
    let shapes = |out: usize, stem: usize| {
        [
            format!("conv_stem.weight:[{stem}, 3, 3, 3]"),
            "blocks.0.0.conv_pw.weight:[16, 32, 1, 1]".to_string(),
            "blocks.0.0.se.conv_reduce.weight:[8, 32, 1, 1]".to_string(),
            "blocks.1.0.conv_dw.weight:[40, 1, 3, 3]".to_string(),
            "blocks.1.0.se.conv_reduce.weight:[4, 40, 1, 1]".to_string(),
            format!("blocks.1.0.conv_pwl.weight:[{out}, 40, 1, 1]"),
            "blocks.1.1.conv_dw.weight:[144, 1, 3, 3]".to_string(),
            "blocks.1.1.se.conv_reduce.weight:[5, 144, 1, 1]".to_string(),
            format!("blocks.1.1.conv_pwl.weight:[{out}, 144, 1, 1]"),
            "conv_head.weight:[1280, 20, 1, 1]".to_string(),
        ]
        .join("***")
    };
    let opts = |text: String| ImportOptions {
        pruned: Some(text),
        ..ImportOptions::default()
    };
    let text = import_timm("p", arch, &opts(shapes(20, 32))).expect("imports");
    assert!(
        text.contains("prune(out = 20, mid = (40, 144), se = (4, 5))"),
        "{text}"
    );
    // The unpruned first stage keeps its line as it was.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("ds") && l.contains("prune")),
        "{text}"
    );
    assert!(compile(&text).is_ok(), "{text}");
    // A stem narrowed by pruning, a missing layer, a malformed entry.
    let e = import_timm("p", arch, &opts(shapes(20, 24))).expect_err("stem");
    assert!(e.to_string().contains("`conv_stem` is pruned to 24"), "{e}");
    let e = import_timm("p", arch, &opts("conv_stem.weight:[32, 3, 3, 3]".into()))
        .expect_err("missing");
    assert!(
        e.to_string()
            .contains("no shape for `blocks.0.0.conv_pw.weight`"),
        "{e}"
    );
    let e = import_timm("p", arch, &opts("conv_stem.weight:32".into())).expect_err("malformed");
    assert!(e.to_string().contains("is not `name:[d0, d1, ...]`"), "{e}");
}
