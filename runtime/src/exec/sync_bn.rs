//! SyncBatchNorm for the training step: each train-mode BatchNorm of a data-parallel run
//! normalizes with the statistics of the whole global batch, as PyTorch's `SyncBatchNorm`
//! does, instead of its rank's shard's (DDP's default, and effnet's).
//!
//! The backend that runs the step (the cpu-step or cuda-step plan's) holds a
//! [`BatchNormSync`]; per train-mode BatchNorm it calls [`BatchNormSync::sum_over_ranks`]
//! twice, in the same order on every rank: in the forward with each channel's count and
//! moments ([`Moments`]), in the backward with the sums of `dy` and `dy * xhat` the input
//! gradient needs. The cuda-step plan asks for the same sums as device tensors
//! ([`BatchNormSync::sum_tensor_over_ranks`]: on NCCL they never leave the GPU), and for the
//! global batch's images once a step. A BatchNorm in
//! eval mode (frozen) uses its running statistics and meets no one.

use candle_core::{DType, Result, Tensor, bail};

/// The sums over the ranks of a data-parallel run that a synchronized BatchNorm needs. Every
/// rank calls it, in the same order, with as many values.
pub trait BatchNormSync {
    /// `values` becomes its sum over every rank.
    fn sum_over_ranks(&self, values: &mut [f64]) -> Result<()>;
    /// The f64 tensor `t` summed over every rank, on its device: the cuda-step plan's sums stay
    /// on the GPU where the communicator can sum there (NCCL). By default through the host.
    fn sum_tensor_over_ranks(&self, t: &Tensor) -> Result<Tensor> {
        let mut v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.sum_over_ranks(&mut v)?;
        Tensor::from_vec(v, t.dims(), t.device())
    }
}

/// One BatchNorm's per-channel statistics, as sums that add over the ranks: the count, and
/// per channel `count * mean`, `count * var` (biased) and `count * mean^2`. Summing these
/// instead of `sum x^2` keeps each rank's variance as its two-pass computation gave it; only
/// the spread of the ranks' means is taken by difference, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// `[count, count * mean (C), count * var (C), count * mean^2 (C)]`.
    pub sums: Vec<f64>,
}

impl Moments {
    /// The sums of one rank's `count` values per channel with these means and biased
    /// variances.
    pub fn of(count: f64, mean: &[f64], var: &[f64]) -> Self {
        let mut sums = Vec::with_capacity(1 + 3 * mean.len());
        sums.push(count);
        sums.extend(mean.iter().map(|m| count * m));
        sums.extend(var.iter().map(|v| count * v));
        sums.extend(mean.iter().map(|m| count * m * m));
        Moments { sums }
    }

    /// The statistics of all the values the sums cover: `(count, mean, biased variance)` per
    /// channel, for `c` channels.
    pub fn combined(&self, c: usize) -> Result<(f64, Vec<f64>, Vec<f64>)> {
        if self.sums.len() != 1 + 3 * c {
            bail!(
                "SyncBatchNorm: {} sums for {c} channels (expected {})",
                self.sums.len(),
                1 + 3 * c
            );
        }
        let n = self.sums[0];
        if n <= 0.0 {
            bail!("SyncBatchNorm: statistics over {n} values");
        }
        let (sum_mean, rest) = self.sums[1..].split_at(c);
        let (sum_var, sum_mean_sq) = rest.split_at(c);
        let mean: Vec<f64> = sum_mean.iter().map(|s| s / n).collect();
        // Total variance = mean of the ranks' variances + variance of the ranks' means.
        let var = (0..c)
            .map(|ch| {
                let within = sum_var[ch] / n;
                let between = sum_mean_sq[ch] / n - mean[ch] * mean[ch];
                (within + between).max(0.0)
            })
            .collect();
        Ok((n, mean, var))
    }
}

/// The unbiased variance of `count` values from their biased one (PyTorch's rule for the
/// running variance; one value keeps its variance), as f32.
pub(crate) fn unbiased_variance(var: f64, count: f64) -> f32 {
    if count > 1.0 {
        (var * count / (count - 1.0)) as f32
    } else {
        var as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two shards' moments combine to the statistics of their union.
    #[test]
    fn moments_of_shards_combine_to_the_whole() {
        let a = [1.0, 2.0, 4.0];
        let b = [10.0, 11.0];
        let stats = |v: &[f64]| {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
            (n, m, var)
        };
        let (na, ma, va) = stats(&a);
        let (nb, mb, vb) = stats(&b);
        let mut sum = Moments::of(na, &[ma], &[va]);
        let other = Moments::of(nb, &[mb], &[vb]);
        sum.sums
            .iter_mut()
            .zip(&other.sums)
            .for_each(|(s, o)| *s += o);
        let (n, mean, var) = sum.combined(1).expect("combined");
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        let (n1, m1, v1) = stats(&all);
        assert_eq!(n, n1);
        assert!((mean[0] - m1).abs() < 1e-12, "{} vs {m1}", mean[0]);
        assert!((var[0] - v1).abs() < 1e-12, "{} vs {v1}", var[0]);
        assert!(
            sum.combined(2).is_err(),
            "a channel count that does not fit"
        );
    }
}
