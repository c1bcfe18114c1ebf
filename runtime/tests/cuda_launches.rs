//! Every launch the cuda plans make, checked against the kernel's C signature in the CUDA
//! source: the pointers (inputs, then the output) in number, element type and constness,
//! then the scalars in number and C type. The plans run on the CPU over a recorder that
//! stands in for the GPU (it returns zeros shaped as the launch's output), through inference
//! and a training step, in f32 and bf16, and every kernel of the source must be called. What
//! the CPU emulator of the kernels (`effnet-cuda-emu`) cannot see, how the arguments reach a
//! kernel, is checked here without a GPU.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use effnet_runtime::Network;
use effnet_runtime::exec::cuda::launch::{Arg, Execute, Launch, Launcher};
use effnet_runtime::exec::cuda::{KERNELS, SOURCE, logits_with, loss_and_grads_with};
use effnet_runtime::train::{Ema, Optimizer, Param};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Every block kind, SE, "same" padding, a dense stem and Fused-MBConv (patches), a 1x1 head.
const SPEC: &str = r#"
model launches {
    input 3 x 19
    classes 7
    activation relu6
    padding same
    drop_path 0.2
    stem conv k3 s2 -> 16
    stage conv   k3 s1 -> 16 x1 skip
    stage ds     k5 s1 -> 16 x1 se 0.25
    stage edge   k3 e2 s1 -> 16 x1
    stage fused  k3 e4 s2 -> 24 x2
    stage mbconv k5 e6 s2 -> 40 x2 se 0.25 act hard_swish
    head conv k1 -> 64
}
"#;

/// A kernel parameter's C type, as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CParam {
    Pointer { elem: String, constant: bool },
    Scalar(String),
}

/// Every `extern "C"` kernel of the source, by name, with its parameters.
fn signatures() -> HashMap<String, Vec<CParam>> {
    let mut out = HashMap::new();
    let mut rest = SOURCE;
    let marker = "extern \"C\" __global__ void ";
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let open = rest.find('(').expect("(");
        let close = rest.find(')').expect(")");
        let name = rest[..open].trim().to_string();
        let params = rest[open + 1..close]
            .split(',')
            .map(|p| {
                let p = p.replace("__restrict__", "");
                let constant = p.split_whitespace().any(|w| w == "const");
                let words: Vec<&str> = p.split_whitespace().filter(|w| *w != "const").collect();
                // `T* name` or `T *name`: the type is what precedes the name.
                let ty = words[..words.len() - 1].join(" ");
                match ty.strip_suffix('*') {
                    Some(elem) => CParam::Pointer {
                        elem: elem.trim().to_string(),
                        constant,
                    },
                    None => CParam::Scalar(ty),
                }
            })
            .collect();
        out.insert(name, params);
        rest = &rest[close..];
    }
    out
}

fn c_elem(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::BF16 => "effnet_bf16",
        DType::F16 => "effnet_f16",
        _ => "unsupported",
    }
}

fn c_scalar(a: &Arg) -> &'static str {
    match a {
        Arg::Int(_) => "int",
        Arg::Long(_) => "long",
        Arg::Double(_) => "double",
    }
}

/// What a launch would pass: the kernel, the inputs' dtypes, the output's, the scalars.
type Call = (Launch, Vec<DType>);

/// Stands in for the GPU: records each launch and returns zeros shaped as its output.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<Call>>>);

impl Execute for Recorder {
    fn execute(&self, launch: &Launch, inputs: &[&Tensor]) -> Result<Tensor> {
        for t in inputs {
            assert!(t.is_contiguous(), "{}: a strided input", launch.kernel);
        }
        let dtypes = inputs.iter().map(|t| t.dtype()).collect();
        self.0.borrow_mut().push((launch.clone(), dtypes));
        Tensor::zeros(launch.out.as_slice(), launch.out_dtype, &Device::Cpu)
    }
}

fn check(call: &Call, sigs: &HashMap<String, Vec<CParam>>) {
    let (launch, inputs) = call;
    let k = launch.kernel;
    let sig = sigs
        .get(k)
        .unwrap_or_else(|| panic!("`{k}` is not a kernel of the source"));
    let want_pointers = inputs.len() + 1;
    let (pointers, scalars) = sig.split_at(want_pointers.min(sig.len()));
    for (i, p) in pointers.iter().enumerate() {
        let CParam::Pointer { elem, constant } = p else {
            panic!("{k}: parameter {i} is {p:?}, the launch passes a pointer there");
        };
        let (dtype, is_output) = match inputs.get(i) {
            Some(d) => (*d, false),
            None => (launch.out_dtype, true),
        };
        assert_eq!(elem, c_elem(dtype), "{k}: pointer {i}'s element type");
        assert_eq!(*constant, !is_output, "{k}: pointer {i}'s constness");
    }
    let kinds: Vec<String> = scalars
        .iter()
        .map(|p| match p {
            CParam::Scalar(t) => t.clone(),
            CParam::Pointer { .. } => format!("{p:?}"),
        })
        .collect();
    let passed: Vec<&str> = launch.scalars.iter().map(c_scalar).collect();
    assert_eq!(kinds, passed, "{k}: the scalars");
    assert!(launch.threads > 0, "{k}: no threads");
    assert!(
        launch.out.iter().product::<usize>() > 0,
        "{k}: an empty output"
    );
}

fn targets(n: usize, classes: usize) -> Tensor {
    let v: Vec<f32> = (0..n * classes)
        .map(|i| {
            if i % classes == (i / classes) % classes {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (n, classes), &Device::Cpu).expect("targets")
}

/// Each optimizer's update and the EMA's after a step: one launch a trainable tensor (a frozen
/// one is skipped), one a tensor of the EMA.
fn optimizer_and_ema_launches(
    net: &Network,
    params: &[Param],
    grads: &[Tensor],
    kernels: &Launcher<Recorder>,
) {
    let mut params = params.to_vec();
    params[0].frozen = true;
    let count = || kernels.exec.0.borrow().len();
    for (_, spec) in common::optimizer_specs() {
        let mut opt = Optimizer::new(spec, &params).expect("optimizer");
        let before = count();
        opt.step_on(&params, grads, 0.1, 0.5, Some(kernels))
            .expect("update");
        assert_eq!(count() - before, params.len() - 1, "one launch a tensor");
    }
    let current = net.named_tensors();
    let mut ema = Ema::new(0.999, &current).expect("ema");
    let before = count();
    ema.update_on(&current, &HashSet::new(), Some(kernels))
        .expect("ema");
    assert_eq!(count() - before, current.len(), "one launch a tensor");
}

#[test]
fn every_launch_passes_what_its_kernel_declares_and_every_kernel_is_launched() {
    let sigs = signatures();
    for k in KERNELS {
        assert!(
            sigs.contains_key(*k),
            "`{k}` has no signature in the source"
        );
    }
    assert_eq!(sigs.len(), KERNELS.len(), "kernels the list does not name");

    let rec = Recorder::default();
    let kernels = || Launcher::new(rec.clone());
    let x = common::tensor(&[3, 3, 19, 19], 1).expect("x");

    // Inference, f32, bf16 and f16.
    let (ir, tensors) = common::plain_tensors(SPEC);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let vb = VarBuilder::from_tensors(tensors.clone(), dtype, &Device::Cpu);
        let net = Network::from_ir(&ir, vb).expect("net");
        let y = logits_with(&net, &x, kernels()).expect("inference");
        assert_eq!(y.dims(), [3, 7]);
    }

    // A training step, f32 and bf16 (mixed precision).
    for maps in [DType::F32, DType::BF16] {
        let net = common::trainable_network(SPEC, &Device::Cpu);
        let params = common::trainable_params(&net);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (_, grads) = loss_and_grads_with(
            &net,
            &params,
            &x,
            &targets(3, 7),
            &mut rng,
            kernels(),
            maps,
            None,
        )
        .expect("step");
        assert_eq!(grads.len(), params.len());
        if maps == DType::F32 {
            optimizer_and_ema_launches(&net, &params, &grads, &kernels());
        }
    }

    let calls = rec.0.borrow();
    for call in calls.iter() {
        check(call, &sigs);
    }
    let launched: BTreeSet<&str> = calls.iter().map(|(l, _)| l.kernel).collect();
    let never: Vec<&&str> = KERNELS.iter().filter(|k| !launched.contains(**k)).collect();
    assert!(never.is_empty(), "never launched: {never:?}");
    eprintln!(
        "{} launches of {} kernels checked",
        calls.len(),
        launched.len()
    );
}
