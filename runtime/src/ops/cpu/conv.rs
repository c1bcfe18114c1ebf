//! Fused f32 CPU kernels for inference, on activations in NHWC order (channels last): a
//! convolution, its eval-mode BatchNorm (a per-channel `scale * y + shift`), its activation
//! and the block's residual add in one pass over each output tile while it is in cache.
//!
//! * [`conv2d`]: dense convolutions (groups 1) as GEMMs over all pixels of the batch at once,
//!   `Y[N*OH*OW, O] = X[N*OH*OW, C*k*k] x W^T`: a 1x1 stride-1 convolution reads the input
//!   directly (channels last *is* the GEMM's row-major left operand, so the batch folds into
//!   the rows for free), other kernels build an im2col tile per task (for each output pixel
//!   and kernel row, one contiguous copy of `k * C` floats). On AVX-512 the products run on
//!   our own kernel (`avx512_gemm`: weights packed once per layer in [`ConvWeights`], the
//!   epilogue applied before the tile leaves L1); elsewhere on the `gemm` crate (AVX2 or
//!   portable kernels chosen at run time) one output tile at a time, with the epilogue
//!   (affine, activation, residual) on the tile right after.
//! * [`depthwise`]: depthwise convolution vectorized across channels, the epilogue fused,
//!   and optionally the per-channel means of the output (the squeeze of a following
//!   squeeze-excitation) accumulated on the way.
//! * [`se_gates`] (two small GEMMs over the pooled `[N, C]` matrix, the block's activation,
//!   a sigmoid) and [`gate_channels`] (the excitation, in place).
//! * [`nchw_to_nhwc`] / [`nhwc_to_nchw`]: layout changes at the edges.
//!
//! Work is split into tasks (pixel x channel tiles) run on rayon's pool, so the thread count
//! is `RAYON_NUM_THREADS`. Element-wise loops are compiled three times (AVX-512, AVX2+FMA,
//! baseline) and chosen once at run time, so the binary stays portable.
//!
//! These kernels have no backward pass: the layers use them only in eval mode when no input
//! tracks gradients, and fall back to candle ops otherwise.

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::Padding2d;
#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::{PackedWeight, Tile, TileEpilogue, gemm_tile};

/// An activation the fused kernels apply in their epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    Identity,
    Silu,
    Relu,
    Relu6,
    HardSwish,
}

/// Per-output-channel `act(y * scale + shift)`: eval BatchNorm folded to an affine map.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: Act,
}

/// Geometry of a convolution over a batch (data in NHWC order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch, input channels, input height and width.
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels (equal to `c` for a depthwise convolution).
    pub o: usize,
    /// Square kernel size and stride.
    pub k: usize,
    pub stride: usize,
    pub pad: Padding2d,
}

impl ConvGeom {
    fn check(&self, op: &str) -> Result<(usize, usize)> {
        if self.k == 0 || self.stride == 0 {
            bail!(
                "{op}: kernel {} and stride {} must be positive",
                self.k,
                self.stride
            );
        }
        let hp = self.h + self.pad.top + self.pad.bottom;
        let wp = self.w + self.pad.left + self.pad.right;
        if hp < self.k || wp < self.k || self.h == 0 || self.w == 0 {
            bail!(
                "{op}: padded input {hp}x{wp} is empty or smaller than the {0}x{0} kernel",
                self.k
            );
        }
        Ok((
            (hp - self.k) / self.stride + 1,
            (wp - self.k) / self.stride + 1,
        ))
    }

    /// Output height and width.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        self.check("conv")
    }
}

// ---------------------------------------------------------------------------------------------
// Run-time SIMD dispatch.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Defines `fn $name(args)` that runs `$body` compiled for the best instruction set the CPU
/// has. The body is an `#[inline(always)]` function, so everything it inlines is compiled
/// for that instruction set too.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3($($arg: $ty),*) { body($($arg),*) }
                match level() {
                    // SAFETY: `level()` reported these features on this CPU.
                    Level::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { v3($($arg),*) },
                    Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `with_act!(act, go)` runs the local macro `go!` with the matching [`Act`] variant as a
/// constant, so each activation gets its own loop with `act_one` folded to that case.
macro_rules! with_act {
    ($act:expr, $go:ident) => {
        match $act {
            Act::Identity => $go!(Act::Identity),
            Act::Silu => $go!(Act::Silu),
            Act::Relu => $go!(Act::Relu),
            Act::Relu6 => $go!(Act::Relu6),
            Act::HardSwish => $go!(Act::HardSwish),
        }
    };
}
pub(crate) use with_act;

// ---------------------------------------------------------------------------------------------
// Element-wise math.

/// `e^x` for `x` clamped to `[-87, 88]` (so `2^n` stays a normal float), relative error
/// about 2e-7: `2^n * p(r)` with `n = round(x / ln 2)`, `r = x - n ln 2` in two parts and a
/// degree-6 Taylor polynomial. Branch-free and without float-to-int conversions (the
/// rounding and `2^n` come from the bits of `x / ln 2 + 1.5 * 2^23`), so loops over it
/// vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer (to nearest even) in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const MAGIC_BITS: i32 = 0x4B40_0000;
    // max/min rather than clamp: a NaN input becomes -87 (finite) instead of propagating.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p: f32 = 1.0 / 720.0;
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    // n is in [-126, 127]: the biased exponent n + 127 is in [1, 254].
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `1 / d` for a positive normal `d` without a division (a vector division costs about as
/// much as everything else in the activation): a bit-trick first guess, relative error under
/// 1/8, then three Newton steps `r (2 - d r)`, which square the error each time (< 1e-7).
#[inline(always)]
fn recip(d: f32) -> f32 {
    let r = f32::from_bits(0x7EF3_11C3_u32.wrapping_sub(d.to_bits()));
    let r = r * (-d).mul_add(r, 2.0);
    let r = r * (-d).mul_add(r, 2.0);
    r * (-d).mul_add(r, 2.0)
}

/// `1 / (1 + e^-x)`. The exponent is capped at 80 so that `1 + e^-x` stays below `1e35`
/// and its reciprocal a normal float (subnormals are slow, and `recip` needs normals); below
/// `x = -80` the result is about `2e-35` instead of smaller.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    recip(1.0 + exp((-x).min(80.0)))
}

#[inline(always)]
pub(crate) fn act_one(v: f32, act: Act) -> f32 {
    match act {
        Act::Identity => v,
        Act::Silu => v * sigmoid(v),
        Act::Relu => v.max(0.0),
        Act::Relu6 => v.clamp(0.0, 6.0),
        Act::HardSwish => v * ((v + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0)),
    }
}

/// `silu(v)` on one vector: the same clamps and polynomial as [`exp`] and [`sigmoid`], with
/// AVX-512's rounding and `scalef` for `2^n` and its 14-bit reciprocal plus one Newton step
/// (relative error about 1e-8) for the division: about 19 vector operations per 16 outputs
/// where the portable form needs about 30. A NaN stays NaN.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn silu_zmm(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const COEF: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    // e^-v, with -v clamped as `sigmoid` and `exp` do (a NaN becomes -87 here and stays NaN
    // through the final product, as in the portable form).
    let t = _mm512_min_ps(
        _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), v), _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(80.0),
    );
    let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(t, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(
        k,
        _mm512_set1_ps(-2.121_944_4e-4),
        _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_359_4), t),
    );
    let mut p = _mm512_set1_ps(COEF[0]);
    for &c in &COEF[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let d = _mm512_add_ps(_mm512_set1_ps(1.0), _mm512_scalef_ps(p, k));
    let rc = _mm512_rcp14_ps(d);
    let rc = _mm512_mul_ps(rc, _mm512_fnmadd_ps(d, rc, _mm512_set1_ps(2.0)));
    _mm512_mul_ps(v, rc)
}

/// `row[i] = silu(row[i] * scale[i] + shift[i])` for the whole 16-lane vectors of `row`
/// ([`silu_zmm`]); returns how many elements it did (a multiple of 16).
///
/// # Safety
/// The CPU must have AVX-512F; `scale` and `shift` must be at least as long as `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_affine_avx512(row: &mut [f32], scale: &[f32], shift: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    if scale.len() < n || shift.len() < n {
        return 0;
    }
    let (rp, sp, hp) = (row.as_mut_ptr(), scale.as_ptr(), shift.as_ptr());
    for i in (0..n).step_by(16) {
        // SAFETY: `i + 16 <= n`, within all three slices (checked above); AVX-512F is the
        // caller's guarantee.
        unsafe {
            let v = _mm512_fmadd_ps(
                _mm512_loadu_ps(rp.add(i)),
                _mm512_loadu_ps(sp.add(i)),
                _mm512_loadu_ps(hp.add(i)),
            );
            _mm512_storeu_ps(rp.add(i), silu_zmm(v));
        }
    }
    n
}

/// `row[o] = act(row[o] * scale[o] + shift[o]) (+ res[o])`: one output pixel's channels.
#[inline(always)]
fn affine_act_channels(
    row: &mut [f32],
    scale: &[f32],
    shift: &[f32],
    act: Act,
    res: Option<&[f32]>,
    sums: Option<&mut [f32]>,
) {
    let n = row.len();
    let (scale, shift) = (&scale[..n], &shift[..n]);
    // SiLU, the common case, has an AVX-512 form for whole vectors; the rest (and other
    // CPUs) take the portable loop.
    #[cfg(target_arch = "x86_64")]
    let done = if act == Act::Silu && level() == Level::Avx512 {
        // SAFETY: `level()` reported AVX-512F on this CPU; the slices have equal lengths.
        unsafe { silu_affine_avx512(row, scale, shift) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    macro_rules! go {
        ($a:expr) => {{
            for ((v, &sc), &sh) in row[done..]
                .iter_mut()
                .zip(&scale[done..])
                .zip(&shift[done..])
            {
                *v = act_one(v.mul_add(sc, sh), $a);
            }
            if let Some(r) = res {
                for (v, &rv) in row.iter_mut().zip(&r[..n]) {
                    *v += rv;
                }
            }
            if let Some(s) = sums {
                for (acc, &v) in s[..n].iter_mut().zip(row.iter()) {
                    *acc += v;
                }
            }
        }};
    }
    with_act!(act, go)
}

multiversion! {
    /// The epilogue over a GEMM tile: `rows` pixels of `cols` channels from channel `o0`,
    /// rows `ld` apart; `res` (same layout) is added after the activation.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn epilogue_tile(
        tile: &mut [f32],
        res: Option<&[f32]>,
        rows: usize,
        cols: usize,
        ld: usize,
        o0: usize,
        epi: &Epilogue<'_>,
    ) {
        let (scale, shift) = (&epi.scale[o0..o0 + cols], &epi.shift[o0..o0 + cols]);
        for r in 0..rows {
            let at = r * ld;
            affine_act_channels(
                &mut tile[at..at + cols],
                scale,
                shift,
                epi.act,
                res.map(|x| &x[at..at + cols]),
                None,
            );
        }
    }
}

/// Gates below this are flushed to zero: a gate of `1e-39` is a subnormal float, and every
/// multiply-add that touches one (in the gated weights or inputs) takes a microcode assist
/// that costs a hundred times a normal one. The change to the output is below `1e-12 * |x|`.
const GATE_FLUSH: f32 = 1e-12;

multiversion! {
    /// `out[i] = sigmoid(v[i])` in place, flushing gates below [`GATE_FLUSH`] to zero.
    fn sigmoid_inplace(v: &mut [f32]) {
        for x in v.iter_mut() {
            let g = sigmoid(*x);
            *x = if g < GATE_FLUSH { 0.0 } else { g };
        }
    }
}

multiversion! {
    /// Activation in place, with a per-column bias first (rows of `bias.len()` values).
    fn bias_act_rows(v: &mut [f32], bias: &[f32], act: Act) {
        for row in v.chunks_exact_mut(bias.len()) {
            for (x, &b) in row.iter_mut().zip(bias) {
                *x = act_one(*x + b, act);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM.

/// A matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `rows x cols` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub(crate) fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl Mat<'_> {
    /// Whether every element lies inside `data`.
    pub(crate) fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// A raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks only write disjoint regions through it (see each use).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send + Sync` wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst = a x b` for `dst` of `a.rows x b.cols` at `dst`, element `(i, j)` at
/// `i * rs + j * cs`, overwriting it, single-threaded. The `gemm` crate's micro-kernel runs
/// 64 rows of the destination's contiguous dimension at a time, so that dimension should be
/// the long one.
///
/// # Safety
/// `dst` must be valid for writes at every `i * rs + j * cs` with `i < a.rows`, `j < b.cols`,
/// and no other thread may access those elements during the call.
pub(crate) unsafe fn gemm_into(
    a: Mat<'_>,
    b: Mat<'_>,
    dst: *mut f32,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if a.cols != b.rows || !a.fits() || !b.fits() {
        bail!(
            "fused gemm: bad operands {}x{} (rs {}, cs {}, len {}) x {}x{} (rs {}, cs {}, len {})",
            a.rows,
            a.cols,
            a.rs,
            a.cs,
            a.data.len(),
            b.rows,
            b.cols,
            b.rs,
            b.cs,
            b.data.len()
        );
    }
    if a.rows == 0 || b.cols == 0 {
        return Ok(());
    }
    if a.cols == 0 {
        for i in 0..a.rows {
            for j in 0..b.cols {
                // SAFETY: in range per this function's contract.
                unsafe { *dst.add(i * rs + j * cs) = 0.0 };
            }
        }
        return Ok(());
    }
    // SAFETY: the operand views were checked to lie inside their slices; `dst` is the
    // caller's responsibility (see above). Strides fit in isize because the slices do.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            cs as isize,
            rs as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dense convolution.

thread_local! {
    /// Per-thread scratch for the tasks' im2col tiles and Winograd blocks, reused across tasks
    /// and calls: rayon builds a fresh `init` value for nearly every task, and a fresh buffer
    /// costs an allocation, page faults and zeroing that its first use overwrites anyway.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch. The contents are whatever the last
/// user left: `f` must write what it reads.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a task run while another waits): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Task decomposition of the `[M, O]` output (pixels x channels) into tiles.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    rows: usize,
    row_blocks: usize,
    cols: usize,
    col_blocks: usize,
}

fn tiling(m: usize, o: usize, kdim: usize, pointwise: bool, prepacked: bool) -> Tiling {
    let threads = rayon::current_num_threads().max(1);
    // Pixels per tile: enough for the GEMM kernels to run at speed, few enough that the tile
    // (and its im2col rows) stay in L2. A 1x1 convolution has no im2col rows; on the gemm
    // crate, which packs the weights again for every tile, its tiles are as tall as the
    // thread count allows (with 128-256 rows that packing took 13% of efficientnetv2_s's
    // time, 8% with 512, measured with `perf record` on `effnet bench`). Our kernel reads
    // weights packed once per layer, so its 1x1 tiles can be short, and more of them balance
    // the threads better on small maps (a 7x7 layer at batch 8 has 392 pixels: one 512-row
    // tile split 3 ways by channel left one of two threads idle a third of the time).
    let target = if pointwise && prepacked {
        128
    } else if pointwise {
        512
    } else if kdim >= 512 {
        128
    } else if kdim >= 128 {
        256
    } else {
        512
    };
    let row_blocks = m.div_ceil(target).max(1);
    let rows = m.div_ceil(row_blocks).div_ceil(8) * 8;
    let row_blocks = m.div_ceil(rows.max(1)).max(1);
    // Too few pixel tiles to keep every thread busy (small maps, small batches): split the
    // output channels too, in multiples of 64.
    let want = match (pointwise, prepacked) {
        (true, true) => 4 * threads,
        (true, false) => 2 * threads,
        (false, _) => 3 * threads,
    };
    let col_blocks = if threads > 1 && row_blocks < want {
        want.div_ceil(row_blocks).min(o.div_ceil(64)).max(1)
    } else {
        1
    };
    // Output tiles of at most 512 KB, so the epilogue finds the tile in L2.
    let max_cols = ((1usize << 17) / rows.max(1) / 64 * 64).max(64);
    let col_blocks = col_blocks.max(o.div_ceil(max_cols));
    // Whole groups of 64 channels: the width of the GEMM kernels (ours and the gemm crate's).
    let cols = o.div_ceil(col_blocks).div_ceil(64) * 64;
    let col_blocks = o.div_ceil(cols.max(1)).max(1);
    Tiling {
        rows,
        row_blocks,
        cols,
        col_blocks,
    }
}

/// Rows `[p0, p0 + rows)` of the im2col matrix: for output pixel `p` (of the whole batch),
/// column `(i * k + j) * C + ci` holds input `(n, oy * s + i - top, ox * s + j - left, ci)`,
/// zero outside the input. Each kernel row `i` is one contiguous copy from the NHWC input.
pub(crate) fn im2col_rows(
    x: &[f32],
    g: &ConvGeom,
    oh: usize,
    ow: usize,
    p0: usize,
    rows: usize,
    col: &mut [f32],
) {
    let (h, w, c, k, s) = (g.h, g.w, g.c, g.k, g.stride);
    let (top, left) = (g.pad.top as isize, g.pad.left as isize);
    let kdim = k * k * c;
    for (r, dst) in col.chunks_exact_mut(kdim).take(rows).enumerate() {
        let p = p0 + r;
        let (b, rest) = (p / (oh * ow), p % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let ix0 = (ox * s) as isize - left;
        // Kernel columns j with 0 <= ix0 + j < w.
        let jlo = (-ix0).clamp(0, k as isize) as usize;
        let jhi = (w as isize - ix0).clamp(jlo as isize, k as isize) as usize;
        for i in 0..k {
            let d = &mut dst[i * k * c..(i + 1) * k * c];
            let iy = (oy * s + i) as isize - top;
            if iy < 0 || iy >= h as isize || jhi == jlo {
                d.fill(0.0);
                continue;
            }
            d[..jlo * c].fill(0.0);
            d[jhi * c..].fill(0.0);
            let src = ((b * h + iy as usize) * w) as isize + ix0 + jlo as isize;
            let src = src as usize * c;
            d[jlo * c..jhi * c].copy_from_slice(&x[src..src + (jhi - jlo) * c]);
        }
    }
}

/// Dense convolution (groups 1) of `x` (NHWC, `[N, H, W, C]`) with `w` (`[O, C, k, k]`, as
/// stored), fused with `epi` and an optional `residual` (NHWC, `[N, OH, OW, O]`, added after
/// the activation). Returns NHWC `[N, OH, OW, O]`.
pub fn conv2d(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    epi: &Epilogue<'_>,
    residual: Option<&[f32]>,
) -> Result<Vec<f32>> {
    conv2d_with(x, w, g, epi, residual, GemmKernel::Best)
}

/// Which GEMM [`conv2d_with`] runs its tiles on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// Our AVX-512 kernel (epilogue applied while the output is in L1) where the CPU has
    /// AVX-512F, else the `gemm` crate: what [`conv2d`] uses.
    Best,
    /// Always the `gemm` crate plus a separate epilogue pass: the portable path, for tests
    /// and side-by-side benchmarks on AVX-512 machines.
    GemmCrate,
}

/// A dense convolution's weights (`[O, C, k, k]`) in the forms [`conv2d_prepared`] reads:
/// the Winograd domain for the layers that run as Winograd, else packed for our AVX-512
/// kernel, else in im2col column order for the `gemm` crate. Preparing is a pass over the
/// weights; a layer that runs many times keeps its `ConvWeights` (for a 7x7 layer at batch 8
/// the repacking cost about a fifth of the layer's time).
pub struct ConvWeights {
    o: usize,
    c: usize,
    k: usize,
    winograd: Option<WinogradWeights>,
    #[cfg(target_arch = "x86_64")]
    packed: Option<PackedWeight>,
    /// `[O, k, k, C]` (the im2col column order), for the `gemm` crate; empty otherwise.
    plain: Vec<f32>,
}

/// A Winograd layer's weights: the 16 matrices `U[xi]` (`[C, O]` each) for the `gemm` crate,
/// or each transposed to `[O, C]` and packed for our AVX-512 kernel.
enum WinogradWeights {
    Plain(Vec<f32>),
    #[cfg(target_arch = "x86_64")]
    Packed(Vec<PackedWeight>),
}

impl ConvWeights {
    /// Prepares `w` for convolutions of geometry `g` (its channels, kernel, stride and
    /// padding) on `kernel`.
    pub fn new(w: &[f32], g: &ConvGeom, kernel: GemmKernel) -> Result<Self> {
        let (o, c, k) = (g.o, g.c, g.k);
        if w.len() != o * c * k * k {
            bail!(
                "fused conv2d: weight has {} elements; expected {o}x{c}x{k}x{k}",
                w.len()
            );
        }
        let mut cw = ConvWeights {
            o,
            c,
            k,
            winograd: None,
            #[cfg(target_arch = "x86_64")]
            packed: None,
            plain: Vec::new(),
        };
        // Our kernel's packed form where it runs, else the gemm crate's operands.
        #[cfg(target_arch = "x86_64")]
        let own_kernel = kernel == GemmKernel::Best && level() == Level::Avx512;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kernel;
        if winograd_applies(g) {
            let u = winograd_weight(w, c, o);
            #[cfg(target_arch = "x86_64")]
            if own_kernel {
                let packed = u
                    .chunks_exact(c * o)
                    .map(|ux| PackedWeight::new(&transpose_batched(ux, 1, c, o), o, c))
                    .collect();
                cw.winograd = Some(WinogradWeights::Packed(packed));
                return Ok(cw);
            }
            cw.winograd = Some(WinogradWeights::Plain(u));
            return Ok(cw);
        }
        // The weight as `[O, k, k, C]`, the column order of the im2col rows (per output
        // channel, `[C, k * k]` transposed to `[k * k, C]`).
        let wk = if k == 1 {
            w.to_vec()
        } else {
            nchw_to_nhwc(w, o, c, k * k)
        };
        #[cfg(target_arch = "x86_64")]
        if own_kernel {
            cw.packed = Some(PackedWeight::new(&wk, o, c * k * k));
            return Ok(cw);
        }
        cw.plain = wk;
        Ok(cw)
    }

    /// Whether these weights serve a convolution of geometry `g`.
    pub fn fits(&self, g: &ConvGeom) -> bool {
        (self.o, self.c, self.k) == (g.o, g.c, g.k)
            && self.winograd.is_some() == winograd_applies(g)
    }
}

/// [`conv2d`] on a chosen GEMM kernel (Winograd layers run the same either way).
pub fn conv2d_with(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    epi: &Epilogue<'_>,
    residual: Option<&[f32]>,
    kernel: GemmKernel,
) -> Result<Vec<f32>> {
    g.check("fused conv2d")?;
    conv2d_prepared(x, &ConvWeights::new(w, g, kernel)?, g, epi, residual)
}

/// [`conv2d`] with weights prepared beforehand by [`ConvWeights::new`] (for this geometry:
/// an error otherwise).
pub fn conv2d_prepared(
    x: &[f32],
    cw: &ConvWeights,
    g: &ConvGeom,
    epi: &Epilogue<'_>,
    residual: Option<&[f32]>,
) -> Result<Vec<f32>> {
    const OP: &str = "fused conv2d";
    let (oh, ow) = g.check(OP)?;
    let (n, c, o, k) = (g.n, g.c, g.o, g.k);
    let m = n * oh * ow;
    let kdim = c * k * k;
    if x.len() != n * g.h * g.w * c {
        bail!(
            "{OP}: input has {} elements; expected {}",
            x.len(),
            n * g.h * g.w * c
        );
    }
    if !cw.fits(g) {
        bail!(
            "{OP}: weights prepared for {}x{}x{k2}x{k2} do not fit a {o}x{c}x{k}x{k} layer",
            cw.o,
            cw.c,
            k2 = cw.k
        );
    }
    if epi.scale.len() != o || epi.shift.len() != o {
        bail!("{OP}: epilogue must have {o} channels");
    }
    if residual.is_some_and(|r| r.len() != m * o) {
        bail!("{OP}: residual must have {} elements", m * o);
    }
    let pointwise = k == 1 && g.stride == 1 && g.pad.is_zero();
    // Left uninitialized (zeroing it cost 5-10% of a network's time): every path below
    // writes each element of `[m, o]` exactly once before its `set_len`.
    let mut out: Vec<f32> = Vec::with_capacity(m * o);
    if m * o == 0 {
        return Ok(out);
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    if let Some(u) = &cw.winograd {
        conv2d_winograd(x, u, g, epi, residual, out_ptr, m * o)?;
        // SAFETY: the Winograd tiles cover every output pixel, each written whole.
        unsafe { out.set_len(m * o) };
        return Ok(out);
    }
    #[cfg(target_arch = "x86_64")]
    let packed = cw.packed.as_ref();
    let wk = cw.plain.as_slice();
    #[cfg(target_arch = "x86_64")]
    let prepacked = cw.packed.is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let prepacked = false;
    let t = tiling(m, o, kdim, pointwise, prepacked);
    let tasks = t.row_blocks * t.col_blocks;
    (0..tasks)
        .into_par_iter()
        .with_max_len(1)
        .try_for_each(|task| -> Result<()> {
            let (rb, cb) = (task / t.col_blocks, task % t.col_blocks);
            let p0 = rb * t.rows;
            let rows = t.rows.min(m - p0);
            let o0 = cb * t.cols;
            let cols = t.cols.min(o - o0);
            let scratch_len = if pointwise { 0 } else { rows * kdim };
            with_scratch(scratch_len, |col_buf| -> Result<()> {
                // The tile's input rows: the NHWC input itself for a 1x1 convolution, else
                // its im2col rows.
                let a_data: &[f32] = if pointwise {
                    &x[p0 * c..(p0 + rows) * c]
                } else {
                    im2col_rows(x, g, oh, ow, p0, rows, col_buf);
                    col_buf
                };
                let a = Mat::row_major(a_data, rows, kdim);
                #[cfg(target_arch = "x86_64")]
                if let Some(pw) = packed {
                    let tile = Tile {
                        a: a_data,
                        lda: kdim,
                        rows,
                        o0,
                        cols,
                        res: residual.map(|r| &r[p0 * o..]),
                    };
                    let tepi = TileEpilogue {
                        scale: epi.scale,
                        shift: epi.shift,
                        act: epi.act,
                    };
                    // SAFETY: the tile (pixels `p0..p0 + rows`, channels `o0..o0 + cols`)
                    // lies in `out` (`p0 + rows <= m`, `o0 + cols <= o`); tasks write disjoint
                    // tiles; `out` outlives the loop.
                    if unsafe { gemm_tile(&tile, pw, Some(&tepi), out_ptr.at(p0 * o), o) } {
                        return Ok(());
                    }
                    bail!("{OP}: internal tiling error");
                }
                // W^T restricted to output channels `o0..o0 + cols`.
                let b = Mat::row_major(&wk[o0 * kdim..(o0 + cols) * kdim], cols, kdim).t();
                let start = p0 * o + o0;
                let tile_len = (rows - 1) * o + cols;
                if start + tile_len > m * o {
                    bail!("{OP}: internal tiling error");
                }
                // SAFETY: the tile (pixels `p0..p0 + rows`, channels `o0..o0 + cols`) lies in
                // `out` (checked above); tasks write disjoint tiles; `out` outlives the loop.
                unsafe { gemm_into(a, b, out_ptr.at(start), o, 1)? };
                if t.col_blocks == 1 {
                    // SAFETY: with one channel block the tile is the contiguous range
                    // `start..start + tile_len`, owned by this task alone.
                    let tile =
                        unsafe { std::slice::from_raw_parts_mut(out_ptr.at(start), tile_len) };
                    let res = residual.map(|r| &r[start..start + tile_len]);
                    epilogue_tile(tile, res, rows, cols, o, o0, epi);
                } else {
                    for r in 0..rows {
                        let at = start + r * o;
                        // SAFETY: pixel `p0 + r`, channels `o0..o0 + cols`: inside `out` and in
                        // this task's tile only.
                        let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(at), cols) };
                        let res = residual.map(|x| &x[at..at + cols]);
                        epilogue_tile(row, res, 1, cols, cols, o0, epi);
                    }
                }
                Ok(())
            })
        })?;
    // SAFETY: the tasks' tiles cover `[m, o]`, and each wrote its tile whole (the GEMM
    // overwrites its destination).
    unsafe { out.set_len(m * o) };
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3).

/// Whether [`conv2d`] runs `g` as Winograd F(2x2, 3x3): a 3x3 stride-1 convolution padded by
/// one on every side (PyTorch's padding, and TensorFlow's "same" at stride 1), with enough
/// channels for the 16 small products to run at speed: the GEMM kernel runs 64 output
/// channels at a time, and with fewer it loses more than the transform saves (measured on
/// tf_efficientnetv2_b0's 16-channel first stage).
fn winograd_applies(g: &ConvGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == Padding2d::symmetric(1) && g.c >= 16 && g.o >= 64
}

/// The weight in the Winograd domain, `U = G w G^T` for each (output, input) channel pair,
/// laid out as 16 matrices `[C, O]` (one per position of the 4x4 transformed tile).
fn winograd_weight(w: &[f32], c: usize, o: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * c * o];
    for oc in 0..o {
        for ci in 0..c {
            let g = &w[(oc * c + ci) * 9..(oc * c + ci) * 9 + 9];
            // G g (4x3), then (G g) G^T (4x4); G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
            let mut gg = [[0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = a;
                gg[1][j] = 0.5 * (a + b + d);
                gg[2][j] = 0.5 * (a - b + d);
                gg[3][j] = d;
            }
            for (i, row) in gg.iter().enumerate() {
                let (a, b, d) = (row[0], row[1], row[2]);
                let t = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                for (j, &v) in t.iter().enumerate() {
                    u[((i * 4 + j) * c + ci) * o + oc] = v;
                }
            }
        }
    }
    u
}

multiversion! {
    // The transforms index several arrays by the same position.
    #[allow(clippy::needless_range_loop)]
    /// `B^T d B` for one 4x4 input tile, each of its 16 pixels a channel vector (`rows[i * 4 +
    /// j]`, zeros outside the input), into `v[xi * stride + ..c]` for the 16 positions `xi`.
    fn winograd_input_tile(rows: &[&[f32]; 16], c: usize, v: &mut [f32], stride: usize) {
        for ch in 0..c {
            let d = |i: usize, j: usize| rows[i * 4 + j][ch];
            // B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], applied to the rows, then columns.
            let mut t = [[0f32; 4]; 4];
            for j in 0..4 {
                t[0][j] = d(0, j) - d(2, j);
                t[1][j] = d(1, j) + d(2, j);
                t[2][j] = d(2, j) - d(1, j);
                t[3][j] = d(1, j) - d(3, j);
            }
            for (i, r) in t.iter().enumerate() {
                v[(i * 4) * stride + ch] = r[0] - r[2];
                v[(i * 4 + 1) * stride + ch] = r[1] + r[2];
                v[(i * 4 + 2) * stride + ch] = r[2] - r[1];
                v[(i * 4 + 3) * stride + ch] = r[1] - r[3];
            }
        }
    }
}

multiversion! {
    #[allow(clippy::needless_range_loop)]
    /// `A^T m A` for one tile: the 16 products `m[xi * stride + ..o]` to the 2x2 outputs
    /// `y[p * o + ..o]` (`p = oy * 2 + ox`).
    fn winograd_output_tile(m: &[f32], stride: usize, o: usize, y: &mut [f32]) {
        for oc in 0..o {
            let v = |xi: usize| m[xi * stride + oc];
            // A^T = [1 1 1 0; 0 1 -1 -1], on the rows, then the columns.
            let mut t = [[0f32; 4]; 2];
            for j in 0..4 {
                t[0][j] = v(j) + v(4 + j) + v(8 + j);
                t[1][j] = v(4 + j) - v(8 + j) - v(12 + j);
            }
            for (i, r) in t.iter().enumerate() {
                y[(i * 2) * o + oc] = r[0] + r[1] + r[2];
                y[(i * 2 + 1) * o + oc] = r[1] - r[2] - r[3];
            }
        }
    }
}

/// A 3x3 stride-1 convolution padded by one (see [`winograd_applies`]) as Winograd
/// F(2x2, 3x3): each 2x2 block of outputs comes from a 4x4 input tile through 16
/// element-wise products in a transformed domain instead of 36, so the GEMMs (16 per block of
/// tiles, `[tiles, C] x [C, O]`) do 4 multiply-adds per output and input channel instead of
/// the direct convolution's 9. The transforms only add and subtract (and halve, for the
/// weight), so the result stays within a few float roundings of the direct one. Same contract
/// as [`conv2d`], writing every one of the `out_len` elements at `out_ptr` (which must be
/// valid for that many writes).
fn conv2d_winograd(
    x: &[f32],
    u: &WinogradWeights,
    g: &ConvGeom,
    epi: &Epilogue<'_>,
    residual: Option<&[f32]>,
    out_ptr: OutPtr,
    out_len: usize,
) -> Result<()> {
    let (n, h, wd, c, o) = (g.n, g.h, g.w, g.c, g.o);
    // Output size equals input size (k 3, stride 1, padding 1).
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tiles = n * th * tw;
    // Tiles per task: the 16 transformed inputs and products of a block stay within about
    // 1 MB (L2), and every thread gets several blocks.
    let threads = rayon::current_num_threads().max(1);
    let fit = ((1usize << 18) / (16 * (c + o))).max(8);
    let per_thread = tiles.div_ceil(3 * threads).max(8);
    let tb = fit.min(per_thread).div_ceil(8) * 8;
    let blocks = tiles.div_ceil(tb);
    let zeros = vec![0f32; c];
    (0..blocks)
        .into_par_iter()
        .with_max_len(1)
        .try_for_each(|blk| -> Result<()> {
            let t0 = blk * tb;
            let nt = tb.min(tiles - t0);
            with_scratch(16 * nt * (c + o) + 4 * o, |buf| -> Result<()> {
                let (vb, rest) = buf.split_at_mut(16 * nt * c);
                let (mb, yb) = rest.split_at_mut(16 * nt * o);
                for t in 0..nt {
                    let tile = t0 + t;
                    let (b, rest) = (tile / (th * tw), tile % (th * tw));
                    let (ty, tx) = (rest / tw, rest % tw);
                    let mut rows: [&[f32]; 16] = [&zeros; 16];
                    for i in 0..4 {
                        let iy = (2 * ty + i) as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for j in 0..4 {
                            let ix = (2 * tx + j) as isize - 1;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            let at = ((b * h + iy as usize) * wd + ix as usize) * c;
                            rows[i * 4 + j] = &x[at..at + c];
                        }
                    }
                    winograd_input_tile(&rows, c, &mut vb[t * c..], nt * c);
                }
                for xi in 0..16 {
                    let va = &vb[xi * nt * c..(xi + 1) * nt * c];
                    let dst = mb[xi * nt * o..(xi + 1) * nt * o].as_mut_ptr();
                    match u {
                        WinogradWeights::Plain(u) => {
                            let a = Mat::row_major(va, nt, c);
                            let bm = Mat::row_major(&u[xi * c * o..(xi + 1) * c * o], c, o);
                            // SAFETY: `mb` holds 16 `nt x o` row-major matrices owned by this
                            // task.
                            unsafe { gemm_into(a, bm, dst, o, 1)? };
                        }
                        #[cfg(target_arch = "x86_64")]
                        WinogradWeights::Packed(pw) => {
                            let tile = Tile {
                                a: va,
                                lda: c,
                                rows: nt,
                                o0: 0,
                                cols: o,
                                res: None,
                            };
                            // SAFETY: as above; the kernel checks the operands' extents.
                            if !unsafe { gemm_tile(&tile, &pw[xi], None, dst, o) } {
                                bail!("fused conv2d: internal Winograd GEMM error");
                            }
                        }
                    }
                }
                for t in 0..nt {
                    let tile = t0 + t;
                    let (b, rest) = (tile / (th * tw), tile % (th * tw));
                    let (ty, tx) = (rest / tw, rest % tw);
                    winograd_output_tile(&mb[t * o..], nt * o, o, yb);
                    for p in 0..4 {
                        let (oy, ox) = (2 * ty + p / 2, 2 * tx + p % 2);
                        if oy >= h || ox >= wd {
                            continue;
                        }
                        let at = ((b * h + oy) * wd + ox) * o;
                        if at + o > out_len {
                            bail!("fused conv2d: internal Winograd tiling error");
                        }
                        let y = &yb[p * o..(p + 1) * o];
                        // SAFETY: output pixel (b, oy, ox) belongs to this tile alone, and
                        // tiles are split between tasks; the output buffer outlives the loop
                        // and holds `out_len` elements. The copy initializes the row.
                        let row = unsafe {
                            std::ptr::copy_nonoverlapping(y.as_ptr(), out_ptr.at(at), o);
                            std::slice::from_raw_parts_mut(out_ptr.at(at), o)
                        };
                        let res = residual.map(|r| &r[at..at + o]);
                        epilogue_tile(row, res, 1, o, o, 0, epi);
                    }
                }
                Ok(())
            })
        })
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution.

/// Output pixel `(b, oy, ox)` of a depthwise convolution for the `W` channels from `c0`
/// (`W` a constant, so the accumulators live in registers), before the epilogue.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_pixel<const W: usize>(
    x: &[f32],
    wt: &[f32],
    g: &ConvGeom,
    b: usize,
    oy: usize,
    ox: usize,
    c0: usize,
) -> [f32; W] {
    let (h, w, c, k, s) = (g.h, g.w, g.c, g.k, g.stride);
    let mut acc = [0f32; W];
    for i in 0..k {
        let iy = (oy * s + i) as isize - g.pad.top as isize;
        if iy < 0 || iy >= h as isize {
            continue;
        }
        let row = (b * h + iy as usize) * w;
        for j in 0..k {
            let ix = (ox * s + j) as isize - g.pad.left as isize;
            if ix < 0 || ix >= w as isize {
                continue;
            }
            let xs = &x[(row + ix as usize) * c + c0..][..W];
            let ws = &wt[(i * k + j) * c + c0..][..W];
            for l in 0..W {
                acc[l] = ws[l].mul_add(xs[l], acc[l]);
            }
        }
    }
    acc
}

/// Every output pixel of sample `b` for the `W` channels from `c0`: convolution, epilogue,
/// store, and the channel sums added to `sums` (`W` long).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_block<const W: usize>(
    x: &[f32],
    wt: &[f32],
    g: &ConvGeom,
    (oh, ow): (usize, usize),
    b: usize,
    c0: usize,
    epi: &Epilogue<'_>,
    out: OutPtr,
    sums: &mut [f32],
) {
    let (scale, shift) = (&epi.scale[c0..c0 + W], &epi.shift[c0..c0 + W]);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut acc = dw_pixel::<W>(x, wt, g, b, oy, ox, c0);
            affine_act_channels(&mut acc, scale, shift, epi.act, None, Some(&mut *sums));
            let pix = (b * oh + oy) * ow + ox;
            // SAFETY: pixel `pix`, channels `c0..c0 + W` of the output: in range
            // (`pix < N * OH * OW`, `c0 + W <= C`) and written by this task only (tasks own
            // disjoint (sample, channel block) pairs). A raw copy: the output may be
            // uninitialized memory.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.at(pix * g.c + c0), W) };
        }
    }
}

/// [`dw_block`] for a run of fewer than 16 channels.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dw_block_tail(
    x: &[f32],
    wt: &[f32],
    g: &ConvGeom,
    (oh, ow): (usize, usize),
    b: usize,
    c0: usize,
    epi: &Epilogue<'_>,
    out: OutPtr,
    sums: &mut [f32],
) {
    let cw = sums.len();
    for oy in 0..oh {
        for ox in 0..ow {
            let mut acc = [0f32; 16];
            let acc = &mut acc[..cw];
            let (h, w, c, k, s) = (g.h, g.w, g.c, g.k, g.stride);
            for i in 0..k {
                let iy = (oy * s + i) as isize - g.pad.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = (b * h + iy as usize) * w;
                for j in 0..k {
                    let ix = (ox * s + j) as isize - g.pad.left as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let xs = &x[(row + ix as usize) * c + c0..][..cw];
                    let ws = &wt[(i * k + j) * c + c0..][..cw];
                    for ((a, &wv), &xv) in acc.iter_mut().zip(ws).zip(xs) {
                        *a = wv.mul_add(xv, *a);
                    }
                }
            }
            affine_act_channels(
                acc,
                &epi.scale[c0..c0 + cw],
                &epi.shift[c0..c0 + cw],
                epi.act,
                None,
                Some(&mut *sums),
            );
            let pix = (b * oh + oy) * ow + ox;
            // SAFETY: as in `dw_block`.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.at(pix * g.c + c0), cw) };
        }
    }
}

/// Width of the register-blocked channel groups of the depthwise kernel.
const DW_BLOCK: usize = 64;

multiversion! {
    /// Sample `b`, channels `c0..c0 + sums.len()`, every output pixel: the convolution, the
    /// epilogue (written to the output through `out`), and the per-channel sums.
    #[allow(clippy::too_many_arguments)]
    fn dw_task(
        x: &[f32],
        wt: &[f32],
        g: &ConvGeom,
        out_hw: (usize, usize),
        b: usize,
        c0: usize,
        epi: &Epilogue<'_>,
        out: OutPtr,
        sums: &mut [f32],
    ) {
        sums.fill(0.0);
        let cw = sums.len();
        let mut done = 0;
        while cw - done >= DW_BLOCK {
            let s = &mut sums[done..done + DW_BLOCK];
            dw_block::<DW_BLOCK>(x, wt, g, out_hw, b, c0 + done, epi, out, s);
            done += DW_BLOCK;
        }
        if cw - done >= 32 {
            dw_block::<32>(x, wt, g, out_hw, b, c0 + done, epi, out, &mut sums[done..done + 32]);
            done += 32;
        }
        if cw - done >= 16 {
            dw_block::<16>(x, wt, g, out_hw, b, c0 + done, epi, out, &mut sums[done..done + 16]);
            done += 16;
        }
        if done < cw {
            dw_block_tail(x, wt, g, out_hw, b, c0 + done, epi, out, &mut sums[done..]);
        }
    }
}

/// Depthwise convolution of `x` (NHWC) with `w` (`[C, 1, k, k]`, as stored), fused with
/// `epi`. With `means`, also returns the per-channel mean of the output (`[N, C]`).
pub fn depthwise(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    epi: &Epilogue<'_>,
    means: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    const OP: &str = "fused depthwise";
    let (oh, ow) = g.check(OP)?;
    let (n, c, k) = (g.n, g.c, g.k);
    if g.o != c || x.len() != n * g.h * g.w * c || w.len() != c * k * k {
        bail!(
            "{OP}: input has {} elements, weight {}; expected {} and {}",
            x.len(),
            w.len(),
            n * g.h * g.w * c,
            c * k * k
        );
    }
    if epi.scale.len() != c || epi.shift.len() != c {
        bail!("{OP}: epilogue must have {c} channels");
    }
    let len = n * oh * ow * c;
    // Left uninitialized until the tasks write it (see the `set_len` below).
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let mut sums = vec![0f32; n * c];
    if len == 0 {
        return Ok((out, means.then_some(sums)));
    }
    // Taps-major weight, `[k * k, C]`, so each tap's channels are contiguous.
    let wt = nchw_to_nhwc(w, 1, c, k * k);
    // Channel blocks: wide for the registers, narrow enough for every thread to get work.
    let want = 3 * rayon::current_num_threads().max(1);
    let mut block = DW_BLOCK;
    while block > 16 && n * c.div_ceil(block) < want {
        block /= 2;
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    sums.par_chunks_mut(c).enumerate().for_each(|(b, sums_b)| {
        sums_b
            .par_chunks_mut(block)
            .enumerate()
            .for_each(|(cb, s)| {
                let c0 = cb * block;
                dw_task(x, &wt, g, (oh, ow), b, c0, epi, out_ptr, s);
            });
    });
    // SAFETY: the tasks cover every (sample, channel block) pair, and each writes every output
    // pixel of its sample for its channels (`dw_task`), so all `len` elements are written.
    unsafe { out.set_len(len) };
    let means = means.then(|| {
        let inv = 1.0 / (oh * ow) as f32;
        sums.iter().map(|s| s * inv).collect()
    });
    Ok((out, means))
}

// ---------------------------------------------------------------------------------------------
// Squeeze-excitation and layout.

/// Per-channel means of an NHWC map of `p` pixels: `[N, C]`.
pub fn channel_means(x: &[f32], n: usize, p: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * c];
    if p == 0 || c == 0 {
        return out;
    }
    let inv = 1.0 / p as f32;
    out.par_chunks_mut(c).enumerate().for_each(|(b, m)| {
        for px in x[b * p * c..(b + 1) * p * c].chunks_exact(c) {
            for (acc, &v) in m.iter_mut().zip(px) {
                *acc += v;
            }
        }
        m.iter_mut().for_each(|v| *v *= inv);
    });
    out
}

/// Squeeze-excitation gates `[N, C]` from the pooled `means` (`[N, C]`):
/// `sigmoid(expand(act(reduce(means))))`, `reduce` `[R, C]` + `[R]`, `expand` `[C, R]` + `[C]`.
#[allow(clippy::too_many_arguments)]
pub fn se_gates(
    means: &[f32],
    n: usize,
    c: usize,
    r: usize,
    w_reduce: &[f32],
    b_reduce: &[f32],
    w_expand: &[f32],
    b_expand: &[f32],
    act: Act,
) -> Result<Vec<f32>> {
    if means.len() != n * c
        || w_reduce.len() != r * c
        || b_reduce.len() != r
        || w_expand.len() != c * r
        || b_expand.len() != c
    {
        bail!("se_gates: operands do not fit [N {n}, C {c}] with {r} reduced channels");
    }
    let mut hidden = vec![0f32; n * r];
    let mut gates = vec![0f32; n * c];
    if n == 0 || c == 0 {
        return Ok(gates);
    }
    let m = Mat {
        data: means,
        rows: n,
        cols: c,
        rs: c,
        cs: 1,
    };
    // reduce^T: element (j, i) = w_reduce[i * c + j].
    let wr_t = Mat {
        data: w_reduce,
        rows: c,
        cols: r,
        rs: 1,
        cs: c,
    };
    // SAFETY: `hidden` is n x r with row stride r, owned here.
    unsafe { gemm_into(m, wr_t, hidden.as_mut_ptr(), r, 1)? };
    if r > 0 {
        bias_act_rows(&mut hidden, b_reduce, act);
    }
    let hm = Mat {
        data: &hidden,
        rows: n,
        cols: r,
        rs: r,
        cs: 1,
    };
    let we_t = Mat {
        data: w_expand,
        rows: r,
        cols: c,
        rs: 1,
        cs: r,
    };
    // SAFETY: `gates` is n x c with row stride c, owned here.
    unsafe { gemm_into(hm, we_t, gates.as_mut_ptr(), c, 1)? };
    bias_act_rows(&mut gates, b_expand, Act::Identity);
    sigmoid_inplace(&mut gates);
    Ok(gates)
}

/// `x[n, p, c] *= gate[n, c]` in place, for an NHWC map of `p` pixels.
pub fn gate_channels(x: &mut [f32], gate: &[f32], n: usize, p: usize, c: usize) {
    if p == 0 || c == 0 || gate.len() != n * c {
        return;
    }
    let rows_per_task = ((1 << 14) / c).max(1);
    x.par_chunks_mut(rows_per_task * c)
        .enumerate()
        .for_each(|(t, chunk)| {
            for (r, px) in chunk.chunks_exact_mut(c).enumerate() {
                let b = (t * rows_per_task + r) / p;
                let gb = &gate[b * c..(b + 1) * c];
                for (v, &g) in px.iter_mut().zip(gb) {
                    *v *= g;
                }
            }
        });
}

/// NCHW `[N, C, P]` to NHWC `[N, P, C]`.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    transpose_batched(x, n, c, p)
}

/// NHWC `[N, P, C]` to NCHW `[N, C, P]`.
pub fn nhwc_to_nchw(x: &[f32], n: usize, p: usize, c: usize) -> Vec<f32> {
    transpose_batched(x, n, p, c)
}

/// Transposes each of `n` row-major `r x q` matrices, in 32 x 32 blocks.
fn transpose_batched(x: &[f32], n: usize, r: usize, q: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * r * q];
    if out.is_empty() || x.len() != out.len() {
        return out;
    }
    const B: usize = 32;
    out.par_chunks_mut(r * q)
        .zip(x.par_chunks(r * q))
        .for_each(|(dst, src)| {
            for i0 in (0..r).step_by(B) {
                for j0 in (0..q).step_by(B) {
                    for i in i0..(i0 + B).min(r) {
                        for j in j0..(j0 + B).min(q) {
                            dst[j * r + i] = src[i * q + j];
                        }
                    }
                }
            }
        });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1) (shared with the other kernels' tests).
    pub(crate) fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn act_ref(v: f32, a: Act) -> f32 {
        match a {
            Act::Identity => v,
            Act::Silu => v / (1.0 + (-v).exp()),
            Act::Relu => v.max(0.0),
            Act::Relu6 => v.clamp(0.0, 6.0),
            Act::HardSwish => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// Direct convolution with groups 1 or C, then the epilogue, gate and residual.
    #[allow(clippy::too_many_arguments)]
    fn conv_ref(
        x: &[f32],
        w: &[f32],
        g: &ConvGeom,
        dw: bool,
        epi: &Epilogue<'_>,
        gate: Option<&[f32]>,
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let (oh, ow) = g.check("ref").unwrap();
        let mut out = vec![0f32; g.n * g.o * oh * ow];
        for b in 0..g.n {
            for o in 0..g.o {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut acc = 0f64;
                        let chans: Vec<usize> = if dw { vec![o] } else { (0..g.c).collect() };
                        for (ci_idx, &ci) in chans.iter().enumerate() {
                            for i in 0..g.k {
                                for j in 0..g.k {
                                    let iy = (y * g.stride + i) as isize - g.pad.top as isize;
                                    let ix = (xx * g.stride + j) as isize - g.pad.left as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let mut xv =
                                        x[((b * g.c + ci) * g.h + iy as usize) * g.w + ix as usize];
                                    if let Some(gt) = gate {
                                        xv *= gt[b * g.c + ci];
                                    }
                                    let wi = if dw {
                                        (o * g.k + i) * g.k + j
                                    } else {
                                        ((o * g.c + ci_idx) * g.k + i) * g.k + j
                                    };
                                    acc += f64::from(xv) * f64::from(w[wi]);
                                }
                            }
                        }
                        let idx = ((b * g.o + o) * oh + y) * ow + xx;
                        let v = act_ref(acc as f32 * epi.scale[o] + epi.shift[o], epi.act);
                        out[idx] = v + res.map_or(0.0, |r| r[idx]);
                    }
                }
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn exp_is_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.043;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            assert!(rel < 5e-7, "exp({x}): {} vs {}", exp(x), x.exp());
        }
        assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
        for i in 0..1600 {
            let d = 1.0 + (i as f32 * 0.05).exp();
            assert!(((recip(d) - 1.0 / d) * d).abs() < 2e-7, "recip({d})");
        }
        for i in -3000..3000 {
            let v = i as f32 * 0.01;
            let want = v / (1.0 + (-v).exp());
            assert!(
                (act_one(v, Act::Silu) - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({v})"
            );
        }
        assert!(act_one(-1000.0, Act::Silu).abs() < 1e-30);
        assert!((act_one(1000.0, Act::Silu) - 1000.0).abs() < 1e-3);
    }

    /// The AVX-512 SiLU epilogue against the exact SiLU (and the portable one), over a
    /// row long enough for whole vectors and a tail, with extremes and a NaN.
    #[test]
    fn silu_epilogue_matches_exact() {
        let mut x: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.01).collect();
        x.extend([-1000.0, -90.0, -87.5, 80.5, 1000.0, f32::NAN, 0.0]);
        let scale: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let shift: Vec<f32> = (0..x.len()).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
        let mut fast = x.clone();
        affine_act_channels(&mut fast, &scale, &shift, Act::Silu, None, None);
        for (i, ((&xi, &sc), &sh)) in x.iter().zip(&scale).zip(&shift).enumerate() {
            let v = xi.mul_add(sc, sh);
            if v.is_nan() {
                assert!(fast[i].is_nan(), "silu(NaN) gave {}", fast[i]);
                continue;
            }
            let exact = (v as f64 / (1.0 + (-v as f64).exp())) as f32;
            let portable = act_one(v, Act::Silu);
            let tol = 1e-6 * exact.abs().max(1e-3);
            assert!(
                (fast[i] - exact).abs() <= tol,
                "silu({v}): {} vs {exact}",
                fast[i]
            );
            assert!(
                (fast[i] - portable).abs() <= tol,
                "silu({v}): {} vs {portable}",
                fast[i]
            );
        }
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx512 {
            let mut row = vec![1.0f32; 37];
            // SAFETY: AVX-512 is present (checked); equal lengths.
            let done = unsafe { silu_affine_avx512(&mut row, &[1.0; 37], &[0.0; 37]) };
            assert_eq!(done, 32, "whole vectors only");
            assert_eq!(row[36], 1.0, "the tail is left to the portable loop");
        }
    }

    fn to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
        nchw_to_nhwc(x, n, c, h * w)
    }

    #[test]
    fn layout_round_trip() {
        let x = data(2 * 35 * 33, 9);
        let y = nchw_to_nhwc(&x, 2, 35, 33);
        assert_eq!(y[1], x[33]);
        assert_eq!(nhwc_to_nchw(&y, 2, 33, 35), x);
    }

    #[test]
    fn dense_and_pointwise_match_direct() {
        let cases = [
            // (n, c, h, w, o, k, stride, pad)
            (2, 5, 9, 7, 6, 3, 1, Padding2d::symmetric(1)),
            (
                1,
                3,
                16,
                15,
                8,
                3,
                2,
                Padding2d {
                    top: 0,
                    bottom: 1,
                    left: 1,
                    right: 1,
                },
            ),
            (
                3,
                4,
                6,
                6,
                5,
                5,
                2,
                Padding2d {
                    top: 1,
                    bottom: 2,
                    left: 2,
                    right: 1,
                },
            ),
            (2, 7, 5, 9, 70, 1, 1, Padding2d::zero()),
            (1, 16, 40, 40, 24, 1, 1, Padding2d::zero()),
            (2, 3, 33, 31, 12, 3, 2, Padding2d::symmetric(1)),
            (1, 2, 3, 3, 3, 3, 1, Padding2d::zero()),
            (1, 40, 7, 7, 300, 1, 1, Padding2d::zero()),
            // Winograd F(2x2, 3x3): odd sizes (a partial last tile), many tiles, few tiles.
            (2, 16, 9, 7, 64, 3, 1, Padding2d::symmetric(1)),
            (1, 32, 30, 28, 72, 3, 1, Padding2d::symmetric(1)),
            (3, 20, 1, 3, 80, 3, 1, Padding2d::symmetric(1)),
            // The thin layers of the first stages (16 to 48 outputs, 16- to 48-lane GEMM
            // kernels and their tails), stride 2, asymmetric padding, 5x5.
            (2, 32, 20, 26, 16, 3, 1, Padding2d::symmetric(1)),
            (
                1,
                16,
                17,
                23,
                32,
                3,
                2,
                Padding2d {
                    top: 0,
                    bottom: 1,
                    left: 1,
                    right: 1,
                },
            ),
            (2, 24, 13, 30, 24, 3, 1, Padding2d::symmetric(1)),
            (1, 8, 11, 40, 48, 3, 1, Padding2d::symmetric(1)),
            (1, 6, 19, 29, 40, 5, 2, Padding2d::symmetric(2)),
            (1, 3, 9, 9, 17, 3, 1, Padding2d::zero()),
            // Our AVX-512 kernel: K over its block (several partial sums per output), groups of
            // 64 channels with a narrower, masked last group (200 = 3 * 64 + 8), one channel,
            // pixel counts that leave a tail of every size, a 3x3 stride-2 K of 432.
            (2, 400, 5, 7, 200, 1, 1, Padding2d::zero()),
            (1, 130, 4, 5, 1, 1, 1, Padding2d::zero()),
            (3, 48, 9, 11, 112, 3, 2, Padding2d::symmetric(1)),
            (1, 24, 13, 1, 80, 1, 1, Padding2d::zero()),
        ];
        for (idx, &(n, c, h, w, o, k, stride, pad)) in cases.iter().enumerate() {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o,
                k,
                stride,
                pad,
            };
            let x = data(n * c * h * w, idx as u64);
            let wt = data(o * c * k * k, 100 + idx as u64);
            let scale = data(o, 200 + idx as u64);
            let shift = data(o, 300 + idx as u64);
            let (oh, ow) = g.check("t").unwrap();
            let acts = [
                Act::Identity,
                Act::Silu,
                Act::Relu,
                Act::Relu6,
                Act::HardSwish,
            ];
            for (act, kernel) in acts
                .into_iter()
                .flat_map(|a| [(a, GemmKernel::Best), (a, GemmKernel::GemmCrate)])
            {
                let epi = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    act,
                };
                let res = data(n * o * oh * ow, 400);
                let want = conv_ref(&x, &wt, &g, false, &epi, None, Some(&res));
                let got = conv2d_with(
                    &to_nhwc(&x, n, c, h, w),
                    &wt,
                    &g,
                    &epi,
                    Some(&to_nhwc(&res, n, o, oh, ow)),
                    kernel,
                )
                .unwrap();
                let got = nhwc_to_nchw(&got, n, oh * ow, o);
                assert!(
                    max_diff(&got, &want) < 1e-4,
                    "case {idx} {act:?} {kernel:?}"
                );
                // Without a residual too (the kernel's other epilogue).
                let got = conv2d_with(&to_nhwc(&x, n, c, h, w), &wt, &g, &epi, None, kernel);
                let got = nhwc_to_nchw(&got.unwrap(), n, oh * ow, o);
                let want = conv_ref(&x, &wt, &g, false, &epi, None, None);
                assert!(
                    max_diff(&got, &want) < 1e-4,
                    "case {idx} {act:?} {kernel:?}, no residual"
                );
            }
        }
    }

    #[test]
    fn prepared_weights_must_fit_the_layer() {
        let g = ConvGeom {
            n: 1,
            c: 16,
            h: 6,
            w: 6,
            o: 64,
            k: 3,
            stride: 2,
            pad: Padding2d::symmetric(1),
        };
        let w = data(64 * 16 * 9, 1);
        assert!(ConvWeights::new(&w[1..], &g, GemmKernel::Best).is_err());
        let cw = ConvWeights::new(&w, &g, GemmKernel::Best).unwrap();
        let scale = vec![1.0; 64];
        let epi = Epilogue {
            scale: &scale,
            shift: &scale,
            act: Act::Identity,
        };
        let x = data(6 * 6 * 16, 2);
        assert!(conv2d_prepared(&x, &cw, &g, &epi, None).is_ok());
        // The same weights for a stride-1 layer would run as Winograd: prepared otherwise.
        let g1 = ConvGeom { stride: 1, ..g };
        let err = conv2d_prepared(&x, &cw, &g1, &epi, None).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        assert!(cw.fits(&g) && !cw.fits(&g1));
    }

    #[test]
    fn gating_matches_direct() {
        let (n, c, h, o) = (3, 6, 5, 4);
        let g = ConvGeom {
            n,
            c,
            h,
            w: h,
            o,
            k: 1,
            stride: 1,
            pad: Padding2d::zero(),
        };
        let x = data(n * c * h * h, 1);
        let wt = data(o * c, 2);
        let ones = vec![1f32; o];
        let zeros = vec![0f32; o];
        let epi = Epilogue {
            scale: &ones,
            shift: &zeros,
            act: Act::Identity,
        };
        let gate = data(n * c, 3);
        let mut xn = to_nhwc(&x, n, c, h, h);
        gate_channels(&mut xn, &gate, n, h * h, c);
        let got = nhwc_to_nchw(&conv2d(&xn, &wt, &g, &epi, None).unwrap(), n, h * h, o);
        let want = conv_ref(&x, &wt, &g, false, &epi, Some(&gate), None);
        assert!(max_diff(&got, &want) < 1e-5);
        let means = channel_means(&to_nhwc(&x, n, c, h, h), n, h * h, c);
        for b in 0..n {
            for ci in 0..c {
                let plane = &x[(b * c + ci) * h * h..(b * c + ci + 1) * h * h];
                let m = plane.iter().sum::<f32>() / (h * h) as f32;
                assert!((means[b * c + ci] - m).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn depthwise_matches_direct() {
        let cases = [
            (2, 3, 9, 7, 3, 1, Padding2d::symmetric(1)),
            (
                1,
                4,
                14,
                14,
                3,
                2,
                Padding2d {
                    top: 0,
                    bottom: 1,
                    left: 0,
                    right: 1,
                },
            ),
            (2, 2, 11, 13, 5, 2, Padding2d::symmetric(2)),
            (1, 3, 7, 7, 5, 1, Padding2d::symmetric(2)),
            (1, 2, 8, 8, 7, 1, Padding2d::symmetric(3)),
            (
                1,
                2,
                6,
                5,
                4,
                1,
                Padding2d {
                    top: 1,
                    bottom: 2,
                    left: 2,
                    right: 1,
                },
            ),
            (2, 150, 6, 5, 3, 1, Padding2d::symmetric(1)),
            (1, 100, 9, 9, 5, 2, Padding2d::symmetric(2)),
        ];
        for (idx, &(n, c, h, w, k, stride, pad)) in cases.iter().enumerate() {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o: c,
                k,
                stride,
                pad,
            };
            let x = data(n * c * h * w, idx as u64);
            let wt = data(c * k * k, 10 + idx as u64);
            let scale = data(c, 20);
            let shift = data(c, 30);
            let epi = Epilogue {
                scale: &scale,
                shift: &shift,
                act: Act::Silu,
            };
            let (oh, ow) = g.check("t").unwrap();
            let (got, means) = depthwise(&to_nhwc(&x, n, c, h, w), &wt, &g, &epi, true).unwrap();
            let got = nhwc_to_nchw(&got, n, oh * ow, c);
            let want = conv_ref(&x, &wt, &g, true, &epi, None, None);
            assert!(max_diff(&got, &want) < 1e-5, "case {idx}");
            let want_means = channel_means(&to_nhwc(&want, n, c, oh, ow), n, oh * ow, c);
            assert!(max_diff(&means.unwrap(), &want_means) < 1e-5);
        }
    }

    #[test]
    fn se_gates_match_direct() {
        let (n, c, r) = (3, 10, 4);
        let m = data(n * c, 1);
        let (wr, br, we, be) = (data(r * c, 2), data(r, 3), data(c * r, 4), data(c, 5));
        let got = se_gates(&m, n, c, r, &wr, &br, &we, &be, Act::Silu).unwrap();
        for b in 0..n {
            let hidden: Vec<f32> = (0..r)
                .map(|i| {
                    let s: f32 = (0..c).map(|j| wr[i * c + j] * m[b * c + j]).sum();
                    act_ref(s + br[i], Act::Silu)
                })
                .collect();
            for j in 0..c {
                let s: f32 = (0..r).map(|i| we[j * r + i] * hidden[i]).sum::<f32>() + be[j];
                let want = 1.0 / (1.0 + (-s).exp());
                assert!((got[b * c + j] - want).abs() < 1e-6);
            }
        }
    }
}
