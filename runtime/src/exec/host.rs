//! CPU tensors' values as host f32 slices, for the plans that run effnet's CPU kernels.

use candle_core::{CpuStorage, DType, Result, Storage, StorageRef, Tensor, bail};

/// The data of a contiguous CPU f32 tensor, borrowed under its storage's read lock.
pub(crate) struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    pub(crate) fn new(t: &'a Tensor) -> Option<Self> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*guard {
            Storage::Cpu(CpuStorage::F32(v)) if end <= v.len() => {
                Some(F32View { guard, start, end })
            }
            _ => None,
        }
    }

    pub(crate) fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => v.get(self.start..self.end).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// A CPU tensor's values as f32: borrowed for f32, widened copies for f16 and bf16 (the
/// fused kernels compute in f32 whatever the storage dtype).
pub(crate) enum HostData<'a> {
    View(F32View<'a>),
    Owned(Vec<f32>),
}

impl<'a> HostData<'a> {
    pub(crate) fn new(t: &'a Tensor) -> Option<Self> {
        match t.dtype() {
            DType::F32 => F32View::new(t).map(HostData::View),
            DType::F16 | DType::BF16 if t.device().is_cpu() => t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .ok()
                .map(HostData::Owned),
            _ => None,
        }
    }

    pub(crate) fn get(&self) -> &[f32] {
        match self {
            HostData::View(v) => v.get(),
            HostData::Owned(v) => v,
        }
    }
}

/// The host values of `t`, or an error naming the tensor (`what`) and the plan (`op`). `what`
/// is formatted only for the error: the fused plan asks for a few hundred tensors per call.
pub(crate) fn host<'a>(
    t: &'a Tensor,
    op: &str,
    what: impl std::fmt::Display,
) -> Result<HostData<'a>> {
    match HostData::new(t) {
        Some(v) => Ok(v),
        None => bail!(
            "{op}: `{what}` is not a contiguous CPU f32/f16/bf16 tensor ({:?} on {:?})",
            t.dtype(),
            t.device()
        ),
    }
}
