//! `effnet run`: logits for a NumPy batch, written as NumPy. Also the dtype and
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
    let (_, compiled) = load(spec)?;
    let net_ir: &ir::Network = compiled.network(model)?;
    weights.network(net_ir, dtype, device)
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

#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: &Path,
    model: Option<&str>,
    weights: &WeightsArgs,
    input: &Path,
    output: &Path,
    device_arg: DeviceArg,
    dtype_arg: DtypeArg,
) -> Result<ExitCode, String> {
    let device = device(device_arg)?;
    let dtype = dtype_arg.dtype();
    let net = load_network(spec, model, weights, dtype, &device)?;
    let x = input_batch(input, &net.ir, dtype, &device)?;
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
