//! f32 CPU kernels on plain slices: no tensors, no candle types but its `Result`.
//!
//! On NHWC maps (channels last), for the inference walk and the hand-written training step:
//!
//! * [`conv`]: dense convolutions fused with their epilogue ([`Epilogue`]: the BatchNorm
//!   affine map and the activation) and the residual add, on `winograd` for 3x3 stride 1,
//!   on `gemm_avx512` (our AVX-512 GEMM, the epilogue applied while the tile is in L1) where
//!   the CPU has AVX-512F, else on `gemm` (the `gemm` crate).
//! * [`depthwise`]: the fused depthwise convolution (and the channel means of its output).
//! * [`se`]: squeeze-excitation: channel means, gates, the excitation.
//! * [`layout`]: NCHW <-> NHWC at the edges.
//! * [`backward`]: train-mode BatchNorm, the activations' derivatives and the backward passes
//!   of the above, for the hand-written training step.
//!
//! On NCHW planes, generic over the float type: `depthwise_nchw`, the loops behind the
//! candle depthwise op (`super::candle::depthwise`).
//!
//! Underneath: [`simd`] (run-time ISA dispatch, `exp`, sigmoid, the activations, the
//! epilogue loop) and `tasks` (sharing work between rayon's tasks). Every kernel splits
//! its work into tasks on rayon's global pool, so the thread count is `RAYON_NUM_THREADS`.

pub mod backward;
pub mod conv;
pub mod depthwise;
pub(crate) mod depthwise_nchw;
pub(crate) mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
pub mod layout;
pub mod se;
pub mod simd;
pub(crate) mod tasks;
#[cfg(test)]
mod testing;
mod winograd;

pub use crate::ops::{Act, ConvGeom};
pub use conv::{ConvWeights, GemmKernel, conv2d, conv2d_prepared, conv2d_with};
pub use depthwise::depthwise;
pub use layout::{nchw_to_nhwc, nhwc_to_nchw};
pub use se::{channel_means, gate_channels, se_gates};
pub use simd::Epilogue;

// The crate-internal building blocks, at one path for every module of the crate (the
// training step uses some); not every one is used outside its own module today.
#[allow(unused_imports)]
pub(crate) use conv::im2col_rows;
#[allow(unused_imports)]
pub(crate) use gemm::{Mat, gemm_into};
#[cfg(target_arch = "x86_64")]
#[allow(unused_imports)]
pub(crate) use simd::silu_zmm;
#[allow(unused_imports)]
pub(crate) use simd::{Level, act_one, epilogue_tile, level, multiversion, sigmoid, with_act};
