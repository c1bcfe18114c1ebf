//! `effnet export`: a model with its weights as an ONNX file (standard operators, timm's
//! tensor names on the initializers; see `effnet_runtime::export`).

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::{DType, Device};
use effnet_runtime::export::{self, DEFAULT_OPSET, ExportOptions, Size};

use super::run::{WeightsArgs, load_network};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The spec file.
    pub spec: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Where to write the model (`.onnx`).
    #[arg(long)]
    pub onnx: PathBuf,
    /// The ONNX opset (`ai.onnx`), 11 to 28.
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    pub opset: i64,
    /// The batch size: `dynamic` (a `batch` symbol) or a number.
    #[arg(long, default_value = "dynamic", value_parser = parse_size)]
    pub batch: Size,
    /// Height and width: a number (default: the model's eval resolution) or `dynamic`
    /// (`height`, `width` symbols; `same` padding then pads at run time).
    #[arg(long, value_parser = parse_size)]
    pub resolution: Option<Size>,
    /// Put the spec's mean/std normalization in the graph, which then takes pixels in
    /// [0, 1]. Without it (as timm's exports) the input is normalized by the caller.
    #[arg(long)]
    pub normalize: bool,
}

fn parse_size(s: &str) -> Result<Size, String> {
    if s == "dynamic" {
        return Ok(Size::Dynamic);
    }
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Size::Fixed(n)),
        _ => Err(format!(
            "expected `dynamic` or a positive number, not `{s}`"
        )),
    }
}

fn size_text(s: &Size, symbol: &str) -> String {
    match s {
        Size::Fixed(n) => n.to_string(),
        Size::Dynamic => symbol.to_string(),
    }
}

pub fn run(a: ExportArgs) -> Result<ExitCode, String> {
    // Check the opset before the weights are read: a typo should not cost a model load.
    if !(export::MIN_OPSET..=export::MAX_OPSET).contains(&a.opset) {
        return Err(export::ExportError::Opset(a.opset).to_string());
    }
    let net = load_network(
        &a.spec,
        a.model.as_deref(),
        &a.weights,
        DType::F32,
        &Device::Cpu,
    )?;
    let options = ExportOptions {
        opset: a.opset,
        batch: a.batch,
        resolution: a.resolution.unwrap_or(Size::Fixed(net.ir.resolution)),
        normalize: a.normalize,
    };
    let model = export::export(&net, &options).map_err(|e| e.to_string())?;
    let bytes = export::to_bytes(&model);
    std::fs::write(&a.onnx, &bytes)
        .map_err(|e| format!("cannot write `{}`: {e}", a.onnx.display()))?;
    let s = export::summarize(&model);
    let ops = s
        .operators
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let normalization = match (&net.ir.normalize, options.normalize) {
        (_, true) => "pixels in [0, 1], normalized in the graph",
        (Some(_), false) => "normalized by the caller (mean/std in the metadata)",
        (None, false) => "as the network takes it (the spec has no normalization)",
    };
    eprintln!(
        "wrote `{}` ({:.1} MB): `{}`, opset {} (IR version {}), input [{}, {}, {}, {}] {normalization}, \
         logits [{}, {}]",
        a.onnx.display(),
        bytes.len() as f64 / 1e6,
        net.ir.name,
        s.opset,
        s.ir_version,
        size_text(&options.batch, "batch"),
        net.ir.input_channels,
        size_text(&options.resolution, "height"),
        size_text(&options.resolution, "width"),
        size_text(&options.batch, "batch"),
        net.ir.num_classes,
    );
    eprintln!(
        "  {} nodes: {ops}; {} initializers under timm's names ({} values)",
        s.operators.iter().map(|(_, n)| n).sum::<usize>(),
        s.initializers,
        s.values
    );
    Ok(ExitCode::SUCCESS)
}
