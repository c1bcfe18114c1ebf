//! candle custom ops and what touches candle storage.

pub(crate) mod cpu_data;
pub mod depthwise;
pub(crate) mod dtype;
pub mod pointwise;
mod train_gemm;

pub use depthwise::{
    depthwise_conv2d, depthwise_conv2d_backward, depthwise_conv2d_backward_dilated,
    depthwise_conv2d_dilated, depthwise_conv2d_tensor_ops, depthwise_conv2d_tensor_ops_dilated,
};
pub use pointwise::{
    global_avg_pool, linear, pointwise_conv2d, pointwise_conv2d_for_training, squeeze_excite,
};
pub use train_gemm::{conv2d_train, conv2d_train_dilated};
