//! [`CudaKernels`] on a GPU: each operation checks its operands, then launches the kernels of
//! `kernels.cu` through one candle custom op ([`Launch`]), compiled once per process by
//! NVRTC. NVRTC rather than nvcc at build time: the PTX is made by the machine's own NVRTC,
//! so it always matches the driver that loads it (PTX from a newer toolkit than the driver is
//! refused with CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and the kernels need no second toolkit
//! at build time. No `arch` is given: NVRTC's default virtual architecture JIT-compiles on
//! every GPU the toolkit supports.
//!
//! The kernels' arithmetic and the backends' use of them are checked on the CPU
//! (`effnet-cuda-emu`); these launches only on a GPU (`runtime/tests/gpu.rs`,
//! `tools/gpu-check.sh`).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
    bail,
};

use super::{CudaKernels, SOURCE, act_code, grid_1d};
use crate::ops::{Act, ConvGeom};

const MODULE: &str = "effnet_kernels";

/// The kernels' PTX, compiled on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        compile_ptx_with_opts(
            SOURCE,
            CompileOptions {
                name: Some("effnet_kernels.cu".into()),
                ..Default::default()
            },
        )
        .map(|p| p.to_src())
        .map_err(|e| format!("NVRTC could not compile effnet's CUDA kernels: {e}"))
    });
    match compiled {
        Ok(p) => Ok(p.as_str()),
        Err(e) => bail!("{e}"),
    }
}

/// A scalar kernel argument, in the C type the kernel declares.
#[derive(Debug, Clone, Copy)]
enum Arg {
    Int(i32),
    Long(i64),
    Double(f64),
}

fn int(v: usize, op: &str, what: &str) -> Result<Arg> {
    match i32::try_from(v) {
        Ok(i) => Ok(Arg::Int(i)),
        Err(_) => bail!("{op}: {what} = {v} over 2^31"),
    }
}

fn long(v: usize, op: &str, what: &str) -> Result<Arg> {
    match i64::try_from(v) {
        Ok(i) => Ok(Arg::Long(i)),
        Err(_) => bail!("{op}: {what} = {v} over 2^63"),
    }
}

/// One launch of `kernel` with one thread per element of `threads`: the inputs (contiguous
/// f32 or f64 storages, in order), then a fresh output of `out` in `out_dtype`, then the
/// scalars; the kernels' calling convention.
#[derive(Debug, Clone)]
struct Launch {
    kernel: &'static str,
    threads: usize,
    out: Vec<usize>,
    out_dtype: DType,
    scalars: Vec<Arg>,
}

enum View<'a> {
    F32(CudaView<'a, f32>),
    F64(CudaView<'a, f64>),
    Bf16(CudaView<'a, half::bf16>),
}

impl Launch {
    fn new(kernel: &'static str, threads: usize, out: &[usize], scalars: Vec<Arg>) -> Self {
        Launch {
            kernel,
            threads,
            out: out.to_vec(),
            out_dtype: DType::F32,
            scalars,
        }
    }

    fn f64_out(mut self) -> Self {
        self.out_dtype = DType::F64;
        self
    }

    fn out(mut self, dtype: DType) -> Self {
        self.out_dtype = dtype;
        self
    }

    fn run(&self, inputs: &[(&CudaStorage, &Layout)]) -> Result<(CudaStorage, Shape)> {
        let op = self.kernel;
        let Some((first, _)) = inputs.first() else {
            bail!("{op}: no inputs");
        };
        let dev: &CudaDevice = first.device();
        let mut views = Vec::with_capacity(inputs.len());
        for (i, (s, l)) in inputs.iter().enumerate() {
            let Some((a, b)) = l.contiguous_offsets() else {
                bail!("{op}: input {i} must be contiguous");
            };
            views.push(match s.dtype() {
                DType::F32 => View::F32(s.as_cuda_slice::<f32>()?.slice(a..b)),
                DType::F64 => View::F64(s.as_cuda_slice::<f64>()?.slice(a..b)),
                DType::BF16 => View::Bf16(s.as_cuda_slice::<half::bf16>()?.slice(a..b)),
                d => bail!(
                    "{op}: input {i} is {}, the kernels take f32, f64 or bf16",
                    d.as_str()
                ),
            });
        }
        let total: usize = self.out.iter().product();
        let func = dev.get_or_load_custom_func(op, MODULE, ptx()?)?;
        let (grid, block) = grid_1d(self.threads)?;
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        let shape = Shape::from(self.out.clone());
        macro_rules! launch {
            ($t:ty) => {{
                // SAFETY: every kernel writes each element of its output before anyone reads it
                // (the caller's `threads` covers the output, threads past the end return).
                let y = unsafe { dev.alloc::<$t>(total) }?;
                let mut b = func.builder();
                for v in &views {
                    match v {
                        View::F32(v) => b.arg(v),
                        View::F64(v) => b.arg(v),
                        View::Bf16(v) => b.arg(v),
                    };
                }
                b.arg(&y);
                for s in &self.scalars {
                    match s {
                        Arg::Int(v) => b.arg(v),
                        Arg::Long(v) => b.arg(v),
                        Arg::Double(v) => b.arg(v),
                    };
                }
                // SAFETY: the arguments follow the kernel's parameters in order and type (the
                // inputs' pointers, the output's, then the scalars as declared: each operation
                // of `Launched` builds them for its kernel), and the buffers hold what the
                // sizes say (each operation checks its operands' element counts first).
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let storage = match self.out_dtype {
            DType::F64 => launch!(f64),
            DType::BF16 => launch!(half::bf16),
            _ => launch!(f32),
        };
        Ok((storage, shape))
    }
}

fn cpu_refused(op: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{op} runs on CUDA tensors only (the cuda plans)")
}

impl CustomOp1 for Launch {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.kernel)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s, l)])
    }
}

impl CustomOp2 for Launch {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.kernel)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2)])
    }
}

impl CustomOp3 for Launch {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.kernel)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// `t` as a contiguous f32 tensor of `len` elements, or an error naming `what`.
fn operand(t: &Tensor, len: usize, op: &str, what: &str) -> Result<Tensor> {
    if t.elem_count() != len {
        bail!(
            "{op}: {what} has {:?} ({} values), expected {len}",
            t.dims(),
            t.elem_count()
        );
    }
    t.to_dtype(DType::F32)?.contiguous()
}

/// `t` as a contiguous map operand of `len` elements in its own dtype, f32 or bf16.
fn map_operand(t: &Tensor, len: usize, op: &str, what: &str) -> Result<Tensor> {
    if !matches!(t.dtype(), DType::F32 | DType::BF16) {
        bail!(
            "{op}: {what} is {}, the kernels take f32 or bf16 maps",
            t.dtype().as_str()
        );
    }
    if t.elem_count() != len {
        bail!(
            "{op}: {what} has {:?} ({} values), expected {len}",
            t.dims(),
            t.elem_count()
        );
    }
    t.contiguous()
}

/// `t` as a map operand in `like`'s dtype (a kernel's maps share one).
fn same_maps(like: &Tensor, t: &Tensor, len: usize, op: &str, what: &str) -> Result<Tensor> {
    if t.dtype() != like.dtype() {
        bail!(
            "{op}: {what} is {}, the other maps {}",
            t.dtype().as_str(),
            like.dtype().as_str()
        );
    }
    map_operand(t, len, op, what)
}

/// The kernel for maps of `dtype`: `f32` or its `_bf16` twin.
fn by_dtype(dtype: DType, f32: &'static str, bf16: &'static str) -> &'static str {
    if dtype == DType::BF16 { bf16 } else { f32 }
}

/// An NHWC map's `[n, h, w, c]`.
fn map_dims(t: &Tensor, op: &str) -> Result<[usize; 4]> {
    match t.dims() {
        &[n, h, w, c] => Ok([n, h, w, c]),
        d => bail!("{op}: expected an NHWC map, got {d:?}"),
    }
}

/// A `[rows, c]` matrix's dims (any map flattens to its pixels and channels).
fn rows_cols(t: &Tensor, op: &str) -> Result<(usize, usize)> {
    match t.dims().split_last() {
        Some((&c, rest)) if c > 0 => Ok((rest.iter().product(), c)),
        _ => bail!("{op}: an empty map {:?}", t.dims()),
    }
}

/// The window's scalars in the kernels' order: n, h, w, c, k, stride, dil, pad_top,
/// pad_left, oh, ow.
fn window(g: &ConvGeom, op: &str) -> Result<(Vec<Arg>, usize, usize)> {
    let (oh, ow) = g.out_hw()?;
    let named = [
        (g.n, "n"),
        (g.h, "h"),
        (g.w, "w"),
        (g.c, "c"),
        (g.k, "k"),
        (g.stride, "stride"),
        (g.dilation, "dilation"),
        (g.pad.top, "pad top"),
        (g.pad.left, "pad left"),
        (oh, "oh"),
        (ow, "ow"),
    ];
    let args = named
        .iter()
        .map(|&(v, what)| int(v, op, what))
        .collect::<Result<Vec<_>>>()?;
    Ok((args, oh, ow))
}

/// The CUDA launches of effnet's kernels.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Launched;

impl CudaKernels for Launched {
    fn depthwise(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        g: &ConvGeom,
        act: Act,
    ) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_depthwise_nhwc",
            "effnet_depthwise_nhwc_bf16",
        );
        let (mut args, oh, ow) = window(g, op)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let x = map_operand(x, n * g.h * g.w * c, op, "the input")?;
        let w = operand(w, c * k * k, op, "the weight")?;
        let affine = operand(affine, 2 * c, op, "the affine")?;
        args.push(Arg::Int(act_code(act)));
        let total = n * oh * ow * c;
        let launch = Launch::new(op, total, &[n, oh, ow, c], args).out(x.dtype());
        x.apply_op3_no_bwd(&w, &affine, &launch)
    }

    fn depthwise_input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = by_dtype(
            dy.dtype(),
            "effnet_depthwise_input_grad_nhwc",
            "effnet_depthwise_input_grad_nhwc_bf16",
        );
        let (args, oh, ow) = window(g, op)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let dy = map_operand(dy, n * oh * ow * c, op, "the output gradient")?;
        let w = operand(w, c * k * k, op, "the weight")?;
        let total = n * g.h * g.w * c;
        let launch = Launch::new(op, total, &[n, g.h, g.w, c], args).out(dy.dtype());
        dy.apply_op2_no_bwd(&w, &launch)
    }

    fn depthwise_weight_grad_partial(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &ConvGeom,
        (chunks, per): (usize, usize),
    ) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_depthwise_weight_grad_partial_nhwc",
            "effnet_depthwise_weight_grad_partial_nhwc_bf16",
        );
        let (mut args, oh, ow) = window(g, op)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let x = map_operand(x, n * g.h * g.w * c, op, "the input")?;
        let dy = same_maps(&x, dy, n * oh * ow * c, op, "the output gradient")?;
        covering(chunks, per, n * oh * ow, op)?;
        let width = k * k * c;
        args.push(long(per, op, "rows per chunk")?);
        args.push(int(chunks, op, "chunks")?);
        x.apply_op2_no_bwd(
            &dy,
            &Launch::new(op, chunks * width, &[chunks, width], args).f64_out(),
        )
    }

    fn im2col(&self, x: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = by_dtype(x.dtype(), "effnet_im2col_nhwc", "effnet_im2col_nhwc_bf16");
        let (args, oh, ow) = window(g, op)?;
        let x = map_operand(x, g.n * g.h * g.w * g.c, op, "the input")?;
        let width = g.k * g.k * g.c;
        let rows = g.n * oh * ow;
        let launch = Launch::new(op, rows * width, &[rows, width], args).out(x.dtype());
        x.apply_op1_no_bwd(&launch)
    }

    fn col2im(&self, cols: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = by_dtype(
            cols.dtype(),
            "effnet_col2im_nhwc",
            "effnet_col2im_nhwc_bf16",
        );
        let (args, oh, ow) = window(g, op)?;
        let cols = map_operand(cols, g.n * oh * ow * g.k * g.k * g.c, op, "the patches")?;
        let total = g.n * g.h * g.w * g.c;
        let launch = Launch::new(op, total, &[g.n, g.h, g.w, g.c], args).out(cols.dtype());
        cols.apply_op1_no_bwd(&launch)
    }

    fn affine_act(
        &self,
        z: &Tensor,
        affine: &Tensor,
        residual: Option<&Tensor>,
        act: Act,
    ) -> Result<Tensor> {
        let (rows, c) = rows_cols(z, "effnet_affine_act_nhwc")?;
        let total = rows * c;
        let dtype = z.dtype();
        let scalars = |op| -> Result<Vec<Arg>> {
            Ok(vec![
                long(total, op, "total")?,
                int(c, op, "c")?,
                Arg::Int(act_code(act)),
            ])
        };
        let dims = z.dims().to_vec();
        match residual {
            None => {
                let op = by_dtype(
                    dtype,
                    "effnet_affine_act_nhwc",
                    "effnet_affine_act_nhwc_bf16",
                );
                let z = map_operand(z, total, op, "the map")?;
                let affine = operand(affine, 2 * c, op, "the affine")?;
                let launch = Launch::new(op, total, &dims, scalars(op)?).out(dtype);
                z.apply_op2_no_bwd(&affine, &launch)
            }
            Some(r) => {
                let op = by_dtype(
                    dtype,
                    "effnet_affine_act_residual_nhwc",
                    "effnet_affine_act_residual_nhwc_bf16",
                );
                let z = map_operand(z, total, op, "the map")?;
                let affine = operand(affine, 2 * c, op, "the affine")?;
                let r = same_maps(&z, r, total, op, "the residual")?;
                let launch = Launch::new(op, total, &dims, scalars(op)?).out(dtype);
                z.apply_op3_no_bwd(&affine, &r, &launch)
            }
        }
    }

    fn column_moments_partial(&self, z: &Tensor, (chunks, per): (usize, usize)) -> Result<Tensor> {
        let op = by_dtype(
            z.dtype(),
            "effnet_column_moments_partial",
            "effnet_column_moments_partial_bf16",
        );
        let (rows, c) = rows_cols(z, op)?;
        let z = map_operand(z, rows * c, op, "the map")?;
        covering(chunks, per, rows, op)?;
        let args = vec![
            long(rows, op, "rows")?,
            int(c, op, "c")?,
            long(per, op, "rows per chunk")?,
            int(chunks, op, "chunks")?,
        ];
        z.apply_op1_no_bwd(&Launch::new(op, chunks * c, &[chunks, 2 * c], args).f64_out())
    }

    fn batch_stats_of(&self, partial: &Tensor, c: usize, rows: usize, eps: f64) -> Result<Tensor> {
        let op = "effnet_batch_stats";
        let chunks = partials(partial, 2 * c, op)?;
        let args = vec![
            int(chunks, op, "chunks")?,
            int(c, op, "c")?,
            long(rows, op, "rows")?,
            Arg::Double(eps),
        ];
        partial.apply_op1_no_bwd(&Launch::new(op, c, &[3, c], args))
    }

    fn bn_act_grad_partial(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        (chunks, per): (usize, usize),
    ) -> Result<Tensor> {
        let op = by_dtype(
            z.dtype(),
            "effnet_bn_act_grad_partial",
            "effnet_bn_act_grad_partial_bf16",
        );
        let (rows, c) = rows_cols(z, op)?;
        let z = map_operand(z, rows * c, op, "the BatchNorm's input")?;
        let d = same_maps(&z, d, rows * c, op, "the output gradient")?;
        let bn = operand(bn, 4 * c, op, "the BatchNorm's parameters")?;
        covering(chunks, per, rows, op)?;
        let args = vec![
            long(rows, op, "rows")?,
            int(c, op, "c")?,
            long(per, op, "rows per chunk")?,
            int(chunks, op, "chunks")?,
            Arg::Int(act_code(act)),
        ];
        d.apply_op3_no_bwd(
            &z,
            &bn,
            &Launch::new(op, chunks * c, &[chunks, 2 * c], args).f64_out(),
        )
    }

    fn sum_chunks(&self, partial: &Tensor) -> Result<Tensor> {
        let op = "effnet_sum_chunks";
        let Some(&width) = partial.dims().last() else {
            bail!("{op}: partials of {:?}", partial.dims());
        };
        let chunks = partials(partial, width, op)?;
        let args = vec![int(chunks, op, "chunks")?, long(width, op, "width")?];
        partial.apply_op1_no_bwd(&Launch::new(op, width, &[width], args))
    }

    fn bn_act_input_grad(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        eval: bool,
    ) -> Result<Tensor> {
        let op = by_dtype(
            z.dtype(),
            "effnet_bn_act_input_grad",
            "effnet_bn_act_input_grad_bf16",
        );
        let (rows, c) = rows_cols(z, op)?;
        let total = rows * c;
        let z = map_operand(z, total, op, "the BatchNorm's input")?;
        let d = same_maps(&z, d, total, op, "the output gradient")?;
        let bn = operand(bn, 6 * c, op, "the BatchNorm's parameters and gradients")?;
        let args = vec![
            long(total, op, "total")?,
            int(c, op, "c")?,
            Arg::Int(act_code(act)),
            Arg::Int(i32::from(eval)),
        ];
        let launch = Launch::new(op, total, &[rows, c], args).out(z.dtype());
        d.apply_op3_no_bwd(&z, &bn, &launch)
    }

    fn channel_means(&self, x: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_channel_means_nhwc",
            "effnet_channel_means_nhwc_bf16",
        );
        let [n, h, w, c] = map_dims(x, op)?;
        let x = map_operand(x, n * h * w * c, op, "the map")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        x.apply_op1_no_bwd(&Launch::new(op, n * c, &[n, c], args))
    }

    fn channel_dots(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_channel_dots_nhwc",
            "effnet_channel_dots_nhwc_bf16",
        );
        let [n, h, w, c] = map_dims(x, op)?;
        let x = map_operand(x, n * h * w * c, op, "the gradient")?;
        let y = same_maps(&x, y, n * h * w * c, op, "the map")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        x.apply_op2_no_bwd(&y, &Launch::new(op, n * c, &[n, c], args))
    }

    fn gate_channels(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_gate_channels_nhwc",
            "effnet_gate_channels_nhwc_bf16",
        );
        let [n, h, w, c] = map_dims(x, op)?;
        let total = n * h * w * c;
        let x = map_operand(x, total, op, "the map")?;
        let gate = operand(gate, n * c, op, "the gates")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        let launch = Launch::new(op, total, &[n, h, w, c], args).out(x.dtype());
        x.apply_op2_no_bwd(&gate, &launch)
    }

    fn gate_add(&self, x: &Tensor, gate: &Tensor, add: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_gate_add_nhwc",
            "effnet_gate_add_nhwc_bf16",
        );
        let [n, h, w, c] = map_dims(x, op)?;
        let total = n * h * w * c;
        let x = map_operand(x, total, op, "the gradient")?;
        let gate = operand(gate, n * c, op, "the gates")?;
        let add = operand(add, n * c, op, "the squeeze's gradient")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        let launch = Launch::new(op, total, &[n, h, w, c], args).out(x.dtype());
        x.apply_op3_no_bwd(&gate, &add, &launch)
    }
}

/// The chunks of contiguous f64 partials `[chunks, width]`, or an error.
fn partials(partial: &Tensor, width: usize, op: &str) -> Result<usize> {
    match partial.dims() {
        &[chunks, w] if w == width && partial.dtype() == DType::F64 && partial.is_contiguous() => {
            Ok(chunks)
        }
        d => bail!(
            "{op}: partials of {d:?} in {}, expected contiguous f64 [chunks, {width}]",
            partial.dtype().as_str()
        ),
    }
}

/// Whether `chunks` chunks of `per` rows cover `rows` exactly (the kernels read up to
/// `chunks * per` rows, clipped to `rows`).
fn covering(chunks: usize, per: usize, rows: usize, op: &str) -> Result<()> {
    if per == 0 || chunks == 0 || chunks * per < rows || (chunks - 1) * per >= rows.max(1) {
        bail!("{op}: {chunks} chunks of {per} rows do not cover {rows} rows");
    }
    Ok(())
}
