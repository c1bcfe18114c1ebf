//! `effnet predict`: classify image files. Each image is decoded, its shorter side resized to
//! the model's eval resolution (bicubic, Catmull-Rom), center cropped to a square, scaled to
//! [0, 1] and normalized with the spec's mean and std (ImageNet's when the spec has none).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{DType, Device, Tensor};
use effnet_compiler::ir;
use image::imageops::FilterType;

use super::compute::{DeviceArg, device};
use super::run::{DtypeArg, WeightsArgs, load_network};

const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Mean and std per input channel: the spec's, or ImageNet's for RGB (0.5 for other counts).
fn normalization(net: &ir::Network) -> (Vec<f64>, Vec<f64>) {
    let c = net.input_channels;
    if let Some(n) = &net.normalize
        && n.mean.len() == c
        && n.std.len() == c
    {
        return (n.mean.clone(), n.std.clone());
    }
    if c == 3 {
        (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
    } else {
        (vec![0.5; c], vec![0.5; c])
    }
}

/// One image as a `[C, res, res]` f32 tensor, ready for the network.
pub fn preprocess(path: &Path, net: &ir::Network, resolution: usize) -> Result<Tensor, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| format!("cannot read image `{}`: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read image `{}`: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("cannot decode image `{}`: {e}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(format!("image `{}` is empty ({w}x{h})", path.display()));
    }
    let res = resolution;
    // Shorter side to `res`, the longer scaled to keep the aspect ratio (as torchvision's
    // Resize(int) does: the long side truncated).
    let (nw, nh) = if w <= h {
        (res, (h * res / w).max(res))
    } else {
        ((w * res / h).max(res), res)
    };
    let to_u32 =
        |v: usize| u32::try_from(v).map_err(|_| format!("image `{}` is too large", path.display()));
    let resized = img.resize_exact(to_u32(nw)?, to_u32(nh)?, FilterType::CatmullRom);
    // Center crop, rounding the offsets as torchvision's CenterCrop does.
    let left = ((nw - res) as f64 / 2.0).round() as usize;
    let top = ((nh - res) as f64 / 2.0).round() as usize;
    let cropped = resized.crop_imm(to_u32(left)?, to_u32(top)?, to_u32(res)?, to_u32(res)?);
    let c = net.input_channels;
    let pixels: Vec<u8> = match c {
        3 => cropped.to_rgb8().into_raw(),
        1 => cropped.to_luma8().into_raw(),
        _ => {
            return Err(format!(
                "`{}` takes {c} input channels: images can only feed 1- or 3-channel models",
                net.name
            ));
        }
    };
    let (mean, std) = normalization(net);
    // HWC bytes to normalized CHW floats.
    let plane = res * res;
    let mut chw = vec![0f32; c * plane];
    for (i, px) in pixels.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            chw[ch * plane + i] = ((f64::from(v) / 255.0 - mean[ch]) / std[ch]) as f32;
        }
    }
    Tensor::from_vec(chw, (c, res, res), &Device::Cpu).map_err(|e| e.to_string())
}

fn read_labels(path: &Path, classes: usize) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read labels `{}`: {e}", path.display()))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if labels.len() != classes {
        return Err(format!(
            "labels `{}` has {} lines; the model has {classes} classes (one label per line)",
            path.display(),
            labels.len()
        ));
    }
    Ok(labels)
}

/// Indices and probabilities of the `k` most likely classes, most likely first.
fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx.truncate(k);
    idx
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: &Path,
    model: Option<&str>,
    weights: &WeightsArgs,
    images: &[PathBuf],
    labels: Option<&Path>,
    top: usize,
    device_arg: DeviceArg,
    dtype_arg: DtypeArg,
) -> Result<ExitCode, String> {
    if top == 0 {
        return Err("--top must be at least 1".into());
    }
    let dev = device(device_arg)?;
    let dtype = dtype_arg.dtype();
    let net = load_network(spec, model, weights, dtype, &dev)?;
    let ir = &net.ir;
    let labels = labels.map(|p| read_labels(p, ir.num_classes)).transpose()?;
    let batch = images
        .iter()
        .map(|p| preprocess(p, ir, ir.resolution))
        .collect::<Result<Vec<_>, _>>()?;
    let x = Tensor::stack(&batch, 0)
        .and_then(|x| x.to_dtype(dtype))
        .and_then(|x| x.to_device(&dev))
        .map_err(|e| e.to_string())?;
    let probs = net
        .forward_t(&x, false)
        .and_then(|y| y.to_dtype(DType::F32))
        .and_then(|y| candle_nn::ops::softmax_last_dim(&y))
        .and_then(|y| y.to_device(&Device::Cpu))
        .and_then(|y| y.to_vec2::<f32>())
        .map_err(|e| format!("forward pass: {e}"))?;
    let k = top.min(ir.num_classes);
    for (path, p) in images.iter().zip(&probs) {
        println!("{}", path.display());
        for (rank, (class, prob)) in top_k(p, k).into_iter().enumerate() {
            let name = match &labels {
                Some(l) => format!("{} ({class})", l[class]),
                None => format!("class {class}"),
            };
            println!("  {:>2}. {:>6.2}%  {name}", rank + 1, prob * 100.0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_probability_then_index() {
        let t = top_k(&[0.1, 0.4, 0.1, 0.4], 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 0]);
    }
}
