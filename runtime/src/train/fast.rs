//! The training forward pass with a fused BatchNorm.
//!
//! [`Network::forward_train`] computes exactly what `Network::forward_t(x, true)` computes
//! (same layers, same BatchNorm statistics and running-statistic update, same drop-path and
//! dropout semantics), but on the CPU each BatchNorm is one custom op whose forward and
//! backward are single passes over contiguous memory. candle's generic composition of
//! BatchNorm reduces the gradients of its `[1, C, 1, 1]` operands over dimensions `(0, 2, 3)`
//! with a per-element index computation, which made BatchNorm most of the backward pass of a
//! small network. `runtime/tests/train_fast.rs` checks the two paths agree on logits,
//! gradients and running statistics.
//!
//! The random masks come from the caller's generator (the trainer re-seeds it from
//! `(seed, epoch)` each epoch), not from the network's own.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp3, DType, Device, Layout, Module, Result, Shape, Storage, Tensor, bail,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::layers::{BatchNorm, activate};
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
    stats: Arc<Mutex<Stats>>,
    /// Unbiased batch variance, for the running-statistic update.
    var_unbiased: Arc<Mutex<Vec<f32>>>,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("batchnorm-train: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("batchnorm-train: {what} must be contiguous"),
    }
}

/// Run `f` on the contiguous f32 data of a CPU tensor.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(contiguous_f32(cpu, layout, "tensor")?),
        _ => bail!("batchnorm-train: CPU tensors only"),
    }
}

impl CustomOp3 for BnTrainOp {
    fn name(&self) -> &'static str {
        "batchnorm-train"
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
        let x = contiguous_f32(s1, l1, "input")?;
        let wt = contiguous_f32(s2, l2, "weight")?;
        let bs = contiguous_f32(s3, l3, "bias")?;
        if wt.len() != c || bs.len() != c {
            bail!(
                "batchnorm-train: {c} channels, weight {} and bias {}",
                wt.len(),
                bs.len()
            );
        }
        let hw = h * w;
        let count = (n * hw) as f64;
        let mut mean = vec![0f32; c];
        let mut inv = vec![0f32; c];
        let mut unbiased = vec![0f32; c];
        for ch in 0..c {
            let mut s = 0f64;
            for i in 0..n {
                let base = (i * c + ch) * hw;
                s += x[base..base + hw]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum::<f64>();
            }
            let m = s / count;
            let mut ss = 0f64;
            for i in 0..n {
                let base = (i * c + ch) * hw;
                ss += x[base..base + hw]
                    .iter()
                    .map(|&v| {
                        let d = f64::from(v) - m;
                        d * d
                    })
                    .sum::<f64>();
            }
            let var = ss / count;
            mean[ch] = m as f32;
            inv[ch] = (1.0 / (var + self.eps).sqrt()) as f32;
            unbiased[ch] = if count > 1.0 {
                (ss / (count - 1.0)) as f32
            } else {
                var as f32
            };
        }
        let mut y = vec![0f32; x.len()];
        for i in 0..n {
            for ch in 0..c {
                let base = (i * c + ch) * hw;
                let scale = inv[ch] * wt[ch];
                let shift = bs[ch] - mean[ch] * scale;
                for (o, &v) in y[base..base + hw].iter_mut().zip(&x[base..base + hw]) {
                    *o = v * scale + shift;
                }
            }
        }
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
        _b: &Tensor,
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
        let wv = with_data(w, |v| Ok(v.to_vec()))?;
        let (dx, dw, db) = with_data(x, |xs| {
            with_data(dy, |g| {
                let mut db = vec![0f32; c];
                let mut dw = vec![0f32; c];
                for ch in 0..c {
                    let (mut sb, mut sw) = (0f64, 0f64);
                    for i in 0..n {
                        let base = (i * c + ch) * hw;
                        for k in base..base + hw {
                            let xhat = (xs[k] - mean[ch]) * inv[ch];
                            sb += f64::from(g[k]);
                            sw += f64::from(g[k] * xhat);
                        }
                    }
                    db[ch] = sb as f32;
                    dw[ch] = sw as f32;
                }
                let mut dx = vec![0f32; xs.len()];
                for i in 0..n {
                    for ch in 0..c {
                        let base = (i * c + ch) * hw;
                        let k1 = wv[ch] * inv[ch] / m;
                        for k in base..base + hw {
                            let xhat = (xs[k] - mean[ch]) * inv[ch];
                            dx[k] = k1 * (m * g[k] - db[ch] - xhat * dw[ch]);
                        }
                    }
                }
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
    let fast = matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && bn.weight.dtype() == DType::F32;
    if !fast {
        return bn.forward_t(x, true);
    }
    let op = BnTrainOp {
        eps: bn.spec.eps,
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
    Ok(y)
}

fn conv_bn_act_train(l: &ConvBnAct, x: &Tensor) -> Result<Tensor> {
    let y = batch_norm_train(&l.bn, &l.conv.forward(x)?)?;
    match l.activation {
        Some(a) => activate(&y, a),
        None => Ok(y),
    }
}

/// `n` keep-or-drop factors: `1 / keep` with probability `keep`, else 0.
fn keep_mask(n: usize, keep: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
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
