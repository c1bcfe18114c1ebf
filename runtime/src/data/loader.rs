//! The input pipeline: per-sample transforms, batching, mixing and prefetching on worker
//! threads while the model computes.
//!
//! Batch `b` of an epoch is always built by worker `b % workers` and consumed in order, so
//! the pipeline is bounded (each worker runs at most `prefetch` batches ahead) and
//! deterministic: every random draw comes from a generator seeded by `(seed, epoch, sample
//! position)` or `(seed, epoch, batch)`, whatever the number of workers.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use rand::Rng;
use rand::seq::SliceRandom;

use super::image::Image;
use super::mix::{MixConfig, Mixed, smooth_targets};
use super::randaug::RandAugment;
use super::{Dataset, Kind, sample_rng, stream};

/// How one sample becomes a network input.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub image_size: usize,
    /// 1 or 3: gray images are repeated to RGB, RGB reduced to gray, as the network wants.
    pub channels: usize,
    /// Training augmentation (random-resized crop and flip for natural images, RandAugment).
    pub train: bool,
    pub randaug: Option<RandAugment>,
    /// Per-channel mean and std on the `[0, 1]` scale (`x = (v / 255 - mean) / std`).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Evaluation center-crop fraction for natural images (timm's default 0.875).
    pub crop_pct: f64,
}

impl Transform {
    /// The augmented, resized image for a sample.
    pub fn image<R: Rng>(&self, img: &Image, kind: Kind, rng: &mut R) -> Image {
        let img = img.with_channels(self.channels);
        let s = self.image_size;
        let img = match (kind, self.train) {
            (Kind::Digits, _) => img.resize(s, s),
            (Kind::Natural, true) => {
                let c = img.random_resized_crop(s, rng);
                if rng.random_bool(0.5) {
                    c.flip_horizontal()
                } else {
                    c
                }
            }
            (Kind::Natural, false) => img.resize_center_crop(s, self.crop_pct),
        };
        match (&self.randaug, self.train) {
            (Some(ra), true) => ra.apply(&img, rng),
            _ => img,
        }
    }

    /// Write `img` (already `image_size` square) normalized, channel-major, into `out`.
    pub fn write(&self, img: &Image, out: &mut [f32]) {
        let (w, h, c) = (img.width, img.height, img.channels);
        for ch in 0..c {
            let mean = self.mean.get(ch).copied().unwrap_or(0.0);
            let std = self.std.get(ch).copied().unwrap_or(1.0);
            for y in 0..h {
                for x in 0..w {
                    let v = f32::from(img.at(x, y, ch)) / 255.0;
                    out[ch * h * w + y * w + x] = (v - mean) / std;
                }
            }
        }
    }
}

/// Everything that decides an epoch's batches.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub transform: Transform,
    pub mix: MixConfig,
    pub label_smoothing: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle and drop the last partial batch (training) or keep the order (evaluation).
    pub shuffle: bool,
    /// Worker threads; 0 builds each batch on the calling thread when it is asked for.
    pub workers: usize,
    /// Batches each worker may run ahead.
    pub prefetch: usize,
    /// The part of every batch this loader builds: all of it, or one data-parallel rank's.
    pub shard: Shard,
}

/// One rank's share of every global batch in data-parallel training: rank `r` of `W` takes the
/// batch's samples `r, r + W, r + 2W, ...`. This is what PyTorch's `DistributedSampler`
/// gives (it deals the epoch's order out round-robin), and since every sample's augmentation
/// is seeded by its position in the epoch, a rank builds exactly the images the whole batch
/// holds at those positions, without building the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole batch (one rank).
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// The epoch positions of this shard's samples in the global batch covering positions
    /// `start..end`, in order.
    pub fn positions(&self, start: usize, end: usize) -> impl Iterator<Item = usize> + use<> {
        (start + self.rank..end).step_by(self.world.max(1))
    }
}

/// One batch: NCHW images, soft targets `[n, classes]`, and the original labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub index: usize,
    pub shape: (usize, usize, usize, usize),
    /// Empty when the batch is [`Batch::staged`] (its images are then on the device only).
    pub images: Vec<f32>,
    pub targets: Vec<f32>,
    pub labels: Vec<usize>,
    pub classes: usize,
    pub mixed: Mixed,
    /// The images and targets already on the device (see [`Batches::staged_on`]).
    pub staged: Option<Staged>,
}

/// A batch's images `[n, c, h, w]` and soft targets `[n, classes]` as f32 tensors on the
/// training device.
#[derive(Debug, Clone)]
pub struct Staged {
    pub images: Tensor,
    pub targets: Tensor,
}

/// `b` with its images and targets copied to `dev` by this (a worker's) thread; unchanged,
/// to be copied by the training thread, if the copy fails.
fn stage(mut b: Batch, dev: &Device) -> Batch {
    let (n, c, h, w) = b.shape;
    let images = Tensor::from_slice(&b.images, (n, c, h, w), dev);
    let targets = Tensor::from_slice(&b.targets, (n, b.classes), dev);
    if let (Ok(images), Ok(targets)) = (images, targets) {
        b.images = Vec::new();
        b.staged = Some(Staged { images, targets });
    }
    b
}

/// The sample order of an epoch: a seeded permutation, or the identity without shuffling.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = sample_rng(seed, &[stream::SHUFFLE, epoch as u64]);
        order.shuffle(&mut rng);
    }
    order
}

/// The number of batches an epoch has.
pub fn num_batches(len: usize, batch_size: usize, shuffle: bool) -> usize {
    let b = batch_size.max(1);
    if shuffle { len / b } else { len.div_ceil(b) }
}

/// Build batch `index` of `epoch`: the same result on any thread, in any order.
pub fn build_batch(
    data: &Dataset,
    cfg: &LoaderConfig,
    order: &[usize],
    epoch: usize,
    index: usize,
) -> Batch {
    let b = cfg.batch_size.max(1);
    let start = index * b;
    let end = (start + b).min(order.len());
    let positions: Vec<usize> = cfg.shard.positions(start, end).collect();
    let n = positions.len();
    let (c, s) = (cfg.transform.channels, cfg.transform.image_size);
    let sample = c * s * s;
    let mut images = vec![0f32; n * sample];
    let mut labels = Vec::with_capacity(n);
    for (k, &pos) in positions.iter().enumerate() {
        let i = order[pos];
        let mut rng = sample_rng(cfg.seed, &[stream::SAMPLE, epoch as u64, pos as u64]);
        let img = cfg.transform.image(&data.images[i], data.kind, &mut rng);
        cfg.transform
            .write(&img, &mut images[k * sample..(k + 1) * sample]);
        labels.push(data.labels[i]);
    }
    let classes = data.num_classes();
    let mut targets = smooth_targets(&labels, classes, cfg.label_smoothing);
    let mixed = if cfg.transform.train && cfg.mix.active() && n > 1 {
        // Each rank mixes within its own shard, as DDP does; rank 0's draws are the ones a
        // single rank makes.
        let mut key = vec![stream::MIX, epoch as u64, index as u64];
        if cfg.shard.rank > 0 {
            key.push(cfg.shard.rank as u64);
        }
        let mut rng = sample_rng(cfg.seed, &key);
        cfg.mix
            .apply(&mut images, (c, s, s), &mut targets, classes, &mut rng)
    } else {
        Mixed::None
    };
    Batch {
        index,
        shape: (n, c, s, s),
        images,
        targets,
        labels,
        classes,
        mixed,
        staged: None,
    }
}

/// The batches of one epoch, in order, built ahead by worker threads.
pub struct Batches {
    data: Arc<Dataset>,
    cfg: Arc<LoaderConfig>,
    order: Arc<Vec<usize>>,
    epoch: usize,
    next: usize,
    count: usize,
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
}

impl Batches {
    pub fn new(data: Arc<Dataset>, cfg: LoaderConfig, epoch: usize) -> Self {
        Self::staged_on(data, cfg, epoch, None)
    }

    /// [`Batches::new`], each worker also copying its batches to `device` ([`Batch::staged`])
    /// before handing them over: the host-to-device copy of batch `i + 1` then happens on a
    /// worker thread while the training thread runs step `i`, not between the steps. Batches
    /// built on the caller's thread (no workers) are not staged.
    pub fn staged_on(
        data: Arc<Dataset>,
        cfg: LoaderConfig,
        epoch: usize,
        device: Option<Device>,
    ) -> Self {
        let order = Arc::new(epoch_order(data.len(), cfg.seed, epoch, cfg.shuffle));
        let count = num_batches(data.len(), cfg.batch_size, cfg.shuffle);
        let cfg = Arc::new(cfg);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        let workers = cfg.workers.min(count);
        for w in 0..workers {
            let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(cfg.prefetch.max(1));
            let (data, cfg, order) = (data.clone(), cfg.clone(), order.clone());
            let device = device.clone();
            let handle = std::thread::Builder::new()
                .name(format!("effnet-data-{w}"))
                .spawn(move || {
                    for b in (w..count).step_by(workers) {
                        let mut batch = build_batch(&data, &cfg, &order, epoch, b);
                        if let Some(dev) = &device {
                            batch = stage(batch, dev);
                        }
                        if tx.send(batch).is_err() {
                            return; // the consumer stopped early
                        }
                    }
                });
            match handle {
                Ok(h) => {
                    receivers.push(rx);
                    handles.push(h);
                }
                // No thread: fall back to building on the caller's thread.
                Err(_) => {
                    receivers.clear();
                    break;
                }
            }
        }
        Batches {
            data,
            cfg,
            order,
            epoch,
            next: 0,
            count,
            receivers,
            handles,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let workers = self.receivers.len();
        if workers == 0 {
            return Some(build_batch(
                &self.data,
                &self.cfg,
                &self.order,
                self.epoch,
                i,
            ));
        }
        match self.receivers[i % workers].recv() {
            Ok(b) => Some(b),
            // The worker died (a panic in a transform): build the batch here instead, so the
            // epoch still sees the same data.
            Err(_) => Some(build_batch(
                &self.data,
                &self.cfg,
                &self.order,
                self.epoch,
                i,
            )),
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Closing the channels first unblocks workers waiting to send.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
