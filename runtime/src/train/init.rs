//! Fresh weights for training, as timm initializes EfficientNets (`_init_weight_goog`):
//! convolutions `N(0, sqrt(2 / fan_out))` with `fan_out = k * k * out / groups`, the
//! classifier `U(-1 / sqrt(out), 1 / sqrt(out))`, biases 0, BatchNorm and GroupNorm weight 1
//! and bias 0, BatchNorm's running mean 0 and variance 1. Each tensor draws from its own seeded generator, so the
//! weights depend on the seed only.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use effnet_compiler::ir;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::data::{sample_rng, stream};

/// Every convolution of the network as timm holds it (each part of a mixed one is a
/// convolution of its own, initialized as one), by weight name.
fn convs(net: &ir::Network) -> HashMap<String, ir::Conv> {
    let mut out: Vec<&ir::Conv> = vec![&net.stem.conv];
    for b in net.blocks() {
        out.extend(b.layers.conv_bns().iter().map(|l| l.conv));
        if let Some(se) = b.se() {
            if let Some(gc) = &se.global_context {
                out.push(&gc.conv_attn);
            }
            out.push(&se.conv_reduce);
            out.push(&se.conv_expand);
        }
    }
    if let Some(h) = &net.head {
        out.push(&h.conv);
    }
    out.into_iter()
        .flat_map(ir::Conv::parts)
        .map(|c| (format!("{}.weight", c.path), c))
        .collect()
}

/// The initial value of every tensor of `net` (parameters and BatchNorm statistics).
pub fn init_tensors(
    net: &ir::Network,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Vec<(String, Tensor)>> {
    let convs = convs(net);
    let classifier_weight = format!("{}.weight", net.classifier.path);
    let mut out = Vec::new();
    for (i, spec) in net.tensors().iter().enumerate() {
        let n: usize = spec.shape.iter().product();
        let mut rng = sample_rng(seed, &[stream::INIT, i as u64]);
        let values: Vec<f32> = if let Some(conv) = convs.get(&spec.name) {
            let fan_out = conv.kernel * conv.kernel * conv.out_channels / conv.groups.max(1);
            let std = (2.0 / fan_out.max(1) as f64).sqrt();
            let normal = Normal::new(0.0, std)
                .map_err(|e| candle_core::Error::Msg(format!("init of `{}`: {e}", spec.name)))?;
            (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
        } else if spec.name == classifier_weight {
            let r = 1.0 / (net.classifier.out_features.max(1) as f64).sqrt();
            (0..n).map(|_| rng.random_range(-r..r) as f32).collect()
        } else if spec.name.ends_with(".running_var")
            || (spec.shape.len() == 1 && spec.name.ends_with(".weight"))
        {
            // BatchNorm and GroupNorm scale, BatchNorm running variance.
            vec![1.0; n]
        } else {
            // Biases, BatchNorm and GroupNorm shift, BatchNorm running mean.
            vec![0.0; n]
        };
        out.push((
            spec.name.clone(),
            Tensor::from_vec(values, spec.shape.as_slice(), device)?,
        ));
    }
    Ok(out)
}

/// A VarMap holding freshly initialized variables for every tensor of `net`, ready for
/// `VarBuilder::from_varmap`.
pub fn init_varmap(net: &ir::Network, seed: u64, device: &Device) -> candle_core::Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        for (name, t) in init_tensors(net, seed, device)? {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}
