//! How the CUDA plans call effnet's kernels: each [`CudaKernels`] operation checks its
//! operands and describes one launch per kernel ([`Launch`]: the kernel, its threads, its
//! output, its scalars, the inputs in order), which an [`Execute`] carries out. On a GPU the
//! executor is `super::ops`' candle custom op; in tests a recorder checks every launch a
//! plan makes against the kernel's C signature in [`super::SOURCE`]
//! (`runtime/tests/cuda_launches.rs`), so the one part of a launch the CPU emulator cannot
//! see, the arguments' order and types, is checked on every machine too.

use candle_core::{DType, Result, Tensor, bail};

use super::{ConvLibrary, CudaKernels, PATCH_VALUES, UpdateAt, act_code};
use crate::ops::{Act, ConvGeom};
use effnet_compiler::ir::Optimizer as OptimizerSpec;

/// A scalar kernel argument, in the C type the kernel declares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
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

/// One launch of `kernel` with `threads` threads (a 1-D grid): the inputs (contiguous f32,
/// f64 or bf16 tensors, in order), then a fresh output of `out` in `out_dtype`, then the
/// scalars; the kernels' calling convention.
#[derive(Debug, Clone)]
pub struct Launch {
    pub kernel: &'static str,
    pub threads: usize,
    pub out: Vec<usize>,
    pub out_dtype: DType,
    pub scalars: Vec<Arg>,
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
}

/// What carries out a [`Launch`] on its inputs: a GPU (`super::ops`), or a test's recorder.
pub trait Execute {
    fn execute(&self, launch: &Launch, inputs: &[&Tensor]) -> Result<Tensor>;
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

/// `t` as a contiguous map operand of `len` elements in its own dtype, f32, bf16 or f16.
fn map_operand(t: &Tensor, len: usize, op: &str, what: &str) -> Result<Tensor> {
    if !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        bail!(
            "{op}: {what} is {}, the kernels take f32, bf16 or f16 maps",
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

/// The kernel for maps of `dtype`: `f32`, its `_bf16` twin, or its `_f16` twin (inference's
/// kernels only: f16 is `--dtype f16` inference, training's maps are f32 or bf16).
fn by_dtype(
    dtype: DType,
    f32: &'static str,
    bf16: &'static str,
    f16: Option<&'static str>,
) -> Result<&'static str> {
    match (dtype, f16) {
        (DType::BF16, _) => Ok(bf16),
        (DType::F16, Some(k)) => Ok(k),
        (DType::F16, None) => bail!("{f32}: no f16 twin (f16 maps are for inference)"),
        _ => Ok(f32),
    }
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

/// effnet's kernels called through `E`: on a GPU, `super::ops::Launched`.
#[derive(Debug, Clone, Copy)]
pub struct Launcher<E> {
    pub exec: E,
    /// The most values one dense convolution's patches may hold
    /// ([`CudaKernels::patch_values`]; [`PATCH_VALUES`] unless a test forces chunks).
    pub patch_values: usize,
    /// The dense convolutions' library ([`CudaKernels::conv_library`]), or none: patches.
    pub library: Option<&'static dyn ConvLibrary>,
}

impl<E> Launcher<E> {
    /// The kernels through `exec`, patches bounded by [`PATCH_VALUES`], no convolution
    /// library.
    pub const fn new(exec: E) -> Self {
        Launcher {
            exec,
            patch_values: PATCH_VALUES,
            library: None,
        }
    }

    /// The same kernels with the dense convolutions by `library`.
    pub fn with_library(self, library: Option<&'static dyn ConvLibrary>) -> Self {
        Launcher { library, ..self }
    }
}

impl<E: Default> Default for Launcher<E> {
    fn default() -> Self {
        Launcher::new(E::default())
    }
}

impl<E: Execute> CudaKernels for Launcher<E> {
    fn patch_values(&self) -> usize {
        self.patch_values
    }

    fn conv_library(&self) -> Option<&dyn ConvLibrary> {
        self.library
    }

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
            Some("effnet_depthwise_nhwc_f16"),
        )?;
        let (mut args, oh, ow) = window(g, op)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let x = map_operand(x, n * g.h * g.w * c, op, "the input")?;
        let w = operand(w, c * k * k, op, "the weight")?;
        let affine = operand(affine, 2 * c, op, "the affine")?;
        args.push(Arg::Int(act_code(act)));
        let total = n * oh * ow * c;
        let launch = Launch::new(op, total, &[n, oh, ow, c], args).out(x.dtype());
        self.exec.execute(&launch, &[&x, &w, &affine])
    }

    fn depthwise_input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = by_dtype(
            dy.dtype(),
            "effnet_depthwise_input_grad_nhwc",
            "effnet_depthwise_input_grad_nhwc_bf16",
            None,
        )?;
        let (args, oh, ow) = window(g, op)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let dy = map_operand(dy, n * oh * ow * c, op, "the output gradient")?;
        let w = operand(w, c * k * k, op, "the weight")?;
        let total = n * g.h * g.w * c;
        let launch = Launch::new(op, total, &[n, g.h, g.w, c], args).out(dy.dtype());
        self.exec.execute(&launch, &[&dy, &w])
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
            None,
        )?;
        let (mut args, oh, ow) = window(g, op)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let x = map_operand(x, n * g.h * g.w * c, op, "the input")?;
        let dy = same_maps(&x, dy, n * oh * ow * c, op, "the output gradient")?;
        covering(chunks, per, n * oh * ow, op)?;
        let width = k * k * c;
        args.push(long(per, op, "rows per chunk")?);
        args.push(int(chunks, op, "chunks")?);
        self.exec.execute(
            &Launch::new(op, chunks * width, &[chunks, width], args).f64_out(),
            &[&x, &dy],
        )
    }

    fn im2col(&self, x: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_im2col_nhwc",
            "effnet_im2col_nhwc_bf16",
            Some("effnet_im2col_nhwc_f16"),
        )?;
        let (args, oh, ow) = window(g, op)?;
        let x = map_operand(x, g.n * g.h * g.w * g.c, op, "the input")?;
        let width = g.k * g.k * g.c;
        let rows = g.n * oh * ow;
        let launch = Launch::new(op, rows * width, &[rows, width], args).out(x.dtype());
        self.exec.execute(&launch, &[&x])
    }

    fn col2im(&self, cols: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = by_dtype(
            cols.dtype(),
            "effnet_col2im_nhwc",
            "effnet_col2im_nhwc_bf16",
            None,
        )?;
        let (args, oh, ow) = window(g, op)?;
        let cols = map_operand(cols, g.n * oh * ow * g.k * g.k * g.c, op, "the patches")?;
        let total = g.n * g.h * g.w * g.c;
        let launch = Launch::new(op, total, &[g.n, g.h, g.w, g.c], args).out(cols.dtype());
        self.exec.execute(&launch, &[&cols])
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
                    Some("effnet_affine_act_nhwc_f16"),
                )?;
                let z = map_operand(z, total, op, "the map")?;
                let affine = operand(affine, 2 * c, op, "the affine")?;
                let launch = Launch::new(op, total, &dims, scalars(op)?).out(dtype);
                self.exec.execute(&launch, &[&z, &affine])
            }
            Some(r) => {
                let op = by_dtype(
                    dtype,
                    "effnet_affine_act_residual_nhwc",
                    "effnet_affine_act_residual_nhwc_bf16",
                    Some("effnet_affine_act_residual_nhwc_f16"),
                )?;
                let z = map_operand(z, total, op, "the map")?;
                let affine = operand(affine, 2 * c, op, "the affine")?;
                let r = same_maps(&z, r, total, op, "the residual")?;
                let launch = Launch::new(op, total, &dims, scalars(op)?).out(dtype);
                self.exec.execute(&launch, &[&z, &affine, &r])
            }
        }
    }

    fn column_moments_partial(&self, z: &Tensor, (chunks, per): (usize, usize)) -> Result<Tensor> {
        let op = by_dtype(
            z.dtype(),
            "effnet_column_moments_partial",
            "effnet_column_moments_partial_bf16",
            None,
        )?;
        let (rows, c) = rows_cols(z, op)?;
        let z = map_operand(z, rows * c, op, "the map")?;
        covering(chunks, per, rows, op)?;
        let args = vec![
            long(rows, op, "rows")?,
            int(c, op, "c")?,
            long(per, op, "rows per chunk")?,
            int(chunks, op, "chunks")?,
        ];
        self.exec.execute(
            &Launch::new(op, chunks * c, &[chunks, 2 * c], args).f64_out(),
            &[&z],
        )
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
        self.exec
            .execute(&Launch::new(op, c, &[3, c], args), &[partial])
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
            None,
        )?;
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
        self.exec.execute(
            &Launch::new(op, chunks * c, &[chunks, 2 * c], args).f64_out(),
            &[&d, &z, &bn],
        )
    }

    fn sum_chunks(&self, partial: &Tensor) -> Result<Tensor> {
        let op = "effnet_sum_chunks";
        let Some(&width) = partial.dims().last() else {
            bail!("{op}: partials of {:?}", partial.dims());
        };
        let chunks = partials(partial, width, op)?;
        let args = vec![int(chunks, op, "chunks")?, long(width, op, "width")?];
        self.exec
            .execute(&Launch::new(op, width, &[width], args), &[partial])
    }

    fn bn_act_input_grad(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        eval: bool,
        count: usize,
    ) -> Result<Tensor> {
        let op = by_dtype(
            z.dtype(),
            "effnet_bn_act_input_grad",
            "effnet_bn_act_input_grad_bf16",
            None,
        )?;
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
            long(count, op, "count")?,
        ];
        let launch = Launch::new(op, total, &[rows, c], args).out(z.dtype());
        self.exec.execute(&launch, &[&d, &z, &bn])
    }

    fn channel_means(&self, x: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_channel_means_nhwc",
            "effnet_channel_means_nhwc_bf16",
            Some("effnet_channel_means_nhwc_f16"),
        )?;
        let [n, h, w, c] = map_dims(x, op)?;
        let x = map_operand(x, n * h * w * c, op, "the map")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        self.exec
            .execute(&Launch::new(op, n * c, &[n, c], args), &[&x])
    }

    fn channel_dots(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_channel_dots_nhwc",
            "effnet_channel_dots_nhwc_bf16",
            None,
        )?;
        let [n, h, w, c] = map_dims(x, op)?;
        let x = map_operand(x, n * h * w * c, op, "the gradient")?;
        let y = same_maps(&x, y, n * h * w * c, op, "the map")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        self.exec
            .execute(&Launch::new(op, n * c, &[n, c], args), &[&x, &y])
    }

    fn gate_channels(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_gate_channels_nhwc",
            "effnet_gate_channels_nhwc_bf16",
            Some("effnet_gate_channels_nhwc_f16"),
        )?;
        let [n, h, w, c] = map_dims(x, op)?;
        let total = n * h * w * c;
        let x = map_operand(x, total, op, "the map")?;
        let gate = operand(gate, n * c, op, "the gates")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        let launch = Launch::new(op, total, &[n, h, w, c], args).out(x.dtype());
        self.exec.execute(&launch, &[&x, &gate])
    }

    fn gate_add(&self, x: &Tensor, gate: &Tensor, add: &Tensor) -> Result<Tensor> {
        let op = by_dtype(
            x.dtype(),
            "effnet_gate_add_nhwc",
            "effnet_gate_add_nhwc_bf16",
            None,
        )?;
        let [n, h, w, c] = map_dims(x, op)?;
        let total = n * h * w * c;
        let x = map_operand(x, total, op, "the gradient")?;
        let gate = operand(gate, n * c, op, "the gates")?;
        let add = operand(add, n * c, op, "the squeeze's gradient")?;
        let args = vec![int(n, op, "n")?, long(h * w, op, "p")?, int(c, op, "c")?];
        let launch = Launch::new(op, total, &[n, h, w, c], args).out(x.dtype());
        self.exec.execute(&launch, &[&x, &gate, &add])
    }

    fn optimizer_step(
        &self,
        spec: &OptimizerSpec,
        at: &UpdateAt,
        w: &Tensor,
        g: &Tensor,
        state: Option<&Tensor>,
    ) -> Result<Tensor> {
        let decay = |wd: f64| Arg::Double(if at.weight_decay { wd } else { 0.0 });
        let (op, slots, mut scalars) = match *spec {
            OptimizerSpec::Rmsprop {
                decay: rho,
                momentum,
                eps,
                weight_decay,
            } => (
                "effnet_rmsprop_tf_step",
                if momentum > 0.0 { 2 } else { 1 },
                vec![
                    Arg::Int(i32::from(momentum > 0.0)),
                    Arg::Double(at.lr),
                    Arg::Double(rho),
                    Arg::Double(momentum),
                    Arg::Double(eps),
                    decay(weight_decay),
                ],
            ),
            OptimizerSpec::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => (
                "effnet_adamw_step",
                2,
                vec![
                    Arg::Double(at.lr),
                    Arg::Double(beta1),
                    Arg::Double(beta2),
                    Arg::Double(eps),
                    decay(weight_decay),
                    Arg::Double(1.0 - beta1.powi(at.step)),
                    Arg::Double(1.0 - beta2.powi(at.step)),
                ],
            ),
            OptimizerSpec::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => (
                "effnet_sgd_step",
                usize::from(momentum > 0.0),
                vec![
                    Arg::Int(i32::from(momentum > 0.0)),
                    Arg::Int(i32::from(nesterov)),
                    Arg::Double(at.lr),
                    Arg::Double(momentum),
                    decay(weight_decay),
                ],
            ),
        };
        scalars.push(Arg::Double(at.grad_scale));
        let n = w.elem_count();
        if n == 0 {
            bail!("{op}: an empty weight {:?}", w.dims());
        }
        scalars.insert(0, long(n, op, "n")?);
        let w = f32_operand(w, n, op, "the weight")?;
        let g = f32_operand(g, n, op, "the gradient")?;
        // Without state the kernel reads none: the gradient stands in for the pointer.
        let state = match (slots, state) {
            (0, _) => g.clone(),
            (s, Some(t)) => f32_operand(t, s * n, op, "the state")?,
            (s, None) => bail!("{op}: no state; expected {s} slots of {n} values"),
        };
        let launch = Launch::new(op, n, &[1 + slots, n], scalars);
        self.exec.execute(&launch, &[&w, &g, &state])
    }

    fn ema_step(&self, ema: &Tensor, current: &Tensor, d: f64) -> Result<Tensor> {
        let op = "effnet_ema_step";
        let n = ema.elem_count();
        if n == 0 {
            bail!("{op}: an empty tensor {:?}", ema.dims());
        }
        let e = f32_operand(ema, n, op, "the average")?;
        let c = f32_operand(current, n, op, "the current value")?;
        let launch = Launch::new(op, n, ema.dims(), vec![long(n, op, "n")?, Arg::Double(d)]);
        self.exec.execute(&launch, &[&e, &c])
    }
}

/// `t` as a contiguous f32 operand of `len` values: the optimizer's tensors are f32 (master
/// weights under mixed precision too), and a conversion here would hide a wrong dtype.
fn f32_operand(t: &Tensor, len: usize, op: &str, what: &str) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        bail!("{op}: {what} is {}, expected f32", t.dtype().as_str());
    }
    operand(t, len, op, what)
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
