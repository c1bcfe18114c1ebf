//! Which execution plan runs a call, decided in one place from facts about the call (the
//! device, the dtypes, whether the parameters are training variables, the activations and
//! convolution and normalization kinds the network uses, and what the call is for), never from how a tensor
//! happens to have been produced.
//!
//! | plan | runs | where |
//! |---|---|---|
//! | [`Plan::CpuFused`] | inference | CPU; f32 compute (f16/bf16 weights widened); effnet's NHWC kernels, BatchNorm, activation and residual in each convolution's epilogue |
//! | [`Plan::CpuStep`] | the training step | CPU, f32; effnet's NHWC kernels, forward and backward written by hand |
//! | [`Plan::CudaFused`] | inference | CUDA (a build with the `cuda` feature), f32, bf16 or f16 maps (the parameters' dtype); effnet's NHWC CUDA kernels, cuBLAS for the GEMMs of 1x1 and (on patches) dense convolutions |
//! | [`Plan::CudaStep`] | the training step | CUDA (a build with the `cuda` feature), f32; the same kernels with their backward, forward and backward written by hand |
//! | [`Plan::Candle`] | everything | any device and dtype; candle's ops and autograd: the reference, and the fallback |

use std::fmt;

use candle_core::{DType, Device, Tensor};
use effnet_compiler::ir::Activation;

use crate::nn::{Block, ConvBnAct, NetworkParts, SqueezeExcite};

/// How a call runs; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    CpuFused,
    CpuStep,
    CudaFused,
    CudaStep,
    Candle,
}

impl Plan {
    /// The plan's name as `bench --json` and `train` print it.
    pub fn name(self) -> &'static str {
        match self {
            Plan::CpuFused => "cpu-fused",
            Plan::CpuStep => "cpu-step",
            Plan::CudaFused => "cuda-fused",
            Plan::CudaStep => "cuda-step",
            Plan::Candle => "candle",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The arithmetic of a training step: full f32, or mixed precision with bf16 maps and f32
/// master weights (PyTorch's autocast in bf16; the cuda-step plan only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// As `--precision` and `bench --json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// What a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Eval-mode logits or features (running BatchNorm statistics, no masks).
    Infer,
    /// Train-mode logits (batch statistics, drop-path and dropout masks) that candle's
    /// autograd can differentiate.
    TrainForward,
    /// One training batch: loss and every trainable tensor's gradient.
    TrainStep,
}

/// The facts a plan is chosen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub purpose: Purpose,
    /// `cpu`, `cuda` or `metal`: where the input lives.
    pub device: &'static str,
    pub input_dtype: DType,
    pub param_dtype: DType,
    /// The parameters are training variables (`Var`s): eval mode must then stay
    /// differentiable, and their values change between calls.
    pub params_are_variables: bool,
    /// The first activation the CPU kernels do not implement, if any.
    pub activation_without_kernel: Option<Activation>,
    /// The first layer the effnet kernel plans do not implement, if any.
    pub layer_without_kernel: Option<LayerWithoutKernel>,
}

/// A layer (by its timm path) that only the candle plan runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerWithoutKernel {
    pub path: String,
    pub kind: NoKernel,
}

/// What the effnet kernel plans lack, in the order a plan's reason names them: the kernels
/// prepare each convolution's weight once and fold BatchNorm and the activation into its
/// epilogue, pool squeeze-excitation by averaging, and differentiate exactly that by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKernel {
    /// A CondConv convolution: its kernel is mixed per sample.
    CondConv,
    /// A grouped convolution that is not depthwise.
    GroupedConv,
    /// A normalization that is not BatchNorm (a GroupNorm).
    GroupNorm,
    /// A blur pool after the layer's activation (`antialias blur`).
    BlurPool,
    /// Global context attention (`attention gc`) in the SE's place.
    GlobalContext,
}

impl LayerWithoutKernel {
    /// The first such layer of `layers` (and their blocks' `se`), by [`NoKernel`]'s order.
    fn first(layers: &[&ConvBnAct], se: &[&SqueezeExcite]) -> Option<Self> {
        let conv = |kind: NoKernel, has: fn(&ConvBnAct) -> bool| {
            layers.iter().find(|l| has(l)).map(|l| LayerWithoutKernel {
                path: match kind {
                    NoKernel::GroupNorm => l.bn.spec.path.clone(),
                    _ => l.conv.spec.path.clone(),
                },
                kind,
            })
        };
        conv(NoKernel::CondConv, |l| l.conv.spec.is_conditional())
            .or_else(|| {
                conv(NoKernel::GroupedConv, |l| {
                    l.conv.spec.groups != 1 && !l.conv.spec.is_depthwise()
                })
            })
            .or_else(|| conv(NoKernel::GroupNorm, |l| !l.bn.spec.is_batch()))
            .or_else(|| conv(NoKernel::BlurPool, |l| l.conv.spec.blur_stride > 1))
            .or_else(|| {
                se.iter()
                    .find_map(|s| s.context.as_ref())
                    .map(|gc| LayerWithoutKernel {
                        path: gc.attn.spec.path.clone(),
                        kind: NoKernel::GlobalContext,
                    })
            })
    }

    /// Why a `device` kernel plan cannot run this layer.
    fn reason(&self, device: &str) -> String {
        let p = &self.path;
        match self.kind {
            NoKernel::CondConv => {
                format!("`{p}` is a CondConv convolution (a kernel mixed per sample)")
            }
            NoKernel::GroupedConv => {
                format!("`{p}` is a grouped convolution that is not depthwise")
            }
            NoKernel::GroupNorm => format!("`{p}` is a GroupNorm, which has no {device} kernel"),
            NoKernel::BlurPool => {
                format!("`{p}` blur-pools (`antialias blur`), which has no {device} kernel")
            }
            NoKernel::GlobalContext => {
                format!("`{p}` is global context attention, which has no {device} kernel")
            }
        }
    }
}

/// The activations effnet's kernels (CPU and CUDA) implement, forward and derivative.
pub fn cpu_kernels_implement(a: Activation) -> bool {
    !matches!(a, Activation::Mish)
}

fn device_name(d: &Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// What the device is, for reports (`bench --json`'s `device_name`, `train`'s compute line):
/// the GPU's name as the driver gives it (e.g. "NVIDIA H200"), or the CPU's model from
/// /proc/cpuinfo; "unknown" where neither can be read.
pub fn device_model(d: &Device) -> String {
    match d {
        #[cfg(feature = "cuda")]
        Device::Cuda(c) => c
            .cuda_stream()
            .context()
            .name()
            .unwrap_or_else(|e| format!("unknown CUDA device ({e})")),
        Device::Cpu => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into()),
        _ => "unknown".into(),
    }
}

impl Facts {
    /// The facts of running `net` on `x` for `purpose`.
    pub fn of(net: &NetworkParts, x: &Tensor, purpose: Purpose) -> Self {
        let layers: Vec<&ConvBnAct> = net.layers().collect();
        let se: Vec<&SqueezeExcite> = net.blocks().filter_map(|b| b.se.as_ref()).collect();
        Self::of_layers(&layers, &se, x, purpose)
    }

    /// The facts of running a run of `blocks` alone on `x` for `purpose`.
    pub fn of_blocks(blocks: &[Block], x: &Tensor, purpose: Purpose) -> Self {
        let layers: Vec<&ConvBnAct> = blocks.iter().flat_map(|b| b.layers.iter()).collect();
        let se: Vec<&SqueezeExcite> = blocks.iter().filter_map(|b| b.se.as_ref()).collect();
        Self::of_layers(&layers, &se, x, purpose)
    }

    fn of_layers(
        layers: &[&ConvBnAct],
        se: &[&SqueezeExcite],
        x: &Tensor,
        purpose: Purpose,
    ) -> Self {
        let activation_without_kernel = layers
            .iter()
            .filter_map(|l| l.activation)
            .chain(se.iter().map(|s| s.activation))
            .find(|&a| !cpu_kernels_implement(a));
        let params_are_variables = layers.iter().any(|l| l.conv.weight_is_variable());
        Facts {
            purpose,
            device: device_name(x.device()),
            input_dtype: x.dtype(),
            param_dtype: layers.first().map_or(x.dtype(), |l| l.conv.weight_dtype()),
            params_are_variables,
            activation_without_kernel,
            layer_without_kernel: LayerWithoutKernel::first(layers, se),
        }
    }

    /// The plan for these facts, with the reason when it is the fallback.
    pub fn choose(&self) -> Choice {
        match self.purpose {
            // candle's autograd is what differentiates a train-mode forward.
            Purpose::TrainForward => Choice::new(Plan::Candle, None),
            Purpose::Infer if self.device == "cuda" => {
                self.kernels(Plan::CudaFused, &[DType::F32, DType::BF16, DType::F16])
            }
            Purpose::Infer => self.kernels(Plan::CpuFused, &[DType::F32, DType::F16, DType::BF16]),
            Purpose::TrainStep if self.device == "cuda" => {
                self.kernels(Plan::CudaStep, &[DType::F32])
            }
            Purpose::TrainStep => self.kernels(Plan::CpuStep, &[DType::F32]),
        }
    }

    /// `plan` (one of the effnet kernel plans) when the facts allow it, else the candle plan
    /// with the first reason they do not.
    fn kernels(&self, plan: Plan, dtypes: &[DType]) -> Choice {
        let on_cuda = matches!(plan, Plan::CudaFused | Plan::CudaStep);
        let device = if on_cuda { "cuda" } else { "cpu" };
        let why = if self.device != device {
            Some(format!(
                "no effnet {} kernels for {} yet",
                self.purpose_name(),
                self.device
            ))
        } else if on_cuda && !cfg!(feature = "cuda") {
            Some("this build has no CUDA kernels (rebuild with `--features cuda`)".into())
        } else if self.purpose == Purpose::Infer && self.params_are_variables {
            Some("the parameters are training variables (eval mode stays differentiable)".into())
        } else if !dtypes.contains(&self.input_dtype) {
            Some(format!(
                "{} input has no {plan} kernels",
                self.input_dtype.as_str()
            ))
        } else if !dtypes.contains(&self.param_dtype) {
            Some(format!(
                "{} parameters have no {plan} kernels",
                self.param_dtype.as_str()
            ))
        } else if let Some(a) = self.activation_without_kernel {
            Some(format!("{} has no {device} kernel", a.name()))
        } else {
            self.layer_without_kernel.as_ref().map(|l| l.reason(device))
        };
        match why {
            Some(w) => Choice::new(Plan::Candle, Some(w)),
            None => Choice::new(plan, None),
        }
    }
}

impl Facts {
    fn purpose_name(&self) -> &'static str {
        match self.purpose {
            Purpose::Infer => "inference",
            Purpose::TrainForward => "train-mode forward",
            Purpose::TrainStep => "training-step",
        }
    }
}

/// A chosen plan, and why the fallback was taken when it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub plan: Plan,
    pub fallback_reason: Option<String>,
}

impl Choice {
    fn new(plan: Plan, fallback_reason: Option<String>) -> Self {
        Choice {
            plan,
            fallback_reason,
        }
    }

    /// Whether `plan` can run these facts: the chosen plan and the candle plan always can.
    pub fn allows(&self, plan: Plan) -> bool {
        plan == self.plan || plan == Plan::Candle
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fallback_reason {
            Some(r) => write!(f, "{} (fallback: {r})", self.plan),
            None => write!(f, "{}", self.plan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(purpose: Purpose, device: &'static str, dtype: DType) -> Facts {
        Facts {
            purpose,
            device,
            input_dtype: dtype,
            param_dtype: dtype,
            params_are_variables: false,
            activation_without_kernel: None,
            layer_without_kernel: None,
        }
    }

    #[test]
    fn each_device_and_purpose_gets_its_kernels_or_the_candle_plan_with_a_reason() {
        let f32 = DType::F32;
        let plan = |f: Facts| f.choose();
        assert_eq!(plan(facts(Purpose::Infer, "cpu", f32)).plan, Plan::CpuFused);
        assert_eq!(
            plan(facts(Purpose::Infer, "cpu", DType::BF16)).plan,
            Plan::CpuFused
        );
        assert_eq!(
            plan(facts(Purpose::TrainStep, "cpu", f32)).plan,
            Plan::CpuStep
        );
        assert_eq!(
            plan(facts(Purpose::TrainForward, "cpu", f32)).plan,
            Plan::Candle
        );
        let cuda = plan(facts(Purpose::Infer, "cuda", f32));
        if cfg!(feature = "cuda") {
            assert_eq!(cuda, Choice::new(Plan::CudaFused, None));
        } else {
            assert_eq!(cuda.plan, Plan::Candle);
            assert!(cuda.to_string().contains("--features cuda"), "{cuda}");
        }
        let want = if cfg!(feature = "cuda") {
            Plan::CudaFused
        } else {
            Plan::Candle
        };
        for half in [DType::BF16, DType::F16] {
            let choice = plan(facts(Purpose::Infer, "cuda", half));
            assert_eq!(choice.plan, want, "{half:?}: {choice}");
        }
        let f64_maps = plan(facts(Purpose::Infer, "cuda", DType::F64));
        assert_eq!(f64_maps.plan, Plan::Candle, "{f64_maps}");
        let step = plan(facts(Purpose::TrainStep, "cuda", f32));
        if cfg!(feature = "cuda") {
            assert_eq!(step, Choice::new(Plan::CudaStep, None));
        } else {
            assert_eq!(step.plan, Plan::Candle);
            assert!(step.to_string().contains("--features cuda"), "{step}");
        }
        let metal_step = plan(facts(Purpose::TrainStep, "metal", f32));
        assert_eq!(
            metal_step.to_string(),
            "candle (fallback: no effnet training-step kernels for metal yet)"
        );
        let metal = plan(facts(Purpose::Infer, "metal", f32));
        assert_eq!(metal.plan, Plan::Candle);
        let mut mish = facts(Purpose::Infer, "cpu", f32);
        mish.activation_without_kernel = Some(Activation::Mish);
        assert!(mish.choose().to_string().contains("mish"));
        let mut blur = facts(Purpose::TrainStep, "cpu", f32);
        blur.layer_without_kernel = Some(LayerWithoutKernel {
            path: "blocks.1.0.conv_dw".into(),
            kind: NoKernel::BlurPool,
        });
        let why = blur.choose();
        assert_eq!(why.plan, Plan::Candle);
        assert!(
            why.to_string().contains("`blocks.1.0.conv_dw` blur-pools"),
            "{why}"
        );
        let mut vars = facts(Purpose::Infer, "cpu", f32);
        vars.params_are_variables = true;
        assert!(vars.choose().to_string().contains("training variables"));
        // The training step's kernels do not care: they differentiate by hand.
        vars.purpose = Purpose::TrainStep;
        assert_eq!(vars.choose().plan, Plan::CpuStep);
        // CondConv: neither the fused inference kernels nor the hand-written step mix
        // per-sample kernels, so both give way to the candle plan, saying which layer.
        for purpose in [Purpose::Infer, Purpose::TrainStep] {
            let mut cc = facts(purpose, "cpu", f32);
            cc.layer_without_kernel = Some(LayerWithoutKernel {
                path: "blocks.4.0.conv_pw".into(),
                kind: NoKernel::CondConv,
            });
            assert_eq!(
                cc.choose().to_string(),
                "candle (fallback: `blocks.4.0.conv_pw` is a CondConv convolution (a kernel \
                 mixed per sample))"
            );
        }
    }

    /// A GroupNorm sends inference and the training step to the candle plan, on the CPU and
    /// on CUDA alike, naming the layer.
    #[test]
    fn group_norm_falls_back_to_the_candle_plan_with_the_layer_named() {
        for (purpose, device) in [
            (Purpose::Infer, "cpu"),
            (Purpose::TrainStep, "cpu"),
            (Purpose::Infer, "cuda"),
        ] {
            let mut f = facts(purpose, device, DType::F32);
            f.layer_without_kernel = Some(LayerWithoutKernel {
                path: "blocks.0.0.bn1".into(),
                kind: NoKernel::GroupNorm,
            });
            let choice = f.choose();
            assert_eq!(choice.plan, Plan::Candle, "{purpose:?} on {device}");
            if device == "cpu" || cfg!(feature = "cuda") {
                assert_eq!(
                    choice.fallback_reason.as_deref(),
                    Some(
                        format!("`blocks.0.0.bn1` is a GroupNorm, which has no {device} kernel")
                            .as_str()
                    )
                );
            }
        }
    }
}
