//! `effnet bench`: throughput with random weights. Inference (`forward_t(x, false)`), or with
//! `--train` one training step per iteration, exactly the trainer's (forward in train mode,
//! cross-entropy against fixed labels, backward, the trainer's SGD with momentum 0.9 as
//! `tools/torch_bench.py` does), timed after a warm-up.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use effnet_compiler::ir::Optimizer as OptimizerSpec;
use effnet_runtime::Network;
use effnet_runtime::exec::profile::{Profile, ProfileRow};
use effnet_runtime::exec::{Choice, Plan, Precision, Purpose, one_hot};
use effnet_runtime::train::optim::{Optimizer, Param};

use super::compute::{DeviceArg, device};
use super::load;
use super::run::DtypeArg;

/// What `bench` measures.
#[derive(Debug, Clone)]
pub struct BenchArgs<'a> {
    pub spec: &'a Path,
    pub model: Option<&'a str>,
    pub resolution: Option<usize>,
    pub batch: usize,
    pub train: bool,
    pub iters: usize,
    pub warmup: usize,
    pub device: DeviceArg,
    pub dtype: DtypeArg,
    pub plan: Option<PlanArg>,
    pub precision: Precision,
    pub profile: bool,
    pub json: bool,
}

/// A training step's arithmetic named on the command line (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    #[default]
    F32,
    Bf16,
}

impl PrecisionArg {
    pub fn precision(self) -> Precision {
        match self {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

/// An execution plan named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanArg {
    CpuFused,
    CpuStep,
    CudaFused,
    CudaStep,
    Candle,
}

impl PlanArg {
    pub fn plan(self) -> Plan {
        match self {
            PlanArg::CpuFused => Plan::CpuFused,
            PlanArg::CpuStep => Plan::CpuStep,
            PlanArg::CudaFused => Plan::CudaFused,
            PlanArg::CudaStep => Plan::CudaStep,
            PlanArg::Candle => Plan::Candle,
        }
    }
}

/// Peak resident set size of this process in MiB (`VmHWM`), when the kernel reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Random weights in the VarMap: convolution and linear weights He-normal (fan in), BatchNorm
/// scales 1, every bias and shift 0.
fn randomize(varmap: &VarMap) -> candle_core::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    for (name, var) in data.iter() {
        let dims = var.dims().to_vec();
        if name.ends_with(".weight") && dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let std = (2.0 / fan_in.max(1) as f64).sqrt();
            let t = Tensor::randn(0f32, std as f32, dims.as_slice(), var.device())?;
            var.set(&t.to_dtype(var.dtype())?)?;
        } else if name.ends_with(".weight") {
            var.set(&Tensor::ones(dims.as_slice(), var.dtype(), var.device())?)?;
        }
    }
    Ok(())
}

pub fn run(a: &BenchArgs) -> Result<ExitCode, String> {
    if a.batch == 0 || a.iters == 0 {
        return Err("--batch and --iters must be at least 1".into());
    }
    let dev = device(a.device)?;
    let dtype = a.dtype.dtype();
    let loaded = load(a.spec, a.model)?;
    let net_ir = &loaded.network;
    let res = a.resolution.unwrap_or(net_ir.resolution);
    if res == 0 {
        return Err("--resolution must be at least 1".into());
    }
    super::warn_chosen_resolution(net_ir, res, false);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
    let ce = |e: candle_core::Error| e.to_string();
    let net = Network::from_ir(net_ir, vb).map_err(ce)?;
    randomize(&varmap).map_err(ce)?;
    // Inference runs on plain tensors, as a network loaded from a weights file does (`Var`s
    // would make every layer track gradients).
    let net = if a.train {
        net
    } else {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| "VarMap lock poisoned".to_string())?;
        let tensors: HashMap<String, Tensor> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        drop(data);
        Network::from_ir(net_ir, VarBuilder::from_tensors(tensors, dtype, &dev)).map_err(ce)?
    };
    let c = net_ir.input_channels;
    let x = Tensor::randn(0f32, 1f32, (a.batch, c, res, res), &dev)
        .and_then(|x| x.to_dtype(dtype))
        .map_err(ce)?;
    let classes = net_ir.num_classes;
    // Hard labels spread over the classes, as one-hot targets (the trainer's soft-target loss
    // then equals PyTorch's cross-entropy; the values do not change the work).
    let labels: Vec<usize> = (0..a.batch).map(|i| (i * 7919 + 3) % classes).collect();
    let targets = one_hot(&labels, classes, &dev).map_err(ce)?;
    // Exactly the trainer's step: its loss and gradients (the hand-written step on the CPU in
    // f32, candle's autograd otherwise) and its optimizer.
    // Only training needs the parameters as variables and the optimizer's state (inference
    // would otherwise carry copies of every weight).
    let params: Vec<Param> = net
        .named_tensors()
        .into_iter()
        .filter(|t| a.train && t.trainable)
        .map(|t| Var::from_tensor(&t.tensor).map(|v| Param::new(t.name, v)))
        .collect::<candle_core::Result<_>>()
        .map_err(ce)?;
    let sgd = OptimizerSpec::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut optimizer = Optimizer::new(sgd, &params).map_err(|e| e.to_string())?;
    let mut masks = effnet_runtime::data::sample_rng(0, &[]);
    let purpose = if a.train {
        Purpose::TrainStep
    } else {
        Purpose::Infer
    };
    // The plan the facts choose, or the one asked for (whose refusal, if the facts do not
    // allow it, comes from the first step and says why).
    let plan = match a.plan {
        None => net.plan(&x, purpose),
        Some(p) => Choice {
            plan: p.plan(),
            fallback_reason: None,
        },
    };
    let mut step = || -> Result<(), String> {
        if a.train {
            let (_, grads) = if a.precision == Precision::F32 {
                net.loss_and_grads_on(plan.plan, &params, &x, &targets, &mut masks)
            } else {
                net.loss_and_grads_in(a.precision, &params, &x, &targets, &mut masks)
            }
            .map_err(ce)?;
            optimizer
                .step(&params, &grads, 0.01)
                .map_err(|e| e.to_string())?;
        } else {
            let y = net.forward_on(plan.plan, &x, false).map_err(ce)?;
            // Wait for the device (a no-op on the CPU).
            y.device().synchronize().map_err(ce)?;
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let t0 = Instant::now();
    for _ in 0..a.iters {
        step()?;
    }
    dev.synchronize().map_err(ce)?;
    let secs = t0.elapsed().as_secs_f64();
    let ips = (a.batch * a.iters) as f64 / secs;
    let rss = peak_rss_mb();
    // The profile runs after the timed calls, so its synchronizations cost them nothing.
    let profile = if a.profile {
        let mut p = Profile::default();
        for _ in 0..a.iters.max(1) {
            if a.train {
                let (_, grads) = net
                    .profile_step(
                        a.precision,
                        Some(plan.plan),
                        &params,
                        &x,
                        &targets,
                        &mut masks,
                        &mut p,
                    )
                    .map_err(ce)?;
                let t0 = Instant::now();
                optimizer
                    .step(&params, &grads, 0.01)
                    .map_err(|e| e.to_string())?;
                dev.synchronize().map_err(ce)?;
                p.add_timed("optimizer update", t0.elapsed().as_secs_f64());
            } else {
                net.profile_on(Some(plan.plan), &x, &mut p).map_err(ce)?;
            }
        }
        Some(p.rows())
    } else {
        None
    };
    if a.json {
        let v = serde_json::json!({
            "model": net_ir.name,
            "resolution": res,
            "batch": a.batch,
            "train": a.train,
            "device": match dev {
                Device::Cpu => "cpu",
                _ => "cuda",
            },
            "device_name": effnet_runtime::exec::device_model(&dev),
            "dtype": dtype.as_str(),
            "precision": a.precision.name(),
            "plan": plan.plan.name(),
            "plan_fallback_reason": plan.fallback_reason,
            // How the cuda plans ran the dense convolutions (stem, Fused-MBConv): cuDNN, or
            // patches + GEMM (EFFNET_DENSE_CONV); none off the GPU.
            "dense_conv": match (&dev, plan.plan) {
                (Device::Cuda(_), Plan::CudaFused | Plan::CudaStep) => {
                    effnet_runtime::exec::cuda::DenseConv::of_process().ok().map(|d| d.name())
                }
                _ => None,
            },
            "threads": rayon::current_num_threads(),
            "images_per_sec": (ips * 100.0).round() / 100.0,
            "peak_rss_mb": rss.map(|r| (r * 10.0).round() / 10.0),
            // The GPU allocator pool's high watermark (torch_bench.py's `peak_device_mb` is
            // torch.cuda.max_memory_allocated): weights, maps and workspace at their peak.
            "peak_device_mb": effnet_runtime::exec::cuda::peak_device_bytes(&dev)
                .map(|b| (b as f64 / 1048576.0 * 10.0).round() / 10.0),
        });
        let mut v = v;
        if let Some(rows) = &profile {
            v["profile"] = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "op": r.op,
                        "calls": r.calls,
                        "ms": (r.seconds * 1e6).round() / 1e3,
                    })
                })
                .collect();
        }
        println!("{v}");
    } else {
        let mode = if a.train { "train step" } else { "inference" };
        let dev_name = match dev {
            Device::Cpu => "cpu",
            _ => "cuda",
        };
        println!(
            "{} @{res} batch {} {mode} on {dev_name} ({} threads): {ips:.2} images/s ({:.2} ms/batch, {} timed iterations after {} warm-up)",
            net_ir.name,
            a.batch,
            rayon::current_num_threads(),
            1000.0 * secs / a.iters as f64,
            a.iters,
            a.warmup
        );
        println!("plan: {plan}");
        if let Some(r) = rss {
            println!("peak RSS {r:.1} MB");
        }
        if let Some(rows) = &profile {
            print_profile(rows, a.iters.max(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The profile as a table: each kind of operation's calls and milliseconds per call of the
/// network, and its share of the profiled total.
fn print_profile(rows: &[ProfileRow], calls: usize) {
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    println!("profile ({calls} calls, each operation synchronized: shares, not throughput):");
    println!(
        "{:<34} {:>6} {:>10} {:>7}",
        "operation", "calls", "ms", "share"
    );
    for r in rows {
        println!(
            "{:<34} {:>6} {:>10.3} {:>6.1}%",
            r.op,
            r.calls,
            r.seconds * 1e3,
            100.0 * r.seconds / total.max(f64::MIN_POSITIVE)
        );
    }
    println!("{:<34} {:>6} {:>10.3}", "total", "", total * 1e3);
}
