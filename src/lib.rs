//! effnet: a declarative model-description compiler for the EfficientNet family.
//!
//! This facade re-exports the compiler (`effnet::compiler`) and the runtime
//! (`effnet::runtime`), so a user crate needs only `effnet` as a dependency.

pub use effnet_compiler as compiler;
pub use effnet_runtime as runtime;
