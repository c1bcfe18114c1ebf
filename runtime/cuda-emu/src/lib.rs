//! effnet's CUDA kernels (`runtime/src/exec/cuda/kernels.cu`) compiled for the CPU, each grid
//! run as loops (`src/cuda_on_cpu.h`), as [`Emulated`]: an implementation of the runtime's
//! [`CudaKernels`] on CPU tensors, with the launch geometry the GPU uses
//! ([`effnet_runtime::exec::cuda::grid_1d`]). `tests/kernels.rs` compares each kernel with the
//! CPU kernels on random shapes, and `tests/plans.rs` runs the cuda plans' walks (inference and
//! the training step) over them against the CPU plans; so the kernels' arithmetic and
//! indexing, and the backends' use of them, are tested on every machine. Races, memory
//! ordering, the launches' argument passing and speed are not: only a GPU run shows those.

use std::ffi::{c_int, c_long, c_uint, c_void};

use candle_core::{DType, Device, Result, Tensor, bail};
use effnet_runtime::exec::cuda::{CudaKernels, act_code, grid_1d};
use effnet_runtime::ops::{Act, ConvGeom};

// The window's parameters, in the kernels' order: n, h, w, c, k, stride, dil, pad_top,
// pad_left, oh, ow.
type Window = [c_int; 11];

unsafe extern "C" {
    fn emu_depthwise_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        w: *const f32,
        affine: *const f32,
        y: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
        act: c_int,
    );
    fn emu_depthwise_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        w: *const f32,
        affine: *const f32,
        y: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
        act: c_int,
    );
    fn emu_depthwise_input_grad_nhwc(
        grid: c_uint,
        block: c_uint,
        dy: *const c_void,
        w: *const f32,
        dx: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
    );
    fn emu_depthwise_input_grad_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        dy: *const c_void,
        w: *const f32,
        dx: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
    );
    fn emu_depthwise_weight_grad_partial_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        dy: *const c_void,
        partial: *mut f64,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
        rows_per_chunk: c_long,
        chunks: c_int,
    );
    fn emu_depthwise_weight_grad_partial_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        dy: *const c_void,
        partial: *mut f64,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
        rows_per_chunk: c_long,
        chunks: c_int,
    );
    fn emu_im2col_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        cols: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
    );
    fn emu_im2col_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        cols: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
    );
    fn emu_col2im_nhwc(
        grid: c_uint,
        block: c_uint,
        cols: *const c_void,
        dx: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
    );
    fn emu_col2im_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        cols: *const c_void,
        dx: *mut c_void,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
    );
    fn emu_affine_act_nhwc(
        grid: c_uint,
        block: c_uint,
        z: *const c_void,
        affine: *const f32,
        y: *mut c_void,
        total: c_long,
        c: c_int,
        act: c_int,
    );
    fn emu_affine_act_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        z: *const c_void,
        affine: *const f32,
        y: *mut c_void,
        total: c_long,
        c: c_int,
        act: c_int,
    );
    fn emu_affine_act_residual_nhwc(
        grid: c_uint,
        block: c_uint,
        z: *const c_void,
        affine: *const f32,
        residual: *const c_void,
        y: *mut c_void,
        total: c_long,
        c: c_int,
        act: c_int,
    );
    fn emu_affine_act_residual_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        z: *const c_void,
        affine: *const f32,
        residual: *const c_void,
        y: *mut c_void,
        total: c_long,
        c: c_int,
        act: c_int,
    );
    fn emu_column_moments_partial(
        grid: c_uint,
        block: c_uint,
        z: *const c_void,
        partial: *mut f64,
        rows: c_long,
        c: c_int,
        rows_per_chunk: c_long,
        chunks: c_int,
    );
    fn emu_column_moments_partial_bf16(
        grid: c_uint,
        block: c_uint,
        z: *const c_void,
        partial: *mut f64,
        rows: c_long,
        c: c_int,
        rows_per_chunk: c_long,
        chunks: c_int,
    );
    fn emu_batch_stats(
        grid: c_uint,
        block: c_uint,
        partial: *const f64,
        out: *mut f32,
        chunks: c_int,
        c: c_int,
        count: c_long,
        eps: f64,
    );
    fn emu_bn_act_grad_partial(
        grid: c_uint,
        block: c_uint,
        d: *const c_void,
        z: *const c_void,
        bn: *const f32,
        partial: *mut f64,
        rows: c_long,
        c: c_int,
        rows_per_chunk: c_long,
        chunks: c_int,
        act: c_int,
    );
    fn emu_bn_act_grad_partial_bf16(
        grid: c_uint,
        block: c_uint,
        d: *const c_void,
        z: *const c_void,
        bn: *const f32,
        partial: *mut f64,
        rows: c_long,
        c: c_int,
        rows_per_chunk: c_long,
        chunks: c_int,
        act: c_int,
    );
    fn emu_bn_act_input_grad(
        grid: c_uint,
        block: c_uint,
        d: *const c_void,
        z: *const c_void,
        bn: *const f32,
        dz: *mut c_void,
        total: c_long,
        c: c_int,
        act: c_int,
        eval: c_int,
    );
    fn emu_bn_act_input_grad_bf16(
        grid: c_uint,
        block: c_uint,
        d: *const c_void,
        z: *const c_void,
        bn: *const f32,
        dz: *mut c_void,
        total: c_long,
        c: c_int,
        act: c_int,
        eval: c_int,
    );
    fn emu_sum_chunks(
        grid: c_uint,
        block: c_uint,
        partial: *const f64,
        out: *mut f32,
        chunks: c_int,
        width: c_long,
    );
    fn emu_channel_means_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        means: *mut f32,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_channel_means_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        means: *mut f32,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_channel_dots_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        y: *const c_void,
        dots: *mut f32,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_channel_dots_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        y: *const c_void,
        dots: *mut f32,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_gate_channels_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        gate: *const f32,
        y: *mut c_void,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_gate_channels_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        gate: *const f32,
        y: *mut c_void,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_gate_add_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        gate: *const f32,
        add: *const f32,
        y: *mut c_void,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_gate_add_nhwc_bf16(
        grid: c_uint,
        block: c_uint,
        x: *const c_void,
        gate: *const f32,
        add: *const f32,
        y: *mut c_void,
        n: c_int,
        p: c_long,
        c: c_int,
    );
}

fn int(v: usize, what: &str) -> Result<c_int> {
    match c_int::try_from(v) {
        Ok(i) => Ok(i),
        Err(_) => bail!("{what} = {v} does not fit the kernels' int"),
    }
}

fn long(v: usize, what: &str) -> Result<c_long> {
    match c_long::try_from(v) {
        Ok(i) => Ok(i),
        Err(_) => bail!("{what} = {v} does not fit the kernels' long"),
    }
}

/// `t`'s values as f32, or an error unless it has exactly `len`.
fn values(t: &Tensor, len: usize, op: &str, what: &str) -> Result<Vec<f32>> {
    if t.elem_count() != len {
        bail!("{op}: {what} has {:?}, expected {len} values", t.dims());
    }
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// A contiguous f64 `[chunks, width]` partials tensor's values and chunk count.
fn partial_values(t: &Tensor, width: usize, op: &str) -> Result<(Vec<f64>, usize)> {
    match t.dims() {
        &[chunks, w] if w == width && t.dtype() == DType::F64 => {
            Ok((t.flatten_all()?.to_vec1()?, chunks))
        }
        d => bail!("{op}: partials of {d:?}, expected f64 [chunks, {width}]"),
    }
}

fn map_dims(t: &Tensor, op: &str) -> Result<[usize; 4]> {
    match t.dims() {
        &[n, h, w, c] => Ok([n, h, w, c]),
        d => bail!("{op}: expected an NHWC map, got {d:?}"),
    }
}

fn rows_cols(t: &Tensor, op: &str) -> Result<(usize, usize)> {
    match t.dims().split_last() {
        Some((&c, rest)) if c > 0 => Ok((rest.iter().product(), c)),
        _ => bail!("{op}: an empty map {:?}", t.dims()),
    }
}

fn window(g: &ConvGeom) -> Result<(Window, usize, usize)> {
    let (oh, ow) = g.out_hw()?;
    Ok((
        [
            int(g.n, "n")?,
            int(g.h, "h")?,
            int(g.w, "w")?,
            int(g.c, "c")?,
            int(g.k, "k")?,
            int(g.stride, "stride")?,
            int(g.dilation, "dilation")?,
            int(g.pad.top, "pad top")?,
            int(g.pad.left, "pad left")?,
            int(oh, "oh")?,
            int(ow, "ow")?,
        ],
        oh,
        ow,
    ))
}

/// Whether two maps of one kernel share a dtype.
fn same_dtype(a: &MapBuf, b: &MapBuf, op: &str) -> Result<()> {
    if a.is_bf16() != b.is_bf16() {
        bail!("{op}: maps of two dtypes");
    }
    Ok(())
}

fn covering(chunks: usize, per: usize, rows: usize, op: &str) -> Result<()> {
    if per == 0 || chunks == 0 || chunks * per < rows || (chunks - 1) * per >= rows.max(1) {
        bail!("{op}: {chunks} chunks of {per} rows do not cover {rows} rows");
    }
    Ok(())
}

/// A map's values as the kernels take them: f32, or bf16 as its bits.
enum MapBuf {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

impl MapBuf {
    /// `t`'s values in its own dtype (f32 or bf16), or an error unless it has exactly `len`.
    fn of(t: &Tensor, len: usize, op: &str, what: &str) -> Result<Self> {
        if t.elem_count() != len {
            bail!("{op}: {what} has {:?}, expected {len} values", t.dims());
        }
        match t.dtype() {
            DType::F32 => Ok(MapBuf::F32(t.flatten_all()?.to_vec1()?)),
            DType::BF16 => Ok(MapBuf::Bf16(
                t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            )),
            d => bail!(
                "{op}: {what} is {}, the kernels take f32 or bf16 maps",
                d.as_str()
            ),
        }
    }

    /// `len` zeros of `like`'s type.
    fn zeros_like(like: &MapBuf, len: usize) -> Self {
        match like {
            MapBuf::F32(_) => MapBuf::F32(vec![0.0; len]),
            MapBuf::Bf16(_) => MapBuf::Bf16(vec![0; len]),
        }
    }

    fn is_bf16(&self) -> bool {
        matches!(self, MapBuf::Bf16(_))
    }

    fn len(&self) -> usize {
        match self {
            MapBuf::F32(v) => v.len(),
            MapBuf::Bf16(v) => v.len(),
        }
    }

    fn ptr(&self) -> *const c_void {
        match self {
            MapBuf::F32(v) => v.as_ptr().cast(),
            MapBuf::Bf16(v) => v.as_ptr().cast(),
        }
    }

    fn mut_ptr(&mut self) -> *mut c_void {
        match self {
            MapBuf::F32(v) => v.as_mut_ptr().cast(),
            MapBuf::Bf16(v) => v.as_mut_ptr().cast(),
        }
    }

    fn tensor(self, dims: &[usize]) -> Result<Tensor> {
        match self {
            MapBuf::F32(v) => tensor(v, dims),
            MapBuf::Bf16(v) => tensor(v.into_iter().map(half::bf16::from_bits).collect(), dims),
        }
    }
}

/// The f32 kernel `$f` or its bf16 twin `$g`, by `$bf16`.
macro_rules! twin {
    ($bf16:expr, $f:ident | $g:ident ( $($a:expr),* $(,)? )) => {
        if $bf16 { $g($($a),*) } else { $f($($a),*) }
    };
}

fn tensor<T: candle_core::WithDType>(v: Vec<T>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, dims, &Device::Cpu)
}

/// The CUDA kernels run on the CPU: [`CudaKernels`] on CPU tensors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Emulated;

// SAFETY (every `unsafe` block below): each pointer is a live Vec of the length the kernel
// indexes for the sizes passed (checked by `values`, `partial_values` and the shapes before
// the call), outputs are fresh Vecs of exactly the kernel's output size, the kernels return
// for thread indices past their total, and the emulated grid runs on this thread.
impl CudaKernels for Emulated {
    fn depthwise(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        g: &ConvGeom,
        act: Act,
    ) -> Result<Tensor> {
        let op = "depthwise";
        let (win, oh, ow) = window(g)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let x = MapBuf::of(x, n * g.h * g.w * c, op, "the input")?;
        let w = values(w, c * k * k, op, "the weight")?;
        let affine = values(affine, 2 * c, op, "the affine")?;
        let mut y = MapBuf::zeros_like(&x, n * oh * ow * c);
        let (grid, block) = grid_1d(y.len())?;
        let [a, b, cc, d, e, f, gg, h, i, j, l] = win;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_depthwise_nhwc
                    | emu_depthwise_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        w.as_ptr(),
                        affine.as_ptr(),
                        y.mut_ptr(),
                        a,
                        b,
                        cc,
                        d,
                        e,
                        f,
                        gg,
                        h,
                        i,
                        j,
                        l,
                        act_code(act),
                    )
            );
        }
        y.tensor(&[n, oh, ow, c])
    }

    fn depthwise_input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = "depthwise_input_grad";
        let (win, oh, ow) = window(g)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let dy = MapBuf::of(dy, n * oh * ow * c, op, "the output gradient")?;
        let w = values(w, c * k * k, op, "the weight")?;
        let mut dx = MapBuf::zeros_like(&dy, n * g.h * g.w * c);
        let (grid, block) = grid_1d(dx.len())?;
        let [a, b, cc, d, e, f, gg, h, i, j, l] = win;
        unsafe {
            twin!(
                dy.is_bf16(),
                emu_depthwise_input_grad_nhwc
                    | emu_depthwise_input_grad_nhwc_bf16(
                        grid,
                        block,
                        dy.ptr(),
                        w.as_ptr(),
                        dx.mut_ptr(),
                        a,
                        b,
                        cc,
                        d,
                        e,
                        f,
                        gg,
                        h,
                        i,
                        j,
                        l,
                    )
            );
        }
        dx.tensor(&[n, g.h, g.w, c])
    }

    fn depthwise_weight_grad_partial(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &ConvGeom,
        (chunks, per): (usize, usize),
    ) -> Result<Tensor> {
        let op = "depthwise_weight_grad_partial";
        let (win, oh, ow) = window(g)?;
        let (n, c, k) = (g.n, g.c, g.k);
        let x = MapBuf::of(x, n * g.h * g.w * c, op, "the input")?;
        let dy = MapBuf::of(dy, n * oh * ow * c, op, "the output gradient")?;
        same_dtype(&x, &dy, op)?;
        covering(chunks, per, n * oh * ow, op)?;
        let width = k * k * c;
        let mut partial = vec![0f64; chunks * width];
        let (grid, block) = grid_1d(partial.len())?;
        let [a, b, cc, d, e, f, gg, h, i, j, l] = win;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_depthwise_weight_grad_partial_nhwc
                    | emu_depthwise_weight_grad_partial_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        dy.ptr(),
                        partial.as_mut_ptr(),
                        a,
                        b,
                        cc,
                        d,
                        e,
                        f,
                        gg,
                        h,
                        i,
                        j,
                        l,
                        long(per, "rows per chunk")?,
                        int(chunks, "chunks")?,
                    )
            );
        }
        tensor(partial, &[chunks, width])
    }

    fn im2col(&self, x: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = "im2col";
        let (win, oh, ow) = window(g)?;
        let x = MapBuf::of(x, g.n * g.h * g.w * g.c, op, "the input")?;
        let (rows, width) = (g.n * oh * ow, g.k * g.k * g.c);
        let mut cols = MapBuf::zeros_like(&x, rows * width);
        let (grid, block) = grid_1d(cols.len())?;
        let [a, b, cc, d, e, f, gg, h, i, j, l] = win;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_im2col_nhwc
                    | emu_im2col_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        cols.mut_ptr(),
                        a,
                        b,
                        cc,
                        d,
                        e,
                        f,
                        gg,
                        h,
                        i,
                        j,
                        l,
                    )
            );
        }
        cols.tensor(&[rows, width])
    }

    fn col2im(&self, cols: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let op = "col2im";
        let (win, oh, ow) = window(g)?;
        let cols = MapBuf::of(cols, g.n * oh * ow * g.k * g.k * g.c, op, "the patches")?;
        let mut dx = MapBuf::zeros_like(&cols, g.n * g.h * g.w * g.c);
        let (grid, block) = grid_1d(dx.len())?;
        let [a, b, cc, d, e, f, gg, h, i, j, l] = win;
        unsafe {
            twin!(
                cols.is_bf16(),
                emu_col2im_nhwc
                    | emu_col2im_nhwc_bf16(
                        grid,
                        block,
                        cols.ptr(),
                        dx.mut_ptr(),
                        a,
                        b,
                        cc,
                        d,
                        e,
                        f,
                        gg,
                        h,
                        i,
                        j,
                        l,
                    )
            );
        }
        dx.tensor(&[g.n, g.h, g.w, g.c])
    }

    fn affine_act(
        &self,
        z: &Tensor,
        affine: &Tensor,
        residual: Option<&Tensor>,
        act: Act,
    ) -> Result<Tensor> {
        let op = "affine_act";
        let (rows, c) = rows_cols(z, op)?;
        let total = rows * c;
        let dims = z.dims().to_vec();
        let z = MapBuf::of(z, total, op, "the map")?;
        let affine = values(affine, 2 * c, op, "the affine")?;
        let mut y = MapBuf::zeros_like(&z, total);
        let (grid, block) = grid_1d(total)?;
        let (t, ci, a) = (long(total, "total")?, int(c, "c")?, act_code(act));
        let bf16 = z.is_bf16();
        match residual {
            None => unsafe {
                twin!(
                    bf16,
                    emu_affine_act_nhwc
                        | emu_affine_act_nhwc_bf16(
                            grid,
                            block,
                            z.ptr(),
                            affine.as_ptr(),
                            y.mut_ptr(),
                            t,
                            ci,
                            a,
                        )
                );
            },
            Some(r) => {
                let r = MapBuf::of(r, total, op, "the residual")?;
                if r.is_bf16() != bf16 {
                    bail!("{op}: the residual's dtype is not the map's");
                }
                unsafe {
                    twin!(
                        bf16,
                        emu_affine_act_residual_nhwc
                            | emu_affine_act_residual_nhwc_bf16(
                                grid,
                                block,
                                z.ptr(),
                                affine.as_ptr(),
                                r.ptr(),
                                y.mut_ptr(),
                                t,
                                ci,
                                a,
                            )
                    );
                }
            }
        }
        y.tensor(&dims)
    }

    fn column_moments_partial(&self, z: &Tensor, (chunks, per): (usize, usize)) -> Result<Tensor> {
        let op = "column_moments_partial";
        let (rows, c) = rows_cols(z, op)?;
        let z = MapBuf::of(z, rows * c, op, "the map")?;
        covering(chunks, per, rows, op)?;
        let mut partial = vec![0f64; chunks * 2 * c];
        let (grid, block) = grid_1d(chunks * c)?;
        unsafe {
            twin!(
                z.is_bf16(),
                emu_column_moments_partial
                    | emu_column_moments_partial_bf16(
                        grid,
                        block,
                        z.ptr(),
                        partial.as_mut_ptr(),
                        long(rows, "rows")?,
                        int(c, "c")?,
                        long(per, "rows per chunk")?,
                        int(chunks, "chunks")?,
                    )
            );
        }
        tensor(partial, &[chunks, 2 * c])
    }

    fn batch_stats_of(&self, partial: &Tensor, c: usize, rows: usize, eps: f64) -> Result<Tensor> {
        let (partial, chunks) = partial_values(partial, 2 * c, "batch_stats")?;
        let mut out = vec![0f32; 3 * c];
        let (grid, block) = grid_1d(c)?;
        unsafe {
            emu_batch_stats(
                grid,
                block,
                partial.as_ptr(),
                out.as_mut_ptr(),
                int(chunks, "chunks")?,
                int(c, "c")?,
                long(rows, "rows")?,
                eps,
            );
        }
        tensor(out, &[3, c])
    }

    fn bn_act_grad_partial(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        (chunks, per): (usize, usize),
    ) -> Result<Tensor> {
        let op = "bn_act_grad_partial";
        let (rows, c) = rows_cols(z, op)?;
        let z = MapBuf::of(z, rows * c, op, "the BatchNorm's input")?;
        let d = MapBuf::of(d, rows * c, op, "the output gradient")?;
        same_dtype(&z, &d, op)?;
        let bn = values(bn, 4 * c, op, "the BatchNorm's parameters")?;
        covering(chunks, per, rows, op)?;
        let mut partial = vec![0f64; chunks * 2 * c];
        let (grid, block) = grid_1d(chunks * c)?;
        unsafe {
            twin!(
                z.is_bf16(),
                emu_bn_act_grad_partial
                    | emu_bn_act_grad_partial_bf16(
                        grid,
                        block,
                        d.ptr(),
                        z.ptr(),
                        bn.as_ptr(),
                        partial.as_mut_ptr(),
                        long(rows, "rows")?,
                        int(c, "c")?,
                        long(per, "rows per chunk")?,
                        int(chunks, "chunks")?,
                        act_code(act),
                    )
            );
        }
        tensor(partial, &[chunks, 2 * c])
    }

    fn bn_act_input_grad(
        &self,
        d: &Tensor,
        z: &Tensor,
        bn: &Tensor,
        act: Act,
        eval: bool,
    ) -> Result<Tensor> {
        let op = "bn_act_input_grad";
        let (rows, c) = rows_cols(z, op)?;
        let total = rows * c;
        let z = MapBuf::of(z, total, op, "the BatchNorm's input")?;
        let d = MapBuf::of(d, total, op, "the output gradient")?;
        same_dtype(&z, &d, op)?;
        let bn = values(bn, 6 * c, op, "the BatchNorm's parameters and gradients")?;
        let mut dz = MapBuf::zeros_like(&z, total);
        let (grid, block) = grid_1d(total)?;
        unsafe {
            twin!(
                z.is_bf16(),
                emu_bn_act_input_grad
                    | emu_bn_act_input_grad_bf16(
                        grid,
                        block,
                        d.ptr(),
                        z.ptr(),
                        bn.as_ptr(),
                        dz.mut_ptr(),
                        long(total, "total")?,
                        int(c, "c")?,
                        act_code(act),
                        c_int::from(eval),
                    )
            );
        }
        dz.tensor(&[rows, c])
    }

    fn sum_chunks(&self, partial: &Tensor) -> Result<Tensor> {
        let op = "sum_chunks";
        let Some(&width) = partial.dims().last() else {
            bail!("{op}: partials of {:?}", partial.dims());
        };
        let (partial, chunks) = partial_values(partial, width, op)?;
        let mut out = vec![0f32; width];
        let (grid, block) = grid_1d(width)?;
        unsafe {
            emu_sum_chunks(
                grid,
                block,
                partial.as_ptr(),
                out.as_mut_ptr(),
                int(chunks, "chunks")?,
                long(width, "width")?,
            );
        }
        tensor(out, &[width])
    }

    fn channel_means(&self, x: &Tensor) -> Result<Tensor> {
        let op = "channel_means";
        let [n, h, w, c] = map_dims(x, op)?;
        let x = MapBuf::of(x, n * h * w * c, op, "the map")?;
        let mut means = vec![0f32; n * c];
        let (grid, block) = grid_1d(n * c)?;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_channel_means_nhwc
                    | emu_channel_means_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        means.as_mut_ptr(),
                        int(n, "n")?,
                        long(h * w, "p")?,
                        int(c, "c")?,
                    )
            );
        }
        tensor(means, &[n, c])
    }

    fn channel_dots(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let op = "channel_dots";
        let [n, h, w, c] = map_dims(x, op)?;
        let x = MapBuf::of(x, n * h * w * c, op, "the gradient")?;
        let y = MapBuf::of(y, n * h * w * c, op, "the map")?;
        same_dtype(&x, &y, op)?;
        let mut dots = vec![0f32; n * c];
        let (grid, block) = grid_1d(n * c)?;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_channel_dots_nhwc
                    | emu_channel_dots_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        y.ptr(),
                        dots.as_mut_ptr(),
                        int(n, "n")?,
                        long(h * w, "p")?,
                        int(c, "c")?,
                    )
            );
        }
        tensor(dots, &[n, c])
    }

    fn gate_channels(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let op = "gate_channels";
        let [n, h, w, c] = map_dims(x, op)?;
        let x = MapBuf::of(x, n * h * w * c, op, "the map")?;
        let gate = values(gate, n * c, op, "the gates")?;
        let mut y = MapBuf::zeros_like(&x, x.len());
        let (grid, block) = grid_1d(y.len())?;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_gate_channels_nhwc
                    | emu_gate_channels_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        gate.as_ptr(),
                        y.mut_ptr(),
                        int(n, "n")?,
                        long(h * w, "p")?,
                        int(c, "c")?,
                    )
            );
        }
        y.tensor(&[n, h, w, c])
    }

    fn gate_add(&self, x: &Tensor, gate: &Tensor, add: &Tensor) -> Result<Tensor> {
        let op = "gate_add";
        let [n, h, w, c] = map_dims(x, op)?;
        let x = MapBuf::of(x, n * h * w * c, op, "the gradient")?;
        let gate = values(gate, n * c, op, "the gates")?;
        let add = values(add, n * c, op, "the squeeze's gradient")?;
        let mut y = MapBuf::zeros_like(&x, x.len());
        let (grid, block) = grid_1d(y.len())?;
        unsafe {
            twin!(
                x.is_bf16(),
                emu_gate_add_nhwc
                    | emu_gate_add_nhwc_bf16(
                        grid,
                        block,
                        x.ptr(),
                        gate.as_ptr(),
                        add.as_ptr(),
                        y.mut_ptr(),
                        int(n, "n")?,
                        long(h * w, "p")?,
                        int(c, "c")?,
                    )
            );
        }
        y.tensor(&[n, h, w, c])
    }
}
