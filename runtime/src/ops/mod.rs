//! Our own kernels, and the descriptions of what they compute.
//!
//! * [`geom`]: what a kernel is asked to compute, whatever device computes it: a
//!   convolution's [`Padding2d`] and [`ConvGeom`], an epilogue's activation [`Act`].
//! * [`cpu`]: f32 kernels on plain slices, multi-threaded on rayon's pool, each element-wise
//!   loop compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked at run time. On NHWC
//!   maps: dense convolutions as GEMMs with the BatchNorm affine map, activation and residual
//!   fused into the output tiles (Winograd F(2x2, 3x3) for 3x3 stride 1, our AVX-512 GEMM
//!   where the CPU has it), the fused depthwise convolution, squeeze-excitation and layout
//!   changes. They run the eval-mode inference walk and the forward pass of the hand-written
//!   training step (`crate::exec::cpu_step`), whose backward passes and train-mode BatchNorm are
//!   [`cpu::backward`]. On NCHW planes, in any float dtype: the depthwise loops behind the
//!   candle op.
//! * [`candle`]: what candle's autograd sees. CPU custom ops with backward passes:
//!   [`depthwise_conv2d`] (its gradients are custom ops too, so any order of gradients
//!   works), [`conv2d_train`] and the 1x1 training op behind [`pointwise_conv2d`], dense
//!   convolutions as one autograd node each so training skips candle's `conv_transpose2d`
//!   backward. Compositions of candle ops that run on every device: [`pointwise_conv2d`] (1x1
//!   convolution as a matrix product), [`global_avg_pool`], [`linear`], [`squeeze_excite`],
//!   and [`depthwise_conv2d_tensor_ops`] (the depthwise convolution off the CPU).
//!
//! `candle` uses `cpu` and `geom`, `cpu` uses `geom`; nothing uses them back.

pub mod candle;
pub mod cpu;
pub mod geom;

pub use candle::{
    conv2d_train, conv2d_train_dilated, depthwise_conv2d, depthwise_conv2d_backward,
    depthwise_conv2d_backward_dilated, depthwise_conv2d_dilated, depthwise_conv2d_tensor_ops,
    depthwise_conv2d_tensor_ops_dilated, global_avg_pool, linear, pointwise_conv2d,
    pointwise_conv2d_for_training, squeeze_excite,
};
pub use geom::{Act, ConvGeom, Padding2d};
