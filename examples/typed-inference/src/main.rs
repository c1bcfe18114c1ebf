//! Classify an image with EfficientNetV2-B0 as a typed Rust struct.
//!
//! ```text
//! cargo run --release -p typed-inference -- tf_efficientnetv2_b0.safetensors cat.jpg [labels.txt]
//! ```
//!
//! The weights are timm's `state_dict` for `tf_efficientnetv2_b0` saved as safetensors
//! (torchvision names are accepted too); `labels.txt`, one class name a line, is optional.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use effnet::candle::{D, DType, Device, Tensor};
use effnet::runtime::weights;

/// EfficientNetV2-B0, generated from the bundled spec at compile time.
#[effnet::model("../../specs/tf_efficientnetv2_b0.effnet")]
pub struct B0;

type BoxError = Box<dyn std::error::Error>;

/// timm's evaluation transform: resize the shorter side to `res / crop_pct` (bicubic), crop the
/// centre `res` x `res`, scale to [0, 1], normalize with the spec's mean and std.
fn preprocess(path: &Path, res: usize, mean: &[f64], std: &[f64]) -> Result<Tensor, BoxError> {
    let img = image::open(path)
        .map_err(|e| format!("cannot read image `{}`: {e}", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let short = w.min(h).max(1) as f64;
    let target = (res as f64 / 0.875).floor();
    let scale = target / short;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(res as u32),
        ((h as f64 * scale).round() as u32).max(res as u32),
    );
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::CatmullRom);
    let (left, top) = ((nw - res as u32) / 2, (nh - res as u32) / 2);
    let crop = image::imageops::crop_imm(&resized, left, top, res as u32, res as u32).to_image();
    let mut data = vec![0f32; 3 * res * res];
    for (x, y, px) in crop.enumerate_pixels() {
        for c in 0..3 {
            let v = px[c] as f64 / 255.0;
            let m = mean.get(c).copied().unwrap_or(0.0);
            let s = std.get(c).copied().unwrap_or(1.0);
            data[c * res * res + y as usize * res + x as usize] = ((v - m) / s) as f32;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, res, res), &Device::Cpu)?)
}

fn run(args: &[String]) -> Result<(), BoxError> {
    let [weights_path, image_path, rest @ ..] = args else {
        return Err("usage: typed-inference WEIGHTS.safetensors IMAGE [LABELS.txt]".into());
    };
    let labels: Vec<String> = match rest.first() {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read labels `{p}`: {e}"))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };

    let ir = B0::spec_ir()?;
    let vb = weights::load(&ir, &PathBuf::from(weights_path), DType::F32, &Device::Cpu)?;
    let net = B0::load(vb)?;
    println!(
        "{}: {} parameters, {:.2} GMACs at {}x{}",
        B0::NAME,
        B0::PARAMS,
        B0::MACS as f64 / 1e9,
        B0::INPUT.1,
        B0::INPUT.2
    );

    let (mean, std) = match &ir.normalize {
        Some(n) => (n.mean.clone(), n.std.clone()),
        None => (vec![0.0; 3], vec![1.0; 3]),
    };
    let x = preprocess(Path::new(image_path), B0::INPUT.1, &mean, &std)?;
    let logits = net.forward(&x)?;
    let probs = effnet::nn::ops::softmax(&logits, D::Minus1)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (rank, (class, p)) in ranked.iter().take(5).enumerate() {
        let label = labels.get(*class).map(String::as_str).unwrap_or("");
        println!(
            "{:>2}. {:>5.2}%  class {class:>4}  {label}",
            rank + 1,
            p * 100.0
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
