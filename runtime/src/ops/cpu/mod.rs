//! Pure f32 slice kernels for the CPU.

pub mod backward;
pub mod conv;
pub(crate) mod depthwise_nchw;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
