//! Training kernels on f32 activations in NHWC order (channels last), for the hand-written
//! training step (`crate::exec::cpu_step`): train-mode BatchNorm, and the backward passes of the
//! layers whose forward passes are the fused kernels ([`super::conv`], [`super::depthwise`],
//! [`super::se`]).
//!
//! Channels last makes every layer a sequence of whole-batch operations: a 1x1 convolution's
//! gradients are two GEMMs over all `N * H * W` pixels at once (candle's NCHW layout needs
//! one product per image, inefficient where the late maps are 2x2 or 4x4), per-channel
//! reductions and element-wise passes run along contiguous channel vectors, and a dense
//! `k x k` convolution's input gradient scatters whole contiguous `(kernel columns x C)` runs
//! back from the im2col gradient.
//!
//! Work is split over rayon's pool; reductions keep one partial per task and add the partials
//! in a fixed order, so results do not depend on the thread count's scheduling.

use std::mem::MaybeUninit;

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::{Act, ConvGeom};

use super::conv::im2col_rows;
use super::gemm::{Mat, gemm_into};
use super::layout::{nchw_to_nhwc, nhwc_to_nchw};
use super::simd::{act_one, multiversion, sigmoid, with_act};
use super::tasks::sum_partials;

/// Rows (pixels) per task for element-wise and reduction passes over `[rows, c]` data:
/// about 16 K floats, enough to amortize a task, small enough to stay in L2.
fn rows_per_task(c: usize) -> usize {
    ((1 << 14) / c.max(1)).max(1)
}

multiversion! {
    /// Per-channel sums of `(v - center)^2` (with `square`) or of `v` over one task's rows,
    /// in f32 (a task holds at most [`rows_per_task`] rows), added to `acc` in f64.
    fn channel_sums_rows(z: &[f32], c: usize, center: &[f32], square: bool, acc: &mut [f64]) {
        let mut s = vec![0f32; c];
        let center = &center[..c];
        if square {
            for row in z.chunks_exact(c) {
                for ch in 0..c {
                    let d = row[ch] - center[ch];
                    s[ch] = d.mul_add(d, s[ch]);
                }
            }
        } else {
            for row in z.chunks_exact(c) {
                for ch in 0..c {
                    s[ch] += row[ch];
                }
            }
        }
        for (a, v) in acc.iter_mut().zip(s) {
            *a += f64::from(v);
        }
    }
}

/// Per-channel mean and (biased) variance of `[rows, c]` data: two passes (mean, then squared
/// deviations from it), each summing a task's rows in f32 and the tasks' sums in f64.
pub fn channel_stats(z: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    if c == 0 || z.is_empty() {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let m = (z.len() / c) as f64;
    let chunk = rows_per_task(c) * c;
    let sum = |center: &[f32], square: bool| -> Vec<f64> {
        let parts: Vec<Vec<f64>> = z
            .par_chunks(chunk)
            .map(|part| {
                let mut acc = vec![0f64; c];
                channel_sums_rows(part, c, center, square, &mut acc);
                acc
            })
            .collect();
        sum_partials(&parts, c)
    };
    let zeros = vec![0f32; c];
    let mean: Vec<f64> = sum(&zeros, false).iter().map(|s| s / m).collect();
    let center: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    // Deviations from the f32-rounded mean: their mean square exceeds the variance by
    // (mean - center)^2, which is taken back out.
    let var = sum(&center, true)
        .iter()
        .zip(mean.iter().zip(&center))
        .map(|(s, (&mu, &cf))| (s / m - (mu - f64::from(cf)).powi(2)).max(0.0))
        .collect();
    (mean, var)
}

multiversion! {
    /// `dst = act(src * scale + shift)` per channel over whole rows of `c` values, writing
    /// every element of `dst` (same length as `src`).
    fn affine_act_rows(
        src: &[f32],
        dst: &mut [MaybeUninit<f32>],
        c: usize,
        scale: &[f32],
        shift: &[f32],
        act: Act,
    ) {
        let (scale, shift) = (&scale[..c], &shift[..c]);
        macro_rules! go {
            ($a:expr) => {{
                for (d, s) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
                    for (((d, &v), &sc), &sh) in d.iter_mut().zip(s).zip(scale).zip(shift) {
                        d.write(act_one(v.mul_add(sc, sh), $a));
                    }
                }
            }};
        }
        with_act!(act, go)
    }
}

/// `act(z * scale + shift)` per channel over `[rows, c]` data, into a new vector (written once,
/// not zeroed or copied first: this runs on every BatchNorm output of a training step).
pub fn affine_act(z: &[f32], c: usize, scale: &[f32], shift: &[f32], act: Act) -> Vec<f32> {
    if c == 0 || scale.len() != c || shift.len() != c || !z.len().is_multiple_of(c) {
        return z.to_vec();
    }
    let chunk = rows_per_task(c) * c;
    let mut out: Vec<f32> = Vec::with_capacity(z.len());
    out.spare_capacity_mut()[..z.len()]
        .par_chunks_mut(chunk)
        .zip(z.par_chunks(chunk))
        .for_each(|(d, s)| affine_act_rows(s, d, c, scale, shift, act));
    // SAFETY: the chunks above cover all `z.len()` elements of the spare capacity (both sides
    // are split at the same multiple of `c`), and `affine_act_rows` writes every one of them.
    unsafe { out.set_len(z.len()) };
    out
}

/// The derivative of `act` at `z`.
#[inline(always)]
fn act_grad(z: f32, act: Act) -> f32 {
    match act {
        Act::Identity => 1.0,
        Act::Silu => {
            let s = sigmoid(z);
            s * (1.0 + z * (1.0 - s))
        }
        Act::Relu => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Act::Relu6 => {
            if z > 0.0 && z < 6.0 {
                1.0
            } else {
                0.0
            }
        }
        Act::HardSwish => {
            if z <= -3.0 {
                0.0
            } else if z >= 3.0 {
                1.0
            } else {
                (2.0 * z + 3.0) * (1.0 / 6.0)
            }
        }
        // Phi(z) + z phi(z).
        Act::Gelu => {
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            0.5 * (1.0 + super::simd::erf(z * std::f32::consts::FRAC_1_SQRT_2))
                + z * INV_SQRT_2PI * (-0.5 * z * z).exp()
        }
    }
}

/// A train-mode BatchNorm followed by an activation, as its backward pass needs it: the batch
/// statistics of the forward pass and the affine parameters.
#[derive(Clone, Copy, Debug)]
pub struct BnAct<'a> {
    pub mean: &'a [f32],
    /// `1 / sqrt(var + eps)`.
    pub inv_std: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub act: Act,
}

multiversion! {
    /// Pass 1 over one task's rows: `d <- d * act'(xhat * gamma + beta)`, and per channel
    /// `sum d` into `acc[..c]`, `sum d * xhat` into `acc[c..]`.
    fn bn_grad_rows(d: &mut [f32], z: &[f32], c: usize, bn: &BnAct<'_>, acc: &mut [f64]) {
        let (mean, inv, gamma, beta) = (
            &bn.mean[..c],
            &bn.inv_std[..c],
            &bn.gamma[..c],
            &bn.beta[..c],
        );
        let mut db = vec![0f32; c];
        let mut dw = vec![0f32; c];
        macro_rules! go {
            ($a:expr) => {{
                for (dr, zr) in d.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
                    for ch in 0..c {
                        let xhat = (zr[ch] - mean[ch]) * inv[ch];
                        let v = dr[ch] * act_grad(xhat.mul_add(gamma[ch], beta[ch]), $a);
                        dr[ch] = v;
                        db[ch] += v;
                        dw[ch] = v.mul_add(xhat, dw[ch]);
                    }
                }
            }};
        }
        with_act!(bn.act, go);
        for ch in 0..c {
            acc[ch] += f64::from(db[ch]);
            acc[c + ch] += f64::from(dw[ch]);
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    /// Pass 2: `d <- k1 * (m * d - db - xhat * dw)` with `k1 = gamma * inv / m` per channel.
    fn bn_input_grad_rows(
        d: &mut [f32],
        z: &[f32],
        c: usize,
        mean: &[f32],
        inv: &[f32],
        k1: &[f32],
        m: f32,
        db: &[f32],
        dw: &[f32],
    ) {
        for (dr, zr) in d.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
            for ch in 0..c {
                let xhat = (zr[ch] - mean[ch]) * inv[ch];
                dr[ch] = k1[ch] * (m * dr[ch] - db[ch] - xhat * dw[ch]);
            }
        }
    }
}

/// The first half of a BatchNorm + activation backward, shared by train and eval mode: `d`
/// becomes the gradient at the activation's input (through `bn_grad_rows`), and the gradients
/// of beta and gamma are its per-channel sums (f64 partials per task of `chunk` values).
fn bn_param_grads(
    d: &mut [f32],
    z: &[f32],
    c: usize,
    bn: &BnAct<'_>,
    chunk: usize,
) -> (Vec<f32>, Vec<f32>) {
    let parts: Vec<Vec<f64>> = d
        .par_chunks_mut(chunk)
        .zip(z.par_chunks(chunk))
        .map(|(dp, zp)| {
            let mut acc = vec![0f64; 2 * c];
            bn_grad_rows(dp, zp, c, bn, &mut acc);
            acc
        })
        .collect();
    let sums = sum_partials(&parts, 2 * c);
    let db = sums[..c].iter().map(|&v| v as f32).collect();
    let dw = sums[c..].iter().map(|&v| v as f32).collect();
    (db, dw)
}

/// Backward of train-mode BatchNorm + activation over `[rows, c]` data: `d` holds the
/// gradient at the activation's output and becomes the gradient at the BatchNorm's input `z`.
/// Returns the gradients of gamma and beta.
pub fn bn_act_backward(d: &mut [f32], z: &[f32], c: usize, bn: &BnAct<'_>) -> (Vec<f32>, Vec<f32>) {
    if c == 0 || d.is_empty() || d.len() != z.len() {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let (db, dw) = bn_act_grad_sums(d, z, c, bn);
    let m = (d.len() / c) as f32;
    bn_input_grad(d, z, c, bn, m, &db, &dw);
    (dw, db)
}

/// The first half of [`bn_act_backward`], for a BatchNorm whose statistics span several
/// ranks (SyncBatchNorm): `d` becomes the gradient at the activation's input, and the
/// per-channel sums `(sum d, sum d * xhat)` over these rows come back (the gradients of beta
/// and gamma, and what the second half needs once summed over every rank).
pub fn bn_act_grad_sums(
    d: &mut [f32],
    z: &[f32],
    c: usize,
    bn: &BnAct<'_>,
) -> (Vec<f32>, Vec<f32>) {
    if c == 0 || d.is_empty() || d.len() != z.len() {
        return (vec![0.0; c], vec![0.0; c]);
    }
    bn_param_grads(d, z, c, bn, rows_per_task(c) * c)
}

/// The second half of [`bn_act_backward`]: `d` (from [`bn_act_grad_sums`]) becomes the
/// gradient at the BatchNorm's input `z`, from the sums `db = sum d` and `dw = sum d * xhat`
/// over the `m` values per channel the statistics were taken over (every rank's, under
/// SyncBatchNorm; these rows' alone otherwise).
pub fn bn_input_grad(
    d: &mut [f32],
    z: &[f32],
    c: usize,
    bn: &BnAct<'_>,
    m: f32,
    db: &[f32],
    dw: &[f32],
) {
    if c == 0 || d.is_empty() || d.len() != z.len() || db.len() != c || dw.len() != c {
        return;
    }
    let chunk = rows_per_task(c) * c;
    let k1: Vec<f32> = (0..c).map(|ch| bn.gamma[ch] * bn.inv_std[ch] / m).collect();
    d.par_chunks_mut(chunk)
        .zip(z.par_chunks(chunk))
        .for_each(|(dp, zp)| {
            bn_input_grad_rows(dp, zp, c, bn.mean, bn.inv_std, &k1, m, db, dw);
        });
}

/// Backward of eval-mode BatchNorm (fixed statistics: `bn.mean` and `bn.inv_std` are the
/// running ones) + activation: `d` becomes the gradient at `z`, `d * act' * gamma * inv_std`.
/// Returns the gradients of gamma and beta.
pub fn bn_act_backward_eval(
    d: &mut [f32],
    z: &[f32],
    c: usize,
    bn: &BnAct<'_>,
) -> (Vec<f32>, Vec<f32>) {
    if c == 0 || d.is_empty() || d.len() != z.len() {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let chunk = rows_per_task(c) * c;
    let (db, dw) = bn_param_grads(d, z, c, bn, chunk);
    // Without batch statistics the normalization is a fixed per-channel affine map.
    let k: Vec<f32> = (0..c).map(|ch| bn.gamma[ch] * bn.inv_std[ch]).collect();
    d.par_chunks_mut(chunk).for_each(|dp| {
        for row in dp.chunks_exact_mut(c) {
            for (v, &kc) in row.iter_mut().zip(&k) {
                *v *= kc;
            }
        }
    });
    (dw, db)
}

/// Per-channel sums of `[rows, c]` data (a bias gradient).
pub fn column_sums(d: &[f32], c: usize) -> Vec<f32> {
    if c == 0 {
        return Vec::new();
    }
    let parts: Vec<Vec<f32>> = d
        .par_chunks(rows_per_task(c) * c)
        .map(|p| {
            let mut acc = vec![0f32; c];
            for row in p.chunks_exact(c) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    sum_partials(&parts, c)
}

/// `A^T B` for row-major `a` (`[m, p]`) and `b` (`[m, q]`): a weight gradient, whose
/// reduction runs over all `m` pixels of the batch. The pixels are split between tasks (the
/// GEMM's own threading splits only the small output) and the partial products added.
pub(crate) fn at_b(a: &[f32], b: &[f32], m: usize, p: usize, q: usize) -> Result<Vec<f32>> {
    if a.len() != m * p || b.len() != m * q {
        bail!(
            "training gemm: operands of {} and {} elements for [{m}, {p}]^T x [{m}, {q}]",
            a.len(),
            b.len()
        );
    }
    if m == 0 || p == 0 || q == 0 {
        return Ok(vec![0.0; p * q]);
    }
    let threads = rayon::current_num_threads().max(1);
    // At least 64 pixels per task, and no more partials than a few per thread.
    let tasks = m.div_ceil(64).min(2 * threads).max(1);
    let rows = m.div_ceil(tasks);
    let parts: Vec<Vec<f32>> = (0..m.div_ceil(rows))
        .into_par_iter()
        .map(|t| -> Result<Vec<f32>> {
            let r0 = t * rows;
            let r = rows.min(m - r0);
            let mut out = vec![0f32; p * q];
            let at = Mat::row_major(&a[r0 * p..(r0 + r) * p], r, p).t();
            let bm = Mat::row_major(&b[r0 * q..(r0 + r) * q], r, q);
            // SAFETY: `out` is a `p x q` row-major buffer owned by this task.
            unsafe { gemm_into(at, bm, out.as_mut_ptr(), q, 1)? };
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(sum_partials(&parts, p * q))
}

/// `A B` for row-major `a` (`[m, p]`) and the view `b` (`p x q`): an input gradient, one
/// block of rows per task. Returns `[m, q]` row-major.
pub(crate) fn a_b(a: &[f32], m: usize, p: usize, b: Mat<'_>) -> Result<Vec<f32>> {
    let q = b.cols;
    if a.len() != m * p || b.rows != p {
        bail!(
            "training gemm: [{m}, {p}] operand has {} elements, right operand {} rows",
            a.len(),
            b.rows
        );
    }
    let mut out = vec![0f32; m * q];
    if out.is_empty() {
        return Ok(out);
    }
    let threads = rayon::current_num_threads().max(1);
    let rows = m.div_ceil(4 * threads).max(32);
    out.par_chunks_mut(rows * q)
        .enumerate()
        .try_for_each(|(t, dst)| -> Result<()> {
            let r0 = t * rows;
            let r = dst.len() / q;
            let am = Mat::row_major(&a[r0 * p..(r0 + r) * p], r, p);
            // SAFETY: `dst` is this task's own `r x q` row-major block of `out`.
            unsafe { gemm_into(am, b, dst.as_mut_ptr(), q, 1) }
        })?;
    Ok(out)
}

/// Output pixels `(oh, ow)` of `g`, with its operands checked against `x`, `w` and `dy`.
fn check_backward(
    op: &str,
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    wlen: usize,
    dy: &[f32],
) -> Result<(usize, usize)> {
    let (oh, ow) = g.out_hw()?;
    let xlen = g.n * g.h * g.w * g.c;
    let ylen = g.n * oh * ow * g.o;
    if x.len() != xlen || w.len() != wlen || dy.len() != ylen {
        bail!(
            "{op}: input {} elements, weight {}, output gradient {}; expected {xlen}, {wlen}, {ylen}",
            x.len(),
            w.len(),
            dy.len()
        );
    }
    Ok((oh, ow))
}

/// Backward of a dense convolution (groups 1) of NHWC `x` with `w` (`[O, C, k, k]`), given
/// the output gradient `dy` (NHWC `[N, OH, OW, O]`): the weight gradient (`[O, C, k, k]`) and,
/// with `need_dx`, the input gradient (NHWC).
///
/// A 1x1 stride-1 convolution is two GEMMs on the data as it lies. Other kernels go through
/// im2col a few images at a time (bounding the scratch memory): `dW += dY^T col`, and
/// `dcol = dY W` scattered back onto the input, one image per task.
pub fn conv_backward(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    dy: &[f32],
    need_dx: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    const OP: &str = "conv2d backward";
    let (n, c, o, k) = (g.n, g.c, g.o, g.k);
    let kdim = c * k * k;
    let (oh, ow) = check_backward(OP, g, x, w, o * kdim, dy)?;
    let m = n * oh * ow;
    if k == 1 && g.stride == 1 && g.pad.is_zero() {
        let dw = at_b(dy, x, m, o, c)?;
        let dx = if need_dx {
            Some(a_b(dy, m, o, Mat::row_major(w, o, c))?)
        } else {
            None
        };
        return Ok((dw, dx));
    }
    // `[O, C, k, k]` (PyTorch's layout) to `[O, k, k, C]`, the im2col column order.
    let wk = nchw_to_nhwc(w, o, c, k * k);
    let mut dwk = vec![0f32; o * kdim];
    let mut dx = need_dx.then(|| vec![0f32; x.len()]);
    let pix = oh * ow;
    if pix == 0 {
        return Ok((nhwc_to_nchw(&dwk, o, k * k, c), dx));
    }
    // Images per chunk: an im2col buffer of about 2 M floats (8 MB), at least one image.
    let per_chunk = ((1usize << 21) / (pix * kdim).max(1)).clamp(1, n.max(1));
    let mut col = Vec::new();
    let rt = rows_per_task(kdim);
    for b0 in (0..n).step_by(per_chunk) {
        let imgs = per_chunk.min(n - b0);
        let (p0, rows) = (b0 * pix, imgs * pix);
        col.resize(rows * kdim, 0.0);
        col.par_chunks_mut(rt * kdim)
            .enumerate()
            .for_each(|(t, part)| im2col_rows(x, g, oh, ow, p0 + t * rt, part.len() / kdim, part));
        let dyc = &dy[p0 * o..(p0 + rows) * o];
        let part = at_b(dyc, &col, rows, o, kdim)?;
        for (a, v) in dwk.iter_mut().zip(part) {
            *a += v;
        }
        if let Some(dx) = dx.as_mut() {
            let dcol = a_b(dyc, rows, o, Mat::row_major(&wk, o, kdim))?;
            let img = g.h * g.w * c;
            dx[b0 * img..(b0 + imgs) * img]
                .par_chunks_mut(img)
                .zip(dcol.par_chunks(pix * kdim))
                .for_each(|(dxi, dci)| col2im_image(dci, g, oh, ow, dxi));
        }
    }
    Ok((nhwc_to_nchw(&dwk, o, k * k, c), dx))
}

/// Adds one image's im2col gradient (`[OH * OW, k * k * C]`) onto its NHWC input gradient:
/// the transpose of `im2col_rows`, one contiguous run of valid kernel columns at a time
/// (undilated; dilated, one tap's `C` values at a time).
fn col2im_image(dcol: &[f32], g: &ConvGeom, oh: usize, ow: usize, dx: &mut [f32]) {
    let (h, w, c, k, s, d) = (g.h, g.w, g.c, g.k, g.stride, g.dilation);
    let (top, left) = (g.pad.top as isize, g.pad.left as isize);
    let kdim = k * k * c;
    for (r, src) in dcol.chunks_exact(kdim).enumerate().take(oh * ow) {
        let (oy, ox) = (r / ow, r % ow);
        let ix0 = (ox * s) as isize - left;
        if d != 1 {
            for i in 0..k {
                let iy = (oy * s + i * d) as isize - top;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for j in 0..k {
                    let ix = ix0 + (j * d) as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let at = (iy as usize * w + ix as usize) * c;
                    let from = (i * k + j) * c;
                    for (dv, &v) in dx[at..at + c].iter_mut().zip(&src[from..from + c]) {
                        *dv += v;
                    }
                }
            }
            continue;
        }
        let jlo = (-ix0).clamp(0, k as isize) as usize;
        let jhi = (w as isize - ix0).clamp(jlo as isize, k as isize) as usize;
        if jhi == jlo {
            continue;
        }
        for i in 0..k {
            let iy = (oy * s + i) as isize - top;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let at = ((iy as usize * w) as isize + ix0 + jlo as isize) as usize * c;
            let len = (jhi - jlo) * c;
            let from = (i * k + jlo) * c;
            for (d, &v) in dx[at..at + len].iter_mut().zip(&src[from..from + len]) {
                *d += v;
            }
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    /// One image of the depthwise backward: adds its input gradient into `dx` (`[H, W, C]`)
    /// and its weight gradient into `dwt` (taps-major `[k * k, C]`).
    fn depthwise_backward_image(
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
        g: &ConvGeom,
        oh: usize,
        ow: usize,
        dx: &mut [f32],
        dwt: &mut [f32],
    ) {
        let (h, w, c, k, s, d) = (g.h, g.w, g.c, g.k, g.stride, g.dilation);
        let (top, left) = (g.pad.top as isize, g.pad.left as isize);
        for oy in 0..oh {
            for ox in 0..ow {
                let gy = &dy[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                for i in 0..k {
                    let iy = (oy * s + i * d) as isize - top;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for j in 0..k {
                        let ix = (ox * s + j * d) as isize - left;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let at = (iy as usize * w + ix as usize) * c;
                        let t = (i * k + j) * c;
                        let xs = &x[at..at + c];
                        let ws = &wt[t..t + c];
                        let dxs = &mut dx[at..at + c];
                        for ch in 0..c {
                            dxs[ch] = gy[ch].mul_add(ws[ch], dxs[ch]);
                        }
                        let dws = &mut dwt[t..t + c];
                        for ch in 0..c {
                            dws[ch] = gy[ch].mul_add(xs[ch], dws[ch]);
                        }
                    }
                }
            }
        }
    }
}

/// Backward of a depthwise convolution of NHWC `x` with `w` (`[C, 1, k, k]`), given the output
/// gradient `dy` (NHWC): the weight gradient (`[C, 1, k, k]`) and the input gradient (NHWC),
/// one image per task (each task owns its image's input gradient and a partial weight
/// gradient).
pub fn depthwise_backward(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    dy: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    const OP: &str = "depthwise backward";
    let (n, c, k) = (g.n, g.c, g.k);
    if g.o != c {
        bail!("{OP}: {c} input channels but {} output channels", g.o);
    }
    let (oh, ow) = check_backward(OP, g, x, w, c * k * k, dy)?;
    let taps = k * k;
    let wt = nchw_to_nhwc(w, 1, c, taps);
    let mut dx = vec![0f32; x.len()];
    let img = g.h * g.w * c;
    let oimg = oh * ow * c;
    if n == 0 || img == 0 || oimg == 0 {
        return Ok((vec![0.0; c * taps], dx));
    }
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(img)
        .enumerate()
        .map(|(b, dxi)| {
            let mut dwt = vec![0f32; taps * c];
            depthwise_backward_image(
                &x[b * img..(b + 1) * img],
                &wt,
                &dy[b * oimg..(b + 1) * oimg],
                g,
                oh,
                ow,
                dxi,
                &mut dwt,
            );
            dwt
        })
        .collect();
    let dwt = sum_partials(&parts, taps * c);
    Ok((nhwc_to_nchw(&dwt, 1, taps, c), dx))
}

/// `act` applied to one value (for the small squeeze-excitation layers).
pub fn act_value(v: f32, act: Act) -> f32 {
    act_one(v, act)
}

/// The derivative of `act` at `z` (for the small squeeze-excitation layers).
pub fn act_derivative(z: f32, act: Act) -> f32 {
    act_grad(z, act)
}
