//! effnet: a declarative model-description compiler for the EfficientNet family.
//!
//! This facade is all a user crate needs as a dependency: the compiler
//! ([`compiler`]), the runtime ([`runtime`]), candle ([`candle`], [`nn`]) and the
//! [`model`] attribute, which turns a `.effnet` spec into a typed network:
//!
//! ```ignore
//! #[effnet::model("specs/tf_efficientnetv2_b0.effnet")]
//! pub struct B0;
//!
//! fn run(vb: effnet::nn::VarBuilder, x: &effnet::candle::Tensor) -> effnet::Result<()> {
//!     let net = B0::load(vb)?;
//!     let logits = net.forward(x)?;
//!     let features = net.forward_features(x)?; // B0Features { stage0, ..., stage5 }
//!     let [p4, p5] = net.forward_pyramid(x, [3, 4])?; // timm's features_only levels 3 and 4
//!     println!("{} params, {} MACs, {:?}", B0::PARAMS, B0::MACS, logits.dims());
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]

pub use candle_core as candle;
pub use candle_nn as nn;
pub use effnet_compiler as compiler;
pub use effnet_macros::model;
pub use effnet_runtime as runtime;
pub use effnet_runtime::model::{EffNet, ScheduleConst, ScheduleStageConst};
pub use effnet_runtime::nn::NetworkParts;
pub use effnet_runtime::{Error, Result};
pub use effnet_runtime::{Plan, Purpose};

/// What generated code names, under paths that cannot be shadowed. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use ::candle_core::{ModuleT, Result as CandleResult, Tensor};
    pub use ::candle_nn::VarBuilder;
    pub use ::core::clone::Clone;
    pub use ::core::convert::Infallible;
    pub use ::core::fmt::Debug;
    pub use ::core::include_str;
    pub use ::core::option::Option::{self, None, Some};
    pub use ::core::result::Result::{Err, Ok};
    pub use ::effnet_compiler::ir;
    pub use ::effnet_runtime::Result as EffnetResult;
    pub use ::effnet_runtime::exec::forward_blocks;
    pub use ::effnet_runtime::model::{
        ChaCha8Rng, EffNet, ScheduleConst, ScheduleStageConst, level_array, load_blocks,
        load_classifier, load_head, load_stem, network_ir, new_rng, rng_from_state, rng_state,
        spec_has_errors, stage_array,
    };
    pub use ::effnet_runtime::nn::{
        Block, Classifier, ConvBnAct, NamedTensor, NetRng, NetworkParts, PreparedCache,
    };
    pub use ::std::vec::Vec;
}
