//! How a network runs. One dispatch ([`plan`]) picks an execution plan per call from facts
//! about the call; one walk per purpose is written once over the layer operations a backend
//! implements:
//!
//! - `forward`: the forward walk (eval-mode inference, train-mode logits for autograd),
//!   over `cpu_fused` (effnet's NHWC CPU kernels), [`cuda`] (effnet's NHWC CUDA kernels,
//!   with the `cuda` feature) or `candle` (candle's ops, any device);
//! - `step`: the training-step walk (forward with tapes, then backward), over `cpu_step`
//!   (effnet's CPU kernels), with candle's autograd through the forward walk as the fallback;
//! - [`shared`]: what every plan shares (keep-masks, the running-statistic update, the
//!   soft-target cross-entropy).
//!
//! A new device adds a backend of each kind and a line in [`plan`], not another walk.

pub(crate) mod candle;
pub(crate) mod cpu_fused;
pub(crate) mod cpu_step;
pub mod cuda;
pub(crate) mod forward;
pub(crate) mod host;
pub mod plan;
pub mod profile;
pub mod shared;
pub(crate) mod step;
pub mod sync_bn;

use std::sync::PoisonError;

use candle_core::{DType, Result, Tensor, bail};
use rand_chacha::ChaCha8Rng;

use self::candle::CandleOps;
use self::cpu_fused::CpuFusedOps;
use self::cpu_step::CpuStepOps;
use self::forward::{ForwardOps, Taps};
use self::step::StepOps;
use crate::nn::Param;
use crate::nn::{Block, NetRng, Network, NetworkParts, PreparedCache};
pub use plan::{
    Choice, Facts, LayerWithoutKernel, NoKernel, Plan, Precision, Purpose, device_model,
};
pub use shared::{keep_mask, one_hot, soft_cross_entropy, update_running_stats};
pub use sync_bn::BatchNormSync;

fn purpose(train: bool) -> Purpose {
    if train {
        Purpose::TrainForward
    } else {
        Purpose::Infer
    }
}

/// `plan` when the facts allow it, else an error saying what they choose and why.
fn allowed(facts: &Facts, plan: Plan) -> Result<()> {
    if plan == Plan::CpuStep && facts.purpose != Purpose::TrainStep {
        bail!("the cpu-step plan runs training steps only (`bench --train`, `loss_and_grads_on`)");
    }
    if plan == Plan::CudaStep && facts.purpose != Purpose::TrainStep {
        bail!("the cuda-step plan runs training steps only");
    }
    if matches!(plan, Plan::CpuFused | Plan::CudaFused) && facts.purpose != Purpose::Infer {
        bail!("the {plan} plan runs inference only");
    }
    let choice = facts.choose();
    if !choice.allows(plan) {
        bail!("the {plan} plan cannot run this call: the facts choose {choice}");
    }
    Ok(())
}

/// The CUDA kernels' backend for an input on a GPU.
#[cfg(feature = "cuda")]
fn cuda_ops<'a>(
    x: &Tensor,
    prepared: &'a PreparedCache,
    params: DType,
) -> Result<cuda::backend::CudaOps<'a, cuda::ops::Launched>> {
    Ok(cuda::backend::CudaOps {
        kernels: cuda::ops::launched()?,
        prepared,
        maps: cuda::backend::map_dtype(params),
        dtype: x.dtype(),
    })
}

/// Without the `cuda` feature the cuda-fused plan is never chosen; asked for by name, it says
/// how to get it.
#[cfg(not(feature = "cuda"))]
fn cuda_ops<'a>(_: &Tensor, _: &'a PreparedCache, _: DType) -> Result<CpuFusedOps<'a>> {
    bail!("the cuda-fused plan needs a build with `--features cuda`")
}

/// The logits by `ops`, each operation timed into `profile` when given.
fn walk<O: ForwardOps>(
    ops: &mut O,
    net: &NetworkParts,
    x: &Tensor,
    masks: forward::Masks,
    profile: Option<&mut profile::Profile>,
) -> Result<Tensor> {
    match profile {
        None => forward::logits(ops, net, x, masks),
        Some(profile) => {
            let mut timed = profile::Profiled {
                inner: ops,
                profile,
                device: x.device().clone(),
            };
            forward::logits(&mut timed, net, x, masks)
        }
    }
}

/// The candle backend for a call with these facts.
fn candle_ops(facts: &Facts) -> CandleOps {
    let train = facts.purpose != Purpose::Infer;
    CandleOps {
        train,
        grads: train || facts.params_are_variables,
    }
}

impl NetworkParts<'_> {
    /// The plan a call on `x` for `purpose` runs, and why when it is the fallback.
    pub fn plan(&self, x: &Tensor, purpose: Purpose) -> Choice {
        Facts::of(self, x, purpose).choose()
    }

    /// The logits; `train` selects batch statistics, stochastic depth and dropout (masks from
    /// the network's own generator).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let facts = Facts::of(self, x, purpose(train));
        self.logits_on(facts.choose().plan, &facts, x)
    }

    /// [`NetworkParts::forward_t`] on a named plan; an error when the facts do not allow it.
    pub fn forward_on(&self, plan: Plan, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let facts = Facts::of(self, x, purpose(train));
        allowed(&facts, plan)?;
        self.logits_on(plan, &facts, x)
    }

    /// The logits in train mode with the masks drawn from `rng` (the trainer's generator),
    /// differentiable by candle's autograd.
    pub fn forward_train(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        self.check_input(x)?;
        forward::logits(&mut CandleOps::differentiable(), self, x, Some(rng))
    }

    /// Eval-mode logits on `plan` (the facts' choice when `None`), each layer operation timed
    /// into `profile` (see [`profile`]).
    pub fn profile_on(
        &self,
        plan: Option<Plan>,
        x: &Tensor,
        profile: &mut profile::Profile,
    ) -> Result<Tensor> {
        self.check_input(x)?;
        let facts = Facts::of(self, x, Purpose::Infer);
        let plan = match plan {
            Some(p) => {
                allowed(&facts, p)?;
                p
            }
            None => facts.choose().plan,
        };
        let y = self.logits_timed(plan, &facts, x, Some(profile))?;
        profile.calls += 1;
        Ok(y)
    }

    /// The logits on `plan`; train mode's masks from the network's own generator.
    fn logits_on(&self, plan: Plan, facts: &Facts, x: &Tensor) -> Result<Tensor> {
        self.logits_timed(plan, facts, x, None)
    }

    /// [`NetworkParts::logits_on`], each operation timed into `profile` when given.
    fn logits_timed(
        &self,
        plan: Plan,
        facts: &Facts,
        x: &Tensor,
        profile: Option<&mut profile::Profile>,
    ) -> Result<Tensor> {
        match plan {
            Plan::CpuFused => walk(&mut self.cpu_fused(x), self, x, None, profile),
            Plan::CudaFused => walk(
                &mut cuda_ops(x, self.prepared, facts.param_dtype)?,
                self,
                x,
                None,
                profile,
            ),
            Plan::Candle if facts.purpose == Purpose::Infer => {
                walk(&mut candle_ops(facts), self, x, None, profile)
            }
            Plan::Candle => {
                let mut rng = self.rng.0.lock().unwrap_or_else(PoisonError::into_inner);
                walk(&mut candle_ops(facts), self, x, Some(&mut rng), profile)
            }
            Plan::CpuStep | Plan::CudaStep => bail!("the {plan} plan runs training steps only"),
        }
    }

    fn cpu_fused(&self, x: &Tensor) -> CpuFusedOps<'_> {
        CpuFusedOps {
            prepared: self.prepared,
            dtype: x.dtype(),
        }
    }

    /// Each stage's output (stem excluded).
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        self.tapped(x, train, &Taps::every_stage(self.stages.len()))
    }

    /// The feature-pyramid levels `levels` names (indices into the IR's
    /// [`feature_info`](effnet_compiler::ir::Network::feature_info), timm's `out_indices`), in
    /// that order: timm's `features_only=True` model. One walk computes them all and stops at
    /// the deepest; an index out of range is an error naming the valid levels.
    pub fn forward_pyramid_t(
        &self,
        x: &Tensor,
        levels: &[usize],
        train: bool,
    ) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        let picked = self
            .ir
            .feature_levels(levels)
            .map_err(candle_core::Error::Msg)?;
        let mut taps = Taps::default();
        for level in &picked {
            match level.stage {
                None => taps.stem = true,
                Some(stage) => {
                    let Some(at) = self.ir.stages.iter().position(|s| s.index == stage) else {
                        bail!("`{}` has no stage {stage}", self.ir.name);
                    };
                    taps.stages.push(at);
                }
            }
        }
        taps.stages.sort_unstable();
        let outs = self.tapped(x, train, &taps)?;
        // The walk returns the levels in ascending order; hand them back as requested.
        let mut ascending: Vec<usize> = picked.iter().map(|l| l.index).collect();
        ascending.sort_unstable();
        picked
            .iter()
            .map(|l| {
                let rank = ascending.partition_point(|&i| i < l.index);
                outs.get(rank).cloned().ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "the walk returned {} feature maps for {} levels",
                        outs.len(),
                        picked.len()
                    ))
                })
            })
            .collect()
    }

    /// The outputs `taps` names, on the plan the facts choose.
    fn tapped(&self, x: &Tensor, train: bool, taps: &Taps) -> Result<Vec<Tensor>> {
        let facts = Facts::of(self, x, purpose(train));
        match facts.choose().plan {
            Plan::CpuFused => forward::tapped(&mut self.cpu_fused(x), self, x, None, taps),
            Plan::CudaFused => forward::tapped(
                &mut cuda_ops(x, self.prepared, facts.param_dtype)?,
                self,
                x,
                None,
                taps,
            ),
            _ if train => {
                let mut rng = self.rng.0.lock().unwrap_or_else(PoisonError::into_inner);
                forward::tapped(&mut candle_ops(&facts), self, x, Some(&mut rng), taps)
            }
            _ => forward::tapped(&mut candle_ops(&facts), self, x, None, taps),
        }
    }
}

/// The loss of one batch and the gradients of `params` (in their order), on the plan the
/// facts choose. `targets` is `[N, classes]`. A frozen parameter's gradient may be left at
/// zero: the CPU step does not run the backward through a frozen stem and frozen leading
/// blocks, which nothing trainable precedes.
pub fn loss_and_grads(
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<(f64, Vec<Tensor>)> {
    let plan = Facts::of(net, x, Purpose::TrainStep).choose().plan;
    step_on(plan, net, params, x, targets, rng, None)
}

/// [`loss_and_grads`] in `precision`: [`Precision::Bf16`] (mixed precision) runs on the
/// cuda-step plan only, and is an error naming the plan the facts choose, and why, anywhere
/// else.
pub fn loss_and_grads_in(
    precision: Precision,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<(f64, Vec<Tensor>)> {
    step_in(precision, net, params, x, targets, rng, None)
}

/// [`loss_and_grads_in`] with SyncBatchNorm: every train-mode BatchNorm takes its statistics
/// over the batches of all the ranks `sync` reaches (see [`sync_bn`]). Only the cpu-step and
/// cuda-step plans can (mixed precision on the cuda-step plan); on another plan this is an
/// error saying so, never an unsynchronized step.
pub fn loss_and_grads_synced(
    precision: Precision,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    sync: &dyn BatchNormSync,
) -> Result<(f64, Vec<Tensor>)> {
    step_in(precision, net, params, x, targets, rng, Some(sync))
}

/// One training step in `precision` on the plan the facts choose, SyncBatchNorm through `sync`.
fn step_in(
    precision: Precision,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    sync: Option<&dyn BatchNormSync>,
) -> Result<(f64, Vec<Tensor>)> {
    let choice = Facts::of(net, x, Purpose::TrainStep).choose();
    match precision {
        Precision::F32 => step_on(choice.plan, net, params, x, targets, rng, sync),
        Precision::Bf16 if choice.plan == Plan::CudaStep => {
            cuda_step(net, params, x, targets, rng, DType::BF16, sync, None)
        }
        Precision::Bf16 => bail!(
            "mixed precision (bf16) runs on the cuda-step plan (a CUDA device, a build with \
             `--features cuda`, f32 parameters); this step runs on {choice}"
        ),
    }
}

/// One training step in `precision` on `plan` (the facts' choice when `None`), each
/// operation of its walk timed into `profile` (see [`profile`]): the cpu-step and cuda-step
/// plans (the candle plan's autograd has no walk of effnet's to time).
#[allow(clippy::too_many_arguments)]
pub fn profile_step(
    precision: Precision,
    plan: Option<Plan>,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    profile: &mut profile::Profile,
) -> Result<(f64, Vec<Tensor>)> {
    let facts = Facts::of(net, x, Purpose::TrainStep);
    let plan = match plan {
        Some(p) => {
            allowed(&facts, p)?;
            p
        }
        None => facts.choose().plan,
    };
    let device = x.device().clone();
    profile.whole_call(&device, "loss, classifier and the rest", |profile| {
        match (plan, precision) {
            (Plan::CpuStep, Precision::F32) => {
                let timed = profile::ProfiledStep {
                    inner: CpuStepOps::new(None),
                    profile,
                    device: device.clone(),
                };
                run_step(timed, net, params, x, targets, rng)
            }
            (Plan::CudaStep, p) => {
                let maps = match p {
                    Precision::F32 => DType::F32,
                    Precision::Bf16 => DType::BF16,
                };
                cuda_step(net, params, x, targets, rng, maps, None, Some(profile))
            }
            _ => bail!(
                "--profile times the walks of the cpu-step and cuda-step plans; this step runs \
                 on the {plan} plan in {}",
                precision.name()
            ),
        }
    })
}

/// [`loss_and_grads`] on a named plan; an error when the facts do not allow it.
pub fn loss_and_grads_on(
    plan: Plan,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<(f64, Vec<Tensor>)> {
    allowed(&Facts::of(net, x, Purpose::TrainStep), plan)?;
    step_on(plan, net, params, x, targets, rng, None)
}

/// One training step on `plan`, which the facts allow.
fn step_on(
    plan: Plan,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    sync: Option<&dyn BatchNormSync>,
) -> Result<(f64, Vec<Tensor>)> {
    if sync.is_some() && !matches!(plan, Plan::CpuStep | Plan::CudaStep) {
        bail!(
            "SyncBatchNorm runs on the cpu-step and cuda-step plans only; this step runs on \
             the {plan} plan, whose BatchNorm cannot meet the other ranks"
        );
    }
    match plan {
        Plan::CpuStep => run_step(CpuStepOps::new(sync), net, params, x, targets, rng),
        Plan::CudaStep => cuda_step(net, params, x, targets, rng, DType::F32, sync, None),
        Plan::Candle => {
            let logits = forward::logits(&mut CandleOps::differentiable(), net, x, Some(rng))?;
            let loss = soft_cross_entropy(&logits, targets)?;
            let lv = f64::from(loss.to_scalar::<f32>()?);
            let grads = loss.backward()?;
            let out = params
                .iter()
                .map(|p| {
                    let t = p.var.as_tensor();
                    match grads.get(t) {
                        Some(g) => Ok(g.clone()),
                        None => t.zeros_like(),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((lv, out))
        }
        Plan::CpuFused | Plan::CudaFused => bail!("the {plan} plan runs inference only"),
    }
}

/// The training-step walk on `ops`, back as far as the trainable parameters need: no
/// backward through a frozen stem and frozen leading blocks (fine-tuning).
pub(crate) fn run_step<O: StepOps>(
    mut ops: O,
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<(f64, Vec<Tensor>)> {
    let frozen = params
        .iter()
        .filter(|p| p.frozen)
        .map(|p| p.name.as_str())
        .collect();
    let to = step::BackwardTo::of(net, &frozen);
    let loss = step::step(&mut ops, net, x, targets, rng, to)?;
    Ok((loss, ops.into_grads(params)?))
}

/// The cuda-step plan: the training-step walk over the CUDA kernels, maps in `maps`,
/// SyncBatchNorm through `sync` when given.
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn cuda_step(
    net: &NetworkParts,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    maps: DType,
    sync: Option<&dyn BatchNormSync>,
    profile: Option<&mut profile::Profile>,
) -> Result<(f64, Vec<Tensor>)> {
    let ops = cuda::step::CudaStepOps::new(cuda::ops::launched()?, maps, sync);
    match profile {
        None => run_step(ops, net, params, x, targets, rng),
        Some(profile) => {
            let timed = profile::ProfiledStep {
                inner: ops,
                profile,
                device: x.device().clone(),
            };
            run_step(timed, net, params, x, targets, rng)
        }
    }
}

/// Without the `cuda` feature the cuda-step plan is never chosen; asked for by name, it says
/// how to get it.
#[cfg(not(feature = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn cuda_step(
    _: &NetworkParts,
    _: &[Param],
    _: &Tensor,
    _: &Tensor,
    _: &mut ChaCha8Rng,
    _: DType,
    _: Option<&dyn BatchNormSync>,
    _: Option<&mut profile::Profile>,
) -> Result<(f64, Vec<Tensor>)> {
    bail!("the cuda-step plan needs a build with `--features cuda`")
}

/// A run of blocks on an `[N, C, H, W]` tensor, on the plan the facts choose (what a
/// generated stage struct's `forward_t` runs). The fused plan prepares the blocks' weights
/// afresh on each call: a lone stage has no network cache to keep them in.
pub fn forward_blocks(
    blocks: &[Block],
    x: &Tensor,
    train: bool,
    drop_path_scale: f64,
    rng: &NetRng,
) -> Result<Tensor> {
    let facts = Facts::of_blocks(blocks, x, purpose(train));
    let prepared = PreparedCache::default();
    if facts.choose().plan == Plan::CpuFused {
        let mut ops = CpuFusedOps {
            prepared: &prepared,
            dtype: x.dtype(),
        };
        return forward::blocks(&mut ops, blocks, x, drop_path_scale, None);
    }
    if facts.choose().plan == Plan::CudaFused {
        let mut ops = cuda_ops(x, &prepared, facts.param_dtype)?;
        return forward::blocks(&mut ops, blocks, x, drop_path_scale, None);
    }
    let mut ops = candle_ops(&facts);
    if train {
        let mut g = rng.0.lock().unwrap_or_else(PoisonError::into_inner);
        return forward::blocks(&mut ops, blocks, x, drop_path_scale, Some(&mut g));
    }
    forward::blocks(&mut ops, blocks, x, drop_path_scale, None)
}

impl Network {
    /// The plan a call on `x` for `purpose` runs (see [`NetworkParts::plan`]).
    pub fn plan(&self, x: &Tensor, purpose: Purpose) -> Choice {
        self.parts(&self.stage_slices()).plan(x, purpose)
    }

    /// The logits (see [`NetworkParts::forward_t`]).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.parts(&self.stage_slices()).forward_t(x, train)
    }

    /// The logits on a named plan (see [`NetworkParts::forward_on`]).
    pub fn forward_on(&self, plan: Plan, x: &Tensor, train: bool) -> Result<Tensor> {
        self.parts(&self.stage_slices()).forward_on(plan, x, train)
    }

    /// A training step with each operation timed (see [`profile_step`]).
    #[allow(clippy::too_many_arguments)]
    pub fn profile_step(
        &self,
        precision: Precision,
        plan: Option<Plan>,
        params: &[Param],
        x: &Tensor,
        targets: &Tensor,
        rng: &mut ChaCha8Rng,
        profile: &mut profile::Profile,
    ) -> Result<(f64, Vec<Tensor>)> {
        let stages = self.stage_slices();
        let parts = self.parts(&stages);
        profile_step(precision, plan, &parts, params, x, targets, rng, profile)
    }

    /// Eval-mode logits with each operation timed (see [`NetworkParts::profile_on`]).
    pub fn profile_on(
        &self,
        plan: Option<Plan>,
        x: &Tensor,
        profile: &mut profile::Profile,
    ) -> Result<Tensor> {
        self.parts(&self.stage_slices())
            .profile_on(plan, x, profile)
    }

    /// Train-mode logits with the masks from `rng` (see [`NetworkParts::forward_train`]).
    pub fn forward_train(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        self.parts(&self.stage_slices()).forward_train(x, rng)
    }

    /// Each stage's output (stem excluded); timm's `features_only` levels are
    /// [`Network::forward_pyramid`].
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.parts(&self.stage_slices())
            .forward_features_t(x, train)
    }

    pub fn forward_features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.forward_features_t(x, false)
    }

    /// The feature-pyramid levels `levels` names, in that order (see
    /// [`NetworkParts::forward_pyramid_t`]).
    pub fn forward_pyramid_t(
        &self,
        x: &Tensor,
        levels: &[usize],
        train: bool,
    ) -> Result<Vec<Tensor>> {
        self.parts(&self.stage_slices())
            .forward_pyramid_t(x, levels, train)
    }

    /// The feature-pyramid levels in evaluation mode.
    pub fn forward_pyramid(&self, x: &Tensor, levels: &[usize]) -> Result<Vec<Tensor>> {
        self.forward_pyramid_t(x, levels, false)
    }

    /// One training batch's loss and the gradients of `params` (see [`loss_and_grads`]).
    pub fn loss_and_grads(
        &self,
        params: &[Param],
        x: &Tensor,
        targets: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> Result<(f64, Vec<Tensor>)> {
        loss_and_grads(&self.parts(&self.stage_slices()), params, x, targets, rng)
    }

    /// [`Network::loss_and_grads`] in `precision` (see [`loss_and_grads_in`]).
    pub fn loss_and_grads_in(
        &self,
        precision: Precision,
        params: &[Param],
        x: &Tensor,
        targets: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> Result<(f64, Vec<Tensor>)> {
        let stages = self.stage_slices();
        loss_and_grads_in(precision, &self.parts(&stages), params, x, targets, rng)
    }

    /// [`Network::loss_and_grads_in`] with SyncBatchNorm (see [`loss_and_grads_synced`]).
    pub fn loss_and_grads_synced(
        &self,
        precision: Precision,
        params: &[Param],
        x: &Tensor,
        targets: &Tensor,
        rng: &mut ChaCha8Rng,
        sync: &dyn BatchNormSync,
    ) -> Result<(f64, Vec<Tensor>)> {
        let stages = self.stage_slices();
        let parts = self.parts(&stages);
        loss_and_grads_synced(precision, &parts, params, x, targets, rng, sync)
    }

    /// [`Network::loss_and_grads`] on a named plan (see [`loss_and_grads_on`]).
    pub fn loss_and_grads_on(
        &self,
        plan: Plan,
        params: &[Param],
        x: &Tensor,
        targets: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> Result<(f64, Vec<Tensor>)> {
        loss_and_grads_on(
            plan,
            &self.parts(&self.stage_slices()),
            params,
            x,
            targets,
            rng,
        )
    }
}

// `Network` implements `ModuleT` only: candle's blanket `ModuleT for M: Module` would drop the
// train flag.
impl candle_core::ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Network::forward_t(self, x, train)
    }
}
