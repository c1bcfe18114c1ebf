//! Top-1 / top-5 accuracy of a network on a dataset.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::TrainResult;
use crate::data::Dataset;
use crate::data::loader::{Batches, LoaderConfig, Shard, Transform};
use crate::data::mix::MixConfig;
use crate::nn::Network;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub count: usize,
}

/// Count a batch's hits: a label is in the top k when fewer than k logits beat it
/// (ties count for the label).
pub fn hits(logits: &[Vec<f32>], labels: &[usize]) -> (usize, usize) {
    let mut t1 = 0;
    let mut t5 = 0;
    for (row, &l) in logits.iter().zip(labels) {
        let v = row[l];
        let above = row.iter().filter(|&&x| x > v).count();
        if above < 1 {
            t1 += 1;
        }
        if above < 5 {
            t5 += 1;
        }
    }
    (t1, t5)
}

/// Evaluate `net` (eval mode) on every sample of `data` with `transform`.
pub fn evaluate(
    net: &Network,
    data: Arc<Dataset>,
    transform: Transform,
    batch_size: usize,
    workers: usize,
    device: &Device,
) -> TrainResult<Accuracy> {
    let cfg = LoaderConfig {
        transform,
        mix: MixConfig {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
        },
        label_smoothing: 0.0,
        batch_size: batch_size.max(1),
        seed: 0,
        shuffle: false,
        workers,
        prefetch: 2,
        // One rank evaluates the whole test set.
        shard: Shard::WHOLE,
    };
    let (mut t1, mut t5, mut n) = (0, 0, 0);
    for b in Batches::new(data, cfg, 0) {
        let x = Tensor::from_vec(b.images, b.shape, device)?;
        let logits = net.forward_t(&x, false)?.to_vec2::<f32>()?;
        let (a, c) = hits(&logits, &b.labels);
        t1 += a;
        t5 += c;
        n += b.labels.len();
    }
    let d = n.max(1) as f64;
    Ok(Accuracy {
        top1: t1 as f64 / d,
        top5: t5 as f64 / d,
        count: n,
    })
}
