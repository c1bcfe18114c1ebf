//! The training forward pass with fused BatchNorm + activation, for candle's autograd: what
//! the trainer runs where the hand-written step (`super::step`, CPU f32 only) does not apply
//! (f16/bf16, CUDA, GELU), and the reference that step is tested against.
//!
//! [`Network::forward_train`] computes exactly what `Network::forward_t(x, true)` computes
//! (same layers, same BatchNorm statistics and running-statistic update, same drop-path and
//! dropout semantics), but on the CPU each BatchNorm and the activation after it are one
//! custom op whose forward and backward are single multi-threaded passes over contiguous
//! memory. candle's generic composition of BatchNorm reduces the gradients of its
//! `[1, C, 1, 1]` operands over dimensions `(0, 2, 3)` with a per-element index computation,
//! and its SiLU backward is several elementwise passes, each allocating, and each a graph node
//! whose gradient candle accumulates into a fresh zeroed tensor. The convolutions of training
//! are single nodes too (`crate::ops::conv2d_train`, the 1x1 op behind `pointwise_conv2d`).
//! `runtime/tests/train_fast.rs` checks the two paths agree on logits, gradients and running
//! statistics.
//!
//! The random masks come from the caller's generator (the trainer re-seeds it from
//! `(seed, epoch)` each epoch), not from the network's own.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp3, DType, Device, Layout, Module, Result, Shape, Tensor, bail,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use effnet_compiler::ir::Activation;
use rayon::prelude::*;

use crate::layers::{BatchNorm, activate};
use crate::ops::candle::cpu_data::{cpu_f32, with_cpu_f32};

const OP: &str = "batchnorm-train";
use crate::network::{Block, ConvBnAct, Network};

/// Per-channel batch statistics of the last forward, kept for the backward pass.
#[derive(Debug, Default)]
struct Stats {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

#[derive(Debug, Clone)]
struct BnTrainOp {
    eps: f64,
    /// Applied after the normalization, inside the op: one graph node instead of two, and a
    /// backward that is one pass rather than candle's composition of the activation's
    /// derivative (several elementwise passes, each with its own allocation and gradient
    /// accumulation).
    act: Option<Activation>,
    stats: Arc<Mutex<Stats>>,
    /// Unbiased batch variance, for the running-statistic update.
    var_unbiased: Arc<Mutex<Vec<f32>>>,
}

/// Whether the op can apply `a` itself.
pub(crate) fn fusable_activation(a: Activation) -> bool {
    !matches!(a, Activation::Gelu)
}

/// The activation and its derivative at `z`, for the activations the op fuses.
#[inline]
fn act_and_grad(a: Option<Activation>, z: f32) -> (f32, f32) {
    match a {
        None => (z, 1.0),
        Some(Activation::Silu) => {
            let s = 1.0 / (1.0 + (-z).exp());
            (z * s, s * (1.0 + z * (1.0 - s)))
        }
        Some(Activation::Relu) => {
            if z > 0.0 {
                (z, 1.0)
            } else {
                (0.0, 0.0)
            }
        }
        Some(Activation::Relu6) => {
            if z <= 0.0 {
                (0.0, 0.0)
            } else if z >= 6.0 {
                (6.0, 0.0)
            } else {
                (z, 1.0)
            }
        }
        Some(Activation::HardSwish) => {
            if z <= -3.0 {
                (0.0, 0.0)
            } else if z >= 3.0 {
                (z, 1.0)
            } else {
                (z * (z + 3.0) / 6.0, (2.0 * z + 3.0) / 6.0)
            }
        }
        // Not fused (see `fusable_activation`); never reached.
        Some(Activation::Gelu) => (z, 1.0),
    }
}

/// Per-channel sums over the batch and the spatial positions of an `[N, C, HW]` buffer, one
/// channel per task: `f(ch, slice)` gives each `[HW]` slice's contribution.
fn per_channel<F>(n: usize, c: usize, hw: usize, f: F) -> Vec<(f64, f64)>
where
    F: Fn(usize, usize) -> (f64, f64) + Sync,
{
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold((0f64, 0f64), |(a, b), i| {
                let (da, db) = f(ch, (i * c + ch) * hw);
                (a + da, b + db)
            })
        })
        .collect()
}

impl CustomOp3 for BnTrainOp {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = match l1.shape().dims() {
            &[n, c, h, w] => (n, c, h, w),
            d => bail!("batchnorm-train: input must be [N, C, H, W], got {d:?}"),
        };
        let x = cpu_f32(s1, l1, OP, "input")?;
        let wt = cpu_f32(s2, l2, OP, "weight")?;
        let bs = cpu_f32(s3, l3, OP, "bias")?;
        if wt.len() != c || bs.len() != c {
            bail!(
                "batchnorm-train: {c} channels, weight {} and bias {}",
                wt.len(),
                bs.len()
            );
        }
        let hw = h * w;
        if hw == 0 || n == 0 {
            bail!("batchnorm-train: empty input {:?}", l1.shape().dims());
        }
        let count = (n * hw) as f64;
        // Two passes (mean, then squared deviations) in f64, as a reference would.
        let sums = per_channel(n, c, hw, |_, b| {
            (x[b..b + hw].iter().map(|&v| f64::from(v)).sum(), 0.0)
        });
        let means: Vec<f64> = sums.iter().map(|(s, _)| s / count).collect();
        let sq = per_channel(n, c, hw, |ch, b| {
            let m = means[ch];
            let ss = x[b..b + hw]
                .iter()
                .map(|&v| {
                    let d = f64::from(v) - m;
                    d * d
                })
                .sum();
            (ss, 0.0)
        });
        let mut mean = vec![0f32; c];
        let mut inv = vec![0f32; c];
        let mut unbiased = vec![0f32; c];
        for ch in 0..c {
            let ss = sq[ch].0;
            let var = ss / count;
            mean[ch] = means[ch] as f32;
            inv[ch] = (1.0 / (var + self.eps).sqrt()) as f32;
            unbiased[ch] = if count > 1.0 {
                (ss / (count - 1.0)) as f32
            } else {
                var as f32
            };
        }
        let mut y = vec![0f32; x.len()];
        let act = self.act;
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(k, (yo, xi))| {
                let ch = k % c;
                let scale = inv[ch] * wt[ch];
                let shift = bs[ch] - mean[ch] * scale;
                for (o, &v) in yo.iter_mut().zip(xi) {
                    *o = act_and_grad(act, v * scale + shift).0;
                }
            });
        match (self.stats.lock(), self.var_unbiased.lock()) {
            (Ok(mut st), Ok(mut vu)) => {
                *st = Stats { mean, inv_std: inv };
                *vu = unbiased;
            }
            _ => bail!("batchnorm-train: statistics lock poisoned"),
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let hw = h * wd;
        let m = (n * hw) as f32;
        let (mean, inv) = match self.stats.lock() {
            Ok(s) => (s.mean.clone(), s.inv_std.clone()),
            Err(_) => bail!("batchnorm-train: statistics lock poisoned"),
        };
        let wv = with_cpu_f32(w, OP, |v| Ok(v.to_vec()))?;
        let bv = with_cpu_f32(b, OP, |v| Ok(v.to_vec()))?;
        let act = self.act;
        let (dx, dw, db) = with_cpu_f32(x, OP, |xs| {
            with_cpu_f32(dy, OP, |g| {
                // The gradient at the normalized output z = xhat * w + b, through the
                // activation (recomputed from x rather than kept from the forward).
                let mut dz = vec![0f32; xs.len()];
                dz.par_chunks_mut(hw)
                    .zip(xs.par_chunks(hw).zip(g.par_chunks(hw)))
                    .enumerate()
                    .for_each(|(k, (d, (xi, gi)))| {
                        let ch = k % c;
                        for ((d, &xv), &gv) in d.iter_mut().zip(xi).zip(gi) {
                            let xhat = (xv - mean[ch]) * inv[ch];
                            *d = gv * act_and_grad(act, xhat * wv[ch] + bv[ch]).1;
                        }
                    });
                let sums = per_channel(n, c, hw, |ch, base| {
                    let (mut sb, mut sw) = (0f64, 0f64);
                    for k in base..base + hw {
                        let xhat = (xs[k] - mean[ch]) * inv[ch];
                        sb += f64::from(dz[k]);
                        sw += f64::from(dz[k] * xhat);
                    }
                    (sb, sw)
                });
                let db: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
                let dw: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
                let mut dx = dz;
                dx.par_chunks_mut(hw)
                    .zip(xs.par_chunks(hw))
                    .enumerate()
                    .for_each(|(k, (d, xi))| {
                        let ch = k % c;
                        let k1 = wv[ch] * inv[ch] / m;
                        for (d, &xv) in d.iter_mut().zip(xi) {
                            let xhat = (xv - mean[ch]) * inv[ch];
                            *d = k1 * (m * *d - db[ch] - xhat * dw[ch]);
                        }
                    });
                Ok((dx, dw, db))
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// BatchNorm in train mode: batch statistics, PyTorch's running-statistic update.
pub fn batch_norm_train(bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
    batch_norm_act_train(bn, x, None)
}

/// BatchNorm in train mode followed by `act`; on the CPU in f32, one fused op.
pub fn batch_norm_act_train(bn: &BatchNorm, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    let fast = matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && bn.weight.dtype() == DType::F32;
    if !fast {
        let y = bn.forward_t(x, true)?;
        return match act {
            Some(a) => activate(&y, a),
            None => Ok(y),
        };
    }
    let (fused, after) = match act {
        Some(a) if !fusable_activation(a) => (None, Some(a)),
        a => (a, None),
    };
    let op = BnTrainOp {
        eps: bn.spec.eps,
        act: fused,
        stats: Arc::new(Mutex::new(Stats::default())),
        var_unbiased: Arc::new(Mutex::new(Vec::new())),
    };
    let (stats, unbiased) = (op.stats.clone(), op.var_unbiased.clone());
    let y = x.contiguous()?.apply_op3(&bn.weight, &bn.bias, op)?;
    let (mean, var) = match (stats.lock(), unbiased.lock()) {
        (Ok(s), Ok(v)) => (s.mean.clone(), v.clone()),
        _ => bail!("batchnorm-train: statistics lock poisoned"),
    };
    let c = bn.spec.channels;
    let mom = bn.spec.momentum;
    let dev = x.device();
    let rm = bn.running_mean.as_tensor();
    let rv = bn.running_var.as_tensor();
    let bm = Tensor::from_vec(mean, c, dev)?;
    let bv = Tensor::from_vec(var, c, dev)?;
    let new_rm = ((rm.to_dtype(DType::F32)? * (1.0 - mom))? + (bm * mom)?)?;
    let new_rv = ((rv.to_dtype(DType::F32)? * (1.0 - mom))? + (bv * mom)?)?;
    bn.running_mean.set(&new_rm.to_dtype(rm.dtype())?)?;
    bn.running_var.set(&new_rv.to_dtype(rv.dtype())?)?;
    match after {
        Some(a) => activate(&y, a),
        None => Ok(y),
    }
}

fn conv_bn_act_train(l: &ConvBnAct, x: &Tensor) -> Result<Tensor> {
    batch_norm_act_train(&l.bn, &l.conv.forward(x)?, l.activation)
}

/// `n` keep-or-drop factors: `1 / keep` with probability `keep`, else 0.
pub(crate) fn keep_mask(n: usize, keep: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect()
}

fn block_train(
    b: &Block,
    x: &Tensor,
    drop_path_scale: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let mut y = x.clone();
    for (i, l) in b.layers.iter().enumerate() {
        y = conv_bn_act_train(l, &y)?;
        if i == b.se_after
            && let Some(se) = &b.se
        {
            y = se.forward(&y)?;
        }
    }
    if !b.spec.residual {
        return Ok(y);
    }
    let rate = b.spec.drop_path * drop_path_scale;
    if rate > 0.0 {
        let n = y.dim(0)?;
        let mask = Tensor::from_vec(keep_mask(n, 1.0 - rate, rng), (n, 1, 1, 1), y.device())?
            .to_dtype(y.dtype())?;
        y = y.broadcast_mul(&mask)?;
    }
    y + x
}

impl Network {
    /// The logits in train mode, with the fused BatchNorm on the CPU (see the module docs);
    /// drop-path and dropout masks are drawn from `rng`.
    pub fn forward_train(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        match x.dims() {
            [_, c, h, w] if *c == self.ir.input_channels && *h > 0 && *w > 0 => {}
            d => bail!(
                "`{}` expects input [batch, {}, height, width], got {d:?}",
                self.ir.name,
                self.ir.input_channels
            ),
        }
        let mut y = conv_bn_act_train(&self.stem, x)?;
        for stage in &self.stages {
            for b in stage {
                y = block_train(b, &y, self.drop_path_scale, rng)?;
            }
        }
        if let Some(h) = &self.head {
            y = conv_bn_act_train(h, &y)?;
        }
        let pooled = y.mean((2, 3))?;
        let pooled = if self.dropout > 0.0 {
            let mask = Tensor::from_vec(
                keep_mask(pooled.elem_count(), 1.0 - self.dropout, rng),
                pooled.shape(),
                pooled.device(),
            )?
            .to_dtype(pooled.dtype())?;
            (pooled * mask)?
        } else {
            pooled
        };
        self.classifier.forward(&pooled)
    }
}
