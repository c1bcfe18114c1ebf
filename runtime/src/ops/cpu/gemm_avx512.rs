//! The fused convolutions' GEMM on AVX-512, with the epilogue applied while the output is in L1.
//!
//! `out[p, o] = act(scale[o] * sum_k a[p, k] * w[o, k] + shift[o]) (+ res[p, o])` for a tile
//! of pixels `p` (rows of `a`: the NHWC input of a 1x1 convolution, or im2col rows) and
//! output channels `o`, written straight into the NHWC output.
//!
//! Why not the `gemm` crate here, as everywhere else: measured per layer on
//! tf_efficientnetv2_b0 at batch 8 (2 threads), its 1x1 convolutions ran at 45-70 GMAC/s
//! and the 16-output 3x3 convolution at 33, against about 140 for its hot loop. Three costs
//! are the crate's general interface rather than the arithmetic: it packs the weights again
//! for every tile (5% of the network's time), its narrowest kernels keep only 6 accumulators
//! (too few to hide the multiply-add latency), and the epilogue then makes a second pass
//! over each tile (8%). Here the weights are packed once per convolution, each channel width
//! gets a kernel with 16-24 accumulators, and the epilogue runs on each strip of 6-16 pixels
//! right after its sums are stored, while they are still in L1 (in the same loop as the
//! accumulators, the compiler kept those in memory instead of registers).
//!
//! Layout of the packed weights: groups of 64 output channels, each `[K][64]` (channel
//! fastest; the last group as wide as its channels rounded up to 16, zero-padded), so a
//! micro-kernel reads one sequential stream of weights. A micro-kernel covers one group
//! (`V` vectors of 16 channels) and `NP` pixels: per step of `k` it loads `V` weight vectors
//! and broadcasts `NP` input values, for `V * NP` multiply-adds into as many accumulator
//! registers (24, or 16 when `V` is 1). `k` runs in blocks sized so that a block of the
//! group's weights stays in L1 while every pixel of the tile goes past it.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::ops::Act;

use super::simd::{Epilogue, Level, level, silu_zmm};

/// Weights `[O, K]` repacked into groups of 64 channels (see the module docs).
pub(crate) struct PackedWeight {
    data: Vec<f32>,
    o: usize,
    k: usize,
}

/// Output channels per group of packed weights (four vectors).
pub(crate) const GROUP: usize = 64;

impl PackedWeight {
    /// Packs `w` (`[o, k]`, row-major).
    pub(crate) fn new(w: &[f32], o: usize, k: usize) -> Self {
        let mut data = vec![0f32; o.div_ceil(16) * 16 * k];
        for (g0, rows) in w.chunks(GROUP * k).take(o.div_ceil(GROUP)).enumerate() {
            let width = group_width(o, g0 * GROUP);
            let dst = &mut data[g0 * GROUP * k..][..width * k];
            let lanes = rows.len() / k;
            // Written in order, read across the group's rows: the reads stay within one
            // cache line per row for 16 steps, where writing in the weights' order would
            // touch a new line with every value (that cost a fifth of a 7x7 layer's time).
            for (kk, d) in dst.chunks_exact_mut(width).enumerate() {
                for (lane, v) in d[..lanes].iter_mut().enumerate() {
                    *v = rows[lane * k + kk];
                }
            }
        }
        PackedWeight { data, o, k }
    }
}

/// Width in floats of the packed group starting at channel `c0` of `o`.
fn group_width(o: usize, c0: usize) -> usize {
    (o - c0).min(GROUP).div_ceil(16) * 16
}

/// A tile's operands and destination, checked by [`gemm_tile`] before any raw access.
pub(crate) struct Tile<'a> {
    /// `rows` rows of `k` inputs, `lda` apart.
    pub(crate) a: &'a [f32],
    pub(crate) lda: usize,
    pub(crate) rows: usize,
    /// Output channels `o0..o0 + cols`: whole groups of packed weights (`o0` and, unless
    /// the tile ends at the last channel, `cols` multiples of [`GROUP`]).
    pub(crate) o0: usize,
    pub(crate) cols: usize,
    /// The residual, laid out as the output (`ldo` apart, from the tile's first pixel).
    pub(crate) res: Option<&'a [f32]>,
}

/// Pointers shared by the micro-kernels of one tile.
#[derive(Clone, Copy)]
struct Ptrs {
    a: *const f32,
    lda: usize,
    /// The group's packed weights.
    w: *const f32,
    out: *mut f32,
    ldo: usize,
    res: *const f32,
    scale: *const f32,
    shift: *const f32,
    /// Lanes of the last vector of a channel group that are real channels.
    mask: __mmask16,
}

/// Runs the tile: `out[p * ldo + o]` for `p < rows`, `o0 <= o < o0 + cols`; without `epi`,
/// the plain product (and `t.res` is ignored).
///
/// Returns `false` (having written nothing) when this CPU lacks AVX-512F, or the tile does
/// not fit its operands; the caller then takes the portable path.
///
/// # Safety
/// `out` must be valid for writes at every `p * ldo + o` of the tile, and no other thread
/// may access those elements during the call.
pub(crate) unsafe fn gemm_tile(
    t: &Tile<'_>,
    w: &PackedWeight,
    epi: Option<&Epilogue<'_>>,
    out: *mut f32,
    ldo: usize,
) -> bool {
    if level() != Level::Avx512 {
        return false;
    }
    let k = w.k;
    let fits = t.o0.is_multiple_of(GROUP)
        && (t.cols.is_multiple_of(GROUP) || t.o0 + t.cols == w.o)
        && t.o0 + t.cols <= w.o
        && t.lda >= k
        && ldo >= t.o0 + t.cols
        && epi.is_none_or(|e| e.scale.len() >= t.o0 + t.cols && e.shift.len() >= t.o0 + t.cols)
        && (t.rows == 0 || t.a.len() >= (t.rows - 1) * t.lda + k)
        && t.res
            .is_none_or(|r| t.rows == 0 || r.len() >= (t.rows - 1) * ldo + t.o0 + t.cols);
    if !fits {
        return false;
    }
    if t.rows == 0 || t.cols == 0 {
        return true;
    }
    // SAFETY: AVX-512F is present (checked above); the operands cover the tile (checked
    // above) and `out` is the caller's guarantee.
    unsafe { run_tile(t, w, epi, out, ldo) };
    true
}

/// Per-step K block for `V` vectors: `kc * 16 * V` floats of weights (24 KB) stay in L1
/// beside the inputs.
const fn k_block(v: usize) -> usize {
    384 / v
}

/// # Safety
/// As [`gemm_tile`], with its checks passed.
#[target_feature(enable = "avx512f")]
unsafe fn run_tile(
    t: &Tile<'_>,
    w: &PackedWeight,
    epi: Option<&Epilogue<'_>>,
    out: *mut f32,
    ldo: usize,
) {
    let k = w.k;
    let mut c0 = t.o0;
    while c0 < t.o0 + t.cols {
        let width = group_width(w.o, c0);
        let v = width / 16;
        let ccols = (t.o0 + t.cols - c0).min(GROUP);
        let last_lanes = ccols - (v - 1) * 16;
        let ptrs = Ptrs {
            a: t.a.as_ptr(),
            lda: t.lda,
            w: w.data.as_ptr().wrapping_add(c0 * k),
            out: out.wrapping_add(c0),
            ldo,
            res: t
                .res
                .map_or(std::ptr::null(), |r| r.as_ptr().wrapping_add(c0)),
            scale: epi.map_or(std::ptr::null(), |e| e.scale.as_ptr().wrapping_add(c0)),
            shift: epi.map_or(std::ptr::null(), |e| e.shift.as_ptr().wrapping_add(c0)),
            mask: if last_lanes == 16 {
                !0
            } else {
                (1u16 << last_lanes) - 1
            },
        };
        let act = epi.map(|e| e.act);
        // SAFETY: the group's weights, pixels and channels lie inside the checked tile.
        unsafe {
            match v {
                4 => group::<4, 6>(ptrs, t.rows, k, act),
                3 => group::<3, 8>(ptrs, t.rows, k, act),
                2 => group::<2, 12>(ptrs, t.rows, k, act),
                _ => group::<1, 16>(ptrs, t.rows, k, act),
            }
        }
        c0 += GROUP;
    }
}

/// One channel group (`V` vectors) over all the tile's pixels, K block by K block.
///
/// # Safety
/// As [`run_tile`], for this group.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn group<const V: usize, const NP: usize>(p: Ptrs, rows: usize, k: usize, act: Option<Act>) {
    let kc = k_block(V);
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + kc).min(k);
        let (first, last) = (k0 == 0, k1 == k);
        let mut r = 0;
        while r + NP <= rows {
            // The next group's inputs, requested now so that they arrive while this group
            // computes: read in place, `NP` rows a few hundred bytes each, they are too
            // short for the hardware prefetcher, and a 1x1 convolution's input usually comes
            // from memory (it is the previous layer's whole output).
            let next = (r + NP)..(r + 2 * NP).min(rows);
            for i in next {
                let row = p.a.wrapping_add(i * p.lda);
                for kk in (k0..k1).step_by(16) {
                    // A prefetch does not fault; the address is inside row `i` anyway.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(kk).cast());
                }
            }
            // SAFETY: pixels `r..r + NP` are in the tile.
            unsafe { micro::<V, NP>(p, r, k0, k1, first, last, act) };
            r += NP;
        }
        // The last few pixels, one kernel per remaining count.
        let rest = rows - r;
        macro_rules! tail {
            ($($n:literal)*) => {
                match rest {
                    0 => {}
                    // SAFETY: pixels `r..r + rest` are in the tile.
                    $($n => unsafe { micro::<V, $n>(p, r, k0, k1, first, last, act) },)*
                    _ => unreachable!("rest < NP <= 16"),
                }
            };
        }
        tail!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        k0 = k1;
    }
}

/// `NP` pixels from `r` by the group's `V` vectors, over `k0..k1`: starts from zero on the
/// first block and from the stored partial sums after it; applies the epilogue (if any) on
/// the last.
///
/// # Safety
/// As [`group`], for pixels `r..r + NP`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn micro<const V: usize, const NP: usize>(
    p: Ptrs,
    r: usize,
    k0: usize,
    k1: usize,
    first: bool,
    last: bool,
    act: Option<Act>,
) {
    // SAFETY: every raw access below is in bounds: rows `r..r + NP` of `a`, `out` and `res`,
    // steps `k0..k1 < k` of the group's weights and its channels are inside the tile checked
    // by `gemm_tile`; the last vector's loads and stores are masked to the real channels.
    // AVX-512F is this function's own target feature.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; NP];
        if !first {
            for (i, row) in acc.iter_mut().enumerate() {
                let o = p.out.add((r + i) * p.ldo);
                for (j, a) in row.iter_mut().enumerate() {
                    let m = if j + 1 == V { p.mask } else { !0 };
                    *a = _mm512_maskz_loadu_ps(m, o.add(16 * j));
                }
            }
        }
        let a = p.a.add(r * p.lda);
        for kk in k0..k1 {
            let mut wv = [_mm512_setzero_ps(); V];
            for (j, x) in wv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(p.w.add(kk * 16 * V + 16 * j));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*a.add(i * p.lda + kk));
                for (x, w) in row.iter_mut().zip(&wv) {
                    *x = _mm512_fmadd_ps(*w, b, *x);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let o = p.out.add((r + i) * p.ldo);
            for (j, &x) in row.iter().enumerate() {
                let m = if j + 1 == V { p.mask } else { !0 };
                _mm512_mask_storeu_ps(o.add(16 * j), m, x);
            }
        }
        if let (true, Some(act)) = (last, act) {
            epilogue(p, r, NP, V, act);
        }
    }
}

/// The epilogue over the sums just stored for pixels `r..r + np` (still in L1): a pass of
/// its own, because with the activation in the same loop the compiler kept the accumulators
/// in memory instead of registers.
///
/// # Safety
/// As [`micro`].
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue(p: Ptrs, r: usize, np: usize, v: usize, act: Act) {
    // SAFETY: as in `micro`: the same rows and channels, masked the same way.
    unsafe {
        for i in r..r + np {
            let o = p.out.add(i * p.ldo);
            for j in 0..v {
                let m = if j + 1 == v { p.mask } else { !0 };
                let x = _mm512_maskz_loadu_ps(m, o.add(16 * j));
                let sc = _mm512_maskz_loadu_ps(m, p.scale.add(16 * j));
                let sh = _mm512_maskz_loadu_ps(m, p.shift.add(16 * j));
                let mut y = activate(_mm512_fmadd_ps(x, sc, sh), act);
                if !p.res.is_null() {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, p.res.add(i * p.ldo + 16 * j)));
                }
                _mm512_mask_storeu_ps(o.add(16 * j), m, y);
            }
        }
    }
}

/// The activation on one vector, as `super::simd::act_one` does it lane by lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn activate(v: __m512, act: Act) -> __m512 {
    let zero = _mm512_setzero_ps();
    let six = _mm512_set1_ps(6.0);
    match act {
        Act::Identity => v,
        // SAFETY: this function's own target features include AVX-512F.
        Act::Silu => unsafe { silu_zmm(v) },
        Act::Relu => _mm512_max_ps(v, zero),
        Act::Relu6 => _mm512_min_ps(_mm512_max_ps(v, zero), six),
        Act::HardSwish => {
            let g = _mm512_min_ps(
                _mm512_max_ps(_mm512_add_ps(v, _mm512_set1_ps(3.0)), zero),
                six,
            );
            _mm512_mul_ps(v, _mm512_mul_ps(g, _mm512_set1_ps(1.0 / 6.0)))
        }
        Act::Gelu => {
            // Lane by lane (the erf is scalar): GELU networks are rare.
            let mut lanes = [0f32; 16];
            // SAFETY: `lanes` holds 16 floats; this function's target features include
            // AVX-512F.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            for x in &mut lanes {
                *x = super::simd::act_one(*x, Act::Gelu);
            }
            // SAFETY: as above.
            unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::testing::data as values;

    /// `out[p, o] = sum_k a[p, k] * w[o, k]`, in f64.
    fn product(a: &[f32], w: &[f32], rows: usize, o: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * o];
        for p in 0..rows {
            for oc in 0..o {
                let s: f64 = (0..k)
                    .map(|kk| a[p * k + kk] as f64 * w[oc * k + kk] as f64)
                    .sum();
                out[p * o + oc] = s as f32;
            }
        }
        out
    }

    #[test]
    fn plain_product_and_rejected_tiles() {
        if level() != Level::Avx512 {
            return;
        }
        // 1000 steps of K: three blocks for 4-vector groups; 150 channels: two whole groups
        // and a 22-channel (2-vector, masked) one; 23 rows: tails for every kernel height.
        let (rows, o, k) = (23, 150, 1000);
        let a = values(rows * k, 1);
        let w = values(o * k, 2);
        let pw = PackedWeight::new(&w, o, k);
        let tile = Tile {
            a: &a,
            lda: k,
            rows,
            o0: 0,
            cols: o,
            res: None,
        };
        let mut out = vec![f32::NAN; rows * o];
        // SAFETY: `out` is `rows x o`, the tile's extent, and ours alone.
        assert!(unsafe { gemm_tile(&tile, &pw, None, out.as_mut_ptr(), o) });
        let want = product(&a, &w, rows, o, k);
        let d = out
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-3, "max difference {d}");

        // Tiles that do not fit their operands are refused before anything is written.
        let mut untouched = vec![7f32; rows * o];
        let bad = [
            Tile { o0: 16, ..tile },
            Tile { cols: 70, ..tile },
            Tile {
                a: &a[..a.len() - 1],
                ..tile
            },
            Tile {
                o0: 64,
                cols: 100,
                ..tile
            },
        ];
        for t in &bad {
            // SAFETY: refused tiles write nothing; `untouched` is as large as a whole tile.
            assert!(!unsafe { gemm_tile(t, &pw, None, untouched.as_mut_ptr(), o) });
        }
        assert!(untouched.iter().all(|&v| v == 7.0));
        let scale = vec![1.0; 10];
        let epi = Epilogue {
            scale: &scale,
            shift: &scale,
            act: Act::Identity,
        };
        // An epilogue shorter than the tile's channels.
        // SAFETY: as above.
        assert!(!unsafe { gemm_tile(&tile, &pw, Some(&epi), untouched.as_mut_ptr(), o) });
    }
}
