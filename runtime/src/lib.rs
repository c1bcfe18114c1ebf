//! effnet's runtime: runs networks compiled from `.effnet` specs on candle.
//!
//! - [`ops`]: our own kernels: f32 CPU kernels on slices (fused NHWC convolutions with
//!   Winograd and an AVX-512 GEMM, depthwise, squeeze-excitation, the hand-written training
//!   step's backward passes) and candle ops with backward passes (depthwise, dense and 1x1
//!   convolutions for training).
//! - [`layers`]: convolution, BatchNorm, activations, squeeze-excitation, the random masks.
//! - [`network`]: the blocks and the interpreter, `Network::from_ir(&ir, vb)`.
//! - [`model`]: the [`EffNet`] trait every network implements, and what generated code calls.
//! - [`weights`]: safetensors loading (timm or torchvision names), validation, saving.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod data;
pub mod error;
pub mod layers;
pub mod model;
pub mod network;
pub mod ops;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use model::EffNet;
pub use network::Network;
