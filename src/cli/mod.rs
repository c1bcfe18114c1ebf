//! Subcommands. Each returns its exit code; an `Err` is a user error (exit 1) whose message
//! names the file and what was expected.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use effnet_compiler::{Diagnostic, SourceFile, compile_each, ir, render};

mod bench;
mod check;
mod compute;
mod eval;
#[cfg(feature = "expand")]
mod expand;
mod export;
mod fmt;
mod import;
mod predict;
mod run;
mod search;
mod summary;
mod train;

#[derive(Parser, Debug)]
#[command(
    name = "effnet",
    version,
    about = "EfficientNet model-description compiler and runtime"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Also show the warnings of the model a command uses (`check` always shows every warning).
    #[arg(long, global = true)]
    pub warnings: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check spec files: exit 0 when clean (warnings are printed), 1 with diagnostics.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Per-stage table of a model: blocks, channels, resolution, parameters, multiply-adds.
    Summary {
        file: PathBuf,
        #[arg(long)]
        model: Option<String>,
        /// Input resolution (default: the model's eval resolution).
        #[arg(long)]
        resolution: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Print the IR of a model as JSON.
    Ir {
        file: PathBuf,
        #[arg(long)]
        model: Option<String>,
    },
    /// Print the Rust code `#[effnet::model]` generates for a model, formatted.
    #[cfg(feature = "expand")]
    Expand {
        file: PathBuf,
        #[arg(long)]
        model: Option<String>,
    },
    /// Run a model on a NumPy batch (NCHW) and write its logits as NumPy.
    Run {
        spec: PathBuf,
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        weights: run::WeightsArgs,
        /// Input batch, `.npy`, [batch, channels, height, width].
        #[arg(long)]
        input: PathBuf,
        /// Where to write the logits (`.npy`, float32).
        #[arg(long)]
        output: PathBuf,
        /// Write these feature-pyramid levels instead of the logits (timm's `out_indices`:
        /// `1,2,3,4` or `[1,2,3,4]`; `effnet summary` lists them), each to OUTPUT with
        /// `.level{i}` before its extension.
        #[arg(long, value_parser = run::parse_levels)]
        features: Option<run::Levels>,
        #[command(flatten)]
        compute: compute::ComputeArgs,
        #[arg(long, value_enum, default_value_t)]
        dtype: run::DtypeArg,
    },
    /// Classify images: top classes with their probabilities.
    Predict {
        spec: PathBuf,
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        weights: run::WeightsArgs,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Class names, one per line.
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[command(flatten)]
        compute: compute::ComputeArgs,
        #[arg(long, value_enum, default_value_t)]
        dtype: run::DtypeArg,
    },
    /// Images per second with random weights, inference or (--train) SGD steps.
    Bench {
        spec: PathBuf,
        #[arg(long)]
        model: Option<String>,
        /// Input resolution (default: the model's eval resolution).
        #[arg(long)]
        resolution: Option<usize>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long)]
        train: bool,
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[command(flatten)]
        compute: compute::ComputeArgs,
        #[arg(long, value_enum, default_value_t)]
        dtype: run::DtypeArg,
        /// Run on this execution plan instead of the one the facts choose (an error when
        /// they do not allow it): cpu-fused, cuda-fused and candle for inference, cpu-step,
        /// cuda-step and candle for --train.
        #[arg(long, value_enum)]
        plan: Option<bench::PlanArg>,
        /// The training step's arithmetic with --train: f32, or bf16 mixed precision (bf16
        /// activations and GEMMs, f32 master weights; the cuda-step plan only).
        #[arg(long, value_enum, default_value_t, requires = "train")]
        precision: bench::PrecisionArg,
        /// After the timed calls, profile --iters more: each layer operation timed to the
        /// device's completion, summed by kind (depthwise kxk, pointwise, dense, SE, ...;
        /// with --train their forward and backward, and the optimizer's update), largest share
        /// first. Training steps on the cpu-step and cuda-step plans.
        #[arg(long)]
        profile: bool,
        #[arg(long)]
        json: bool,
    },
    /// Format spec files in place, as `cargo fmt` does.
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only report files that would change (exit 1 if any).
        #[arg(long)]
        check: bool,
    },
    /// Train a model with its progressive-learning schedule; checkpoints, metrics.csv and
    /// curves.png go to the run directory.
    Train(train::TrainArgs),
    /// Training-aware architecture search over a spec's choices (`effnet search SPEC --data D
    /// --out DIR`): search.csv, pareto.png and the best models as specs.
    Search(search::SearchArgs),
    /// Top-1 / top-5 accuracy of a model with given weights on a dataset.
    Eval(eval::EvalArgs),
    /// Write a model with its weights as ONNX: standard operators, timm's tensor names.
    Export(export::ExportArgs),
    /// Write a .effnet model from timm's or automl's block strings.
    Import {
        #[command(subcommand)]
        source: import::Source,
    },
}

impl Command {
    /// The device and thread options of a command that computes.
    fn compute(&self) -> Option<&compute::ComputeArgs> {
        match self {
            Command::Run { compute, .. }
            | Command::Predict { compute, .. }
            | Command::Bench { compute, .. } => Some(compute),
            Command::Train(a) => Some(&a.compute),
            Command::Search(a) => Some(&a.compute),
            Command::Eval(a) => Some(&a.compute),
            _ => None,
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, String> {
    // One compute pool, sized before anything computes.
    if let Some(c) = cli.command.compute() {
        compute::configure_threads(c.threads)?;
    }
    SHOW_WARNINGS.store(cli.warnings, Ordering::Relaxed);
    match cli.command {
        Command::Check { files } => check::run(&files),
        Command::Summary {
            file,
            model,
            resolution,
            json,
        } => summary::run(&file, model.as_deref(), resolution, json),
        Command::Run {
            spec,
            model,
            weights,
            input,
            output,
            features,
            compute,
            dtype,
        } => run::run(
            &spec,
            model.as_deref(),
            &weights,
            &input,
            &output,
            features.as_ref(),
            compute.device,
            dtype,
        ),
        Command::Predict {
            spec,
            model,
            weights,
            images,
            labels,
            top,
            compute,
            dtype,
        } => predict::run(
            &spec,
            model.as_deref(),
            &weights,
            &images,
            labels.as_deref(),
            top,
            compute.device,
            dtype,
        ),
        Command::Bench {
            spec,
            model,
            resolution,
            batch,
            train,
            iters,
            warmup,
            compute,
            dtype,
            plan,
            precision,
            profile,
            json,
        } => bench::run(&bench::BenchArgs {
            spec: &spec,
            model: model.as_deref(),
            resolution,
            batch,
            train,
            iters,
            warmup,
            device: compute.device,
            dtype,
            plan,
            precision: precision.precision(),
            profile,
            json,
        }),
        Command::Fmt { files, check } => fmt::run(&files, check),
        Command::Import { source } => import::run(source),
        Command::Train(args) => train::run(args),
        Command::Search(args) => search::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        #[cfg(feature = "expand")]
        Command::Expand { file, model } => expand::run(&file, model.as_deref()),
        Command::Ir { file, model } => {
            let net = &load(&file, model.as_deref())?.network;
            // The network plus the flat list of every tensor (timm name, shape) and the count.
            let mut value = serde_json::to_value(net).map_err(|e| e.to_string())?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("params".into(), net.param_count().into());
                let tensors = serde_json::to_value(net.tensors()).map_err(|e| e.to_string())?;
                obj.insert("tensors".into(), tensors);
            }
            let json = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read a spec file with an error that names it. A file that is not UTF-8 gets its diagnostic
/// (line and column of the first invalid byte) printed.
pub fn read_spec(path: &Path) -> Result<SourceFile, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read spec `{}`: {e}", path.display()))?;
    SourceFile::from_bytes(path.display().to_string(), bytes).map_err(|not_utf8| {
        print_diagnostics(&not_utf8.file, std::slice::from_ref(&not_utf8.diagnostic));
        format!("`{}` is not valid UTF-8", path.display())
    })
}

fn use_color() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

pub fn print_diagnostics(file: &SourceFile, diagnostics: &[Diagnostic]) {
    if !diagnostics.is_empty() {
        eprint!("{}", render(file, diagnostics, use_color()));
    }
}

/// `--warnings`: commands that use one model show its warnings too, not only its errors.
static SHOW_WARNINGS: AtomicBool = AtomicBool::new(false);

fn show_warnings() -> bool {
    SHOW_WARNINGS.load(Ordering::Relaxed)
}

/// A spec read and compiled, and the model a command uses.
pub struct Loaded {
    pub file: SourceFile,
    pub network: ir::Network,
}

/// Read and compile a spec and take the model a command uses (`model`, or the file's only one).
/// Only what concerns that model is shown: its errors (then an `Err`), its warnings with
/// `--warnings`, and a one-line note when other models of the file have errors.
pub fn load(path: &Path, model: Option<&str>) -> Result<Loaded, String> {
    let file = read_spec(path)?;
    let compilation = compile_each(&file.text);
    let chosen = compilation.choose(model).map_err(|refusal| {
        print_diagnostics(&file, refusal.diagnostics());
        refusal.message(&file.name, "with --model")
    })?;
    if show_warnings() {
        let warnings: Vec<Diagnostic> = chosen.warnings.iter().map(|d| (*d).clone()).collect();
        print_diagnostics(&file, &warnings);
    }
    if chosen.errors_elsewhere > 0 {
        let n = chosen.errors_elsewhere;
        eprintln!(
            "note: `{}` has {n} error{} in other models; `effnet check {}` shows them",
            file.name,
            if n == 1 { "" } else { "s" },
            file.name
        );
    }
    let network = chosen.network.clone();
    Ok(Loaded { file, network })
}

/// The size and parameter / MAC ranges of model `model`'s search space, when it has choices.
pub fn space_summary(text: &str, model: &str) -> Option<effnet_compiler::search::SpaceSummary> {
    let file = effnet_compiler::parse(text).ok()?;
    let space = effnet_compiler::search::Space::all(&file)
        .into_iter()
        .find(|s| s.model == model)?;
    Some(effnet_compiler::search::summarize(&file, &space))
}

/// `space `m`: 5.3e5 candidates over 18 choices; 0.1-1.3 M parameters, ... (exact)`.
pub fn space_line(s: &effnet_compiler::search::SpaceSummary) -> String {
    let size = if s.size < 1e6 {
        summary::thousands(s.size as u64)
    } else {
        format!("{:.2e}", s.size)
    };
    let how = if s.exact {
        "exact: every candidate measured".to_string()
    } else {
        "bounds found by coordinate search; too many candidates to measure each".to_string()
    };
    format!(
        "search space `{}`: {size} candidates over {} choices; {}..{} parameters, {}..{} MACs ({how}{})",
        s.model,
        s.choices,
        summary::thousands(s.params.min as u64),
        summary::thousands(s.params.max as u64),
        summary::thousands(s.macs.min as u64),
        summary::thousands(s.macs.max as u64),
        if s.invalid > 0 {
            format!("; {} candidates tried were not valid models", s.invalid)
        } else {
            String::new()
        }
    )
}

pub fn space_json(s: &effnet_compiler::search::SpaceSummary) -> serde_json::Value {
    serde_json::json!({
        "model": s.model,
        "size": s.size,
        "choices": s.choices,
        "params": {"min": s.params.min, "max": s.params.max},
        "macs": {"min": s.macs.min, "max": s.macs.max},
        "exact": s.exact,
        "invalid": s.invalid,
    })
}

/// The warning for a `--resolution` the user chose that the model's strides do not divide:
/// always when `always` (`summary`, which describes the model at that resolution), otherwise
/// with `--warnings`.
pub fn warn_chosen_resolution(net: &ir::Network, resolution: usize, always: bool) {
    if (always || show_warnings())
        && let Some(w) = effnet_compiler::chosen_resolution(net, resolution)
    {
        eprintln!("warning: {w}");
    }
}
