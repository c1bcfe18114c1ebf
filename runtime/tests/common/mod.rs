//! Helpers shared by the op and training tests (each test binary uses some of them).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use effnet_compiler::ir::Optimizer as OptimizerSpec;
use effnet_runtime::Network;
use effnet_runtime::train::init::init_varmap;
use effnet_runtime::train::optim::Param;

/// Fused and MBConv+SE blocks, symmetric padding, SiLU, an odd input size, drop-path and
/// dropout (so both paths draw masks). The second block of the `fused e4` stage expands 16 to
/// 64 channels with a 3x3 stride-1 convolution, which the forward runs as Winograd.
pub const SYMMETRIC: &str = r#"
model symmetric {
    input 3 x 15
    classes 5
    dropout 0.3
    drop_path 0.3
    normalize mean(0.5, 0.5, 0.5) std(0.5, 0.5, 0.5)
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage fused  k3 e4 s2 -> 16 x2
    stage mbconv k3 e4 s2 -> 24 x2 se 0.25
    head conv k1 -> 32
}
"#;

/// Every block kind, TensorFlow "same" padding (asymmetric on stride 2), ReLU and hard-swish,
/// SE in a depthwise-separable and an edge block, a 5x5 depthwise, no head.
pub const SAME: &str = r#"
model same {
    input 3 x 18
    classes 7
    activation relu
    norm batch(eps = 1e-3, momentum = 0.01)
    padding same
    dropout 0.2
    drop_path 0.2
    round channels(divisor = 4, min = 8, limit = 0)
    stem conv k3 s2 -> 12
    stage conv   k3 s1 -> 12 x2 skip
    stage ds     k5 s1 -> 16 x1 se 0.5
    stage edge   k3 e1 s1 -> 16 x1 se 0.25
    stage fused  k3 e4 s2 -> 24 x2
    stage mbconv k5 e6 s2 -> 32 x2 se 0.25 act hard_swish
    head none
}
"#;

/// A deterministic pseudo-random tensor with values in [-1, 1).
pub fn tensor(dims: &[usize], seed: u64) -> Result<Tensor> {
    let len: usize = dims.iter().product();
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let v: Vec<f32> = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// The largest absolute difference of two equally shaped f32 tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// The values of a tensor, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
}

/// The largest absolute difference of two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every trainable tensor of `net` as a training parameter (sharing the network's variable),
/// in `state_dict` order.
pub fn trainable_params(net: &Network) -> Vec<Param> {
    net.named_tensors()
        .into_iter()
        .filter(|t| t.trainable)
        .map(|t| {
            Param::new(
                t.name,
                candle_core::Var::from_tensor(&t.tensor).expect("var"),
            )
        })
        .collect()
}

/// Soft targets `[n, classes]`: smoothed one-hot labels mixed with a second label, as
/// mixup and label smoothing make them.
pub fn soft_targets(n: usize, classes: usize, dev: &Device) -> Tensor {
    let mut v = vec![0.02f32; n * classes];
    for i in 0..n {
        v[i * classes + i % classes] += 0.6;
        v[i * classes + (i * 3 + 1) % classes] += 0.3;
    }
    Tensor::from_vec(v, (n, classes), dev).expect("targets")
}

/// The spec's only model as a trainable network (`Var` weights), initialized as the trainer
/// initializes it with seed 5.
pub fn trainable_network(spec: &str, dev: &Device) -> Network {
    let c = effnet_compiler::compile(spec).unwrap_or_else(|d| panic!("{d:?}"));
    let ir = c.network(None).expect("model");
    let vm = init_varmap(ir, 5, dev).expect("init");
    Network::from_ir(ir, VarBuilder::from_varmap(&vm, DType::F32, dev)).expect("net")
}

/// The spec's only model as plain (non-`Var`) tensors on the CPU, initialized as the trainer
/// initializes it with seed 3, with BatchNorm statistics moved away from the identity (so
/// eval mode's folding of them is exercised): what inference tests load.
pub fn plain_tensors(spec: &str) -> (effnet_compiler::ir::Network, HashMap<String, Tensor>) {
    let c = effnet_compiler::compile(spec).unwrap_or_else(|d| panic!("{d:?}"));
    let ir = c.network(None).expect("model").clone();
    let vm = init_varmap(&ir, 3, &Device::Cpu).expect("init");
    let mut tensors = HashMap::new();
    for (name, var) in vm.data().lock().expect("varmap").iter() {
        let t = var.as_tensor().detach();
        let t = if name.ends_with("running_var") {
            (t.affine(0.0, 0.5).expect("var") + 0.75).expect("var")
        } else if name.ends_with("running_mean") {
            (t.affine(0.0, 0.1).expect("mean") + 0.05).expect("mean")
        } else {
            t
        };
        tensors.insert(name.clone(), t);
    }
    (ir, tensors)
}

/// An emptied path under the system's temp directory for one test, `effnet-{binary}-{name}-{pid}`
/// (not created: the code under test makes it).
pub fn fresh_temp_dir(binary: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("effnet-{binary}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Named tensors' values, flattened, for comparing weights exactly.
pub fn named_values(ts: Vec<(String, Tensor)>) -> Vec<(String, Vec<f32>)> {
    ts.into_iter()
        .map(|(n, t)| {
            (
                n,
                t.flatten_all().and_then(|t| t.to_vec1()).expect("values"),
            )
        })
        .collect()
}

/// Every optimizer in every form, by name: RMSProp in TensorFlow's form with and without
/// momentum, AdamW, SGD with Nesterov momentum, with plain momentum, and without; weight decay
/// on all but one.
pub fn optimizer_specs() -> Vec<(&'static str, OptimizerSpec)> {
    vec![
        (
            "rmsprop_tf",
            OptimizerSpec::Rmsprop {
                decay: 0.9,
                momentum: 0.9,
                eps: 1e-3,
                weight_decay: 1e-2,
            },
        ),
        (
            "rmsprop_tf without momentum",
            OptimizerSpec::Rmsprop {
                decay: 0.9,
                momentum: 0.0,
                eps: 1e-3,
                weight_decay: 1e-2,
            },
        ),
        (
            "adamw",
            OptimizerSpec::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
            },
        ),
        (
            "sgd nesterov",
            OptimizerSpec::Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
            },
        ),
        (
            "sgd momentum",
            OptimizerSpec::Sgd {
                momentum: 0.8,
                nesterov: false,
                weight_decay: 0.0,
            },
        ),
        (
            "plain sgd",
            OptimizerSpec::Sgd {
                momentum: 0.0,
                nesterov: false,
                weight_decay: 1e-3,
            },
        ),
    ]
}
