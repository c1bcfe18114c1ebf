//! Squeeze-excitation on NHWC maps: the squeeze ([`channel_means`], the per-channel means),
//! the gates ([`se_gates`]: two small GEMMs over the pooled `[N, C]` matrix, the block's
//! activation, a sigmoid) and the excitation ([`gate_channels`], in place).

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::Act;

use super::gemm::{Mat, gemm_into};
use super::simd::{act_one, multiversion, sigmoid};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::conv::conv2d;
    use crate::ops::cpu::layout::nhwc_to_nchw;
    use crate::ops::cpu::simd::Epilogue;
    use crate::ops::cpu::testing::{act_ref, conv_ref, data, max_diff, to_nhwc};
    use crate::ops::{ConvGeom, Padding2d};

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
            dilation: 1,
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
