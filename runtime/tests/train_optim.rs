//! One to three steps of each optimizer against values computed by PyTorch
//! (`tools/torch_optim_fixtures.py` -> `tests/fixtures/optim/*.json`): SGD with momentum
//! (plain and Nesterov), AdamW, and TensorFlow-form RMSProp (timm's `RMSpropTF`, checked in the
//! script against the TF formula). Weight decay applies to the 2-D weight, not the 1-D bias.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use effnet_compiler::ir::Optimizer as Spec;
use effnet_runtime::train::optim::{Optimizer, Param, clip_grad_norm};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/optim")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn spec(doc: &Value) -> Spec {
    let h = &doc["hyper"];
    let f = |k: &str| h[k].as_f64().expect(k);
    match doc["optimizer"].as_str().expect("optimizer") {
        "sgd" => Spec::Sgd {
            momentum: f("momentum"),
            nesterov: h["nesterov"].as_bool().expect("nesterov"),
            weight_decay: f("weight_decay"),
        },
        "adamw" => Spec::Adamw {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
        "rmsprop" => Spec::Rmsprop {
            decay: f("decay"),
            momentum: f("momentum"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
        other => panic!("unknown optimizer {other}"),
    }
}

fn check(name: &str) {
    let doc = fixture(name);
    let dev = Device::Cpu;
    let params: Vec<Param> = doc["params"]
        .as_array()
        .expect("params")
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            let t = Tensor::from_vec(floats(&p["values"]), shape, &dev).expect("tensor");
            let param = Param::new(
                p["name"].as_str().expect("name"),
                Var::from_tensor(&t).expect("var"),
            );
            assert_eq!(
                param.decay,
                p["decay"].as_bool().expect("decay"),
                "decay rule by rank"
            );
            param
        })
        .collect();
    let mut opt = Optimizer::new(spec(&doc), &params).expect("optimizer");
    let lrs = floats(&doc["lrs"]);
    let grads = doc["grads"].as_array().expect("grads");
    let after = doc["after"].as_array().expect("after");
    for (step, (g, want)) in grads.iter().zip(after).enumerate() {
        let gs: Vec<Tensor> = g
            .as_array()
            .expect("grads of a step")
            .iter()
            .zip(&params)
            .map(|(v, p)| {
                Tensor::from_vec(floats(v), p.var.as_tensor().shape(), &dev).expect("grad")
            })
            .collect();
        opt.step(&params, &gs, f64::from(lrs[step])).expect("step");
        for (p, w) in params.iter().zip(want.as_array().expect("values")) {
            let ours = p
                .var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("values");
            for (i, (a, b)) in ours.iter().zip(floats(w)).enumerate() {
                let tol = 2e-6 * b.abs().max(1.0);
                assert!(
                    (a - b).abs() <= tol,
                    "{name} step {} {}[{i}]: ours {a}, PyTorch {b}",
                    step + 1,
                    p.name
                );
            }
        }
    }
    assert_eq!(opt.steps, grads.len() as u64);
}

#[test]
fn sgd_momentum_matches_pytorch() {
    check("sgd");
}

#[test]
fn sgd_nesterov_matches_pytorch() {
    check("sgd_nesterov");
}

#[test]
fn adamw_matches_pytorch() {
    check("adamw");
}

#[test]
fn rmsprop_tf_matches_timm_rmsprop_tf() {
    check("rmsprop_tf");
}

#[test]
fn rmsprop_state_starts_at_one_and_round_trips() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::ones((2, 2), candle_core::DType::F32, &dev).expect("t"))
        .expect("v");
    let params = vec![Param::new("w", w)];
    let spec = Spec::Rmsprop {
        decay: 0.9,
        momentum: 0.9,
        eps: 1e-3,
        weight_decay: 0.0,
    };
    let opt = Optimizer::new(spec.clone(), &params).expect("opt");
    let state = opt.state(&params).expect("state");
    assert_eq!(state.len(), 2);
    assert_eq!(state[0].0, "w.ms");
    assert_eq!(state[1].0, "w.mom");
    let ms = state[0]
        .1
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("ms");
    assert!(
        ms.iter().all(|&v| v == 1.0),
        "TF1 RMSProp starts ms at ones"
    );
    let mut other = Optimizer::new(spec, &params).expect("opt");
    other
        .load_state(&params, state.into_iter().collect(), 7, "test")
        .expect("load");
    assert_eq!(other.steps, 7);
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let dev = Device::Cpu;
    let mut g = vec![
        Tensor::new(&[3f32, 0.0], &dev).expect("t"),
        Tensor::new(&[[0f32, 4.0]], &dev).expect("t"),
    ];
    let norm = clip_grad_norm(&mut g, 1.0).expect("clip");
    assert!((norm - 5.0).abs() < 1e-6);
    let a = g[0].to_vec1::<f32>().expect("v");
    assert!((a[0] - 0.6).abs() < 1e-5, "{a:?}");
    let mut small = vec![Tensor::new(&[0.1f32], &dev).expect("t")];
    clip_grad_norm(&mut small, 1.0).expect("clip");
    assert_eq!(small[0].to_vec1::<f32>().expect("v"), vec![0.1]);
}
