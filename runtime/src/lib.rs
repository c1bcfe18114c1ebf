//! effnet's runtime: runs networks compiled from `.effnet` specs on candle.
//!
//! - [`ops`]: our own kernels (depthwise convolution, 1x1 convolutions as matrix products).
//! - [`layers`]: convolution, BatchNorm, activations, squeeze-excitation, the random masks.
//! - [`network`]: the blocks and the interpreter, `Network::from_ir(&ir, vb)`.
//! - [`model`]: the [`EffNet`] trait every network implements, and what generated code calls.
//! - [`weights`]: safetensors loading (timm or torchvision names), validation, saving.

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
