//! Optimizers on candle tensors, written out so that each update is exactly the formula of
//! the reference implementation (checked against PyTorch in `runtime/tests/train_optim.rs`):
//!
//! - **RMSProp, TensorFlow form** (TF1 `tf.train.RMSPropOptimizer`, timm's `RMSpropTF`, the
//!   EfficientNet recipe): `ms = ms + (1 - decay) * (g^2 - ms)`,
//!   `mom = momentum * mom + lr * g / sqrt(ms + eps)`, `w -= mom`. `ms` starts at **ones**, as
//!   in TF1 and timm's `RMSpropTF` (Keras' TF2 `RMSprop` starts it at zeros, which makes the
//!   first steps `1 / sqrt(1 - decay)` times larger); eps is inside the square root.
//! - **AdamW** (PyTorch `torch.optim.AdamW`): decoupled decay `w *= 1 - lr * wd`, bias-corrected
//!   moments, `w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
//! - **SGD** with momentum, optionally Nesterov (PyTorch `torch.optim.SGD`, no dampening).
//!
//! Weight decay (L2 added to the gradient for RMSProp and SGD, decoupled for AdamW) applies
//! only to tensors with more than one dimension: BatchNorm parameters and biases are exempt,
//! as timm's `param_groups_weight_decay` does.
//!
//! Fine-tuning: a frozen parameter is skipped altogether (no update, no weight decay, its state
//! untouched, as PyTorch skips a parameter without a gradient), and each parameter's learning
//! rate is the step's times its `lr_scale` (a parameter group with its own rate).

use std::collections::HashMap;

use candle_core::Tensor;
use effnet_compiler::ir::Optimizer as OptimizerSpec;

use super::{TrainError, TrainResult};
use crate::exec::cuda::{CudaKernels, UpdateAt};

pub use crate::nn::Param;

/// An optimizer and its per-parameter state.
#[derive(Debug)]
pub struct Optimizer {
    pub spec: OptimizerSpec,
    /// Steps taken so far.
    pub steps: u64,
    /// Per parameter, the steps that updated it (AdamW's bias correction uses it): fewer than
    /// `steps` for a parameter that was frozen for a while, as PyTorch counts per parameter.
    pub param_steps: Vec<u64>,
    /// Per parameter, its state tensors in the order of [`Optimizer::slot_names`].
    pub slots: Vec<Vec<Tensor>>,
    /// Per parameter, its state as the fused kernels take it, `[slots, n]`, when the last
    /// update was theirs (`slots` are then views of it); `None` after candle's or a load.
    packed: Vec<Option<Tensor>>,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec, params: &[Param]) -> TrainResult<Self> {
        let mut slots = Vec::with_capacity(params.len());
        for p in params {
            let t = p.var.as_tensor();
            let s = match spec {
                OptimizerSpec::Rmsprop { momentum, .. } => {
                    let mut v = vec![t.ones_like()?];
                    if momentum > 0.0 {
                        v.push(t.zeros_like()?);
                    }
                    v
                }
                OptimizerSpec::Adamw { .. } => vec![t.zeros_like()?, t.zeros_like()?],
                OptimizerSpec::Sgd { momentum, .. } => {
                    if momentum > 0.0 {
                        vec![t.zeros_like()?]
                    } else {
                        vec![]
                    }
                }
            };
            slots.push(s);
        }
        Ok(Optimizer {
            spec,
            steps: 0,
            param_steps: vec![0; params.len()],
            packed: vec![None; slots.len()],
            slots,
        })
    }

    /// The names of the state tensors each parameter has.
    pub fn slot_names(&self) -> &'static [&'static str] {
        match self.spec {
            OptimizerSpec::Rmsprop { momentum, .. } if momentum > 0.0 => &["ms", "mom"],
            OptimizerSpec::Rmsprop { .. } => &["ms"],
            OptimizerSpec::Adamw { .. } => &["exp_avg", "exp_avg_sq"],
            OptimizerSpec::Sgd { momentum, .. } if momentum > 0.0 => &["momentum_buffer"],
            OptimizerSpec::Sgd { .. } => &[],
        }
    }

    /// One update of every parameter from its gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> TrainResult<()> {
        self.step_scaled(params, grads, lr, 1.0)
    }

    /// [`Optimizer::step`] with every gradient multiplied by `grad_scale` first (gradient
    /// clipping's factor, [`clip_factor`]). On a GPU each tensor's update is one fused kernel
    /// ([`CudaKernels::optimizer_step`]); elsewhere it is candle's ops.
    pub fn step_scaled(
        &mut self,
        params: &[Param],
        grads: &[Tensor],
        lr: f64,
        grad_scale: f64,
    ) -> TrainResult<()> {
        let fused = params
            .first()
            .and_then(|p| crate::exec::cuda::kernels_on(p.var.device()));
        self.step_on(params, grads, lr, grad_scale, fused)
    }

    /// [`Optimizer::step_scaled`] through `fused`'s kernels (one launch a tensor) when given,
    /// else candle's ops; both compute the same formulas in the same order in f32.
    pub fn step_on(
        &mut self,
        params: &[Param],
        grads: &[Tensor],
        lr: f64,
        grad_scale: f64,
        fused: Option<&dyn CudaKernels>,
    ) -> TrainResult<()> {
        if params.len() != grads.len() || params.len() != self.slots.len() {
            return Err(TrainError::Config(format!(
                "optimizer step: {} parameters, {} gradients, state for {}",
                params.len(),
                grads.len(),
                self.slots.len()
            )));
        }
        self.steps += 1;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            if p.frozen {
                continue;
            }
            self.param_steps[i] += 1;
            let at = UpdateAt {
                lr: lr * p.lr_scale,
                weight_decay: p.decay,
                step: self.param_steps[i].min(i32::MAX as u64) as i32,
                grad_scale,
            };
            let w = p.var.as_tensor().detach();
            let g = g.detach();
            let new_w = match fused {
                Some(k) => self.fused_update(k, i, &at, &w, &g)?,
                None => {
                    // The packed state the kernels keep (if any) is stale from here on.
                    self.packed[i] = None;
                    let g = if grad_scale != 1.0 {
                        (g * grad_scale)?
                    } else {
                        g
                    };
                    update(&self.spec, &at, w, g, &mut self.slots[i])?
                }
            };
            p.var.set(&new_w)?;
        }
        Ok(())
    }

    /// Parameter `i`'s update by one kernel: its state travels packed `[slots, n]` (the
    /// previous kernel's output, or the slots stacked once), the slots are views of the new.
    fn fused_update(
        &mut self,
        kernels: &dyn CudaKernels,
        i: usize,
        at: &UpdateAt,
        w: &Tensor,
        g: &Tensor,
    ) -> TrainResult<Tensor> {
        let slots = &mut self.slots[i];
        let s = slots.len();
        let state = match (&self.packed[i], s) {
            (_, 0) => None,
            (Some(p), _) => Some(p.clone()),
            (None, _) => {
                let flat = slots
                    .iter()
                    .map(|t| t.flatten_all())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(Tensor::stack(&flat, 0)?)
            }
        };
        let out = kernels.optimizer_step(&self.spec, at, w, g, state.as_ref())?;
        if s > 0 {
            let state = out.narrow(0, 1, s)?;
            for (j, slot) in slots.iter_mut().enumerate() {
                *slot = state.get(j)?.reshape(w.dims())?;
            }
            self.packed[i] = Some(state);
        }
        Ok(out.get(0)?.reshape(w.dims())?)
    }

    /// The state as named tensors, `{param}.{slot}`, and `{param}.step` (a one-element u32)
    /// for a parameter updated fewer times than the optimizer stepped (frozen for a while).
    pub fn state(&self, params: &[Param]) -> TrainResult<Vec<(String, Tensor)>> {
        let names = self.slot_names();
        let mut out = Vec::new();
        for ((p, slots), &steps) in params.iter().zip(&self.slots).zip(&self.param_steps) {
            for (n, t) in names.iter().zip(slots) {
                out.push((format!("{}.{n}", p.name), t.clone()));
            }
            if steps != self.steps {
                let s = u32::try_from(steps).unwrap_or(u32::MAX);
                out.push((
                    format!("{}.step", p.name),
                    Tensor::new(&[s], &candle_core::Device::Cpu)?,
                ));
            }
        }
        Ok(out)
    }

    /// Restore the state saved by [`Optimizer::state`]; `what` names the file for errors.
    pub fn load_state(
        &mut self,
        params: &[Param],
        mut tensors: HashMap<String, Tensor>,
        steps: u64,
        what: &str,
    ) -> TrainResult<()> {
        let names = self.slot_names();
        for (p, slots) in params.iter().zip(self.slots.iter_mut()) {
            for (n, slot) in names.iter().zip(slots.iter_mut()) {
                let key = format!("{}.{n}", p.name);
                let t = tensors.remove(&key).ok_or_else(|| {
                    TrainError::Checkpoint(format!("`{what}` has no optimizer state `{key}`"))
                })?;
                if t.dims() != slot.dims() {
                    return Err(TrainError::Checkpoint(format!(
                        "`{what}`: `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    )));
                }
                *slot = t.to_device(slot.device())?.to_dtype(slot.dtype())?;
            }
        }
        for (p, ps) in params.iter().zip(self.param_steps.iter_mut()) {
            *ps = match tensors.remove(&format!("{}.step", p.name)) {
                Some(t) => {
                    let v = t
                        .flatten_all()?
                        .to_dtype(candle_core::DType::U32)?
                        .to_vec1::<u32>()?;
                    v.first().copied().map_or(steps, u64::from)
                }
                None => steps,
            };
        }
        self.steps = steps;
        self.packed.iter_mut().for_each(|p| *p = None);
        Ok(())
    }
}

/// `g + wd * w` when weight decay applies to the tensor (L2, as RMSProp and SGD take it).
fn with_l2(g: Tensor, w: &Tensor, at: &UpdateAt, wd: f64) -> candle_core::Result<Tensor> {
    if at.weight_decay && wd > 0.0 {
        &g + (w * wd)?
    } else {
        Ok(g)
    }
}

/// One parameter's update by candle's ops: the new weight, its state updated in `slots`.
fn update(
    spec: &OptimizerSpec,
    at: &UpdateAt,
    w: Tensor,
    g: Tensor,
    slots: &mut [Tensor],
) -> candle_core::Result<Tensor> {
    let lr = at.lr;
    Ok(match *spec {
        OptimizerSpec::Rmsprop {
            decay,
            momentum,
            eps,
            weight_decay,
        } => {
            let g = with_l2(g, &w, at, weight_decay)?;
            let ms = (&slots[0] + ((g.sqr()? - &slots[0])? * (1.0 - decay))?)?;
            let avg = (&ms + eps)?.sqrt()?;
            slots[0] = ms;
            if momentum > 0.0 {
                let mom = ((&slots[1] * momentum)? + ((g / avg)? * lr)?)?;
                let w = (&w - &mom)?;
                slots[1] = mom;
                w
            } else {
                (&w - ((g / avg)? * lr)?)?
            }
        }
        OptimizerSpec::Adamw {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let w = if at.weight_decay && weight_decay > 0.0 {
                (&w * (1.0 - lr * weight_decay))?
            } else {
                w
            };
            let m = (&slots[0] + ((&g - &slots[0])? * (1.0 - beta1))?)?;
            let v = ((&slots[1] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let bc1 = 1.0 - beta1.powi(at.step);
            let bc2 = 1.0 - beta2.powi(at.step);
            let step_size = lr / bc1;
            let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
            let w = (&w - ((&m / denom)? * step_size)?)?;
            slots[0] = m;
            slots[1] = v;
            w
        }
        OptimizerSpec::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let g = with_l2(g, &w, at, weight_decay)?;
            let d = if momentum > 0.0 {
                let buf = ((&slots[0] * momentum)? + &g)?;
                let d = if nesterov {
                    (&g + (&buf * momentum)?)?
                } else {
                    buf.clone()
                };
                slots[0] = buf;
                d
            } else {
                g
            };
            (&w - (d * lr)?)?
        }
    })
}

/// Scale gradients so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`, see [`clip_factor`]). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> TrainResult<f64> {
    let norm = grad_norm(grads.iter())?;
    let scale = clip_factor(norm, max_norm);
    if scale != 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

/// The global L2 norm of `grads`. The squares are summed on the gradients' device (each
/// tensor's sum widened to f64, then added in order), so a GPU run makes one host round trip
/// per step here, not one per tensor.
pub fn grad_norm<'a>(grads: impl Iterator<Item = &'a Tensor>) -> TrainResult<f64> {
    let sums = grads
        .map(|g| g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total = if sums.is_empty() {
        0.0
    } else {
        Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f64>()?
    };
    Ok(total.sqrt())
}

/// Gradient clipping's factor for gradients of global norm `norm`: PyTorch's
/// `clip_grad_norm_`, `max_norm / (norm + 1e-6)` when the norm exceeds `max_norm`, else 1.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}
