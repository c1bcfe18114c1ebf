//! Borrowing the f32 data of CPU tensors and storages, for the custom ops whose kernels work
//! on contiguous slices. Errors name the op and the operand.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};

/// The contiguous f32 data of a CPU storage under `l`.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{op}: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// Run `f` on the f32 data of a CPU tensor (made contiguous first if it is not).
pub(crate) fn with_cpu_f32<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu_f32(cpu, layout, op, "tensor")?),
        _ => bail!("{op}: CPU tensors only"),
    }
}
