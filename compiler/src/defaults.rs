//! Training policy: what a run uses where the spec says nothing, written once.
//!
//! The checker fills a schedule's optimizer arguments from [`Optimizer::named`], the trainer
//! falls back to [`Schedule::optimizer_or_default`] and [`Schedule::lr_or_default`], and the
//! command line picks its schedule with [`Network::training_schedule`] and only applies the
//! user's overrides on top.

use crate::ir::{Interpolation, LrDecay, LrSchedule, Network, Optimizer, Schedule, ScheduleStage};

/// The name of a schedule written without one (`schedule MODEL { ... }`), and the one
/// training picks when a model has several.
pub const SCHEDULE_NAME: &str = "default";

/// The optimizer when a schedule names none: the paper's RMSProp (TensorFlow's form, automl's
/// settings).
pub const OPTIMIZER: Optimizer = Optimizer::Rmsprop {
    decay: 0.9,
    momentum: 0.9,
    eps: 1e-3,
    weight_decay: 1e-5,
};

/// `exponential` without arguments: automl's 0.97 every 2.4 epochs.
pub const EXPONENTIAL_RATE: f64 = 0.97;
/// See [`EXPONENTIAL_RATE`].
pub const EXPONENTIAL_EVERY: f64 = 2.4;

impl Optimizer {
    /// Every optimizer, by the name specs and `--optimizer` use.
    pub const NAMES: [&'static str; 3] = ["rmsprop", "adamw", "sgd"];

    /// The optimizer called `name` with its default settings (each argument a spec leaves
    /// out): RMSProp as automl, AdamW and SGD as timm's recipes. `None` for an unknown name.
    pub fn named(name: &str) -> Option<Optimizer> {
        match name {
            "rmsprop" => Some(OPTIMIZER),
            "adamw" => Some(Optimizer::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
            }),
            "sgd" => Some(Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 1e-4,
            }),
            _ => None,
        }
    }

    /// The name [`Optimizer::named`] takes.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Rmsprop { .. } => "rmsprop",
            Optimizer::Adamw { .. } => "adamw",
            Optimizer::Sgd { .. } => "sgd",
        }
    }

    /// The learning rate when the schedule gives none: a cosine without warm-up from a peak
    /// that suits the optimizer (RMSProp 0.016, automl's rate for batch 256; AdamW 1e-3;
    /// SGD 0.1).
    pub fn default_lr(&self) -> LrSchedule {
        let peak = match self {
            Optimizer::Rmsprop { .. } => 0.016,
            Optimizer::Adamw { .. } => 1e-3,
            Optimizer::Sgd { .. } => 0.1,
        };
        LrSchedule {
            peak,
            warmup_epochs: 0.0,
            decay: LrDecay::Cosine,
        }
    }
}

impl Schedule {
    /// The optimizer this schedule trains with: its own, or [`OPTIMIZER`].
    pub fn optimizer_or_default(&self) -> Optimizer {
        self.optimizer.clone().unwrap_or(OPTIMIZER)
    }

    /// The learning rate this schedule trains with: its own, or its optimizer's default.
    pub fn lr_or_default(&self) -> LrSchedule {
        self.lr
            .clone()
            .unwrap_or_else(|| self.optimizer_or_default().default_lr())
    }

    /// The schedule of a model whose spec gives none: `epochs` epochs in one stage at the
    /// model's training resolution and dropout, without augmentation.
    pub fn fixed(net: &Network, epochs: usize) -> Schedule {
        Schedule {
            name: "fixed".into(),
            docs: vec![],
            epochs,
            interpolation: Interpolation::Table,
            stages: vec![ScheduleStage {
                index: 0,
                epochs: (0, epochs),
                image_size: net.train_resolution.unwrap_or(net.resolution),
                randaug: 0.0,
                mixup: 0.0,
                cutmix: 0.0,
                dropout: net.dropout,
                drop_path: None,
                batch_size: None,
            }],
            optimizer: None,
            lr: None,
            label_smoothing: None,
            ema: None,
            grad_clip: None,
            freeze: vec![],
            lr_scale: vec![],
        }
    }

    /// Every epoch at the last stage's values (no progressive learning), named
    /// `NAME-fixed`.
    pub fn last_stage_only(&self) -> Schedule {
        let mut out = self.clone();
        if let Some(last) = self.stages.last() {
            let mut st = last.clone();
            st.index = 0;
            st.epochs = (0, self.epochs);
            out.stages = vec![st];
        }
        out.name = format!("{}-fixed", self.name);
        out
    }
}

impl Network {
    /// The schedule to train with: the one called `name`; else the model's only schedule, or
    /// the one called [`SCHEDULE_NAME`] among several; else, when the spec gives none,
    /// [`Schedule::fixed`] over `epochs` (then required). The error says what to add or choose.
    pub fn training_schedule(
        &self,
        name: Option<&str>,
        epochs: Option<usize>,
    ) -> Result<Schedule, String> {
        let names = || {
            self.schedules
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(n) = name {
            return self
                .schedules
                .iter()
                .find(|s| s.name == n)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "model `{}` has no schedule `{n}` (it has: {})",
                        self.name,
                        if self.schedules.is_empty() {
                            "none".to_string()
                        } else {
                            names()
                        }
                    )
                });
        }
        match self.schedules.as_slice() {
            [] => {
                let epochs = epochs.ok_or_else(|| {
                    format!(
                        "model `{}` has no schedule: add one to the spec, or give --epochs",
                        self.name
                    )
                })?;
                Ok(Schedule::fixed(self, epochs))
            }
            [only] => Ok(only.clone()),
            many => many
                .iter()
                .find(|s| s.name == SCHEDULE_NAME)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "model `{}` has several schedules ({}): choose one with --schedule",
                        self.name,
                        names()
                    )
                }),
        }
    }
}
