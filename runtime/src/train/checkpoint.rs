//! Checkpoints: `RUN_DIR/checkpoint/` holds
//! - `weights.safetensors`: every tensor under its timm name, BatchNorm statistics included;
//! - `optimizer.safetensors`: the optimizer state, `{param}.{slot}`;
//! - `ema.safetensors`: the EMA weights (when the schedule has `ema`);
//! - `state.json`: epoch, step, seed, the network generator's state and the metrics so far.
//!
//! The directory is written as `checkpoint.tmp/` and swapped in by renames (the previous one
//! is moved to `checkpoint.old/` first and removed last), so an interruption at any point
//! leaves one complete checkpoint: loading falls back to `checkpoint.old/` when
//! `checkpoint/` is missing. `RUN_DIR/model.safetensors` (the EMA weights when there are any,
//! for `effnet eval`) is replaced atomically as well.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::metrics::EpochMetrics;
use super::{TrainError, TrainResult, Trainer};
use crate::weights::read_safetensors;

pub const DIR: &str = "checkpoint";
pub const FORMAT: u32 = 1;

/// The state of a ChaCha8 generator, as hex and decimal strings (JSON numbers cannot hold
/// a u128).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: String,
    pub stream: u64,
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Option<ChaCha8Rng> {
        use rand::SeedableRng;
        if self.seed.len() != 64 {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(self.seed.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub model: String,
    pub schedule: String,
    pub epochs: usize,
    /// Epochs completed.
    pub epoch: usize,
    pub step: u64,
    pub optimizer: String,
    pub optimizer_steps: u64,
    pub seed: u64,
    pub ema_updates: Option<u64>,
    /// The dropout / drop-path mask generator after the last step (re-seeded from
    /// `(seed, epoch)` at the start of every epoch, so this is a record, not an input).
    pub network_rng: Option<RngState>,
    /// How the data pipeline draws: it has no state of its own.
    pub data_rng: String,
    pub elapsed_s: f64,
    pub metrics: Vec<EpochMetrics>,
    /// The fine-tuning settings (`freeze ...`, `lr_scale ...`) of the run, from the schedule
    /// and the command line: a resumed run must have the same.
    #[serde(default)]
    pub fine_tune: Vec<String>,
    /// The data-parallel ranks that trained it (a record: a run resumes on any number of
    /// ranks, continuing identically on the same number).
    #[serde(default = "one")]
    pub ranks: usize,
    /// Whether the ranks synchronized their BatchNorm statistics (SyncBatchNorm; a record,
    /// like `ranks`; false in checkpoints from before the option).
    #[serde(default)]
    pub sync_bn: bool,
}

fn one() -> usize {
    1
}

/// A schedule's fine-tuning settings, one line each, as checkpoints record them.
pub fn fine_tune_lines(s: &effnet_compiler::ir::Schedule) -> Vec<String> {
    s.freeze
        .iter()
        .map(|f| format!("freeze {f}"))
        .chain(s.lr_scale.iter().map(|l| format!("lr_scale {l}")))
        .collect()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn save_map(tensors: Vec<(String, Tensor)>, path: &Path) -> TrainResult<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

fn optimizer_name(t: &Trainer) -> String {
    match t.optimizer.spec {
        effnet_compiler::ir::Optimizer::Rmsprop { .. } => "rmsprop",
        effnet_compiler::ir::Optimizer::Adamw { .. } => "adamw",
        effnet_compiler::ir::Optimizer::Sgd { .. } => "sgd",
    }
    .to_string()
}

impl Trainer {
    /// Write the checkpoint of the epochs completed so far into `dir/checkpoint/`, and the
    /// evaluation weights into `dir/model.safetensors`. In a data-parallel run only rank 0
    /// writes (its weights are every rank's; its BatchNorm statistics and EMA are the ones
    /// kept): on another rank this does nothing.
    pub fn save_checkpoint(&self, dir: &Path) -> TrainResult<()> {
        if self.rank() > 0 {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = dir.join(format!("{DIR}.tmp"));
        let cur = dir.join(DIR);
        let old = dir.join(format!("{DIR}.old"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        save_map(self.weights(false), &tmp.join("weights.safetensors"))?;
        save_map(
            self.optimizer.state(&self.params)?,
            &tmp.join("optimizer.safetensors"),
        )?;
        if let Some(ema) = &self.ema {
            save_map(ema.tensors.clone(), &tmp.join("ema.safetensors"))?;
        }
        let state = State {
            format: FORMAT,
            model: self.ir.name.clone(),
            schedule: self.schedule.name.clone(),
            epochs: self.schedule.epochs,
            epoch: self.epoch,
            step: self.step,
            optimizer: optimizer_name(self),
            optimizer_steps: self.optimizer.steps,
            seed: self.opts.seed,
            ema_updates: self.ema.as_ref().map(|e| e.updates),
            network_rng: Some(RngState::of(&self.mask_rng)),
            data_rng: "ChaCha8 seeded per sample from (seed, epoch, position) and per batch \
                       from (seed, epoch, batch); network re-seeded from (seed, epoch)"
                .into(),
            elapsed_s: self.history.last().map_or(0.0, |m| m.elapsed_s),
            metrics: self.history.clone(),
            fine_tune: fine_tune_lines(&self.schedule),
            ranks: self.world_size(),
            sync_bn: self.syncs_batch_norm(),
        };
        let json = serde_json::to_string_pretty(&state)
            .map_err(|e| TrainError::Checkpoint(format!("cannot encode state: {e}")))?;
        let state_path = tmp.join("state.json");
        std::fs::write(&state_path, json).map_err(io(&state_path))?;
        // Swap: cur -> old, tmp -> cur, remove old.
        if cur.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            std::fs::rename(&cur, &old).map_err(io(&cur))?;
        }
        std::fs::rename(&tmp, &cur).map_err(io(&tmp))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        let model = super::model_path(dir);
        let named: Vec<crate::nn::NamedTensor> = self
            .weights(self.ema.is_some())
            .into_iter()
            .map(|(name, tensor)| crate::nn::NamedTensor {
                name,
                tensor,
                trainable: true,
            })
            .collect();
        crate::weights::save(&named, &model)?;
        Ok(())
    }

    /// Continue from the checkpoint in `dir` (`dir/checkpoint/`, or `checkpoint.old/` left by
    /// an interrupted save). The seed becomes the checkpoint's.
    pub fn resume(&mut self, dir: &Path) -> TrainResult<()> {
        let ckpt = find(dir)?;
        let state_path = ckpt.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
        let state: State = serde_json::from_str(&text).map_err(|e| {
            TrainError::Checkpoint(format!("`{}` is not valid: {e}", state_path.display()))
        })?;
        let mismatch = |what: &str, theirs: String, ours: String| {
            TrainError::Checkpoint(format!(
                "`{}` was written for {what} `{theirs}`, this run has `{ours}`",
                state_path.display()
            ))
        };
        if state.format != FORMAT {
            return Err(mismatch(
                "format",
                state.format.to_string(),
                FORMAT.to_string(),
            ));
        }
        if state.model != self.ir.name {
            return Err(mismatch("model", state.model, self.ir.name.clone()));
        }
        if state.schedule != self.schedule.name || state.epochs != self.schedule.epochs {
            return Err(mismatch(
                "schedule",
                format!("{} ({} epochs)", state.schedule, state.epochs),
                format!("{} ({} epochs)", self.schedule.name, self.schedule.epochs),
            ));
        }
        if state.optimizer != optimizer_name(self) {
            return Err(mismatch("optimizer", state.optimizer, optimizer_name(self)));
        }
        let ours = fine_tune_lines(&self.schedule);
        if state.fine_tune != ours {
            let text = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join("; ")
                }
            };
            return Err(mismatch("fine-tuning", text(&state.fine_tune), text(&ours)));
        }
        let device = self.opts.device.clone();
        // Weights and statistics.
        let wpath = ckpt.join("weights.safetensors");
        let mut w = read_safetensors(&wpath, &Device::Cpu)?;
        for (name, var) in self
            .params
            .iter()
            .map(|p| (&p.name, &p.var))
            .chain(self.stats.iter().map(|(n, v)| (n, v)))
        {
            let t = w.remove(name).ok_or_else(|| {
                TrainError::Checkpoint(format!("`{}` has no tensor `{name}`", wpath.display()))
            })?;
            if t.dims() != var.as_tensor().dims() {
                return Err(TrainError::Checkpoint(format!(
                    "`{}`: `{name}` has shape {:?}, the network {:?}",
                    wpath.display(),
                    t.dims(),
                    var.as_tensor().dims()
                )));
            }
            var.set(&t.to_device(&device)?)?;
        }
        let opath = ckpt.join("optimizer.safetensors");
        let o = read_safetensors(&opath, &device)?;
        self.optimizer.load_state(
            &self.params,
            o,
            state.optimizer_steps,
            &opath.display().to_string(),
        )?;
        if let Some(ema) = &mut self.ema {
            let epath = ckpt.join("ema.safetensors");
            let mut e = read_safetensors(&epath, &device)?;
            for (name, t) in ema.tensors.iter_mut() {
                let v = e.remove(name.as_str()).ok_or_else(|| {
                    TrainError::Checkpoint(format!("`{}` has no tensor `{name}`", epath.display()))
                })?;
                *t = v;
            }
            ema.updates = state.ema_updates.unwrap_or(0);
        }
        if let Some(rng) = state.network_rng.as_ref().and_then(RngState::restore) {
            self.mask_rng = rng;
        }
        self.opts.seed = state.seed;
        self.epoch = state.epoch;
        self.step = state.step;
        self.elapsed_before = state.elapsed_s;
        self.history = state.metrics;
        Ok(())
    }
}

/// The checkpoint directory to resume from.
pub fn find(dir: &Path) -> TrainResult<PathBuf> {
    for name in [DIR.to_string(), format!("{DIR}.old")] {
        let p = dir.join(&name);
        if p.join("state.json").is_file() {
            return Ok(p);
        }
    }
    Err(TrainError::Checkpoint(format!(
        "`{}` has no checkpoint to resume from (expected {}/state.json)",
        dir.display(),
        dir.join(DIR).display()
    )))
}
