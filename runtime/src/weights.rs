//! Weights: safetensors files with timm's names (or torchvision's, mapped), checked against
//! the IR before anything is built, and saved back in timm's naming.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use effnet_compiler::ir::{BlockLayers, Network as IrNetwork};

use crate::error::{Error, Result};
use crate::nn::NamedTensor;

/// Read every tensor of a safetensors file, with errors that name the file.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Parse the header ourselves first: candle's error for a non-safetensors file does not
    // say which file it was.
    safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
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
fn from_torchvision(ir: &IrNetwork, tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
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

/// Check a set of named tensors against the IR: every tensor present, none unexpected
/// (`num_batches_tracked` aside), every shape right. All problems are reported at once.
pub fn validate(ir: &IrNetwork, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let expected = ir.tensors();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for t in &expected {
        match tensors.get(&t.name) {
            None => missing.push(t.name.clone()),
            Some(found) => {
                if found.dims() != t.shape.as_slice() {
                    mismatched.push((t.name.clone(), t.shape.clone(), found.dims().to_vec()));
                }
            }
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    let mut unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !k.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    unexpected.sort();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        Ok(())
    } else {
        Err(Error::Weights {
            path: path.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        })
    }
}

/// Load weights for `ir` from a safetensors file with timm or torchvision names, checked, and
/// converted to `dtype` on `device`: a VarBuilder ready for `Network::from_ir`.
pub fn load(
    ir: &IrNetwork,
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let mut tensors = read_safetensors(path, &Device::Cpu)?;
    let torchvision = tensors.keys().any(|k| k.starts_with("features."))
        && !tensors.contains_key("conv_stem.weight");
    if torchvision {
        tensors = from_torchvision(ir, tensors);
    }
    validate(ir, &tensors, path)?;
    let mut out = HashMap::with_capacity(tensors.len());
    for (k, v) in tensors {
        if k.ends_with("num_batches_tracked") {
            continue;
        }
        out.insert(k, v.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(VarBuilder::from_tensors(out, dtype, device))
}

/// Save named tensors (timm names) as safetensors, writing a temporary file first and renaming
/// it, so an interrupted save never leaves a half-written file behind.
pub fn save(tensors: &[NamedTensor], path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.tensor.clone()))
        .collect();
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
