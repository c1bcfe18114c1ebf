//! Fresh weights for training, as timm initializes EfficientNets (`_init_weight_goog`):
//! convolutions `N(0, sqrt(2 / fan_out))` with `fan_out = k * k * out / groups` (each expert of
//! a CondConv one alike), the classifier `U(-1 / sqrt(out), 1 / sqrt(out))`, a CondConv
//! block's `routing_fn` `U(-1 / sqrt(in + out), 1 / sqrt(in + out))`, biases 0, BatchNorm and
//! GroupNorm weight 1 and bias 0, BatchNorm's running mean 0 and variance 1. Each tensor draws
//! from its own seeded generator, so the
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
    // timm's `_init_weight_goog` counts a routing function's fan-in too.
    let routing: HashMap<String, usize> = net
        .blocks()
        .filter_map(|b| b.layers.routing())
        .map(|r| (format!("{}.weight", r.path), r.in_features + r.out_features))
        .collect();
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
        } else if let Some(&fan) = routing.get(&spec.name) {
            let r = 1.0 / (fan.max(1) as f64).sqrt();
            (0..n).map(|_| rng.random_range(-r..r) as f32).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CondConv block's tensors start as timm's do: every expert drawn as the convolution it
    /// is a kernel of, and the routing function uniform within `1 / sqrt(in + experts)` (not
    /// zeros, which would route every sample alike), its bias 0.
    #[test]
    fn condconv_experts_and_routing_start_as_timm_initializes_them() {
        let spec = "model cc { classes 5 stem conv k3 s2 -> 16 \
                    stage mbconv k3 e6 s1 -> 16 x1 cc 4 }";
        let compiled = effnet_compiler::compile(spec).expect("compiles");
        let net = compiled.network(None).expect("one model");
        let tensors: HashMap<String, Tensor> = init_tensors(net, 7, &Device::Cpu)
            .expect("init")
            .into_iter()
            .collect();
        let values = |name: &str| -> Vec<f32> {
            tensors[name]
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("values")
        };
        let routing = values("blocks.0.0.routing_fn.weight");
        assert_eq!(routing.len(), 4 * 16);
        let bound = 1.0 / ((16 + 4) as f32).sqrt();
        assert!(routing.iter().all(|v| v.abs() <= bound));
        assert!(routing.iter().any(|v| v.abs() > bound / 2.0));
        assert!(
            values("blocks.0.0.routing_fn.bias")
                .iter()
                .all(|&v| v == 0.0)
        );
        // conv_pw: 4 experts of [96, 16, 1, 1], fan_out 96.
        let experts = values("blocks.0.0.conv_pw.weight");
        assert_eq!(tensors["blocks.0.0.conv_pw.weight"].dims(), &[4, 96 * 16]);
        let var = experts.iter().map(|v| v * v).sum::<f32>() / experts.len() as f32;
        let want = 2.0 / 96.0;
        assert!(
            (var - want).abs() < 0.1 * want,
            "variance {var}, timm's {want}"
        );
    }
}
