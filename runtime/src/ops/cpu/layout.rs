//! Layout changes of f32 maps: NCHW to NHWC and back, batched transposes.

use rayon::prelude::*;

/// NCHW `[N, C, P]` to NHWC `[N, P, C]`.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    transpose_batched(x, n, c, p)
}

/// NHWC `[N, P, C]` to NCHW `[N, C, P]`.
pub fn nhwc_to_nchw(x: &[f32], n: usize, p: usize, c: usize) -> Vec<f32> {
    transpose_batched(x, n, p, c)
}

/// Transposes each of `n` row-major `r x q` matrices, in 32 x 32 blocks.
pub(crate) fn transpose_batched(x: &[f32], n: usize, r: usize, q: usize) -> Vec<f32> {
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
mod tests {
    use super::*;
    use crate::ops::cpu::testing::data;

    #[test]
    fn layout_round_trip() {
        let x = data(2 * 35 * 33, 9);
        let y = nchw_to_nhwc(&x, 2, 35, 33);
        assert_eq!(y[1], x[33]);
        assert_eq!(nhwc_to_nchw(&y, 2, 33, 35), x);
    }
}
