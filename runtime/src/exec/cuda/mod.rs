//! The CUDA plans (inference, `cuda-fused`; the training step, `cuda-step`): effnet's kernels
//! ([`SOURCE`], compiled by NVRTC at run time on a GPU machine so the PTX always matches the
//! driver), the operations they implement ([`CudaKernels`]), and the two backends written over
//! those operations: the forward walk's (`backend`) and the training-step walk's (`step`).
//!
//! The backends are generic over [`CudaKernels`]: [`launch`] describes each operation's
//! launches, which `ops` (the `cuda` feature) carries out on a GPU; in `cargo test` the crate
//! `effnet-cuda-emu` runs the same CUDA C on the CPU, so the kernels' arithmetic *and* the
//! backends' use of them (layouts, GEMM operands, reductions, gradient names) are compared
//! with the CPU plans on every machine ([`logits_with`], [`loss_and_grads_with`]), and
//! `runtime/tests/cuda_launches.rs` checks every launch's arguments against the kernels'
//! declarations. Races, memory ordering and the speed need a GPU: `runtime/tests/gpu.rs`,
//! `tools/gpu-check.sh`.

pub(crate) mod backend;
pub mod conv_library;
#[cfg(feature = "cudnn")]
pub(crate) mod cudnn;
pub mod launch;
#[cfg(feature = "cuda")]
pub(crate) mod ops;
pub(crate) mod step;

use candle_core::{DType, Result, Tensor, bail};
use rand_chacha::ChaCha8Rng;

pub use conv_library::ConvLibrary;

use crate::nn::{Network, Param};
use crate::ops::{Act, ConvGeom};
use effnet_compiler::ir::Optimizer as OptimizerSpec;

/// The kernels' CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel `SOURCE` defines, by its `extern "C"` name.
pub const KERNELS: &[&str] = &[
    "effnet_depthwise_nhwc",
    "effnet_depthwise_nhwc_bf16",
    "effnet_depthwise_nhwc_f16",
    "effnet_depthwise_input_grad_nhwc",
    "effnet_depthwise_input_grad_nhwc_bf16",
    "effnet_depthwise_weight_grad_partial_nhwc",
    "effnet_depthwise_weight_grad_partial_nhwc_bf16",
    "effnet_im2col_nhwc",
    "effnet_im2col_nhwc_bf16",
    "effnet_im2col_nhwc_f16",
    "effnet_col2im_nhwc",
    "effnet_col2im_nhwc_bf16",
    "effnet_affine_act_nhwc",
    "effnet_affine_act_nhwc_bf16",
    "effnet_affine_act_nhwc_f16",
    "effnet_affine_act_residual_nhwc",
    "effnet_affine_act_residual_nhwc_bf16",
    "effnet_affine_act_residual_nhwc_f16",
    "effnet_column_moments_partial",
    "effnet_column_moments_partial_bf16",
    "effnet_batch_stats",
    "effnet_bn_act_grad_partial",
    "effnet_bn_act_grad_partial_bf16",
    "effnet_bn_act_input_grad",
    "effnet_bn_act_input_grad_bf16",
    "effnet_sum_chunks",
    "effnet_channel_means_nhwc",
    "effnet_channel_means_nhwc_bf16",
    "effnet_channel_means_nhwc_f16",
    "effnet_channel_dots_nhwc",
    "effnet_channel_dots_nhwc_bf16",
    "effnet_gate_channels_nhwc",
    "effnet_gate_channels_nhwc_bf16",
    "effnet_gate_channels_nhwc_f16",
    "effnet_gate_add_nhwc",
    "effnet_gate_add_nhwc_bf16",
    "effnet_rmsprop_tf_step",
    "effnet_adamw_step",
    "effnet_sgd_step",
    "effnet_ema_step",
];

/// Threads per block of every 1-D launch: 256 keeps eight warps per block, enough to hide
/// memory latency in these bandwidth-bound kernels on any GPU since Volta.
pub const BLOCK: u32 = 256;

/// `(grid, block)` of a 1-D launch with one thread per element of `total`; an error when the
/// grid would exceed CUDA's limit of 2^31 - 1 blocks.
pub fn grid_1d(total: usize) -> Result<(u32, u32)> {
    let blocks = total.div_ceil(BLOCK as usize).max(1);
    match u32::try_from(blocks) {
        Ok(b) if b <= i32::MAX as u32 => Ok((b, BLOCK)),
        _ => bail!("a launch of {total} threads needs {blocks} blocks, over CUDA's 2^31 - 1"),
    }
}

/// Threads a batch reduction aims for: 2^16 keeps every SM of an H200 (132 of them, 2,048
/// threads each) a quarter busy even for one column, while each thread still sums at least a
/// few dozen rows of a training map.
const REDUCTION_THREADS: usize = 1 << 16;

/// How a batch reduction over `rows` rows of `width` columns splits its rows: `(chunks,
/// rows_per_chunk)`, one thread per (chunk, column), the chunks covering the rows exactly.
pub fn row_chunks(rows: usize, width: usize) -> (usize, usize) {
    let wanted = REDUCTION_THREADS
        .div_ceil(width.max(1))
        .clamp(1, rows.max(1));
    let per = rows.div_ceil(wanted).max(1);
    (rows.div_ceil(per).max(1), per)
}

/// The most values a dense convolution's patches (im2col) hold at once by default: 2^26, 256 MB
/// in f32. Unbounded, V2-S's first Fused-MBConv layer (24 channels, 3x3, 150 px) at batch 64
/// would make 1.2 GB of patches, and as much again for their gradient; at 2^26 it runs in five
/// chunks of 13 images, each GEMM still 290k rows by 216, enough to fill an H200.
pub const PATCH_VALUES: usize = 1 << 26;

/// The `(first image, images)` chunks of a dense convolution's batch whose patches, `oh * ow *
/// k * k * c` values an image, stay within `budget` values (one image at least per chunk).
pub fn image_chunks(g: &ConvGeom, budget: usize) -> Result<Vec<(usize, usize)>> {
    let (oh, ow) = g.out_hw()?;
    let per_image = (oh * ow * g.k * g.k * g.c).max(1);
    let per = (budget / per_image).clamp(1, g.n.max(1));
    Ok((0..g.n)
        .step_by(per)
        .map(|start| (start, per.min(g.n - start)))
        .collect())
}

/// The environment variable that picks the cuda plans' dense convolutions (stem,
/// Fused-MBConv): `cudnn` or `patches` ([`DenseConv`]).
pub const DENSE_CONV_VAR: &str = "EFFNET_DENSE_CONV";

/// How the cuda plans run dense convolutions that are not pointwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseConv {
    /// cuDNN's forward, backward-data and backward-filter ([`conv_library`]).
    Cudnn,
    /// effnet's patches kernel and one GEMM (cuBLAS), a chunk of images at a time.
    Patches,
}

impl DenseConv {
    /// Whether this build has cuDNN (the `cudnn` feature).
    pub const BUILT_WITH_CUDNN: bool = cfg!(feature = "cudnn");

    /// The path for a value of [`DENSE_CONV_VAR`] (`None`: unset): cuDNN by default where the
    /// build has it, the patches otherwise; an error naming the variable for a value it does
    /// not know or cuDNN asked of a build without it.
    pub fn from_setting(value: Option<&str>, with_cudnn: bool) -> Result<Self> {
        match value.map(str::trim) {
            None | Some("") if with_cudnn => Ok(DenseConv::Cudnn),
            None | Some("") | Some("patches") => Ok(DenseConv::Patches),
            Some("cudnn") if with_cudnn => Ok(DenseConv::Cudnn),
            Some("cudnn") => bail!(
                "{DENSE_CONV_VAR}=cudnn: this effnet was built without cuDNN; build it with \
                 `--features cudnn` (README \"GPU\"), or unset the variable"
            ),
            Some(v) => bail!("{DENSE_CONV_VAR}={v}: expected `cudnn` or `patches`"),
        }
    }

    /// The path this process takes: [`DENSE_CONV_VAR`] read once.
    pub fn of_process() -> Result<Self> {
        static CHOICE: std::sync::OnceLock<std::result::Result<DenseConv, String>> =
            std::sync::OnceLock::new();
        let choice = CHOICE.get_or_init(|| {
            let v = std::env::var(DENSE_CONV_VAR).ok();
            Self::from_setting(v.as_deref(), Self::BUILT_WITH_CUDNN).map_err(|e| e.to_string())
        });
        match choice {
            Ok(c) => Ok(*c),
            Err(e) => bail!("{e}"),
        }
    }

    /// Its name in reports (`bench --json`'s `dense_conv`).
    pub fn name(self) -> &'static str {
        match self {
            DenseConv::Cudnn => "cudnn",
            DenseConv::Patches => "patches",
        }
    }

    /// The library behind this path on a GPU, if any.
    pub fn library(self) -> Option<&'static dyn ConvLibrary> {
        match self {
            #[cfg(feature = "cudnn")]
            DenseConv::Cudnn => Some(&cudnn::CUDNN),
            _ => None,
        }
    }
}

/// The kernels' code for an activation (`effnet_act` in the source).
pub fn act_code(act: Act) -> i32 {
    match act {
        Act::Identity => 0,
        Act::Silu => 1,
        Act::Relu => 2,
        Act::Relu6 => 3,
        Act::HardSwish => 4,
        Act::Gelu => 5,
    }
}

/// One tensor's circumstances in an optimizer update, besides the optimizer's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateAt {
    /// The learning rate (the step's, times the tensor's `lr_scale`).
    pub lr: f64,
    /// Whether weight decay applies (tensors of more than one dimension).
    pub weight_decay: bool,
    /// The updates of this tensor so far, this one included (AdamW's bias correction).
    pub step: i32,
    /// The gradient's factor: gradient clipping's, or 1.
    pub grad_scale: f64,
}

/// The layer operations the CUDA plans run, on contiguous tensors: maps (activations and their
/// gradients) are NHWC `[n, h, w, c]` in f32 or bf16 (`--dtype bf16` inference,
/// `--precision bf16` training; a method's map results are in its maps' dtype), per-channel
/// parameters, statistics and the SE's gates f32 packed as `[rows, c]`, reductions' partial sums f64 `[chunks,
/// width]` (chunked by [`row_chunks`]). Each required method is one kernel of [`SOURCE`]; the
/// provided ones compose them, once for every implementation. One implementation launches the
/// kernels on a GPU (the `cuda` feature); `effnet-cuda-emu` runs the same source on the CPU.
/// Every implementation checks its operands' sizes before it runs anything.
pub trait CudaKernels {
    /// The most values a dense convolution's patches may hold at once: a larger batch is
    /// convolved a chunk of images at a time ([`image_chunks`]).
    fn patch_values(&self) -> usize;

    /// The library that runs dense convolutions (not pointwise, not depthwise) in place of
    /// patches + GEMM, if this implementation has one ([`conv_library`]).
    fn conv_library(&self) -> Option<&dyn ConvLibrary> {
        None
    }

    /// `act(scale * depthwise(x, w) + shift)`, `w` timm's `[c, 1, k, k]`, `affine = (scale,
    /// shift)` `[2, c]`, the window `g` (its `n, c, h, w` are `x`'s).
    fn depthwise(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        g: &ConvGeom,
        act: Act,
    ) -> Result<Tensor>;
    /// The input gradient of a depthwise convolution from the output gradient `dy`.
    fn depthwise_input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor>;
    /// The depthwise weight gradient's partials, `[chunks, k * k * c]` f64 (tap-major), over
    /// chunks of `per` output pixels.
    fn depthwise_weight_grad_partial(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &ConvGeom,
        chunks: (usize, usize),
    ) -> Result<Tensor>;
    /// A dense convolution's patches `[n * oh * ow, k * k * c]`, taps in `(ky, kx, c)` order.
    fn im2col(&self, x: &Tensor, g: &ConvGeom) -> Result<Tensor>;
    /// The adjoint of [`CudaKernels::im2col`]: the input gradient `[n, h, w, c]` from the
    /// patches' gradient.
    fn col2im(&self, cols: &Tensor, g: &ConvGeom) -> Result<Tensor>;
    /// `act(z * scale + shift)`, plus `residual` (in `z`'s dtype) after the activation.
    fn affine_act(
        &self,
        z: &Tensor,
        affine: &Tensor,
        residual: Option<&Tensor>,
        act: Act,
    ) -> Result<Tensor>;
    /// Per-column sums and sums of squares of the `[rows, c]` map `z`: `[chunks, 2 * c]` f64.
    fn column_moments_partial(&self, z: &Tensor, chunks: (usize, usize)) -> Result<Tensor>;
    /// A train-mode BatchNorm's statistics from the moments' partials of `rows` rows: `[3, c]`
    /// = (mean, `1 / sqrt(var + eps)`, unbiased variance).
    fn batch_stats_of(&self, partial: &Tensor, c: usize, rows: usize, eps: f64) -> Result<Tensor>;
    /// The partials `[chunks, 2 * c]` f64 of the gradients of beta and gamma of a BatchNorm +
    /// activation with `bn = (mean, inv_std, gamma, beta)` `[4, c]`, from `d` at the
    /// activation's output.
    fn bn_act_grad_partial(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        chunks: (usize, usize),
    ) -> Result<Tensor>;
    /// The gradient at the BatchNorm's input, `bn = (mean, inv_std, gamma, beta, dbeta,
    /// dgamma)` `[6, c]` over `count` rows (this map's, or with SyncBatchNorm every rank's);
    /// `eval` for a BatchNorm that normalized with its running statistics.
    fn bn_act_input_grad(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        eval: bool,
        count: usize,
    ) -> Result<Tensor>;
    /// The f64 partials `[chunks, width]` summed over the chunks, in order: `[width]` f32.
    fn sum_chunks(&self, partial: &Tensor) -> Result<Tensor>;
    /// Per-(image, channel) means, `[n, c]` f32.
    fn channel_means(&self, x: &Tensor) -> Result<Tensor>;
    /// Per-(image, channel) sums of `x * y`, `[n, c]` f32.
    fn channel_dots(&self, x: &Tensor, y: &Tensor) -> Result<Tensor>;
    /// `x * gate[b, c]`.
    fn gate_channels(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor>;
    /// `x * gate[b, c] + add[b, c]`.
    fn gate_add(&self, x: &Tensor, gate: &Tensor, add: &Tensor) -> Result<Tensor>;
    /// One update by `spec` of the f32 tensor `w` of `n` values from its gradient `g` and its
    /// state `[slots, n]` (none for SGD without momentum): `[1 + slots, n]` = the new weight,
    /// then the new state in [`OptimizerSpec`]'s slot order (`crate::train::optim`).
    fn optimizer_step(
        &self,
        spec: &OptimizerSpec,
        at: &UpdateAt,
        w: &Tensor,
        g: &Tensor,
        state: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// The exponential moving average's update, `ema * d + current * (1 - d)` (f32).
    fn ema_step(&self, ema: &Tensor, current: &Tensor, d: f64) -> Result<Tensor>;

    /// A train-mode BatchNorm's statistics of the `[rows, c]` map `z`: `[3, c]` = (mean,
    /// `1 / sqrt(var + eps)`, unbiased variance).
    fn batch_stats(&self, z: &Tensor, eps: f64) -> Result<Tensor> {
        let (rows, c) = z.dims2()?;
        let partial = self.column_moments_partial(z, row_chunks(rows, c))?;
        self.batch_stats_of(&partial, c, rows, eps)
    }

    /// The gradients of beta and gamma, `[2, c]` (see [`CudaKernels::bn_act_grad_partial`]).
    fn bn_act_param_grads(&self, d: &Tensor, z: &Tensor, bn: &Tensor, act: Act) -> Result<Tensor> {
        let (rows, c) = z.dims2()?;
        let partial = self.bn_act_grad_partial(d, z, bn, act, row_chunks(rows, c))?;
        self.sum_chunks(&partial)?.reshape((2, c))
    }

    /// The weight gradient of a depthwise convolution, timm's `[c, 1, k, k]`.
    fn depthwise_weight_grad(&self, x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let (oh, ow) = g.out_hw()?;
        let (c, k) = (g.c, g.k);
        let chunks = row_chunks(g.n * oh * ow, k * k * c);
        let partial = self.depthwise_weight_grad_partial(x, dy, g, chunks)?;
        self.sum_chunks(&partial)?
            .reshape((k * k, c))?
            .t()?
            .contiguous()?
            .reshape((c, 1, k, k))
    }
}

/// Prepare a CUDA `device` for effnet (a no-op for any other device or without the `cuda`
/// feature), once, before it computes anything:
///
/// - cudarc's event tracking off: it records two CUDA events per allocation to order uses
///   across streams; effnet runs everything on candle's one stream per device, where they
///   are never needed.
/// - the stream-ordered allocator's default pool keeps freed memory (release threshold
///   `u64::MAX`): at CUDA's default of 0 every synchronization (a loss read back, a batch
///   staged) hands the pool's free memory back to the driver, and the next step maps it
///   again; candle allocates a fresh buffer per operation, so a step would pay that for most
///   of its working set. PyTorch's caching allocator keeps its blocks the same way.
pub fn configure_device(device: &candle_core::Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        return ops::configure(d);
    }
    let _ = device;
    Ok(())
}

/// The most device memory `device`'s allocator pool has had in use at once, in bytes (the
/// stream-ordered pool's high watermark, as `torch.cuda.max_memory_allocated` is PyTorch's);
/// `None` for other devices, without the `cuda` feature, or without a pool.
pub fn peak_device_bytes(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        return ops::pool_high_watermark(d);
    }
    let _ = device;
    None
}

/// effnet's kernels launched on `device`: `Some` for a CUDA device in a build with the `cuda`
/// feature (the training loop's optimizer and EMA updates take them there).
pub fn kernels_on(device: &candle_core::Device) -> Option<&'static dyn CudaKernels> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        static ON_GPU: ops::Launched = launch::Launcher::new(ops::OnGpu);
        return Some(&ON_GPU);
    }
    let _ = device;
    None
}

/// The eval-mode logits of `net` on `x` by the cuda-fused plan's walk over `kernels` (what
/// the plan runs on a GPU with the kernels launched there).
pub fn logits_with<K: CudaKernels>(net: &Network, x: &Tensor, kernels: K) -> Result<Tensor> {
    let stages = net.stage_slices();
    let parts = net.parts(&stages);
    parts.check_input(x)?;
    let mut ops = backend::CudaOps {
        kernels,
        prepared: parts.prepared,
        maps: backend::map_dtype(parts.stem.conv.weight_dtype()),
        dtype: x.dtype(),
    };
    crate::exec::forward::logits(&mut ops, &parts, x, None)
}

/// One training step's loss and the gradients of `params` by the cuda-step plan's walk over
/// `kernels` (see [`crate::exec::loss_and_grads`]), with maps in `maps` (f32, or bf16 for
/// mixed precision), and SyncBatchNorm through `sync` when given.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grads_with<K: CudaKernels>(
    net: &Network,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
    kernels: K,
    maps: DType,
    sync: Option<&dyn crate::exec::BatchNormSync>,
) -> Result<(f64, Vec<Tensor>)> {
    let stages = net.stage_slices();
    let parts = net.parts(&stages);
    let ops = step::CudaStepOps::new(kernels, maps, sync);
    crate::exec::run_step(ops, &parts, params, x, targets, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_defines_every_kernel_once_and_includes_nothing() {
        for k in KERNELS {
            let decl = format!("extern \"C\" __global__ void {k}(");
            assert_eq!(SOURCE.matches(&decl).count(), 1, "{k}");
        }
        assert_eq!(
            SOURCE.matches("extern \"C\" __global__").count(),
            KERNELS.len()
        );
        // NVRTC would need a toolkit's headers for an #include.
        assert!(
            !SOURCE
                .lines()
                .any(|l| l.trim_start().starts_with("#include"))
        );
    }

    #[test]
    fn the_dense_convolution_path_follows_the_variable_and_the_build() {
        use DenseConv::*;
        assert_eq!(DenseConv::from_setting(None, true).ok(), Some(Cudnn));
        assert_eq!(DenseConv::from_setting(None, false).ok(), Some(Patches));
        assert_eq!(
            DenseConv::from_setting(Some("patches"), true).ok(),
            Some(Patches)
        );
        assert_eq!(
            DenseConv::from_setting(Some(" cudnn "), true).ok(),
            Some(Cudnn)
        );
        let e = DenseConv::from_setting(Some("cudnn"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features cudnn"), "{e}");
        let e = DenseConv::from_setting(Some("winograd"), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("EFFNET_DENSE_CONV=winograd") && e.contains("`patches`"),
            "{e}"
        );
        assert_eq!(Patches.library().map(|l| l.name()), None);
    }

    #[test]
    fn image_chunks_cover_the_batch_within_the_budget() -> Result<()> {
        let g = ConvGeom {
            n: 7,
            c: 4,
            h: 9,
            w: 9,
            o: 8,
            k: 3,
            stride: 1,
            dilation: 1,
            pad: crate::ops::Padding2d::symmetric(1),
        };
        // 9 * 9 pixels of 3 * 3 * 4 values: 2,916 values of patches an image.
        assert_eq!(image_chunks(&g, 1 << 20)?, [(0, 7)]);
        assert_eq!(image_chunks(&g, 6_000)?, [(0, 2), (2, 2), (4, 2), (6, 1)]);
        assert_eq!(image_chunks(&g, 1)?.len(), 7);
        Ok(())
    }

    #[test]
    fn launch_geometry_covers_every_element_and_refuses_an_oversized_grid() -> Result<()> {
        assert_eq!(grid_1d(0)?, (1, BLOCK));
        assert_eq!(grid_1d(1)?, (1, BLOCK));
        assert_eq!(grid_1d(256)?, (1, BLOCK));
        assert_eq!(grid_1d(257)?, (2, BLOCK));
        let (g, b) = grid_1d(32 * 384 * 384 * 24)?;
        assert!(g as usize * b as usize >= 32 * 384 * 384 * 24);
        assert!(grid_1d(usize::MAX / 2).is_err());
        Ok(())
    }
}
