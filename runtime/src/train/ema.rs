//! Exponential moving average of the weights and BatchNorm statistics (timm's `ModelEmaV2`
//! averages the whole `state_dict`). The decay warms up as TensorFlow's
//! `ExponentialMovingAverage(num_updates=...)`, which automl uses:
//! `d = min(decay, (1 + n) / (10 + n))` at the n-th update, so a short run is not stuck near
//! its random initialization with a decay like 0.9999.

use std::collections::HashSet;

use candle_core::{DType, Tensor};

use crate::exec::cuda::CudaKernels;
use crate::nn::NamedTensor;

#[derive(Debug, Clone)]
pub struct Ema {
    pub decay: f64,
    pub updates: u64,
    /// Averaged tensors, by timm name, in the network's `state_dict` order.
    pub tensors: Vec<(String, Tensor)>,
}

impl Ema {
    /// Start from the current weights.
    pub fn new(decay: f64, current: &[NamedTensor]) -> candle_core::Result<Self> {
        Ok(Ema {
            decay,
            updates: 0,
            tensors: current
                .iter()
                .map(|t| Ok((t.name.clone(), t.tensor.detach().copy()?)))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// The decay used at the next update.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// `ema = d * ema + (1 - d) * current`.
    pub fn update(&mut self, current: &[NamedTensor]) -> candle_core::Result<()> {
        self.update_except(current, &HashSet::new())
    }

    /// [`Ema::update`], leaving the tensors named in `frozen` as they are: a frozen tensor
    /// equals its average already (both start from the same weights), and `d * w + (1 - d) * w`
    /// would move it by rounding. On a GPU each tensor's update is one fused kernel.
    pub fn update_except(
        &mut self,
        current: &[NamedTensor],
        frozen: &HashSet<String>,
    ) -> candle_core::Result<()> {
        let fused = self
            .tensors
            .first()
            .and_then(|(_, t)| crate::exec::cuda::kernels_on(t.device()));
        self.update_on(current, frozen, fused)
    }

    /// [`Ema::update_except`] through `fused`'s kernel ([`CudaKernels::ema_step`], one launch
    /// a tensor) when given, else candle's ops; the same formula in f32 either way.
    pub fn update_on(
        &mut self,
        current: &[NamedTensor],
        frozen: &HashSet<String>,
        fused: Option<&dyn CudaKernels>,
    ) -> candle_core::Result<()> {
        let d = self.current_decay();
        for ((name, e), c) in self.tensors.iter_mut().zip(current) {
            if frozen.contains(name) {
                continue;
            }
            let cur = c.tensor.detach();
            *e = match fused {
                Some(k) if e.dtype() == DType::F32 && cur.dtype() == DType::F32 => {
                    k.ema_step(e, &cur, d)?
                }
                _ => ((&*e * d)? + (cur * (1.0 - d))?)?,
            };
        }
        self.updates += 1;
        Ok(())
    }
}
