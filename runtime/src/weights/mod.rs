//! Weights: safetensors files with timm's names (or torchvision's, mapped), checked against
//! the IR before anything is built, and saved back in timm's naming.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use effnet_compiler::ir::Network as IrNetwork;

use crate::error::{Error, Result};
use crate::nn::NamedTensor;

pub mod torchvision;
pub use torchvision::torchvision_prefixes;

/// How `load_with` treats weights whose conventions differ from the spec's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Run with the spec's BatchNorm eps and padding even when the weights are one of
    /// torchvision's networks and torchvision's settings differ (by default an error).
    pub keep_spec_conventions: bool,
}

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
    load_with(ir, path, dtype, device, LoadOptions::default())
}

/// `load`, with the choice of what to do when torchvision's weights meet a spec whose eps or
/// padding is not torchvision's (see [`torchvision`]).
pub fn load_with(
    ir: &IrNetwork,
    path: &Path,
    dtype: DType,
    device: &Device,
    options: LoadOptions,
) -> Result<VarBuilder<'static>> {
    let mut tensors = read_safetensors(path, &Device::Cpu)?;
    if torchvision::has_torchvision_names(&tensors) {
        if !options.keep_spec_conventions {
            torchvision::check_conventions(ir, &tensors, path)?;
        }
        tensors = torchvision::to_timm_names(ir, tensors);
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

/// Weights to start training from (`effnet train --init`), checked against the network.
#[derive(Debug)]
pub struct InitWeights {
    /// Every tensor under its timm name, in f32 on the CPU; without the classifier when it is
    /// new.
    pub tensors: HashMap<String, Tensor>,
    /// The file carried torchvision's names (mapped to timm's).
    pub torchvision_names: bool,
    /// The weights' class count when it differs from the network's: their classifier is left
    /// out, and the network's keeps its fresh initialization.
    pub new_classifier: Option<usize>,
}

/// Load weights to fine-tune `ir` from (timm or torchvision names, as [`load_with`]). The one
/// difference allowed is the class count: when the file's classifier is `[K, F]` / `[K]` with
/// `F` the network's features and `K` another class count, it is left out and reported in
/// [`InitWeights::new_classifier`]. Every other missing, unexpected or misshapen tensor is an
/// error naming them all, as for `load`.
pub fn load_init(ir: &IrNetwork, path: &Path, options: LoadOptions) -> Result<InitWeights> {
    let mut tensors = read_safetensors(path, &Device::Cpu)?;
    let torchvision_names = torchvision::has_torchvision_names(&tensors);
    if torchvision_names {
        if !options.keep_spec_conventions {
            torchvision::check_conventions(ir, &tensors, path)?;
        }
        tensors = torchvision::to_timm_names(ir, tensors);
    }
    let cw = format!("{}.weight", ir.classifier.path);
    let cb = format!("{}.bias", ir.classifier.path);
    let features = ir.classifier.in_features;
    let theirs = match (
        tensors.get(&cw).map(Tensor::dims),
        tensors.get(&cb).map(Tensor::dims),
    ) {
        (Some(&[k, f]), Some(&[kb])) if f == features && kb == k && k != ir.num_classes => Some(k),
        _ => None,
    };
    // Checked against the network with the file's class count, so that everything but the
    // class count is held to what `run` requires.
    let mut expected = ir.clone();
    if let Some(k) = theirs {
        expected.num_classes = k;
        expected.classifier.out_features = k;
    }
    validate(&expected, &tensors, path)?;
    tensors.retain(|k, _| !k.ends_with("num_batches_tracked"));
    if theirs.is_some() {
        tensors.remove(&cw);
        tensors.remove(&cb);
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(InitWeights {
        tensors,
        torchvision_names,
        new_classifier: theirs,
    })
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
