//! effnet's runtime: runs networks compiled from `.effnet` specs on candle.
//!
//! - [`nn`]: what a network is: its layers and tensors (timm's names), built from the IR.
//! - [`exec`]: how it runs: the execution plan chosen per call, the forward walk and the
//!   training-step walk, and their backends (effnet's CPU kernels, candle's ops).
//! - [`ops`]: our own kernels: f32 CPU kernels on slices (fused NHWC convolutions with
//!   Winograd and an AVX-512 GEMM, depthwise, squeeze-excitation, the hand-written training
//!   step's backward passes) and candle ops with backward passes (depthwise, dense and 1x1
//!   convolutions for training).
//! - [`model`]: the [`EffNet`] trait every network implements, and what generated code calls.
//! - [`weights`]: safetensors loading (timm or torchvision names), validation, saving.
//! - [`export`]: the network as an ONNX model (standard operators, timm's tensor names).
//! - [`train`]: the trainer (schedule, optimizers, checkpoints); [`data`]: datasets and loaders.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod data;
pub mod error;
pub mod exec;
pub mod export;
pub mod model;
pub mod nn;
pub mod ops;
pub mod search;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use exec::{Plan, Precision, Purpose};
pub use model::EffNet;
pub use nn::Network;
