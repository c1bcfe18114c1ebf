//! torchvision's EfficientNets: their state_dict names (mapped to timm's), and the settings
//! torchvision's code fixes that a spec must share for torchvision's weights to compute
//! torchvision's numbers: BatchNorm eps and padding. A torchvision V2-S checkpoint run through
//! timm's `efficientnetv2_s` spec (eps 1e-5 where torchvision uses 1e-3) gives logits wrong by
//! a factor of about 1e8 relative, and through `tf_efficientnetv2_s` (TensorFlow `same`
//! padding) 96% off, silently; with eps 1e-3 and symmetric padding they match to 3e-6 (issue
//! 16). So weights that carry torchvision's names are matched against torchvision's networks
//! (`specs/torchvision/efficientnet.effnet`, checked against torchvision itself) and a spec
//! whose eps or padding differs from the matched network's is an error unless the caller says
//! to keep the spec's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::Tensor;
use effnet_compiler::ir::{BlockLayers, Network as IrNetwork, PaddingMode};

use crate::error::{Error, Result};

/// torchvision's networks as specs, compiled once on first use.
const SPEC: &str = include_str!("../../../specs/torchvision/efficientnet.effnet");

fn networks() -> &'static [IrNetwork] {
    static NETWORKS: OnceLock<Vec<IrNetwork>> = OnceLock::new();
    NETWORKS.get_or_init(|| {
        // The bundled spec is checked by this crate's tests; a broken one matches nothing.
        effnet_compiler::compile(SPEC)
            .map(|c| c.networks)
            .unwrap_or_default()
    })
}

/// Whether a file's tensor names are torchvision's rather than timm's.
pub fn has_torchvision_names(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.keys().any(|k| k.starts_with("features.")) && !tensors.contains_key("conv_stem.weight")
}

/// torchvision's name for each timm layer prefix of this network, for the models torchvision
/// has (EfficientNet V1 and V2 S/M/L): `features.{stage + 1}.{block}.block.{k}.{0: conv, 1: bn}`,
/// SE `block.{k}.fc1` / `fc2`, the stem `features.0`, the head `features.{n + 1}`, and the
/// classifier `classifier.1`.
pub fn torchvision_prefixes(ir: &IrNetwork) -> Vec<(String, String)> {
    let mut map = vec![
        ("conv_stem".to_string(), "features.0.0".to_string()),
        ("bn1".to_string(), "features.0.1".to_string()),
    ];
    for b in ir.blocks() {
        let tv = format!("features.{}.{}.block", b.stage + 1, b.index);
        let p = &b.path;
        let mut pairs: Vec<(String, String)> = Vec::new();
        match &b.layers {
            BlockLayers::Conv { .. } => {
                pairs.push(("conv".into(), "0.0".into()));
                pairs.push(("bn1".into(), "0.1".into()));
            }
            BlockLayers::DepthwiseSeparable { se, .. } => {
                pairs.push(("conv_dw".into(), "0.0".into()));
                pairs.push(("bn1".into(), "0.1".into()));
                let k = if se.is_some() {
                    pairs.push(("se.conv_reduce".into(), "1.fc1".into()));
                    pairs.push(("se.conv_expand".into(), "1.fc2".into()));
                    2
                } else {
                    1
                };
                pairs.push(("conv_pw".into(), format!("{k}.0")));
                pairs.push(("bn2".into(), format!("{k}.1")));
            }
            BlockLayers::Edge { se, .. } => {
                pairs.push(("conv_exp".into(), "0.0".into()));
                pairs.push(("bn1".into(), "0.1".into()));
                let k = if se.is_some() {
                    pairs.push(("se.conv_reduce".into(), "1.fc1".into()));
                    pairs.push(("se.conv_expand".into(), "1.fc2".into()));
                    2
                } else {
                    1
                };
                pairs.push(("conv_pwl".into(), format!("{k}.0")));
                pairs.push(("bn2".into(), format!("{k}.1")));
            }
            BlockLayers::MbConv { se, .. } => {
                pairs.push(("conv_pw".into(), "0.0".into()));
                pairs.push(("bn1".into(), "0.1".into()));
                pairs.push(("conv_dw".into(), "1.0".into()));
                pairs.push(("bn2".into(), "1.1".into()));
                let k = if se.is_some() {
                    pairs.push(("se.conv_reduce".into(), "2.fc1".into()));
                    pairs.push(("se.conv_expand".into(), "2.fc2".into()));
                    3
                } else {
                    2
                };
                pairs.push(("conv_pwl".into(), format!("{k}.0")));
                pairs.push(("bn3".into(), format!("{k}.1")));
            }
        }
        for (ours, theirs) in pairs {
            map.push((format!("{p}.{ours}"), format!("{tv}.{theirs}")));
        }
    }
    let head_index = ir.stages.len() + 1;
    if ir.head.is_some() {
        map.push(("conv_head".into(), format!("features.{head_index}.0")));
        map.push(("bn2".into(), format!("features.{head_index}.1")));
    }
    map.push(("classifier".into(), "classifier.1".into()));
    map
}

/// Rename torchvision-named tensors to timm's names (tensors that match no prefix keep theirs,
/// and are then reported as unexpected).
pub(super) fn to_timm_names(
    ir: &IrNetwork,
    tensors: HashMap<String, Tensor>,
) -> HashMap<String, Tensor> {
    let map = torchvision_prefixes(ir);
    let mut rev: HashMap<String, String> = HashMap::new();
    for (ours, theirs) in &map {
        for suffix in ["weight", "bias", "running_mean", "running_var"] {
            rev.insert(format!("{theirs}.{suffix}"), format!("{ours}.{suffix}"));
        }
    }
    tensors
        .into_iter()
        .map(|(k, v)| match rev.get(&k) {
            Some(ours) => (ours.clone(), v),
            None => (k, v),
        })
        .collect()
}

/// Every tensor of `net` under torchvision's name, with its shape.
fn torchvision_shapes(net: &IrNetwork) -> HashMap<String, Vec<usize>> {
    let map = torchvision_prefixes(net);
    net.tensors()
        .into_iter()
        .map(|t| {
            let renamed = map
                .iter()
                .find_map(|(ours, theirs)| {
                    t.name
                        .strip_prefix(ours.as_str())
                        .filter(|rest| rest.starts_with('.'))
                        .map(|rest| format!("{theirs}{rest}"))
                })
                .unwrap_or(t.name.clone());
            (renamed, t.shape)
        })
        .collect()
}

/// The torchvision network whose state_dict these tensors are: every name and shape the same,
/// the classifier's class count aside (a fine-tuned torchvision model keeps the rest).
pub fn identify(tensors: &HashMap<String, Tensor>) -> Option<&'static IrNetwork> {
    let found: HashMap<&str, &[usize]> = tensors
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.as_str(), v.dims()))
        .collect();
    networks().iter().find(|net| {
        let want = torchvision_shapes(net);
        want.len() == found.len()
            && want.iter().all(|(name, shape)| {
                found.get(name.as_str()).is_some_and(|got| {
                    if name.starts_with("classifier.") {
                        // [classes, features] or [classes]: only the features must agree.
                        got.len() == shape.len() && got.get(1) == shape.get(1)
                    } else {
                        *got == shape.as_slice()
                    }
                })
            })
    })
}

/// The differences between `ir`'s settings and those of the torchvision network `tv` that
/// change what torchvision's weights compute, each as "setting: spec value, torchvision value".
pub fn convention_mismatches(ir: &IrNetwork, tv: &IrNetwork) -> Vec<String> {
    let mut out = Vec::new();
    // torchvision's EfficientNets are BatchNorm throughout; a GroupNorm spec has neither their
    // running statistics nor their arithmetic.
    if let Some(gn) = std::iter::once(&ir.stem.bn)
        .chain(
            ir.blocks()
                .flat_map(|b| b.layers.conv_bns().into_iter().map(|l| l.bn)),
        )
        .find(|n| !n.is_batch())
    {
        out.push(format!(
            "normalization: the spec's `{}` is a {} (`norm group`), torchvision's `{}` uses BatchNorm (`norm batch`)",
            gn.path,
            gn.timm_name(),
            tv.name
        ));
    }
    let tv_eps = tv.stem.bn.eps;
    let mut eps: Vec<f64> = ir
        .blocks()
        .flat_map(|b| b.layers.conv_bns().into_iter().map(|l| l.bn.eps))
        .chain(std::iter::once(ir.stem.bn.eps))
        .chain(ir.head.iter().map(|h| h.bn.eps))
        .collect();
    eps.sort_by(f64::total_cmp);
    eps.dedup();
    if let Some(&bad) = eps.iter().find(|&&e| (e - tv_eps).abs() > 1e-12 * tv_eps) {
        out.push(format!(
            "BatchNorm eps: the spec sets `norm batch(eps = {bad:e})`, torchvision's `{}` uses eps = {tv_eps:e}",
            tv.name
        ));
    }
    if ir.padding != tv.padding {
        out.push(format!(
            "padding: the spec sets `padding {}`, torchvision's `{}` pads symmetrically (`padding {}`)",
            ir.padding.name(),
            tv.name,
            PaddingMode::Symmetric.name()
        ));
    }
    out
}

/// An error when `tensors` (torchvision-named) are one of torchvision's networks and `ir`'s
/// eps or padding is not that network's.
pub(super) fn check_conventions(
    ir: &IrNetwork,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let Some(tv) = identify(tensors) else {
        return Ok(());
    };
    let mismatches = convention_mismatches(ir, tv);
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(Error::TorchvisionConventions {
        path: path.to_path_buf(),
        model: ir.name.clone(),
        torchvision: tv.name.clone(),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_torchvision_spec_compiles_to_eleven_networks() {
        let names: Vec<&str> = networks().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), 11, "{names:?}");
        assert!(names.contains(&"efficientnet_v2_l"));
    }
}
