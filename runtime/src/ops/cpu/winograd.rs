//! Winograd F(2x2, 3x3) for the dense 3x3 stride-1 convolutions that [`winograd_applies`]
//! picks: the weight transform (once per layer), the input and output transforms, and the 16
//! GEMMs per block of tiles between them, on our AVX-512 kernel or the `gemm` crate.

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::{ConvGeom, Padding2d};

use super::gemm::{Mat, gemm_into};
#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::{PackedWeight, Tile, gemm_tile};
use super::simd::{Epilogue, epilogue_tile, multiversion};
use super::tasks::{OutPtr, with_scratch};

/// A Winograd layer's weights: the 16 matrices `U[xi]` (`[C, O]` each) for the `gemm` crate,
/// or each transposed to `[O, C]` and packed for our AVX-512 kernel.
pub(super) enum WinogradWeights {
    Plain(Vec<f32>),
    #[cfg(target_arch = "x86_64")]
    Packed(Vec<PackedWeight>),
}

/// Whether [`conv2d`] runs `g` as Winograd F(2x2, 3x3): a 3x3 stride-1 convolution padded by
/// one on every side (PyTorch's padding, and TensorFlow's "same" at stride 1), with enough
/// channels for the 16 small products to run at speed: the GEMM kernel runs 64 output
/// channels at a time, and with fewer it loses more than the transform saves (measured on
/// tf_efficientnetv2_b0's 16-channel first stage). A dilated 3x3 is not Winograd's: it runs
/// on the im2col GEMM path (`conv2d_prepared` picks it from this test).
pub(super) fn winograd_applies(g: &ConvGeom) -> bool {
    g.k == 3
        && g.stride == 1
        && g.dilation == 1
        && g.pad == Padding2d::symmetric(1)
        && g.c >= 16
        && g.o >= 64
}

/// The weight in the Winograd domain, `U = G w G^T` for each (output, input) channel pair,
/// laid out as 16 matrices `[C, O]` (one per position of the 4x4 transformed tile).
pub(super) fn winograd_weight(w: &[f32], c: usize, o: usize) -> Vec<f32> {
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
pub(super) fn conv2d_winograd(
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
