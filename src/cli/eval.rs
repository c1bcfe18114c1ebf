//! `effnet eval`: top-1 / top-5 of a spec's model with given weights on a dataset's test split.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use candle_core::DType;
use effnet_runtime::data::{self, Split};
use effnet_runtime::train::{evaluate, network_transform};

use super::compute::{ComputeArgs, device};
use super::load;
use super::run::WeightsArgs;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The spec file.
    pub spec: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// e.g. RUN_DIR/model.safetensors
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Dataset: MNIST IDX directory or image folder (its test/ split is used).
    #[arg(long)]
    pub data: PathBuf,
    /// Input resolution (default: the model's eval resolution).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Evaluate the training split instead of the test split.
    #[arg(long)]
    pub train_split: bool,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

pub fn run(a: EvalArgs) -> Result<ExitCode, String> {
    let loaded = load(&a.spec, a.model.as_deref())?;
    let net_ir = &loaded.network;
    let device = device(a.compute.device)?;
    let resolution = a.resolution.unwrap_or(net_ir.resolution);
    if resolution == 0 {
        return Err("--resolution must be at least 1".into());
    }
    super::warn_chosen_resolution(net_ir, resolution, false);
    let split = if a.train_split {
        Split::Train
    } else {
        Split::Test
    };
    let dataset = data::load(&a.data, split).map_err(|e| e.to_string())?;
    if dataset.num_classes() != net_ir.num_classes {
        return Err(format!(
            "`{}` has {} classes, model `{}` {}",
            a.data.display(),
            dataset.num_classes(),
            net_ir.name,
            net_ir.num_classes
        ));
    }
    let net = a.weights.network(net_ir, DType::F32, &device)?;
    let tf = network_transform(net_ir, dataset.kind, resolution, false, 0.0, 0);
    let start = std::time::Instant::now();
    let acc = evaluate(&net, Arc::new(dataset), tf, a.batch, a.workers, &device)
        .map_err(|e| e.to_string())?;
    println!(
        "{} on {} ({} split, {} images, {resolution}px): top-1 {:.2}%  top-5 {:.2}%  ({:.1}s)",
        net_ir.name,
        a.data.display(),
        split.name(),
        acc.count,
        100.0 * acc.top1,
        100.0 * acc.top5,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
