//! `effnet train`: progressive-learning training of a spec's model on MNIST IDX files or an
//! image folder, with checkpoints, `metrics.csv` and `curves.png` in the run directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use effnet_compiler::ir::{self, LrDecay, Optimizer, Schedule};
use effnet_runtime::data::{self, Split};
use effnet_runtime::train::metrics::write_csv;
use effnet_runtime::train::parallel::{self, SingleRank};
use effnet_runtime::train::{
    self as tr, Communicator, EpochMetrics, Event, TrainError, TrainOptions, Trainer, checkpoint,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::compute::{ComputeArgs, DeviceArg, cuda_device, device};
use super::load;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The spec file.
    pub spec: PathBuf,
    /// The model (default: the only one in the file).
    #[arg(long)]
    pub model: Option<String>,
    /// The schedule (default: `default`, or the model's only schedule).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Dataset: a directory of MNIST IDX files (data/mnist) or an image folder with train/
    /// and test/ subdirectories.
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: checkpoint/, model.safetensors, metrics.csv, curves.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from RUN_DIR/checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Data parallel: one rank per device, each training on its share of every batch, the
    /// gradients averaged over the ranks. GPUs by number (`0,1,2,3`; needs a build with
    /// `--features nccl`, gradients all-reduced with NCCL), or CPU ranks (`cpu:0,cpu:1`,
    /// threads of this process sharing the CPU, for checking a run's setup). Every stage's
    /// batch must be a multiple of the number of ranks.
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// With --devices: SyncBatchNorm, every train-mode BatchNorm normalizing with the whole
    /// global batch's statistics (all ranks) and the running statistics kept identical on
    /// every rank. Without it each rank uses its shard's own statistics (DDP's default).
    /// Needs the cpu-step or cuda-step training plan (f32).
    #[arg(long)]
    pub sync_bn: bool,
    /// With --devices: how long a rank waits at a collective for the others before the run
    /// stops, naming the ranks that did not arrive (default 1800: rank 0's evaluation at an
    /// epoch's end is the longest legitimate wait).
    #[arg(long, value_name = "SECS")]
    pub collective_timeout: Option<f64>,
    /// Seed of the weights, the data order and every augmentation (default 0; a resumed run
    /// keeps its checkpoint's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Total epochs, the stages keeping their shares of them.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer with its default settings: rmsprop, adamw or sgd.
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Batch size for every stage.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Train every epoch at the last stage's settings (no progressive learning), for
    /// comparisons on the same epoch budget.
    #[arg(long)]
    pub fixed: bool,
    /// Data worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Also report the test accuracy of the raw weights when the schedule has EMA.
    #[arg(long)]
    pub eval_raw: bool,
    /// The training step's arithmetic: f32, or bf16 mixed precision (bf16 activations and
    /// GEMMs, f32 master weights, BatchNorm statistics and optimizer; on a GPU only).
    #[arg(long, value_enum, default_value_t)]
    pub precision: super::bench::PrecisionArg,
    /// Fine-tune: start from these weights (safetensors with timm or torchvision names). A
    /// classifier whose class count differs from the model's is new and freshly initialized;
    /// any other difference is an error.
    #[arg(long, value_name = "W.safetensors")]
    pub init: Option<PathBuf>,
    /// Fine-tune: freeze parts, as the schedule's `freeze` (repeatable), e.g.
    /// "stem, stages 0..3 for 2 epochs". Parts: stem, stages A..B (B excluded) or stages A,
    /// head, classifier, backbone (all but the classifier).
    #[arg(long, value_name = "PARTS [for N epochs]")]
    pub freeze: Vec<String>,
    /// Fine-tune: scale the learning rate of parts, as the schedule's `lr_scale` (repeatable),
    /// e.g. "backbone 0.1".
    #[arg(long = "lr-scale", value_name = "PARTS FACTOR")]
    pub lr_scale: Vec<String>,
    /// With torchvision's weights for --init, train with the spec's BatchNorm eps and padding
    /// even where torchvision's network uses others (by default an error).
    #[arg(long)]
    pub keep_spec_conventions: bool,
}

/// The `--freeze` and `--lr-scale` flags added to the schedule's own statements (after them,
/// so a flag's `lr_scale` overrides the spec's for the parts it names). A mistake is reported
/// like a spec's, with the flag's text as the source.
fn add_fine_tune_flags(a: &TrainArgs, net: &ir::Network, s: &mut Schedule) -> Result<(), String> {
    let report = |flag: &str, text: &str, diags: &[effnet_compiler::Diagnostic]| {
        super::print_diagnostics(
            &effnet_compiler::SourceFile::new(format!("{flag} \"{text}\""), text.to_string()),
            diags,
        );
        format!("{flag} \"{text}\" is not valid")
    };
    for text in &a.freeze {
        let f = effnet_compiler::check::freeze_flag(text, net)
            .map_err(|d| report("--freeze", text, &d))?;
        s.freeze.push(f);
    }
    for text in &a.lr_scale {
        let l = effnet_compiler::check::lr_scale_flag(text, net)
            .map_err(|d| report("--lr-scale", text, &d))?;
        s.lr_scale.push(l);
    }
    Ok(())
}

fn describe_optimizer(o: &Optimizer) -> String {
    match o {
        Optimizer::Rmsprop {
            decay,
            momentum,
            eps,
            weight_decay,
        } => format!(
            "rmsprop (TF form) decay {decay} momentum {momentum} eps {eps} weight_decay {weight_decay}"
        ),
        Optimizer::Adamw {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => format!("adamw betas ({beta1}, {beta2}) eps {eps} weight_decay {weight_decay}"),
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => format!(
            "sgd momentum {momentum}{} weight_decay {weight_decay}",
            if *nesterov { " nesterov" } else { "" }
        ),
    }
}

fn describe_lr(l: &ir::LrSchedule) -> String {
    let decay = match l.decay {
        LrDecay::Constant => "constant".to_string(),
        LrDecay::Cosine => "cosine".to_string(),
        LrDecay::Exponential { rate, every } => format!("x{rate} every {every} epochs"),
    };
    format!("peak {} warmup {} epochs, {decay}", l.peak, l.warmup_epochs)
}

/// Where the run computes, and on how many threads (`--threads` sizes the one pool).
pub fn compute_line(device: &candle_core::Device) -> String {
    let threads = rayon::current_num_threads();
    let where_ = if device.is_cpu() { "cpu" } else { "cuda" };
    format!(
        "compute {where_} ({}), {threads} thread{}",
        effnet_runtime::exec::device_model(device),
        if threads == 1 { "" } else { "s" }
    )
}

fn print_table(t: &Trainer, data_desc: &str, ranks: &Ranks) {
    let s = &t.schedule;
    println!(
        "model {} ({} params, input {} x {}), {} classes",
        t.ir.name,
        t.ir.param_count(),
        t.ir.input_channels,
        t.ir.resolution,
        t.ir.num_classes
    );
    println!("data {data_desc}");
    match t.step_plan() {
        Ok(plan) if t.opts.precision == effnet_runtime::Precision::Bf16 => println!(
            "training step plan: {plan}, mixed precision (bf16 activations and GEMMs, f32 \
             master weights)"
        ),
        Ok(plan) => println!("training step plan: {plan}"),
        Err(e) => println!("training step plan: unknown ({e})"),
    }
    println!("{}", compute_line(&t.opts.device));
    if let Some(list) = &ranks.list {
        let w = ranks.devices.len();
        println!(
            "data parallel: {w} rank{} on {list} ({}); each stage's batch split into {w} \
             shards; gradients and loss averaged over the ranks; {}; rank 0 writes \
             checkpoints and metrics; a collective waits at most {} s",
            if w == 1 { "" } else { "s" },
            if ranks.cuda { "NCCL" } else { "CPU threads" },
            if t.syncs_batch_norm() {
                "BatchNorm statistics synchronized over the ranks (--sync-bn)"
            } else {
                "BatchNorm statistics per rank, rank 0's saved"
            },
            ranks.timeout.as_secs_f64()
        );
    }
    println!(
        "schedule {}: {} epochs, {} stage{} ({:?}); optimizer {}; lr {}; label smoothing {}; ema {}; grad clip {}; seed {}",
        s.name,
        s.epochs,
        s.stages.len(),
        if s.stages.len() == 1 { "" } else { "s" },
        s.interpolation,
        describe_optimizer(&t.optimizer.spec),
        describe_lr(&t.lr),
        s.label_smoothing.unwrap_or(0.0),
        s.ema.map_or("off".to_string(), |e| e.to_string()),
        s.grad_clip.map_or("off".to_string(), |e| e.to_string()),
        t.opts.seed
    );
    println!(
        "{:>5}  {:>7}  {:>5}  {:>7}  {:>5}  {:>6}  {:>7}  {:>9}  {:>5}",
        "stage", "epochs", "image", "randaug", "mixup", "cutmix", "dropout", "drop_path", "batch"
    );
    for st in &s.stages {
        println!(
            "{:>5}  {:>7}  {:>5}  {:>7.2}  {:>5.2}  {:>6.2}  {:>7.3}  {:>9}  {:>5}",
            st.index,
            format!("{}-{}", st.epochs.0 + 1, st.epochs.1),
            st.image_size,
            st.randaug,
            st.mixup,
            st.cutmix,
            st.dropout,
            st.drop_path
                .map_or(format!("{:.3}", t.ir.drop_path), |d| format!("{d:.3}")),
            st.batch_size.unwrap_or(t.opts.batch_size)
        );
    }
}

pub fn run(a: TrainArgs) -> Result<ExitCode, String> {
    let loaded = load(&a.spec, a.model.as_deref())?;
    let net = &loaded.network;
    // The schedule and every default come from the compiler; here only the user's overrides.
    let mut schedule = net.training_schedule(a.schedule.as_deref(), a.epochs)?;
    if let Some(e) = a.epochs {
        if e == 0 {
            return Err("--epochs must be at least 1".into());
        }
        schedule = tr::with_epochs(&schedule, e);
    }
    if a.fixed {
        schedule = schedule.last_stage_only();
    }
    if let Some(o) = &a.optimizer {
        schedule.optimizer = Some(
            Optimizer::named(o)
                .ok_or_else(|| format!("--optimizer `{o}`: expected rmsprop, adamw or sgd"))?,
        );
    }
    if let Some(lr) = a.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("--lr {lr}: expected a positive number"));
        }
        let mut l = schedule.lr_or_default();
        l.peak = lr;
        schedule.lr = Some(l);
    }
    if let Some(b) = a.batch {
        if b == 0 {
            return Err("--batch must be at least 1".into());
        }
        for st in &mut schedule.stages {
            st.batch_size = Some(b);
        }
    }
    add_fine_tune_flags(&a, net, &mut schedule)?;
    let ranks = ranks(&a)?;
    let err = |e: effnet_runtime::Error| e.to_string();
    let mut train_data = data::load(&a.data, Split::Train).map_err(err)?;
    if let Some(n) = a.train_limit {
        train_data = train_data.truncate(n);
    }
    let test_data = data::load(&a.data, Split::Test).map_err(err)?;
    let data_desc = format!(
        "{}: {} train / {} test images, {} classes",
        a.data.display(),
        train_data.len(),
        test_data.len(),
        train_data.num_classes()
    );
    let world = ranks.devices.len();
    let default_batch = TrainOptions::default().batch_size;
    for st in &schedule.stages {
        let batch = st.batch_size.unwrap_or(default_batch);
        if batch % world != 0 {
            return Err(format!(
                "--devices {}: {world} ranks, but stage {}'s batch of {batch} images does not \
                 split into {world} equal shards; choose a batch that is a multiple of {world} \
                 (--batch)",
                ranks.list.as_deref().unwrap_or_default(),
                st.index
            ));
        }
    }
    if !a.resume && checkpoint::find(&a.out).is_ok() {
        return Err(format!(
            "`{}` already holds a checkpoint: pass --resume to continue it, or choose another --out",
            a.out.display()
        ));
    }
    let opts = TrainOptions {
        seed: a.seed.unwrap_or(0),
        workers: a.workers,
        device: ranks.devices[0].clone(),
        evaluate_raw: a.eval_raw,
        precision: a.precision.precision(),
        sync_bn: a.sync_bn,
        ..TrainOptions::default()
    };
    let run = Run {
        a: &a,
        net,
        schedule,
        opts,
        train_data: Arc::new(train_data),
        test_data: Arc::new(test_data),
        data_desc,
        ranks: &ranks,
    };
    let result = if ranks.devices.len() == 1 {
        // One rank: the loop on this thread, exactly as without data parallelism.
        run.rank(Arc::new(SingleRank))
    } else {
        let comms = communicators(&ranks).map_err(|e| e.to_string())?;
        // A rank stuck inside its own step cannot be stopped, nor its thread joined: once the
        // others have stopped and the grace (the collective timeout) has passed, report and
        // leave the process; the checkpoint on disk is complete (written between epochs).
        let on_stuck = |e: TrainError| {
            eprintln!("error: {}", stopped_run_message(e, &a.out));
            std::process::exit(1);
        };
        let watch = parallel::Watch {
            grace: ranks.timeout,
            on_stuck: &on_stuck,
        };
        parallel::run_ranks_watched(comms, |comm| run.rank(comm), Some(watch)).map(|_| ())
    };
    result.map_err(|e| stopped_run_message(e, &a.out))?;
    Ok(ExitCode::SUCCESS)
}

/// What stopped a run, and what became of its checkpoint in `out`.
fn stopped_run_message(e: TrainError, out: &std::path::Path) -> String {
    match e {
        TrainError::Rank { .. }
        | TrainError::PeerFailed { .. }
        | TrainError::CollectiveTimeout { .. }
        | TrainError::Stuck { .. } => match checkpoint::find(out) {
            Ok(ckpt) => format!(
                "{e}; the last checkpoint is intact in `{}` (continue with --resume)",
                ckpt.display()
            ),
            Err(_) => format!("{e}; no checkpoint was written to `{}`", out.display()),
        },
        e => e.to_string(),
    }
}

/// The ranks of a run: one device each (one rank without `--devices`).
struct Ranks {
    devices: Vec<candle_core::Device>,
    /// `--devices` as given, for the report.
    list: Option<String>,
    cuda: bool,
    /// How long a collective waits for the other ranks (`--collective-timeout`).
    timeout: Duration,
}

/// The devices of `--devices`, or `--device`'s one.
fn ranks(a: &TrainArgs) -> Result<Ranks, String> {
    let timeout = match a.collective_timeout {
        None => parallel::DEFAULT_COLLECTIVE_TIMEOUT,
        Some(secs) => Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("--collective-timeout {secs}: expected a positive number of seconds")
            })?,
    };
    let Some(list) = &a.devices else {
        for (given, flag) in [
            (a.sync_bn, "--sync-bn"),
            (a.collective_timeout.is_some(), "--collective-timeout"),
        ] {
            if given {
                return Err(format!(
                    "{flag} applies to the ranks of a data-parallel run: add --devices (for \
                     example `--devices 0,1`, or `--devices cpu:0,cpu:1`)"
                ));
            }
        }
        return Ok(Ranks {
            devices: vec![device(a.compute.device)?],
            list: None,
            cuda: a.compute.device == DeviceArg::Cuda,
            timeout,
        });
    };
    let flag = format!("--devices {list}");
    let mut cpu = Vec::new();
    let mut gpus = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (is_cpu, number) = match item.strip_prefix("cpu:") {
            Some(n) => (true, n),
            None => (false, item.strip_prefix("cuda:").unwrap_or(item)),
        };
        let n: usize = number.parse().map_err(|_| {
            format!(
                "{flag}: `{item}` is not a device; expected GPU numbers (`0,1`) or CPU ranks \
                 (`cpu:0,cpu:1`)"
            )
        })?;
        let seen = if is_cpu { &mut cpu } else { &mut gpus };
        if seen.contains(&n) {
            return Err(format!(
                "{flag}: `{item}` is listed twice; one rank per device (NCCL refuses two ranks \
                 on one GPU)"
            ));
        }
        seen.push(n);
    }
    if !cpu.is_empty() && !gpus.is_empty() {
        return Err(format!(
            "{flag}: mixes CPU and GPU ranks; list GPUs (`0,1`) or CPU ranks (`cpu:0,cpu:1`)"
        ));
    }
    if !cpu.is_empty() {
        if a.compute.device == DeviceArg::Cuda {
            return Err(format!(
                "{flag} names CPU ranks but `--device cuda` was given; drop one of them"
            ));
        }
        return Ok(Ranks {
            devices: vec![candle_core::Device::Cpu; cpu.len()],
            list: Some(list.clone()),
            cuda: false,
            timeout,
        });
    }
    let cpu_list = (0..gpus.len())
        .map(|i| format!("cpu:{i}"))
        .collect::<Vec<_>>()
        .join(",");
    if !cfg!(feature = "cuda") {
        return Err(format!(
            "{flag} names GPUs: this effnet was built without CUDA support; rebuild it with \
             `cargo build --release --features nccl` (needs the CUDA toolkit and NCCL), or use \
             CPU ranks (`--devices {cpu_list}`)"
        ));
    }
    if gpus.len() > 1 && !cfg!(feature = "nccl") {
        return Err(format!(
            "{flag}: several GPUs average their gradients with NCCL, and this effnet was built \
             without it; rebuild it with `cargo build --release --features nccl` (needs \
             libnccl.so.2), or use CPU ranks (`--devices {cpu_list}`)"
        ));
    }
    let devices = gpus
        .iter()
        .map(|&g| cuda_device(g, &flag))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ranks {
        devices,
        list: Some(list.clone()),
        cuda: true,
        timeout,
    })
}

/// One communicator per rank: NCCL's for GPUs, the CPU one for CPU ranks.
fn communicators(r: &Ranks) -> Result<Vec<Arc<dyn Communicator>>, TrainError> {
    if !r.cuda {
        return Ok(parallel::cpu_ranks_with_timeout(r.devices.len(), r.timeout));
    }
    #[cfg(feature = "nccl")]
    {
        tr::nccl::nccl_ranks(&r.devices, r.timeout)
    }
    #[cfg(not(feature = "nccl"))]
    Err(TrainError::Config(
        "several GPU ranks need a build with `--features nccl`".into(),
    ))
}

/// What every rank of a run shares.
struct Run<'a> {
    a: &'a TrainArgs,
    net: &'a ir::Network,
    schedule: Schedule,
    opts: TrainOptions,
    train_data: Arc<data::Dataset>,
    test_data: Arc<data::Dataset>,
    data_desc: String,
    ranks: &'a Ranks,
}

impl Run<'_> {
    /// One rank's run: every rank trains; rank 0 alone prints, writes the checkpoints,
    /// `metrics.csv` and `curves.png`.
    fn rank(&self, comm: Arc<dyn Communicator>) -> Result<(), TrainError> {
        let a = self.a;
        let lead = comm.rank() == 0;
        let cfg = TrainError::Config;
        let opts = TrainOptions {
            device: self.ranks.devices[comm.rank()].clone(),
            ..self.opts.clone()
        };
        let mut trainer = Trainer::with_shared_data(
            self.net,
            self.schedule.clone(),
            opts,
            self.train_data.clone(),
            Some(self.test_data.clone()),
        )?;
        trainer.out_dir = Some(a.out.clone());
        let mut init_line = None;
        if let Some(w) = a.init.as_ref().filter(|_| !a.resume) {
            let init = trainer.init_from(
                w,
                effnet_runtime::weights::LoadOptions {
                    keep_spec_conventions: a.keep_spec_conventions,
                },
            )?;
            init_line = Some(init.to_string());
        }
        let mut resumed = None;
        if a.resume {
            trainer.resume(&a.out)?;
            if let Some(seed) = a.seed.filter(|&s| s != trainer.opts.seed) {
                return Err(cfg(format!(
                    "--seed {seed} differs from the checkpoint's seed {} in `{}`; drop --seed to resume",
                    trainer.opts.seed,
                    a.out.join(checkpoint::DIR).display()
                )));
            }
            resumed = checkpoint::find(&a.out)
                .ok()
                .and_then(|c| std::fs::read_to_string(c.join("state.json")).ok())
                .and_then(|t| serde_json::from_str::<checkpoint::State>(&t).ok());
        }
        // Every rank starts from rank 0's weights.
        trainer.join(comm)?;
        if lead {
            std::fs::create_dir_all(&a.out).map_err(|e| {
                cfg(format!(
                    "cannot create run directory `{}`: {e}",
                    a.out.display()
                ))
            })?;
            if a.resume {
                println!(
                    "resuming `{}` after epoch {} of {}",
                    a.out.display(),
                    trainer.epoch,
                    trainer.schedule.epochs
                );
                let resumed_ranks = resumed.as_ref().map(|s| s.ranks);
                if let Some(n) = resumed_ranks.filter(|&n| n != trainer.world_size()) {
                    println!(
                        "note: the checkpoint was trained on {n} rank{}, this run has {}: it \
                         continues, but not as the original run would have (BatchNorm \
                         statistics and masks are per rank)",
                        if n == 1 { "" } else { "s" },
                        trainer.world_size()
                    );
                }
                let synced = trainer.syncs_batch_norm();
                if let Some(s) = resumed.as_ref().filter(|s| s.sync_bn != synced) {
                    println!(
                        "note: the checkpoint was trained with BatchNorm statistics {}, this run \
                         {}: it continues, but not as the original run would have",
                        if s.sync_bn {
                            "synchronized over the ranks (--sync-bn)"
                        } else {
                            "per rank"
                        },
                        if synced {
                            "synchronizes them"
                        } else {
                            "keeps them per rank"
                        }
                    );
                }
            }
            print_table(&trainer, &self.data_desc, self.ranks);
            if let Some(line) = init_line {
                println!("{line}");
            } else if let Some(w) = a.init.as_ref().filter(|_| a.resume) {
                println!(
                    "init: the weights come from the checkpoint (`{}` is not read again)",
                    w.display()
                );
            }
            for line in checkpoint::fine_tune_lines(&trainer.schedule) {
                println!("fine-tune: {line}");
            }
            if trainer.done() {
                println!(
                    "nothing to do: all {} epochs are done",
                    trainer.schedule.epochs
                );
            }
        }
        while !trainer.done() {
            let frozen = trainer.frozen_parts(trainer.epoch);
            if lead && !frozen.is_empty() {
                println!(
                    "epoch {:>3}: frozen {} (BatchNorm in eval mode)",
                    trainer.epoch + 1,
                    frozen.join(", ")
                );
            }
            let m = run_epoch_with_bar(&mut trainer, lead)?;
            if !lead {
                continue;
            }
            trainer.save_checkpoint(&a.out)?;
            write_csv(&trainer.history, &a.out.join("metrics.csv"))?;
            if let Err(e) = plot_curves(
                &trainer.history,
                &trainer.schedule,
                &a.out.join("curves.png"),
            ) {
                eprintln!("warning: {e}");
            }
            println!(
                "epoch {:>3}/{} stage {} {:>3}px  loss {:.4}  test top-1 {}  top-5 {}  {:.0} img/s  {:.1}s (total {:.1}s)",
                m.epoch,
                trainer.schedule.epochs,
                m.stage,
                m.image_size,
                m.train_loss,
                pct(m.test_top1),
                pct(m.test_top5),
                m.train_images_per_sec,
                m.wall_s,
                m.elapsed_s
            );
        }
        if lead && let Some(last) = trainer.history.last() {
            println!(
                "done: test top-1 {} after {} epochs in {:.1}s; weights in `{}`",
                pct(last.test_top1),
                last.epoch,
                last.elapsed_s,
                tr::model_path(&a.out).display()
            );
        }
        Ok(())
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v))
}

/// Run the next epoch; `show` draws the progress bar (rank 0 of a data-parallel run).
fn run_epoch_with_bar(trainer: &mut Trainer, show: bool) -> Result<EpochMetrics, TrainError> {
    if !show {
        return trainer.run_epoch(&mut |_| {});
    }
    let mut bar: Option<ProgressBar> = None;
    let mut seen = 0usize;
    let mut loss_avg = 0.0;
    let start = std::time::Instant::now();
    let epochs = trainer.schedule.epochs;
    let mut observe = |e: Event| match e {
        Event::EpochStart {
            epoch,
            stage,
            batch_size,
            steps,
        } => {
            let pb =
                ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:25.cyan/blue}] {pos}/{len} {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            pb.set_style(style);
            pb.set_prefix(format!(
                "epoch {}/{epochs} stage {} {}px b{batch_size}",
                epoch + 1,
                stage.index,
                stage.image_size
            ));
            pb.enable_steady_tick(Duration::from_millis(500));
            bar = Some(pb);
        }
        Event::Step {
            step,
            loss,
            lr,
            images,
            ..
        } => {
            seen += images;
            loss_avg = if step == 0 {
                loss
            } else {
                0.9 * loss_avg + 0.1 * loss
            };
            if let Some(pb) = &bar {
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                pb.set_message(format!(
                    "loss {loss_avg:.4} lr {lr:.2e} {:.0} img/s",
                    seen as f64 / secs
                ));
                pb.inc(1);
            }
        }
        Event::Evaluating { .. } => {
            if let Some(pb) = &bar {
                pb.set_message(format!("loss {loss_avg:.4} evaluating..."));
            }
        }
    };
    let r = trainer.run_epoch(&mut observe);
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    r
}

static FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");

/// Loss and accuracy against epochs, stage boundaries as dashed lines labelled with the
/// image size.
pub fn plot_curves(rows: &[EpochMetrics], schedule: &Schedule, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    if rows.is_empty() {
        return Ok(());
    }
    let perr = |e: &dyn std::fmt::Display| format!("cannot draw `{}`: {e}", path.display());
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let (top, bottom) = root.split_vertically(350);
    let max_epoch = schedule.epochs.max(rows.len()) as f64;
    let max_loss = rows
        .iter()
        .map(|r| r.train_loss)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let boundaries: Vec<(f64, usize)> = schedule
        .stages
        .iter()
        .map(|s| (s.epochs.0 as f64, s.image_size))
        .collect();

    let mut loss_chart = ChartBuilder::on(&top)
        .caption("training loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_epoch, 0f64..max_loss)
        .map_err(|e| perr(&e))?;
    loss_chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .draw()
        .map_err(|e| perr(&e))?;
    loss_chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.epoch as f64, r.train_loss)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| perr(&e))?;
    loss_chart
        .draw_series(
            rows.iter()
                .map(|r| Circle::new((r.epoch as f64, r.train_loss), 3, BLUE.filled())),
        )
        .map_err(|e| perr(&e))?;

    let accs: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.test_top1.map(|a| (r.epoch as f64, 100.0 * a)))
        .collect();
    let min_acc = accs.iter().map(|a| a.1).fold(100.0f64, f64::min);
    let lo = (min_acc - 5.0).clamp(0.0, 95.0).floor();
    let mut acc_chart = ChartBuilder::on(&bottom)
        .caption("test top-1 (%)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_epoch, lo..100f64)
        .map_err(|e| perr(&e))?;
    acc_chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("top-1 %")
        .draw()
        .map_err(|e| perr(&e))?;
    acc_chart
        .draw_series(LineSeries::new(accs.iter().copied(), RED.stroke_width(2)))
        .map_err(|e| perr(&e))?;
    acc_chart
        .draw_series(accs.iter().map(|&p| Circle::new(p, 3, RED.filled())))
        .map_err(|e| perr(&e))?;

    // Stage boundaries, dashed, with the stage's image size.
    let gray = RGBColor(120, 120, 120);
    for (x, size) in &boundaries {
        for dash in 0..20 {
            let a = max_loss * dash as f64 / 20.0;
            let b = a + max_loss / 40.0;
            loss_chart
                .draw_series(LineSeries::new([(*x, a), (*x, b)], gray))
                .map_err(|e| perr(&e))?;
            let span = 100.0 - lo;
            let a = lo + span * dash as f64 / 20.0;
            let b = a + span / 40.0;
            acc_chart
                .draw_series(LineSeries::new([(*x, a), (*x, b)], gray))
                .map_err(|e| perr(&e))?;
        }
        loss_chart
            .draw_series(std::iter::once(Text::new(
                format!("{size}px"),
                (*x + max_epoch * 0.01, max_loss * 0.95),
                ("sans-serif", 15).into_font().color(&gray),
            )))
            .map_err(|e| perr(&e))?;
    }
    root.present().map_err(|e| perr(&e))?;
    Ok(())
}
