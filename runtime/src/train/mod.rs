//! Training: the loop, the optimizers, learning-rate schedules, EMA, checkpoints.
//!
//! [`Trainer`] runs a network built from the IR through a schedule's progressive-learning
//! stages. Per stage it sets the image size, RandAugment magnitude, mixup/cutmix alphas,
//! dropout and stochastic depth; the network runs in train mode (BatchNorm on batch
//! statistics, updating its running statistics), the loss is cross-entropy on soft targets
//! (label smoothing and mixing make them soft), and the optimizer of the schedule updates the
//! weights. An EMA of the weights is kept when the schedule has `ema`, and evaluation uses it.
//!
//! Fine-tuning: [`Trainer::init_from`] starts from pretrained weights (a classifier of another
//! class count stays freshly initialized), and the schedule's `freeze` and `lr_scale` are
//! applied at each epoch's start ([`Trainer::apply_fine_tune`]): a frozen parameter is not
//! updated, and the BatchNorm layers of a frozen part run in eval mode (running statistics,
//! not updated) while the rest of the network trains.
//!
//! Reproducibility: the weights are initialized from the seed, every data-pipeline draw
//! is seeded by `(seed, epoch, index)`, and the network's dropout / drop-path generator is
//! re-seeded from `(seed, epoch)` at the start of each epoch. A checkpoint therefore holds
//! everything a resumed run needs to produce the same next epoch as an uninterrupted one:
//! weights with BatchNorm statistics, optimizer state, EMA, step counters and the seed.
//!
//! Data parallelism ([`parallel`]): a trainer joined to a communicator ([`Trainer::join`])
//! runs this same loop on its rank's shard of every batch and averages the gradients and the
//! loss over the ranks before the optimizer step; with one rank nothing changes.

pub mod checkpoint;
pub mod ema;
pub mod eval;
pub mod init;
pub mod lr;
pub mod metrics;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod optim;
pub mod parallel;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use effnet_compiler::ir::{self, LrSchedule, Optimizer as OptimizerSpec, Place, Schedule};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::loader::{Batches, LoaderConfig, Shard, Transform};
use crate::data::mix::MixConfig;
use crate::data::randaug::RandAugment;
use crate::data::{Dataset, Kind, derive_seed, stream};
pub use crate::exec::soft_cross_entropy;
use crate::exec::{Choice, Plan, Precision, Purpose};
use crate::nn::Network;
pub use ema::Ema;
pub use eval::{Accuracy, evaluate};
pub use metrics::EpochMetrics;
pub use optim::{Optimizer, Param};
pub use parallel::Communicator;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("cannot write or read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "training diverged: the loss is {loss} at epoch {epoch}, step {step} (learning rate \
         {lr:.3e}); {kept}"
    )]
    Diverged {
        loss: f64,
        epoch: usize,
        step: usize,
        lr: f64,
        kept: String,
    },
    /// Another rank of a data-parallel run failed; this one stopped at a collective.
    #[error("stopped: rank {rank} failed: {reason}")]
    PeerFailed { rank: usize, reason: String },
    /// A collective of a data-parallel run waited past its timeout: `missing` never arrived
    /// (stuck, or far slower than the others).
    #[error(
        "stopped: {} did not arrive at {collective} within {timeout_s} s (the collective \
         timeout, `--collective-timeout`)",
        ranks_phrase(missing)
    )]
    CollectiveTimeout {
        missing: Vec<usize>,
        collective: String,
        timeout_s: f64,
    },
    /// Ranks of a data-parallel run still busy inside their own work `grace_s` after another
    /// failed (at no collective, where the timeout would have caught them).
    #[error(
        "stopped: {} still had not stopped {grace_s} s after the run failed (stuck inside \
         its own step, not at a collective)",
        ranks_phrase(ranks)
    )]
    Stuck { ranks: Vec<usize>, grace_s: f64 },
    /// The failure that stopped a data-parallel run, with the rank it happened on.
    #[error("rank {rank} failed: {source}; every rank stopped")]
    Rank {
        rank: usize,
        source: Box<TrainError>,
    },
}

pub type TrainResult<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// This rank stopped because of another rank (it failed, or never arrived), not because
    /// of anything of its own.
    pub fn is_peers(&self) -> bool {
        matches!(
            self,
            TrainError::PeerFailed { .. } | TrainError::CollectiveTimeout { .. }
        )
    }
}

/// `rank 1`, `ranks 1, 2`.
fn ranks_phrase(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(ToString::to_string).collect();
    match list.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

/// The schedule with its epochs changed to `epochs`, each stage keeping its share:
/// stage `i` of `M` covers `[i * N / M, (i + 1) * N / M)` (automl's boundaries).
pub fn with_epochs(s: &Schedule, epochs: usize) -> Schedule {
    let mut out = s.clone();
    let m = s.stages.len().max(1);
    out.epochs = epochs;
    for (i, st) in out.stages.iter_mut().enumerate() {
        st.epochs = (i * epochs / m, (i + 1) * epochs / m);
    }
    out
}

/// The optimizer when the schedule names none: the compiler's
/// [`effnet_compiler::defaults::OPTIMIZER`] (the paper's RMSProp), named here for callers of
/// the runtime.
pub const DEFAULT_OPTIMIZER: OptimizerSpec = effnet_compiler::defaults::OPTIMIZER;

/// The learning rate when the schedule gives none: the compiler's
/// [`OptimizerSpec::default_lr`].
pub fn default_lr(opt: &OptimizerSpec) -> LrSchedule {
    opt.default_lr()
}

/// Settings of a run that the schedule does not give.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub seed: u64,
    /// Batch size for stages that do not set `batch`.
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Data worker threads (0: build batches on the training thread).
    pub workers: usize,
    /// RandAugment ops per image.
    pub randaug_ops: usize,
    pub device: Device,
    /// Stop each epoch after this many steps (tests, quick looks).
    pub max_steps_per_epoch: Option<usize>,
    /// Evaluate on the test set after each epoch.
    pub evaluate: bool,
    /// Also evaluate the raw weights when EMA is on.
    pub evaluate_raw: bool,
    /// The training step's arithmetic: f32, or mixed precision (bf16 maps, f32 master
    /// weights; CUDA only).
    pub precision: Precision,
    /// SyncBatchNorm in a data-parallel run: every train-mode BatchNorm normalizes with the
    /// global batch's statistics (all ranks) and the running statistics stay identical on
    /// every rank. Off (the default, DDP's): each rank's shard's own statistics. Needs the
    /// cpu-step plan; nothing changes with one rank.
    pub sync_bn: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            seed: 0,
            batch_size: 64,
            eval_batch_size: 256,
            workers: 1,
            randaug_ops: 2,
            device: Device::Cpu,
            max_steps_per_epoch: None,
            evaluate: true,
            evaluate_raw: false,
            precision: Precision::F32,
            sync_bn: false,
        }
    }
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    EpochStart {
        epoch: usize,
        stage: &'a ir::ScheduleStage,
        batch_size: usize,
        steps: usize,
    },
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f64,
        lr: f64,
        images: usize,
    },
    Evaluating {
        epoch: usize,
    },
}

/// A network being trained, with its optimizer, EMA and progress.
pub struct Trainer {
    pub ir: ir::Network,
    pub schedule: Schedule,
    pub opts: TrainOptions,
    pub net: Network,
    pub params: Vec<Param>,
    /// BatchNorm running statistics, by name.
    pub stats: Vec<(String, Var)>,
    pub optimizer: Optimizer,
    pub lr: LrSchedule,
    pub ema: Option<Ema>,
    /// Epochs completed (the next epoch to run, 0-based).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub history: Vec<EpochMetrics>,
    /// Seconds spent in earlier sessions of a resumed run.
    pub elapsed_before: f64,
    pub train_data: Arc<Dataset>,
    pub test_data: Option<Arc<Dataset>>,
    /// Where checkpoints go (for messages).
    pub out_dir: Option<PathBuf>,
    /// Drop-path and dropout masks; re-seeded from `(seed, epoch)` at each epoch's start.
    pub mask_rng: ChaCha8Rng,
    /// Where each tensor is in the network, for the schedule's `freeze` and `lr_scale`.
    places: HashMap<String, Place>,
    /// The tensors frozen in the current epoch (parameters and BatchNorm statistics).
    frozen: HashSet<String>,
    started: Instant,
    /// The data-parallel group this trainer is a rank of ([`parallel::SingleRank`] alone).
    comm: Arc<dyn Communicator>,
}

/// What [`Trainer::init_from`] loaded.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub path: PathBuf,
    /// Tensors taken from the file.
    pub tensors: usize,
    pub torchvision_names: bool,
    /// `(the weights' classes, the model's)` when the classifier is new.
    pub new_classifier: Option<(usize, usize)>,
}

impl fmt::Display for Initialized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "init from `{}`: {} tensors{}",
            self.path.display(),
            self.tensors,
            if self.torchvision_names {
                " (torchvision names)"
            } else {
                ""
            }
        )?;
        if let Some((theirs, ours)) = self.new_classifier {
            write!(
                f,
                "; the classifier is new ({theirs} classes in the weights, {ours} in the \
                 model): freshly initialized"
            )?;
        }
        Ok(())
    }
}

impl Trainer {
    /// A freshly initialized network (weights from `opts.seed`) ready to train.
    pub fn new(
        ir: &ir::Network,
        schedule: Schedule,
        opts: TrainOptions,
        train_data: Dataset,
        test_data: Option<Dataset>,
    ) -> TrainResult<Self> {
        Self::with_shared_data(
            ir,
            schedule,
            opts,
            Arc::new(train_data),
            test_data.map(Arc::new),
        )
    }

    /// [`Trainer::new`] on datasets shared with other trainers (the ranks of a data-parallel
    /// run read the same images).
    pub fn with_shared_data(
        ir: &ir::Network,
        schedule: Schedule,
        opts: TrainOptions,
        train_data: Arc<Dataset>,
        test_data: Option<Arc<Dataset>>,
    ) -> TrainResult<Self> {
        for d in std::iter::once(&*train_data).chain(test_data.as_deref()) {
            if d.num_classes() != ir.num_classes {
                return Err(TrainError::Config(format!(
                    "the dataset `{}` has {} classes, the model `{}` {}",
                    d.source.display(),
                    d.num_classes(),
                    ir.name,
                    ir.num_classes
                )));
            }
        }
        if schedule.stages.is_empty() {
            return Err(TrainError::Config(format!(
                "schedule `{}` has no stages",
                schedule.name
            )));
        }
        if opts.precision == Precision::Bf16 && !opts.device.is_cuda() {
            return Err(TrainError::Config(
                "--precision bf16 (mixed precision) trains on a GPU only (--device cuda); the \
                 CPU trains in f32"
                    .into(),
            ));
        }
        let varmap = init::init_varmap(ir, opts.seed, &opts.device)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &opts.device);
        let net = Network::from_ir(ir, vb)?;
        if opts.precision == Precision::Bf16 {
            let probe = Tensor::zeros((1, ir.input_channels, 1, 1), DType::F32, &opts.device)?;
            let choice = net.plan(&probe, Purpose::TrainStep);
            if choice.plan != Plan::CudaStep {
                return Err(TrainError::Config(format!(
                    "--precision bf16 (mixed precision) runs on the cuda-step plan; `{}` trains \
                     on {choice}",
                    ir.name
                )));
            }
        }
        let mut params = Vec::new();
        let mut stats = Vec::new();
        for t in net.named_tensors() {
            if !t.tensor.is_variable() {
                return Err(TrainError::Config(format!(
                    "`{}` of `{}` is not a trainable variable",
                    t.name, ir.name
                )));
            }
            let var = Var::from_tensor(&t.tensor)?;
            if t.trainable {
                params.push(Param::new(t.name, var));
            } else {
                stats.push((t.name, var));
            }
        }
        let spec = schedule.optimizer.clone().unwrap_or(DEFAULT_OPTIMIZER);
        let lr = schedule.lr.clone().unwrap_or_else(|| default_lr(&spec));
        let optimizer = Optimizer::new(spec, &params)?;
        let ema = match schedule.ema {
            Some(d) if d > 0.0 => Some(Ema::new(d, &net.named_tensors())?),
            _ => None,
        };
        Ok(Trainer {
            ir: ir.clone(),
            schedule,
            opts,
            net,
            params,
            stats,
            optimizer,
            lr,
            ema,
            epoch: 0,
            step: 0,
            history: Vec::new(),
            elapsed_before: 0.0,
            train_data,
            test_data,
            out_dir: None,
            mask_rng: ChaCha8Rng::seed_from_u64(0),
            places: ir.tensor_places().into_iter().collect(),
            frozen: HashSet::new(),
            started: Instant::now(),
            comm: Arc::new(parallel::SingleRank),
        })
    }

    /// Make this trainer rank `comm.rank()` of a data-parallel run: its parameters and
    /// BatchNorm statistics become rank 0's (a broadcast, as DDP does at construction, so the
    /// ranks start identical even if their initializations differed), and a rank other than 0
    /// drops its EMA (rank 0's is the one kept and saved). Call it after `init_from` or
    /// `resume`, before training; every rank of the group must call it.
    pub fn join(&mut self, comm: Arc<dyn Communicator>) -> TrainResult<()> {
        if comm.world_size() > 1 {
            let vars: Vec<&Var> = self
                .params
                .iter()
                .map(|p| &p.var)
                .chain(self.stats.iter().map(|(_, v)| v))
                .collect();
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let flat = comm.broadcast(&parallel::flatten(&tensors)?, 0)?;
            let mut from_root = Vec::with_capacity(tensors.len());
            parallel::unflatten(&flat, &tensors, &mut from_root)?;
            for (v, t) in vars.into_iter().zip(from_root) {
                v.set(&t)?;
            }
            if comm.rank() > 0 {
                self.ema = None;
            }
        }
        self.comm = comm;
        Ok(())
    }

    /// This trainer's rank in its data-parallel run (0 alone).
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of ranks of the run (1 alone).
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Start from pretrained weights (timm or torchvision names) instead of the seed's: every
    /// tensor but a classifier whose class count differs (kept freshly initialized, and
    /// reported). Any other difference is an error naming the tensors. Call it before
    /// training; a resumed run takes its weights from the checkpoint instead.
    pub fn init_from(
        &mut self,
        path: &Path,
        options: crate::weights::LoadOptions,
    ) -> TrainResult<Initialized> {
        let mut init = crate::weights::load_init(&self.ir, path, options)?;
        let device = self.opts.device.clone();
        let mut count = 0;
        for (name, var) in self
            .params
            .iter()
            .map(|p| (&p.name, &p.var))
            .chain(self.stats.iter().map(|(n, v)| (n, v)))
        {
            if let Some(t) = init.tensors.remove(name) {
                var.set(&t.to_device(&device)?)?;
                count += 1;
            }
        }
        // The average starts from the weights training starts from.
        if let Some(ema) = &self.ema {
            self.ema = Some(Ema::new(ema.decay, &self.net.named_tensors())?);
        }
        Ok(Initialized {
            path: path.to_path_buf(),
            tensors: count,
            torchvision_names: init.torchvision_names,
            new_classifier: init.new_classifier.map(|k| (k, self.ir.num_classes)),
        })
    }

    /// The schedule's fine-tuning settings for `epoch`: which parameters are frozen (their
    /// BatchNorm layers in eval mode) and each parameter's learning-rate scale.
    pub fn apply_fine_tune(&mut self, epoch: usize) {
        let s = &self.schedule;
        let places = &self.places;
        let frozen_name = |name: &str| places.get(name).is_some_and(|&p| s.frozen(p, epoch));
        for p in &mut self.params {
            p.frozen = frozen_name(&p.name);
            p.lr_scale = places.get(&p.name).map_or(1.0, |&pl| s.lr_scale_at(pl));
        }
        let net = &mut self.net;
        let layers = std::iter::once(&mut net.stem)
            .chain(
                net.stages
                    .iter_mut()
                    .flatten()
                    .flat_map(|b| b.layers.iter_mut()),
            )
            .chain(net.head.as_mut());
        for l in layers {
            l.bn.frozen = frozen_name(&format!("{}.weight", l.bn.spec.path));
        }
        self.frozen = places.keys().filter(|n| frozen_name(n)).cloned().collect();
    }

    /// The parts frozen in `epoch`, as the schedule names them (for reports).
    pub fn frozen_parts(&self, epoch: usize) -> Vec<String> {
        self.schedule
            .freeze
            .iter()
            .filter(|f| f.epochs.is_none_or(|n| epoch < n))
            .flat_map(|f| f.parts.iter().map(ToString::to_string))
            .collect()
    }

    /// Whether the BatchNorm statistics are synchronized over the ranks in this run (asked for,
    /// and more than one rank).
    pub fn syncs_batch_norm(&self) -> bool {
        self.opts.sync_bn && self.comm.world_size() > 1
    }

    /// The plan the training step runs (and why, when it is the fallback).
    pub fn step_plan(&self) -> TrainResult<Choice> {
        let c = self.ir.input_channels;
        let x = Tensor::zeros((1, c, 1, 1), DType::F32, &self.opts.device)?;
        Ok(self.net.plan(&x, Purpose::TrainStep))
    }

    pub fn done(&self) -> bool {
        self.epoch >= self.schedule.epochs
    }

    /// The input transform for this network at `image_size`.
    pub fn transform(&self, kind: Kind, image_size: usize, train: bool, randaug: f64) -> Transform {
        network_transform(
            &self.ir,
            kind,
            image_size,
            train,
            randaug,
            self.opts.randaug_ops,
        )
    }

    /// Train one epoch (the next one) and evaluate.
    pub fn run_epoch(&mut self, observe: &mut dyn FnMut(Event)) -> TrainResult<EpochMetrics> {
        let epoch = self.epoch;
        let stage = self
            .schedule
            .stage_at(epoch)
            .cloned()
            .ok_or_else(|| TrainError::Config("the schedule has no stages".into()))?;
        let seed = self.opts.seed;
        self.net.dropout = stage.dropout;
        self.net.drop_path_scale = match stage.drop_path {
            Some(d) if self.ir.drop_path > 0.0 => d / self.ir.drop_path,
            _ => 1.0,
        };
        self.apply_fine_tune(epoch);
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        // Each rank draws its own dropout and drop-path masks; rank 0 draws what a single
        // rank draws.
        let mut key = vec![stream::NETWORK, epoch as u64];
        if rank > 0 {
            key.push(rank as u64);
        }
        let net_seed = derive_seed(seed, &key);
        self.net.seed(net_seed);
        self.mask_rng = ChaCha8Rng::seed_from_u64(net_seed);
        let batch_size = stage.batch_size.unwrap_or(self.opts.batch_size).max(1);
        if batch_size % world != 0 {
            return Err(TrainError::Config(format!(
                "the batch of {batch_size} images (stage {}) does not split evenly over {world} \
                 ranks: choose a batch that is a multiple of {world}",
                stage.index
            )));
        }
        let cfg = LoaderConfig {
            transform: self.transform(self.train_data.kind, stage.image_size, true, stage.randaug),
            mix: MixConfig {
                mixup_alpha: stage.mixup,
                cutmix_alpha: stage.cutmix,
            },
            label_smoothing: self.schedule.label_smoothing.unwrap_or(0.0),
            batch_size,
            seed,
            shuffle: true,
            workers: self.opts.workers,
            prefetch: 2,
            shard: Shard { rank, world },
        };
        if self.syncs_batch_norm() {
            let choice = self.step_plan()?;
            if !matches!(choice.plan, Plan::CpuStep | Plan::CudaStep) {
                return Err(TrainError::Config(format!(
                    "--sync-bn: SyncBatchNorm runs on the cpu-step and cuda-step plans only, and \
                     this run's training step runs on {choice}, whose BatchNorm cannot meet the \
                     other ranks; drop --sync-bn to train with per-rank statistics (DDP's \
                     default)"
                )));
            }
        }
        // On a GPU the workers copy each batch to the device ahead of its step.
        let stage_on = self.opts.device.is_cuda().then(|| self.opts.device.clone());
        let batches = Batches::staged_on(self.train_data.clone(), cfg, epoch, stage_on);
        let steps = batches
            .len()
            .min(self.opts.max_steps_per_epoch.unwrap_or(usize::MAX));
        if steps == 0 {
            return Err(TrainError::Config(format!(
                "the training set `{}` has {} images, fewer than one batch of {batch_size}",
                self.train_data.source.display(),
                self.train_data.len()
            )));
        }
        observe(Event::EpochStart {
            epoch,
            stage: &stage,
            batch_size,
            steps,
        });
        let device = self.opts.device.clone();
        let start = Instant::now();
        let mut loss_sum = 0.0;
        let mut images = 0usize;
        let mut lr = 0.0;
        for (i, b) in batches.take(steps).enumerate() {
            let dt = 1.0 / steps as f64;
            let t = epoch as f64 + i as f64 * dt;
            lr = lr::learning_rate(&self.lr, t, dt, self.schedule.epochs);
            let (n, c, h, w) = b.shape;
            let (x, y) = match b.staged {
                Some(s) => (s.images, s.targets),
                None => (
                    Tensor::from_vec(b.images, (n, c, h, w), &device)?,
                    Tensor::from_vec(b.targets, (n, b.classes), &device)?,
                ),
            };
            let (lv, gs) = self.loss_and_grads(&x, &y)?;
            let (lv, gs) = self.synchronize(lv, gs)?;
            if !lv.is_finite() {
                let kept = match &self.out_dir {
                    Some(d) if epoch > 0 => format!(
                        "stopped; the last good checkpoint (epoch {epoch}) is kept in `{}`",
                        d.join(checkpoint::DIR).display()
                    ),
                    Some(d) => format!(
                        "stopped before the first checkpoint; nothing was written to `{}`",
                        d.display()
                    ),
                    None => "stopped".to_string(),
                };
                return Err(TrainError::Diverged {
                    loss: lv,
                    epoch: epoch + 1,
                    step: i + 1,
                    lr,
                    kept,
                });
            }
            // Clipping's factor reaches the optimizer's update (one fused kernel a tensor on
            // a GPU) rather than scaling every gradient first.
            let grad_scale = match self.schedule.grad_clip {
                Some(max) => {
                    // The norm of what trains: a frozen parameter has no gradient in PyTorch.
                    let training = self.params.iter().zip(&gs).filter(|(p, _)| !p.frozen);
                    optim::clip_factor(optim::grad_norm(training.map(|(_, g)| g))?, max)
                }
                None => 1.0,
            };
            self.optimizer
                .step_scaled(&self.params, &gs, lr, grad_scale)?;
            if let Some(ema) = &mut self.ema {
                ema.update_except(&self.net.named_tensors(), &self.frozen)?;
            }
            self.step += 1;
            loss_sum += lv;
            // The global batch: every rank trained on a shard of `n`.
            images += n * world;
            observe(Event::Step {
                epoch,
                step: i,
                steps,
                loss: lv,
                lr,
                images: n * world,
            });
        }
        let train_s = start.elapsed().as_secs_f64();
        let (mut top1, mut top5, mut top1_raw) = (None, None, None);
        // Rank 0 evaluates; the others' weights are the same.
        if let Some(test) = self
            .test_data
            .clone()
            .filter(|_| self.opts.evaluate && rank == 0)
        {
            observe(Event::Evaluating { epoch });
            let size = self.ir.resolution;
            let tf = self.transform(test.kind, size, false, 0.0);
            let acc = evaluate(
                &self.eval_network(self.ema.is_some())?,
                test.clone(),
                tf.clone(),
                self.opts.eval_batch_size,
                self.opts.workers,
                &device,
            )?;
            top1 = Some(acc.top1);
            top5 = Some(acc.top5);
            if self.ema.is_some() && self.opts.evaluate_raw {
                let raw = evaluate(
                    &self.eval_network(false)?,
                    test,
                    tf,
                    self.opts.eval_batch_size,
                    self.opts.workers,
                    &device,
                )?;
                top1_raw = Some(raw.top1);
            }
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            stage: stage.index,
            image_size: stage.image_size,
            randaug: stage.randaug,
            mixup: stage.mixup,
            cutmix: stage.cutmix,
            dropout: stage.dropout,
            batch_size,
            lr,
            train_loss: loss_sum / steps as f64,
            test_top1: top1,
            test_top5: top5,
            test_top1_raw: top1_raw,
            train_images_per_sec: images as f64 / train_s.max(1e-9),
            wall_s: start.elapsed().as_secs_f64(),
            elapsed_s: self.elapsed_before + self.started.elapsed().as_secs_f64(),
        };
        self.epoch += 1;
        self.history.push(m.clone());
        Ok(m)
    }

    /// This rank's loss and gradients on its batch; with SyncBatchNorm, its BatchNorm layers
    /// meet the other ranks' in the step.
    fn loss_and_grads(&mut self, x: &Tensor, y: &Tensor) -> TrainResult<(f64, Vec<Tensor>)> {
        if !self.syncs_batch_norm() {
            return Ok(self.net.loss_and_grads_in(
                self.opts.precision,
                &self.params,
                x,
                y,
                &mut self.mask_rng,
            )?);
        }
        let sync = parallel::BatchNormOverRanks::new(&*self.comm);
        let r = self.net.loss_and_grads_synced(
            self.opts.precision,
            &self.params,
            x,
            y,
            &mut self.mask_rng,
            &sync,
        );
        // A collective's failure is reported as itself (a peer's, or a timeout), not as a
        // failure of this rank's step.
        r.map_err(|e| sync.into_failure().unwrap_or(TrainError::Candle(e)))
    }

    /// The loss and gradients of the global batch from this rank's: their means over the
    /// ranks (the identity for one rank, which skips the collectives).
    fn synchronize(&self, loss: f64, grads: Vec<Tensor>) -> TrainResult<(f64, Vec<Tensor>)> {
        if self.comm.world_size() == 1 {
            return Ok((loss, grads));
        }
        let grads = parallel::average_gradients(&*self.comm, grads, parallel::BUCKET_FLOATS)?;
        let mut l = [loss];
        self.comm.all_reduce_mean_host(&mut l)?;
        Ok((l[0], grads))
    }

    /// The current weights (and BatchNorm statistics), or their EMA, as named tensors.
    pub fn weights(&self, ema: bool) -> Vec<(String, Tensor)> {
        match (&self.ema, ema) {
            (Some(e), true) => e.tensors.clone(),
            _ => self
                .net
                .named_tensors()
                .into_iter()
                .map(|t| (t.name, t.tensor.detach()))
                .collect(),
        }
    }

    /// A network for evaluation, from the current weights or their EMA.
    pub fn eval_network(&self, ema: bool) -> TrainResult<Network> {
        network_from_tensors(&self.ir, self.weights(ema), &self.opts.device)
    }
}

/// Build a network from named tensors (for evaluation).
pub fn network_from_tensors(
    ir: &ir::Network,
    tensors: Vec<(String, Tensor)>,
    device: &Device,
) -> TrainResult<Network> {
    let map = tensors.into_iter().collect();
    let vb = VarBuilder::from_tensors(map, DType::F32, device);
    Ok(Network::from_ir(ir, vb)?)
}

/// The input transform a network expects: its input channels and normalization, RandAugment
/// with `randaug_ops` ops at `randaug` when training.
pub fn network_transform(
    ir: &ir::Network,
    kind: Kind,
    image_size: usize,
    train: bool,
    randaug: f64,
    randaug_ops: usize,
) -> Transform {
    let c = ir.input_channels;
    let (mean, std) = match &ir.normalize {
        Some(n) => (
            n.mean.iter().map(|&v| v as f32).collect(),
            n.std.iter().map(|&v| v as f32).collect(),
        ),
        None => (vec![0.0; c], vec![1.0; c]),
    };
    let fill = match kind {
        Kind::Digits => 0,
        Kind::Natural => 128,
    };
    Transform {
        image_size,
        channels: c,
        train,
        randaug: (train && randaug > 0.0 && randaug_ops > 0).then_some(RandAugment {
            num_ops: randaug_ops,
            magnitude: randaug,
            fill,
        }),
        mean,
        std,
        crop_pct: 0.875,
    }
}

/// Where the run keeps its files.
pub fn model_path(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}
