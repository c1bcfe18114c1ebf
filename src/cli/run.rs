//! `effnet run`: logits (or feature-pyramid levels) for a NumPy batch, written as NumPy. Also the dtype and
//! network-loading helpers that `predict` and `bench` share.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{DType, Device, Tensor};
use clap::ValueEnum;
use effnet_compiler::ir;
use effnet_runtime::{Network, weights};

use super::compute::{DeviceArg, device};
use super::load;

/// The compute dtype of weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
        }
    }
}

/// The weights a command runs with, and how strictly they must fit the spec.
#[derive(clap::Args, Debug)]
pub struct WeightsArgs {
    /// Safetensors weights, timm or torchvision names.
    #[arg(long)]
    pub weights: PathBuf,
    /// With torchvision's weights, run with the spec's BatchNorm eps and padding even where
    /// torchvision's network uses others (by default an error: the logits would be wrong).
    #[arg(long)]
    pub keep_spec_conventions: bool,
}

impl WeightsArgs {
    pub fn options(&self) -> weights::LoadOptions {
        weights::LoadOptions {
            keep_spec_conventions: self.keep_spec_conventions,
        }
    }

    /// Load these weights into `net_ir`'s network.
    pub fn network(
        &self,
        net_ir: &ir::Network,
        dtype: DType,
        device: &Device,
    ) -> Result<Network, String> {
        let vb = weights::load_with(net_ir, &self.weights, dtype, device, self.options())
            .map_err(|e| e.to_string())?;
        Network::from_ir(net_ir, vb).map_err(|e| {
            format!(
                "cannot build `{}` from `{}`: {e}",
                net_ir.name,
                self.weights.display()
            )
        })
    }
}

/// Compile `spec`, pick the model, load the weights into it.
pub fn load_network(
    spec: &Path,
    model: Option<&str>,
    weights: &WeightsArgs,
    dtype: DType,
    device: &Device,
) -> Result<Network, String> {
    let loaded = load(spec, model)?;
    weights.network(&loaded.network, dtype, device)
}

/// Checks that `path` exists and starts with the NumPy magic string, then reads it.
fn read_npy(path: &Path) -> Result<Tensor, String> {
    let mut magic = [0u8; 6];
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("cannot read input `{}`: {e}", path.display()))?;
    let n = f
        .read(&mut magic)
        .map_err(|e| format!("cannot read input `{}`: {e}", path.display()))?;
    if n < 6 || &magic != b"\x93NUMPY" {
        return Err(format!(
            "input `{}` is not a NumPy .npy file (it does not start with the \\x93NUMPY magic)",
            path.display()
        ));
    }
    Tensor::read_npy(path).map_err(|e| format!("cannot read input `{}`: {e}", path.display()))
}

/// The input batch as `[N, C, H, W]` in `dtype` on `device`, checked against the network.
fn input_batch(
    path: &Path,
    net: &ir::Network,
    dtype: DType,
    device: &Device,
) -> Result<Tensor, String> {
    let x = read_npy(path)?;
    let x = match x.dims() {
        [_, _, _] => x.unsqueeze(0).map_err(|e| e.to_string())?,
        [_, _, _, _] => x,
        d => {
            return Err(format!(
                "input `{}` has shape {d:?}: expected [batch, {c}, height, width] \
                 (or [{c}, height, width] for one image)",
                path.display(),
                c = net.input_channels
            ));
        }
    };
    let dims = x.dims().to_vec();
    if dims[1] != net.input_channels {
        return Err(format!(
            "input `{}` has shape {dims:?}: `{}` expects {} channels in dimension 1 (NCHW)",
            path.display(),
            net.name,
            net.input_channels
        ));
    }
    if dims.contains(&0) {
        return Err(format!(
            "input `{}` is empty: shape {dims:?}",
            path.display()
        ));
    }
    if !x.dtype().is_float() {
        return Err(format!(
            "input `{}` holds {:?}: expected floating-point values",
            path.display(),
            x.dtype()
        ));
    }
    x.to_dtype(dtype)
        .and_then(|x| x.to_device(device))
        .map_err(|e| e.to_string())
}

/// Feature-pyramid level indices as `--features` takes them: `1,2,3,4` or `[1,2,3,4]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Levels(pub Vec<usize>);

/// clap's parser for [`Levels`].
pub fn parse_levels(text: &str) -> Result<Levels, String> {
    let usage = "expected level indices such as `1,2,3,4` or `[1,2,3,4]` \
                 (`effnet summary` lists a model's levels)";
    let trimmed = text.trim();
    let inner = match (trimmed.strip_prefix('['), trimmed.strip_suffix(']')) {
        (Some(_), Some(_)) => &trimmed[1..trimmed.len() - 1],
        (None, None) => trimmed,
        _ => return Err(format!("unbalanced brackets in `{text}`: {usage}")),
    };
    let levels = inner
        .split(',')
        .map(|part| {
            let part = part.trim();
            part.parse::<usize>()
                .map_err(|_| format!("`{part}` is not a level index: {usage}"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(Levels(levels))
}

/// Where level `index` goes: `OUTPUT` with `.level{index}` before its extension
/// (`feats.npy` -> `feats.level2.npy`).
fn level_path(output: &Path, index: usize) -> std::path::PathBuf {
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("npy")
        .to_string();
    output.with_extension(format!("level{index}.{ext}"))
}

/// The requested feature-pyramid levels of `x`, each written beside `output`.
fn write_levels(
    net: &Network,
    x: &Tensor,
    picked: &[ir::FeatureLevel],
    input: &Path,
    output: &Path,
) -> Result<ExitCode, String> {
    let indices: Vec<usize> = picked.iter().map(|l| l.index).collect();
    let maps = net
        .forward_pyramid(x, &indices)
        .map_err(|e| format!("forward pass on `{}`: {e}", input.display()))?;
    for (level, map) in picked.iter().zip(maps) {
        let path = level_path(output, level.index);
        let map = map
            .to_dtype(DType::F32)
            .and_then(|m| m.to_device(&Device::Cpu))
            .map_err(|e| format!("feature level {}: {e}", level.index))?;
        map.write_npy(&path)
            .map_err(|e| format!("cannot write output `{}`: {e}", path.display()))?;
        eprintln!(
            "wrote level {level} {:?} to `{}`",
            map.dims(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `effnet run`: the logits of `input`, or with `features` the requested feature-pyramid
/// levels (timm's `features_only` / `out_indices`; the head and classifier do not run).
#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: &Path,
    model: Option<&str>,
    weights: &WeightsArgs,
    input: &Path,
    output: &Path,
    features: Option<&Levels>,
    device_arg: DeviceArg,
    dtype_arg: DtypeArg,
) -> Result<ExitCode, String> {
    let device = device(device_arg)?;
    let dtype = dtype_arg.dtype();
    let net = load_network(spec, model, weights, dtype, &device)?;
    // Checked before the input is read: a bad index is the first thing to hear about.
    let picked = features
        .map(|levels| net.ir.feature_levels(&levels.0))
        .transpose()?;
    let x = input_batch(input, &net.ir, dtype, &device)?;
    if let Some(picked) = picked {
        return write_levels(&net, &x, &picked, input, output);
    }
    let logits = net
        .forward_t(&x, false)
        .and_then(|y| y.to_dtype(DType::F32))
        .and_then(|y| y.to_device(&Device::Cpu))
        .map_err(|e| format!("forward pass on `{}`: {e}", input.display()))?;
    logits
        .write_npy(output)
        .map_err(|e| format!("cannot write output `{}`: {e}", output.display()))?;
    let dims = logits.dims();
    eprintln!(
        "wrote logits {dims:?} for `{}` to `{}`",
        input.display(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
