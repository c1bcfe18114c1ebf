//! What every plan that needs it shares, written once: the keep-masks of drop-path and
//! dropout, PyTorch's running-statistic update of a train-mode BatchNorm, the soft-target
//! cross-entropy, one-hot targets.

use candle_core::{D, DType, Result, Tensor, Var, bail};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::nn::Norm;

/// `n` keep-or-drop factors from `rng`: `1 / keep` with probability `keep`, else 0. Every
/// plan draws its drop-path and dropout masks here, in the walk's order (each residual block
/// in turn, then the head's dropout), so all plans draw the same masks from the same seed.
pub fn keep_mask(n: usize, keep: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
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

/// PyTorch's running-statistic update after a train-mode BatchNorm:
/// `running = (1 - m) * running + m * batch`, with the unbiased batch variance. `mean` and
/// `var_unbiased` are `[C]` (any float dtype; the update is computed in f32 and stored in the
/// statistics' own dtype).
pub fn update_running_stats(bn: &Norm, mean: &Tensor, var_unbiased: &Tensor) -> Result<()> {
    let c = bn.spec.channels;
    if mean.elem_count() != c || var_unbiased.elem_count() != c {
        bail!(
            "`{}`: batch statistics of {} and {} values for {c} channels",
            bn.spec.path,
            mean.elem_count(),
            var_unbiased.elem_count()
        );
    }
    let (Some(m), Some(stats)) = (bn.spec.momentum(), &bn.running) else {
        bail!(
            "`{}` is a {}: it has no running statistics",
            bn.spec.path,
            bn.spec.timm_name()
        );
    };
    for (var, batch) in [(&stats.mean, mean), (&stats.var, var_unbiased)] {
        let old = var.as_tensor();
        let batch = batch.to_dtype(DType::F32)?.reshape(c)?.detach();
        let new = ((old.to_dtype(DType::F32)? * (1.0 - m))? + (batch * m)?)?;
        var.set(&new.to_dtype(old.dtype())?)?;
    }
    stats.changed();
    Ok(())
}

/// Mean over the batch of `-sum_k targets_k * log_softmax(logits)_k` (soft targets: one-hot,
/// smoothed or mixed), in f32.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    (targets.to_dtype(DType::F32)? * logp)?
        .sum(D::Minus1)?
        .neg()?
        .mean_all()
}

/// [`soft_cross_entropy`] and its gradient at `logits`, for the plans that run their own
/// backward: candle's autograd differentiates the one definition above.
pub fn soft_cross_entropy_and_grad(logits: &Tensor, targets: &Tensor) -> Result<(f64, Tensor)> {
    let logits = Var::from_tensor(&logits.detach())?;
    let loss = soft_cross_entropy(logits.as_tensor(), targets)?;
    let grads = loss.backward()?;
    let Some(d) = grads.get(logits.as_tensor()) else {
        bail!("the cross-entropy has no gradient at the logits");
    };
    Ok((f64::from(loss.to_scalar::<f32>()?), d.clone()))
}

/// One-hot targets `[N, classes]` from class indices (for callers with hard labels).
pub fn one_hot(labels: &[usize], classes: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        if l >= classes {
            bail!("label {l} out of range for {classes} classes");
        }
        v[i * classes + l] = 1.0;
    }
    Tensor::from_vec(v, (labels.len(), classes), device)
}
