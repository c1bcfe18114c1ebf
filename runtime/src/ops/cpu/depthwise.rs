//! The fused depthwise convolution on NHWC maps: vectorized across channels (register
//! blocks of 64, 32 and 16 channels), the epilogue fused, and optionally the per-channel
//! means of the output (the squeeze of a following squeeze-excitation) accumulated on the way.

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::ConvGeom;

use super::layout::nchw_to_nhwc;
use super::simd::{Epilogue, affine_act_channels, multiversion};
use super::tasks::OutPtr;

/// Output pixel `(b, oy, ox)` of a depthwise convolution (dilated when `g.dilation > 1`:
/// tap `(i, j)` reads `i * dilation` rows and `j * dilation` columns on) for the `W` channels
/// from `c0`
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
    let (h, w, c, k, s, d) = (g.h, g.w, g.c, g.k, g.stride, g.dilation);
    let mut acc = [0f32; W];
    for i in 0..k {
        let iy = (oy * s + i * d) as isize - g.pad.top as isize;
        if iy < 0 || iy >= h as isize {
            continue;
        }
        let row = (b * h + iy as usize) * w;
        for j in 0..k {
            let ix = (ox * s + j * d) as isize - g.pad.left as isize;
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
            let (h, w, c, k, s, d) = (g.h, g.w, g.c, g.k, g.stride, g.dilation);
            for i in 0..k {
                let iy = (oy * s + i * d) as isize - g.pad.top as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = (b * h + iy as usize) * w;
                for j in 0..k {
                    let ix = (ox * s + j * d) as isize - g.pad.left as isize;
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
            // SAFETY: as in `dw_block`: pixel `pix`, channels `c0..c0 + cw` of the output are in
            // range and written by this task only; a raw copy, as the output may be
            // uninitialized memory.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::layout::nhwc_to_nchw;
    use crate::ops::cpu::se::channel_means;
    use crate::ops::cpu::testing::{conv_ref, data, max_diff, to_nhwc};
    use crate::ops::{Act, Padding2d};

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
        // (case, dilation): dilated taps, as output_stride makes them (stride 1, padding
        // `d * (k - 1) / 2`), on every register block width, and with stride 2 and asymmetric
        // padding (no network makes those; the kernel takes them).
        let dilated = [
            ((2, 70, 9, 8, 3, 1, Padding2d::symmetric(2)), 2),
            ((1, 24, 7, 7, 5, 1, Padding2d::symmetric(8)), 4),
            ((1, 3, 5, 6, 3, 1, Padding2d::symmetric(2)), 2),
            (
                (
                    1,
                    17,
                    11,
                    10,
                    3,
                    2,
                    Padding2d {
                        top: 1,
                        bottom: 3,
                        left: 2,
                        right: 0,
                    },
                ),
                3,
            ),
        ];
        let all = cases.iter().map(|&c| (c, 1)).chain(dilated);
        for (idx, ((n, c, h, w, k, stride, pad), dilation)) in all.enumerate() {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o: c,
                k,
                stride,
                dilation,
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
}
