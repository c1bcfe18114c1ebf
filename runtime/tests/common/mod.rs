//! Helpers shared by the op tests.

use candle_core::{Device, Result, Tensor};

/// A deterministic pseudo-random tensor with values in [-1, 1).
pub fn tensor(dims: &[usize], seed: u64) -> Result<Tensor> {
    let len: usize = dims.iter().product();
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let v: Vec<f32> = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// The largest absolute difference of two equally shaped f32 tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}
