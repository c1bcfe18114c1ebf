//! Training-aware architecture search (Tan & Le 2021, section 3.3): draw candidates from a
//! spec's search space, measure each on this machine (exact parameters and MACs from the
//! compiler, the training step time through the runtime's own training step), train it
//! briefly on a proxy (few epochs, small images, the spec's optimizer) and score it with the
//! paper's reward `A * S^w * P^v`.
//!
//! Everything a run decides is a function of the seed and the candidates so far: candidate
//! `i` is drawn from a generator seeded by `(seed, i)` and, for evolution, the population the
//! records give. The state is written atomically after each candidate, so a killed search
//! resumes with the very candidate it would have trained next.
//!
//! Candidates run one after another: the training step already uses every core (rayon), and
//! two proxies side by side on 2 cores would each take twice as long and skew the step-time
//! measurement the reward depends on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarBuilder;
use effnet_compiler::grammar::File;
use effnet_compiler::ir::{self, Optimizer as OptimizerSpec};
use effnet_compiler::search::{
    Metric, Picks, SearchDef, Space, Strategy, candidate_network, candidate_source,
};
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, sample_rng};
use crate::exec::{Purpose, one_hot};
use crate::nn::Network;
use crate::train::optim::{Optimizer, Param};
use crate::train::{Event, TrainOptions, Trainer, init, with_epochs};

/// The state file in the output directory.
pub const STATE_FILE: &str = "search.json";
/// Version of [`State`]'s format.
const STATE_VERSION: u32 = 1;

/// What became of a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trained on the proxy and scored.
    Trained,
    /// Broke a `constraint` (measured before training, so it was not trained); reward 0.
    Violates(String),
    /// Not a valid model (lines of the space that clash); not trained, reward 0.
    Invalid(String),
}

/// One candidate's measures, as `search.csv` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 0-based, in the order drawn.
    pub index: usize,
    pub picks: Picks,
    pub status: Status,
    pub params: usize,
    pub macs: u64,
    /// Seconds per training step at the proxy's image and batch size.
    pub step_time: f64,
    /// Proxy test top-1 in [0, 1].
    pub accuracy: f64,
    pub reward: f64,
    /// Seconds spent on this candidate (measuring and training).
    pub wall_s: f64,
}

/// The measures candidates are normalized by: the search's `base` model (or the space's
/// default candidate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Base {
    pub model: String,
    pub params: usize,
    pub macs: u64,
    pub step_time: f64,
}

impl Base {
    fn value(&self, m: Metric) -> f64 {
        match m {
            Metric::StepTime => self.step_time,
            Metric::Params => self.params as f64,
            Metric::Macs => self.macs as f64,
        }
    }
}

impl Record {
    pub fn value(&self, m: Metric) -> f64 {
        match m {
            Metric::StepTime => self.step_time,
            Metric::Params => self.params as f64,
            Metric::Macs => self.macs as f64,
        }
    }
}

/// What a search has done: written to [`STATE_FILE`] after every candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub search: String,
    pub space: String,
    /// Every choice with its alternatives: a resumed search must explore the same space.
    pub choices: Vec<(String, Vec<String>)>,
    pub strategy: String,
    pub seed: u64,
    pub base: Base,
    pub records: Vec<Record>,
}

/// What [`Engine::rank_check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct RankCheck {
    /// `(candidate, proxy accuracy, longer training's accuracy)`.
    pub rows: Vec<(usize, f64, f64)>,
    pub tau: f64,
    pub epochs: usize,
}

/// Everything a search needs, checked.
pub struct Setup {
    /// The spec's text and path (for the best models' sources and their doc comments).
    pub source: String,
    pub spec_path: PathBuf,
    pub file: File,
    pub def: SearchDef,
    pub space: Space,
    pub strategy: Strategy,
    /// Candidates in all (the search's `candidates` unless overridden).
    pub budget: usize,
    pub seed: u64,
    /// Evaluate each proxy on the first N test images (`None`: all).
    pub test_images: Option<usize>,
    pub device: Device,
    pub out: PathBuf,
}

/// What [`Engine::evaluate`] reports as it goes.
pub enum Progress<'a> {
    /// Measuring the candidate's parameters and step time.
    Measuring { index: usize },
    /// A training step of the candidate's proxy run.
    Training { index: usize, event: &'a Event<'a> },
}

/// A search in progress.
pub struct Engine {
    pub setup: Setup,
    pub state: State,
    train: Dataset,
    test: Dataset,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot {what} `{}`: {e}", path.display())
}

/// Write `text` to `path` through a temporary file and a rename, so that a kill leaves the old
/// file or the new one, never half of one.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| io_err("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("replace", path, e))
}

/// Seconds per training step of `net` (forward in train mode, backward, an SGD step: the
/// step `effnet bench --train` times) on a batch of `batch` random images of `image` px: the
/// fastest of 7 steps after 2 warm-up steps. The fastest, because on a shared machine noise
/// only ever adds time: medians of the same candidate moved by 60% (15 against 24 ms) while
/// other builds ran, which would decide constraints by chance.
pub fn step_time(
    net_ir: &ir::Network,
    batch: usize,
    image: usize,
    device: &Device,
) -> Result<f64, String> {
    let ce = |e: candle_core::Error| e.to_string();
    let varmap = init::init_varmap(net_ir, 0, device).map_err(ce)?;
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device);
    let net = Network::from_ir(net_ir, vb).map_err(ce)?;
    let params: Vec<Param> = net
        .named_tensors()
        .into_iter()
        .filter(|t| t.trainable)
        .map(|t| Var::from_tensor(&t.tensor).map(|v| Param::new(t.name, v)))
        .collect::<candle_core::Result<_>>()
        .map_err(ce)?;
    let x = Tensor::randn(
        0f32,
        1f32,
        (batch, net_ir.input_channels, image, image),
        device,
    )
    .map_err(ce)?;
    let labels: Vec<usize> = (0..batch).map(|i| i % net_ir.num_classes).collect();
    let targets = one_hot(&labels, net_ir.num_classes, device).map_err(|e| e.to_string())?;
    let sgd = OptimizerSpec::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut optimizer = Optimizer::new(sgd, &params).map_err(|e| e.to_string())?;
    let plan = net.plan(&x, Purpose::TrainStep).plan;
    let mut masks = sample_rng(0, &[]);
    let mut step = || -> Result<f64, String> {
        let t = Instant::now();
        let (_, grads) = net
            .loss_and_grads_on(plan, &params, &x, &targets, &mut masks)
            .map_err(|e| e.to_string())?;
        optimizer
            .step(&params, &grads, 0.01)
            .map_err(|e| e.to_string())?;
        device.synchronize().map_err(ce)?;
        Ok(t.elapsed().as_secs_f64())
    };
    for _ in 0..2 {
        step()?;
    }
    let times = (0..7)
        .map(|_| step())
        .collect::<Result<Vec<f64>, String>>()?;
    Ok(times.into_iter().fold(f64::INFINITY, f64::min))
}

/// The indices of the records on the Pareto front of accuracy (higher is better) against
/// `metric` (lower is better): no other trained record is at least as good in both and better
/// in one. Sorted by `metric`.
pub fn pareto_front(records: &[Record], metric: Metric) -> Vec<usize> {
    let trained: Vec<&Record> = records
        .iter()
        .filter(|r| r.status == Status::Trained)
        .collect();
    let mut front: Vec<usize> = trained
        .iter()
        .filter(|r| {
            !trained.iter().any(|o| {
                o.value(metric) <= r.value(metric)
                    && o.accuracy >= r.accuracy
                    && (o.value(metric) < r.value(metric) || o.accuracy > r.accuracy)
            })
        })
        .map(|r| r.index)
        .collect();
    front.sort_by(|a, b| {
        records[*a]
            .value(metric)
            .total_cmp(&records[*b].value(metric))
    });
    front
}

/// Kendall's tau-b between two rankings of the same items (ties counted as neither
/// concordant nor discordant): 1 for the same order, -1 for the reverse.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..n {
        for j in i + 1..n {
            let da = (a[i] - a[j]).signum() * f64::from(a[i] != a[j]);
            let db = (b[i] - b[j]).signum() * f64::from(b[i] != b[j]);
            match (da == 0.0, db == 0.0) {
                (true, true) => {}
                (true, false) => ties_a += 1.0,
                (false, true) => ties_b += 1.0,
                (false, false) if da == db => concordant += 1.0,
                (false, false) => discordant += 1.0,
            }
        }
    }
    let denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (concordant - discordant) / denom
    }
}

/// The next candidate after `records`: a function of the seed and the records only, so that a
/// resumed search draws what the killed one would have.
pub fn next_picks(space: &Space, strategy: Strategy, seed: u64, records: &[Record]) -> Picks {
    let index = records.len() as u64;
    let seen: HashSet<&[usize]> = records.iter().map(|r| r.picks.as_slice()).collect();
    let mut rng = sample_rng(seed, &[0x5ea2c4, index]);
    // Stop looking for an unseen candidate after this many draws (a nearly exhausted space).
    const TRIES: usize = 64;
    let random = |rng: &mut rand_chacha::ChaCha8Rng| {
        let mut picks = space.sample(rng);
        for _ in 0..TRIES {
            if !seen.contains(picks.as_slice()) {
                break;
            }
            picks = space.sample(rng);
        }
        picks
    };
    match strategy {
        Strategy::Random => random(&mut rng),
        Strategy::Evolution {
            population,
            sample: k,
        } => {
            // The population: the last `population` candidates that are models (invalid ones
            // never join); until it is full, candidates are drawn at random.
            let alive: Vec<&Record> = records
                .iter()
                .filter(|r| !matches!(r.status, Status::Invalid(_)))
                .collect();
            if alive.len() < population {
                return random(&mut rng);
            }
            let pop = &alive[alive.len() - population..];
            let parent = sample(&mut rng, pop.len(), k.min(pop.len()))
                .into_iter()
                .map(|i| pop[i])
                .max_by(|a, b| a.reward.total_cmp(&b.reward).then(b.index.cmp(&a.index)));
            let Some(parent) = parent else {
                return random(&mut rng);
            };
            for _ in 0..TRIES {
                let child = space.mutate(&parent.picks, &mut rng);
                if !seen.contains(child.as_slice()) {
                    return child;
                }
            }
            random(&mut rng)
        }
    }
}

impl Engine {
    /// Start a search in `setup.out`, or resume the one there. Measures the base model (a new
    /// search) and loads the data.
    pub fn start(setup: Setup, data: &Path, resume: bool) -> Result<Engine, String> {
        let state_path = setup.out.join(STATE_FILE);
        let existing = state_path.exists();
        if existing && !resume {
            return Err(format!(
                "`{}` already holds a search: pass --resume to continue it, or choose another --out",
                setup.out.display()
            ));
        }
        let err = |e: crate::Error| e.to_string();
        let mut train = crate::data::load(data, crate::data::Split::Train).map_err(err)?;
        if let Some(n) = setup.def.images {
            train = train.truncate(n);
        }
        let mut test = crate::data::load(data, crate::data::Split::Test).map_err(err)?;
        if let Some(n) = setup.test_images {
            test = test.truncate(n);
        }
        let choices: Vec<(String, Vec<String>)> = setup
            .space
            .points
            .iter()
            .map(|p| {
                (
                    p.name(),
                    (0..p.alternatives.len()).map(|i| p.written(i)).collect(),
                )
            })
            .collect();
        let state = if existing {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| io_err("read", &state_path, e))?;
            let state: State = serde_json::from_str(&text)
                .map_err(|e| format!("`{}` is not a search state: {e}", state_path.display()))?;
            let differs = |what: &str| {
                format!(
                    "`{}` holds a search with another {what}; resume with the same spec, search \
                     and --seed/--strategy, or choose another --out",
                    state_path.display()
                )
            };
            if state.version != STATE_VERSION {
                return Err(differs("format version"));
            }
            if state.search != setup.def.name || state.space != setup.space.model {
                return Err(differs("search or space name"));
            }
            if state.choices != choices {
                return Err(differs("space (its choices changed)"));
            }
            if state.seed != setup.seed {
                return Err(differs(&format!("seed ({})", state.seed)));
            }
            if state.strategy != setup.strategy.name() {
                return Err(differs(&format!("strategy ({})", state.strategy)));
            }
            state
        } else {
            std::fs::create_dir_all(&setup.out).map_err(|e| io_err("create", &setup.out, e))?;
            let base = measure_base(&setup)?;
            State {
                version: STATE_VERSION,
                search: setup.def.name.clone(),
                space: setup.space.model.clone(),
                choices,
                strategy: setup.strategy.name().to_string(),
                seed: setup.seed,
                base,
                records: Vec::new(),
            }
        };
        let engine = Engine {
            setup,
            state,
            train,
            test,
        };
        engine.save()?;
        Ok(engine)
    }

    pub fn done(&self) -> bool {
        self.state.records.len() >= self.setup.budget
    }

    /// The best trained candidate by reward.
    pub fn best(&self) -> Option<&Record> {
        self.state
            .records
            .iter()
            .filter(|r| r.status == Status::Trained)
            .max_by(|a, b| a.reward.total_cmp(&b.reward).then(b.index.cmp(&a.index)))
    }

    pub fn next_picks(&self) -> Picks {
        next_picks(
            &self.setup.space,
            self.setup.strategy,
            self.setup.seed,
            &self.state.records,
        )
    }

    /// Measure, train and score the next candidate, then save the state.
    pub fn step(&mut self, observe: &mut dyn FnMut(Progress)) -> Result<Record, String> {
        let picks = self.next_picks();
        let record = self.evaluate(picks, observe)?;
        self.state.records.push(record.clone());
        self.save()?;
        Ok(record)
    }

    fn evaluate(&self, picks: Picks, observe: &mut dyn FnMut(Progress)) -> Result<Record, String> {
        let index = self.state.records.len();
        let started = Instant::now();
        let mut record = Record {
            index,
            picks: picks.clone(),
            status: Status::Trained,
            params: 0,
            macs: 0,
            step_time: 0.0,
            accuracy: 0.0,
            reward: 0.0,
            wall_s: 0.0,
        };
        let s = &self.setup;
        let mut net = match candidate_network(&s.file, &s.space, &picks) {
            Ok(net) => net,
            Err(diags) => {
                let why = diags
                    .first()
                    .map_or("not a valid model".to_string(), |d| d.message.clone());
                record.status = Status::Invalid(why);
                record.wall_s = started.elapsed().as_secs_f64();
                return Ok(record);
            }
        };
        observe(Progress::Measuring { index });
        let (schedule, image, batch) = proxy_schedule(&s.def, &net)?;
        // The proxy is evaluated at the size it trains at: BatchNorm statistics gathered at
        // 20 px and applied at 24 px cost a nano-sized model most of its accuracy
        // (29% against 82% on data/fashion after 2 epochs).
        net.resolution = image;
        record.params = net.param_count();
        record.macs = effnet_compiler::analysis::summarize(&net, image).macs;
        record.step_time = step_time(&net, batch, image, &s.device)
            .map_err(|e| format!("step time of candidate {index}: {e}"))?;
        let base = &self.state.base;
        if let Some(c) = s
            .def
            .constraints
            .iter()
            .find(|c| !c.holds(record.value(c.metric), base.value(c.metric)))
        {
            record.status = Status::Violates(c.text());
            record.wall_s = started.elapsed().as_secs_f64();
            return Ok(record);
        }
        record.accuracy = self.train_accuracy(&net, schedule, index, observe)?;
        record.reward = s
            .def
            .reward
            .score(record.accuracy, |m| (record.value(m), base.value(m)));
        record.wall_s = started.elapsed().as_secs_f64();
        Ok(record)
    }

    /// Train `net` on the search's data with `schedule`; the final test top-1.
    fn train_accuracy(
        &self,
        net: &ir::Network,
        schedule: ir::Schedule,
        index: usize,
        observe: &mut dyn FnMut(Progress),
    ) -> Result<f64, String> {
        let opts = TrainOptions {
            seed: self.setup.seed,
            device: self.setup.device.clone(),
            ..TrainOptions::default()
        };
        let mut trainer = Trainer::new(
            net,
            schedule,
            opts,
            self.train.clone(),
            Some(self.test.clone()),
        )
        .map_err(|e| e.to_string())?;
        while !trainer.done() {
            trainer
                .run_epoch(&mut |event| {
                    observe(Progress::Training {
                        index,
                        event: &event,
                    })
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(trainer
            .history
            .last()
            .and_then(|m| m.test_top1)
            .unwrap_or(0.0))
    }

    /// The proxy's ranking checked against longer training: `count` trained candidates spread
    /// evenly over the ranking by proxy accuracy, each trained `epochs` epochs with the spec's
    /// own schedule (its image sizes, its progressive learning); their accuracies and the
    /// Kendall tau between the two rankings. Written to `rank.csv`.
    pub fn rank_check(
        &self,
        count: usize,
        epochs: usize,
        observe: &mut dyn FnMut(Progress),
    ) -> Result<RankCheck, String> {
        let mut trained: Vec<&Record> = self
            .state
            .records
            .iter()
            .filter(|r| r.status == Status::Trained)
            .collect();
        trained.sort_by(|a, b| a.accuracy.total_cmp(&b.accuracy));
        let n = trained.len();
        let chosen: Vec<&Record> = if n <= count {
            trained
        } else {
            (0..count)
                .map(|i| trained[i * (n - 1) / (count - 1).max(1)])
                .collect()
        };
        let s = &self.setup;
        let mut rows = Vec::new();
        for r in chosen {
            let net = candidate_network(&s.file, &s.space, &r.picks)
                .map_err(|_| format!("candidate {} is no longer a valid model", r.index))?;
            let schedule = with_epochs(&net.training_schedule(None, Some(epochs))?, epochs);
            let long = self.train_accuracy(&net, schedule, r.index, observe)?;
            rows.push((r.index, r.accuracy, long));
        }
        let proxy: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let long: Vec<f64> = rows.iter().map(|r| r.2).collect();
        let tau = kendall_tau(&proxy, &long);
        let mut csv = String::from("candidate,proxy_accuracy,long_accuracy\n");
        for (i, p, l) in &rows {
            csv.push_str(&format!("{i},{p:.4},{l:.4}\n"));
        }
        csv.push_str(&format!("# kendall_tau {tau:.4}, {epochs} epochs\n"));
        write_atomic(&s.out.join("rank.csv"), &csv)?;
        Ok(RankCheck { rows, tau, epochs })
    }

    /// Write the state, `search.csv` and the best models.
    pub fn save(&self) -> Result<(), String> {
        let out = &self.setup.out;
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| e.to_string())?;
        write_atomic(&out.join(STATE_FILE), &text)?;
        write_atomic(&out.join("search.csv"), &self.csv())?;
        self.write_best(3)
    }

    /// One row per candidate: its choices, measures, reward and whether it is on either
    /// Pareto front.
    pub fn csv(&self) -> String {
        let space = &self.setup.space;
        let front_time: HashSet<usize> = pareto_front(&self.state.records, Metric::StepTime)
            .into_iter()
            .collect();
        let front_params: HashSet<usize> = pareto_front(&self.state.records, Metric::Params)
            .into_iter()
            .collect();
        let mut out = String::from("candidate,status");
        for p in &space.points {
            out.push(',');
            out.push_str(&p.name());
        }
        out.push_str(
            ",params,macs,step_time_ms,accuracy,reward,wall_s,pareto_step_time,pareto_params\n",
        );
        for r in &self.state.records {
            let status = match &r.status {
                Status::Trained => "trained".to_string(),
                Status::Violates(c) => format!("violates {c}"),
                Status::Invalid(_) => "invalid".to_string(),
            };
            out.push_str(&format!("{},{status}", r.index));
            for (i, p) in space.points.iter().enumerate() {
                out.push(',');
                out.push_str(&p.written(r.picks.get(i).copied().unwrap_or(0)));
            }
            out.push_str(&format!(
                ",{},{},{:.3},{:.4},{:.4},{:.1},{},{}\n",
                r.params,
                r.macs,
                r.step_time * 1e3,
                r.accuracy,
                r.reward,
                r.wall_s,
                front_time.contains(&r.index),
                front_params.contains(&r.index)
            ));
        }
        out
    }

    /// The `n` best trained candidates as ordinary specs, `best_1.effnet` ...
    fn write_best(&self, n: usize) -> Result<(), String> {
        let mut trained: Vec<&Record> = self
            .state
            .records
            .iter()
            .filter(|r| r.status == Status::Trained)
            .collect();
        trained.sort_by(|a, b| b.reward.total_cmp(&a.reward).then(a.index.cmp(&b.index)));
        for (rank, r) in trained.iter().take(n).enumerate() {
            let text = self.candidate_spec(r, rank + 1)?;
            write_atomic(
                &self.setup.out.join(format!("best_{}.effnet", rank + 1)),
                &text,
            )?;
        }
        Ok(())
    }

    /// Candidate `r` as a spec, named `SPACE_best{rank}`, its doc comment saying how it was
    /// found.
    pub fn candidate_spec(&self, r: &Record, rank: usize) -> Result<String, String> {
        let s = &self.setup;
        let name = format!("{}_best{rank}", s.space.model);
        // The picks line by line: `stage 0 fused k3 e1 x1`.
        let mut choices: Vec<(String, Vec<String>)> = Vec::new();
        for (p, &i) in s.space.points.iter().zip(&r.picks) {
            match choices.last_mut() {
                Some((line, picks)) if *line == p.line => picks.push(p.written(i)),
                _ => choices.push((p.line.clone(), vec![p.written(i)])),
            }
        }
        let choices: Vec<String> = choices
            .into_iter()
            .map(|(line, picks)| format!("{line} `{}`", picks.join(" ")))
            .collect();
        let proxy = match s.def.images {
            Some(n) => format!("{n} training images"),
            None => "all training images".to_string(),
        };
        let text = [
            format!(
                "Found by `effnet search` over the space `{}` of `{}` (search `{}`, {}, seed {}):",
                s.space.model,
                s.spec_path.display(),
                s.def.name,
                s.strategy.name(),
                s.seed
            ),
            format!(
                "candidate {} of {}, rank {rank} by reward {:.4}; proxy top-1 {:.1}% after {} \
                 epoch{} on {proxy}.",
                r.index,
                s.budget,
                r.reward,
                100.0 * r.accuracy,
                s.def.epochs,
                if s.def.epochs == 1 { "" } else { "s" }
            ),
            format!(
                "{} parameters, {} MACs at the proxy's image size, {:.2} ms per training step \
                 (measured where the search ran).",
                r.params,
                r.macs,
                r.step_time * 1e3
            ),
            format!("Choices: {}.", choices.join(", ")),
        ]
        .join(" ");
        let docs = wrap(&text, 92);
        candidate_source(&s.source, &s.file, &s.space, &r.picks, &name, &docs)
    }
}

/// `text` in lines of at most `width` characters (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// The proxy schedule of a candidate: the spec's schedule at the search's epochs, every stage
/// at the search's image size and batch; with the image size and batch used.
pub fn proxy_schedule(
    def: &SearchDef,
    net: &ir::Network,
) -> Result<(ir::Schedule, usize, usize), String> {
    let mut schedule = with_epochs(&net.training_schedule(None, Some(def.epochs))?, def.epochs);
    for st in &mut schedule.stages {
        if let Some(i) = def.image {
            st.image_size = i;
        }
        if let Some(b) = def.batch {
            st.batch_size = Some(b);
        }
    }
    let last = schedule
        .stages
        .last()
        .ok_or_else(|| format!("the schedule of `{}` has no stages", net.name))?;
    let image = last.image_size;
    let batch = last
        .batch_size
        .unwrap_or(TrainOptions::default().batch_size);
    Ok((schedule, image, batch))
}

/// The base's measures: the search's `base` model, or the space's default candidate.
fn measure_base(setup: &Setup) -> Result<Base, String> {
    let space = &setup.space;
    let net = match &setup.def.base {
        None => candidate_network(&setup.file, space, &space.default_picks()).map_err(|d| {
            format!(
                "the default candidate of `{}` is not a valid model: {}",
                space.model,
                d.first().map_or("", |d| d.message.as_str())
            )
        })?,
        Some(name) => {
            let concrete = effnet_compiler::search::defaults(&setup.file);
            let found = effnet_compiler::check::check_each(&concrete);
            let def = found
                .models
                .iter()
                .find(|m| &m.name == name)
                .ok_or_else(|| format!("the base model `{name}` has errors"))?;
            let schedules: Vec<_> = found
                .schedules
                .iter()
                .filter(|s| &s.model == name)
                .collect();
            effnet_compiler::lower(def, &schedules)
        }
    };
    let (_, image, batch) = proxy_schedule(&setup.def, &net).or_else(|_| {
        // A base without a schedule is measured at the space's proxy sizes.
        let space_net = candidate_network(&setup.file, space, &space.default_picks())
            .map_err(|_| "the space's default candidate is not a valid model".to_string())?;
        proxy_schedule(&setup.def, &space_net)
    })?;
    Ok(Base {
        model: net.name.clone(),
        params: net.param_count(),
        macs: effnet_compiler::analysis::summarize(&net, image).macs,
        step_time: step_time(&net, batch, image, &setup.device)
            .map_err(|e| format!("step time of the base: {e}"))?,
    })
}
