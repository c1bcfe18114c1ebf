//! The dtype dispatch of the custom ops whose kernels are generic over the element type.
//!
//! Those kernels are generic over [`Elem`], implemented for `f32` and `f64`. `f16` and `bf16`
//! tensors are converted to `f32`, computed in `f32` (so accumulation happens in `f32`) and
//! converted back. Every other dtype is rejected with an error.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, WithDType, bail};

use crate::ops::cpu::depthwise_nchw::Elem;

/// A CPU computation with two contiguous inputs of the same element type.
pub(crate) trait Kernel2: Sync {
    /// Human readable name used in error messages.
    fn name(&self) -> &'static str;
    /// Runs the computation on row-major, offset-free slices. The output length is the
    /// element count of the shape the caller computed beforehand.
    fn run<T: Elem>(&self, a: &[T], b: &[T]) -> Result<Vec<T>>;
}

/// The contiguous window of `data` described by `layout`, or an error for strided layouts.
pub(crate) fn contiguous_slice<'a, T>(
    data: &'a [T],
    layout: &Layout,
    op: &'static str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!(
            "{op}: the input must be contiguous, got strides {:?}",
            layout.stride()
        );
    };
    match data.get(start..end) {
        Some(s) => Ok(s),
        None => bail!(
            "{op}: layout [{start}, {end}) is outside of the storage of length {}",
            data.len()
        ),
    }
}

/// Widens a half-precision slice to `f32` (exact: every f16/bf16 value is an f32 value).
fn to_f32<T: WithDType>(v: &[T]) -> Vec<f32> {
    // f16/bf16 -> f64 is exact and so is the f64 -> f32 narrowing of such a value.
    v.iter().map(|&x| x.to_f64() as f32).collect()
}

/// Narrows `f32` results back to the storage type (one rounding: f32 -> f64 is exact).
fn from_f32<T: WithDType>(v: Vec<f32>) -> Vec<T> {
    v.into_iter().map(|x| T::from_f64(f64::from(x))).collect()
}

/// Runs `k` on the storages, dispatching on the (common) dtype.
pub(crate) fn dispatch2<K: Kernel2>(
    k: &K,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<CpuStorage> {
    let name = k.name();
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(k.run(
            contiguous_slice(a, l1, name)?,
            contiguous_slice(b, l2, name)?,
        )?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(k.run(
            contiguous_slice(a, l1, name)?,
            contiguous_slice(b, l2, name)?,
        )?),
        (CpuStorage::F16(a), CpuStorage::F16(b)) => {
            let a = to_f32(contiguous_slice(a, l1, name)?);
            let b = to_f32(contiguous_slice(b, l2, name)?);
            CpuStorage::F16(from_f32(k.run(&a, &b)?))
        }
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
            let a = to_f32(contiguous_slice(a, l1, name)?);
            let b = to_f32(contiguous_slice(b, l2, name)?);
            CpuStorage::BF16(from_f32(k.run(&a, &b)?))
        }
        _ => bail!(
            "{name}: unsupported dtypes {:?} / {:?} (expected both f32, f64, f16 or bf16)",
            s1.dtype(),
            s2.dtype()
        ),
    })
}
