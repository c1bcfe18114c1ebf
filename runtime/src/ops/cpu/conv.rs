//! Dense convolutions (groups 1) on NHWC maps, fused with their epilogue: a convolution, its
//! BatchNorm folded to a per-channel `scale * y + shift`, its activation and the block's
//! residual add in one pass over each output tile while it is in cache.
//!
//! [`conv2d`] runs them as GEMMs over all pixels of the batch at once,
//! `Y[N*OH*OW, O] = X[N*OH*OW, C*k*k] x W^T`: a 1x1 stride-1 convolution reads the input
//! directly (channels last *is* the GEMM's row-major left operand, so the batch folds into
//! the rows for free), other kernels build an im2col tile per task (for each output pixel
//! and kernel row, one contiguous copy of `k * C` floats), and 3x3 stride-1 layers with
//! enough channels run as Winograd F(2x2, 3x3) (`super::winograd`). On AVX-512 the products
//! run on our own kernel (`super::gemm_avx512`: weights packed once per layer in
//! [`ConvWeights`], the epilogue applied before the tile leaves L1); elsewhere on the `gemm`
//! crate (`super::gemm`) one output tile at a time, with the epilogue on the tile right after.
//!
//! Work is split into tasks (pixel x channel tiles) run on rayon's pool, so the thread count
//! is `RAYON_NUM_THREADS`.
//!
//! Also here: the im2col matrix of one NCHW image and its adjoint ([`im2col_nchw`],
//! [`col2im_nchw`]), on which the candle training op runs dense convolutions.

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::ConvGeom;

use super::gemm::{Mat, gemm_into};
#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::{PackedWeight, Tile, gemm_tile};
use super::layout::nchw_to_nhwc;
#[cfg(target_arch = "x86_64")]
use super::layout::transpose_batched;
use super::simd::{Epilogue, epilogue_tile};
#[cfg(target_arch = "x86_64")]
use super::simd::{Level, level};
use super::tasks::{OutPtr, with_scratch};
use super::winograd::{WinogradWeights, conv2d_winograd, winograd_applies, winograd_weight};

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
/// column `(i * k + j) * C + ci` holds input `(n, oy * s + i * d - top, ox * s + j * d - left,
/// ci)` (`d` the dilation), zero outside the input. Undilated, each kernel row `i` is one
/// contiguous copy from the NHWC input; dilated, one copy of `C` per tap.
pub(crate) fn im2col_rows(
    x: &[f32],
    g: &ConvGeom,
    oh: usize,
    ow: usize,
    p0: usize,
    rows: usize,
    col: &mut [f32],
) {
    let (h, w, c, k, s, d) = (g.h, g.w, g.c, g.k, g.stride, g.dilation);
    let (top, left) = (g.pad.top as isize, g.pad.left as isize);
    let kdim = k * k * c;
    for (r, dst) in col.chunks_exact_mut(kdim).take(rows).enumerate() {
        let p = p0 + r;
        let (b, rest) = (p / (oh * ow), p % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let ix0 = (ox * s) as isize - left;
        if d != 1 {
            for i in 0..k {
                let iy = (oy * s + i * d) as isize - top;
                for j in 0..k {
                    let t = &mut dst[(i * k + j) * c..(i * k + j + 1) * c];
                    let ix = ix0 + (j * d) as isize;
                    if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                        t.fill(0.0);
                    } else {
                        let src = ((b * h + iy as usize) * w + ix as usize) * c;
                        t.copy_from_slice(&x[src..src + c]);
                    }
                }
            }
            continue;
        }
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
                    // SAFETY: the tile (pixels `p0..p0 + rows`, channels `o0..o0 + cols`)
                    // lies in `out` (`p0 + rows <= m`, `o0 + cols <= o`); tasks write disjoint
                    // tiles; `out` outlives the loop.
                    if unsafe { gemm_tile(&tile, pw, Some(epi), out_ptr.at(p0 * o), o) } {
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
// One NCHW image, for the candle training op (`crate::ops::candle::train_gemm`).

/// The input position read by output `(oy, ox)` at kernel tap `(ky, kx)` of `g`, if inside.
#[inline]
fn nchw_src(g: &ConvGeom, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let y = (oy * g.stride + ky * g.dilation).checked_sub(g.pad.top)?;
    let x = (ox * g.stride + kx * g.dilation).checked_sub(g.pad.left)?;
    (y < g.h && x < g.w).then_some((y, x))
}

/// One image's `[C*k*k, OH*OW]` im2col matrix, from its `[C, H, W]` input; `(oh, ow)` is the
/// output size of `g` (only `c`, `h`, `w`, `k`, `stride`, `dilation` and the top and left
/// padding are read).
pub(crate) fn im2col_nchw(g: &ConvGeom, (oh, ow): (usize, usize), x: &[f32], cols: &mut [f32]) {
    let (k, p) = (g.k, oh * ow);
    for ci in 0..g.c {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ci * k + ky) * k + kx) * p..][..p];
                for oy in 0..oh {
                    for ox in 0..ow {
                        row[oy * ow + ox] = match nchw_src(g, oy, ox, ky, kx) {
                            Some((y, xx)) => x[(ci * g.h + y) * g.w + xx],
                            None => 0.0,
                        };
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_nchw`]: scatter-add a `[C*k*k, OH*OW]` matrix into one image.
pub(crate) fn col2im_nchw(g: &ConvGeom, (oh, ow): (usize, usize), cols: &[f32], dx: &mut [f32]) {
    let (k, p) = (g.k, oh * ow);
    dx.fill(0.0);
    for ci in 0..g.c {
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((ci * k + ky) * k + kx) * p..][..p];
                for oy in 0..oh {
                    for ox in 0..ow {
                        if let Some((y, xx)) = nchw_src(g, oy, ox, ky, kx) {
                            dx[(ci * g.h + y) * g.w + xx] += row[oy * ow + ox];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::layout::nhwc_to_nchw;
    use crate::ops::cpu::testing::{conv_ref, data, max_diff, to_nhwc};
    use crate::ops::{Act, Padding2d};

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
        // (case, dilation): the dilated kxk convolutions of fused / edge / conv blocks past
        // the output stride (stride 1, padding `d * (k - 1) / 2`); a 3x3 that would be
        // Winograd undilated (so must not be), and stride 2 with asymmetric padding.
        let dilated = [
            ((2, 16, 9, 7, 64, 3, 1, Padding2d::symmetric(2)), 2),
            ((1, 5, 8, 9, 6, 5, 1, Padding2d::symmetric(8)), 4),
            ((2, 24, 6, 6, 72, 3, 1, Padding2d::symmetric(1)), 2),
            (
                (
                    1,
                    6,
                    13,
                    11,
                    10,
                    3,
                    2,
                    Padding2d {
                        top: 2,
                        bottom: 1,
                        left: 0,
                        right: 3,
                    },
                ),
                3,
            ),
        ];
        let all = cases.iter().map(|&c| (c, 1)).chain(dilated);
        for (idx, ((n, c, h, w, o, k, stride, pad), dilation)) in all.enumerate() {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o,
                k,
                stride,
                dilation,
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
                Act::Gelu,
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
            dilation: 1,
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
}
