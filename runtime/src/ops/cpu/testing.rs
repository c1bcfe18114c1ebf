//! Helpers shared by the CPU kernels' unit tests: deterministic data and direct references.

use crate::ops::{Act, ConvGeom};

use super::layout::nchw_to_nhwc;
use super::simd::Epilogue;

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

pub(crate) fn act_ref(v: f32, a: Act) -> f32 {
    match a {
        Act::Identity => v,
        Act::Silu => v / (1.0 + (-v).exp()),
        Act::Relu => v.max(0.0),
        Act::Relu6 => v.clamp(0.0, 6.0),
        Act::HardSwish => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
        Act::Gelu => {
            let x = f64::from(v);
            (0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))) as f32
        }
    }
}

/// `erf(x)` in f64 by its Taylor series (|x| < 3) or continued fraction: a reference to
/// 1e-12 for the kernels' single-precision approximations.
pub(crate) fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let y = if a < 3.0 {
        let (mut term, mut sum, mut k) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            k += 1.0;
            term *= -a * a / k;
            sum += term / (2.0 * k + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc(a) = e^{-a^2} / sqrt(pi) * 1 / (a + 1/2 / (a + 1 / (a + 3/2 / (a + ...)))).
        let mut f = a;
        for k in (1..60).rev() {
            f = a + f64::from(k) / 2.0 / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    y.copysign(x)
}

/// Direct convolution with groups 1 or C (dilated as `g` says), then the epilogue, gate and
/// residual.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_ref(
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
                                let iy =
                                    (y * g.stride + i * g.dilation) as isize - g.pad.top as isize;
                                let ix =
                                    (xx * g.stride + j * g.dilation) as isize - g.pad.left as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
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

pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub(crate) fn to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    nchw_to_nhwc(x, n, c, h * w)
}
