//! Multi-threaded CPU loops of the depthwise convolution and its two gradients.
//!
//! Every kernel works plane by plane (one `(batch, channel)` pair, or one channel for the
//! weight gradient) in parallel with rayon. A plane of the input is first copied into a
//! per-thread, zero-initialised scratch buffer that holds the *padded* plane split into
//! `stride` column phases: padded column `pc` lives in phase `pc % stride` at column
//! `pc / stride`. With that layout the input pixel a kernel tap `(i, j)` reads for output
//! pixel `(oh, ow)`, padded position `(oh * s + i, ow * s + j)`, is
//! `phase[j % s][oh * s + i][ow + j / s]`: for a fixed output row and tap, consecutive outputs
//! read consecutive memory, whatever the stride. So the inner loops run over whole output rows
//! with no bounds tests and no padding branches (the padding is real zeros in the buffer),
//! and the compiler vectorises them.
//!
//! Slice indexing in this file is guarded by the length checks at the top of each public
//! function (`Geom::check_lens`) and by the geometry invariants established in [`Geom::new`]
//! (`(oh - 1) * s + kh <= hp`, `(ow - 1) * s + kw <= wp`, `ceil(wp / s) = wq`), so every
//! index below is in range by construction.

use candle_core::{Result, bail};
use rayon::prelude::*;

use super::Padding2d;
use super::elem::Elem;

/// Shape bookkeeping of one depthwise convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: Padding2d,
    pub oh: usize,
    pub ow: usize,
    /// Padded height `h + top + bottom`.
    hp: usize,
    /// Columns per phase of the padded buffer: `ceil((w + left + right) / stride)`.
    wq: usize,
}

fn checked(v: Option<usize>, what: &str) -> Result<usize> {
    match v {
        Some(v) => Ok(v),
        None => bail!("depthwise_conv2d: {what} overflows usize"),
    }
}

impl Geom {
    /// Validates the configuration and computes the output size
    /// `oh = (h + top + bottom - kh) / stride + 1` (same for the width).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        pad: Padding2d,
    ) -> Result<Self> {
        if stride == 0 {
            bail!("depthwise_conv2d: stride must be positive");
        }
        if kh == 0 || kw == 0 {
            bail!("depthwise_conv2d: empty {kh}x{kw} kernel");
        }
        let hp = checked(
            h.checked_add(pad.top)
                .and_then(|v| v.checked_add(pad.bottom)),
            "padded height",
        )?;
        let wp = checked(
            w.checked_add(pad.left)
                .and_then(|v| v.checked_add(pad.right)),
            "padded width",
        )?;
        if hp < kh || wp < kw {
            bail!("depthwise_conv2d: padded input {hp}x{wp} is smaller than the {kh}x{kw} kernel");
        }
        let oh = (hp - kh) / stride + 1;
        let ow = (wp - kw) / stride + 1;
        let wq = wp.div_ceil(stride);
        // Every buffer below must be addressable.
        checked(
            stride
                .checked_mul(hp)
                .and_then(|v| v.checked_mul(wq))
                .and_then(|v| v.checked_mul(2)),
            "padded buffer size",
        )?;
        checked(
            n.checked_mul(c)
                .and_then(|v| v.checked_mul(oh))
                .and_then(|v| v.checked_mul(ow)),
            "output size",
        )?;
        checked(
            kh.checked_mul(kw)
                .and_then(|v| v.checked_mul(ow))
                .and_then(|v| v.checked_mul(c)),
            "weight-gradient scratch size",
        )?;
        Ok(Self {
            n,
            c,
            h,
            w,
            kh,
            kw,
            stride,
            pad,
            oh,
            ow,
            hp,
            wq,
        })
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    fn phase_len(&self) -> usize {
        self.hp * self.wq
    }

    fn buf_len(&self) -> usize {
        self.stride * self.phase_len()
    }

    /// Offset in the phase buffer of the input pixel tap `(i, j)` reads for output pixel
    /// `(0, 0)`, for every tap in row-major order. Output row `oh` adds `oh * row_step()`.
    fn tap_offsets(&self) -> Vec<usize> {
        let (s, pl, wq) = (self.stride, self.phase_len(), self.wq);
        (0..self.kh)
            .flat_map(|i| (0..self.kw).map(move |j| (j % s) * pl + i * wq + j / s))
            .collect()
    }

    /// Distance in the phase buffer between the inputs of two consecutive output rows.
    fn row_step(&self) -> usize {
        self.stride * self.wq
    }

    /// For each phase `p`, the first unpadded column `c0` that lands in it and that column's
    /// index inside the phase; the following columns of the phase are `c0 + k * stride`
    /// at index `q0 + k`.
    fn phase_starts(&self) -> Vec<(usize, usize)> {
        let (s, left) = (self.stride, self.pad.left);
        (0..s)
            .map(|p| {
                let c0 = (p + s - left % s) % s;
                (c0, (c0 + left) / s)
            })
            .collect()
    }

    fn check_lens(&self, what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            bail!("depthwise_conv2d: {what} has {got} elements, expected {want}");
        }
        Ok(())
    }

    /// Number of consecutive planes one rayon task handles, so that a task does at least
    /// a few tens of thousands of multiply-adds.
    fn min_planes(&self, work_per_plane: usize) -> usize {
        (1 << 15) / work_per_plane.max(1) + 1
    }

    /// Copies an unpadded `h x w` plane into the interior of the phase buffer. The padding
    /// cells are never written, so they stay zero across planes. `starts` is
    /// [`Geom::phase_starts`].
    fn fill_padded<T: Elem>(&self, src: &[T], buf: &mut [T], starts: &[(usize, usize)]) {
        if self.w == 0 {
            return;
        }
        let (s, pl, wq) = (self.stride, self.phase_len(), self.wq);
        if s == 1 {
            // One phase; the row lands at column `left` (`w + left <= wq`).
            let left = self.pad.left;
            for (r, row) in src.chunks_exact(self.w).enumerate() {
                let o = (r + self.pad.top) * wq + left;
                buf[o..o + self.w].copy_from_slice(row);
            }
            return;
        }
        for (r, row) in src.chunks_exact(self.w).enumerate() {
            let row_off = (r + self.pad.top) * wq;
            for (p, &(c0, q0)) in starts.iter().enumerate() {
                let dst = &mut buf[p * pl + row_off + q0..p * pl + row_off + wq];
                for (d, &v) in dst.iter_mut().zip(row.iter().skip(c0).step_by(s)) {
                    *d = v;
                }
            }
        }
    }

    /// The inverse of [`Geom::fill_padded`]: reads the interior of the phase buffer back into
    /// an unpadded `h x w` plane.
    fn crop_padded<T: Elem>(&self, buf: &[T], dst: &mut [T], starts: &[(usize, usize)]) {
        if self.w == 0 {
            return;
        }
        let (s, pl, wq) = (self.stride, self.phase_len(), self.wq);
        if s == 1 {
            let left = self.pad.left;
            for (r, row) in dst.chunks_exact_mut(self.w).enumerate() {
                let o = (r + self.pad.top) * wq + left;
                row.copy_from_slice(&buf[o..o + self.w]);
            }
            return;
        }
        for (r, row) in dst.chunks_exact_mut(self.w).enumerate() {
            let row_off = (r + self.pad.top) * wq;
            for (p, &(c0, q0)) in starts.iter().enumerate() {
                let src = &buf[p * pl + row_off + q0..p * pl + row_off + wq];
                for (d, &v) in row.iter_mut().skip(c0).step_by(s).zip(src) {
                    *d = v;
                }
            }
        }
    }
}

/// Forward pass: `x` is `[n, c, h, w]`, `wt` is `[c, 1, kh, kw]`, result `[n, c, oh, ow]`.
pub(crate) fn forward<T: Elem>(g: &Geom, x: &[T], wt: &[T]) -> Result<Vec<T>> {
    g.check_lens("input", x.len(), g.n * g.c * g.in_plane())?;
    g.check_lens("weight", wt.len(), g.c * g.taps())?;
    let out_plane = g.out_plane();
    let mut out = vec![T::ZERO; g.n * g.c * out_plane];
    if out.is_empty() {
        return Ok(out);
    }
    let (in_plane, taps) = (g.in_plane(), g.taps());
    let (offs, starts) = (g.tap_offsets(), g.phase_starts());
    out.par_chunks_mut(out_plane)
        .with_min_len(g.min_planes(out_plane * taps))
        .enumerate()
        .for_each_init(
            || vec![T::ZERO; g.buf_len()],
            |buf, (plane, o)| {
                let ch = plane % g.c;
                let src = &x[plane * in_plane..(plane + 1) * in_plane];
                g.fill_padded(src, buf, &starts);
                forward_plane(g, buf, &offs, &wt[ch * taps..(ch + 1) * taps], o);
            },
        );
    Ok(out)
}

/// One output plane from its padded phase buffer; `offs` is [`Geom::tap_offsets`].
fn forward_plane<T: Elem>(g: &Geom, buf: &[T], offs: &[usize], wk: &[T], out: &mut [T]) {
    match (g.kh, g.kw) {
        (3, 3) => forward_plane_fused::<T, 3>(g, buf, offs, wk, out),
        (5, 5) => forward_plane_rows::<T, 5>(g, buf, offs, wk, out),
        (7, 7) => forward_plane_rows::<T, 7>(g, buf, offs, wk, out),
        _ => forward_plane_any(g, buf, offs, wk, out),
    }
}

/// `K x K` kernel, all taps of an output row in one pass (best for small K: one store per
/// output, `K * K` loads).
fn forward_plane_fused<T: Elem, const K: usize>(
    g: &Geom,
    buf: &[T],
    offs: &[usize],
    wk: &[T],
    out: &mut [T],
) {
    let wa: [[T; K]; K] = std::array::from_fn(|i| std::array::from_fn(|j| wk[i * K + j]));
    let oa: [[usize; K]; K] = std::array::from_fn(|i| std::array::from_fn(|j| offs[i * K + j]));
    let step = g.row_step();
    for (oh, orow) in out.chunks_exact_mut(g.ow).enumerate() {
        let n = orow.len();
        let base = oh * step;
        let src: [[&[T]; K]; K] = std::array::from_fn(|i| {
            std::array::from_fn(|j| &buf[base + oa[i][j]..base + oa[i][j] + n])
        });
        for t in 0..n {
            let mut acc = T::ZERO;
            for i in 0..K {
                for j in 0..K {
                    acc += wa[i][j] * src[i][j][t];
                }
            }
            orow[t] = acc;
        }
    }
}

/// `K x K` kernel, one pass per kernel row (keeps the number of live streams at `K + 1`).
fn forward_plane_rows<T: Elem, const K: usize>(
    g: &Geom,
    buf: &[T],
    offs: &[usize],
    wk: &[T],
    out: &mut [T],
) {
    let wa: [[T; K]; K] = std::array::from_fn(|i| std::array::from_fn(|j| wk[i * K + j]));
    let oa: [[usize; K]; K] = std::array::from_fn(|i| std::array::from_fn(|j| offs[i * K + j]));
    let step = g.row_step();
    for (oh, orow) in out.chunks_exact_mut(g.ow).enumerate() {
        let n = orow.len();
        let base = oh * step;
        for (wrow, orow_offs) in wa.iter().zip(&oa) {
            let src: [&[T]; K] =
                std::array::from_fn(|j| &buf[base + orow_offs[j]..base + orow_offs[j] + n]);
            for t in 0..n {
                let mut acc = orow[t];
                for j in 0..K {
                    acc += wrow[j] * src[j][t];
                }
                orow[t] = acc;
            }
        }
    }
}

/// Any kernel size: one multiply-add pass per tap.
fn forward_plane_any<T: Elem>(g: &Geom, buf: &[T], offs: &[usize], wk: &[T], out: &mut [T]) {
    let step = g.row_step();
    for (oh, orow) in out.chunks_exact_mut(g.ow).enumerate() {
        let n = orow.len();
        for (&wv, &o) in wk.iter().zip(offs) {
            let src = &buf[oh * step + o..oh * step + o + n];
            for t in 0..n {
                orow[t] += wv * src[t];
            }
        }
    }
}

/// Gradient with respect to the input: `gy` is `[n, c, oh, ow]`, `wt` is `[c, 1, kh, kw]`,
/// result `[n, c, h, w]` (a transposed depthwise convolution).
pub(crate) fn backward_input<T: Elem>(g: &Geom, gy: &[T], wt: &[T]) -> Result<Vec<T>> {
    g.check_lens("output gradient", gy.len(), g.n * g.c * g.out_plane())?;
    g.check_lens("weight", wt.len(), g.c * g.taps())?;
    let p = g.pad;
    if g.stride == 1 && p.top < g.kh && p.bottom < g.kh && p.left < g.kw && p.right < g.kw {
        // Stride 1: the transposed convolution is a plain correlation of the output gradient,
        // padded by `k - 1 - p` on each side, with the spatially flipped kernel.
        let flipped_pad = Padding2d {
            top: g.kh - 1 - p.top,
            bottom: g.kh - 1 - p.bottom,
            left: g.kw - 1 - p.left,
            right: g.kw - 1 - p.right,
        };
        let gt = Geom::new(g.n, g.c, g.oh, g.ow, g.kh, g.kw, 1, flipped_pad)?;
        if gt.oh != g.h || gt.ow != g.w {
            bail!(
                "depthwise_conv2d backward: internal size mismatch {}x{} vs {}x{}",
                gt.oh,
                gt.ow,
                g.h,
                g.w
            );
        }
        let taps = g.taps();
        let mut flipped = wt.to_vec();
        for (dst, src) in flipped.chunks_exact_mut(taps).zip(wt.chunks_exact(taps)) {
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
        return forward(&gt, gy, &flipped);
    }
    backward_input_scatter(g, gy, wt)
}

/// General transposed convolution: scatter every output-gradient row into the padded phase
/// buffer, then crop the padding away.
fn backward_input_scatter<T: Elem>(g: &Geom, gy: &[T], wt: &[T]) -> Result<Vec<T>> {
    let in_plane = g.in_plane();
    let mut gx = vec![T::ZERO; g.n * g.c * in_plane];
    if gx.is_empty() {
        return Ok(gx);
    }
    let (out_plane, taps, step) = (g.out_plane(), g.taps(), g.row_step());
    let (offs, starts) = (g.tap_offsets(), g.phase_starts());
    gx.par_chunks_mut(in_plane)
        .with_min_len(g.min_planes(out_plane * taps))
        .enumerate()
        .for_each_init(
            || vec![T::ZERO; g.buf_len()],
            |buf, (plane, dst)| {
                let ch = plane % g.c;
                let wk = &wt[ch * taps..(ch + 1) * taps];
                buf.fill(T::ZERO);
                let gyp = &gy[plane * out_plane..(plane + 1) * out_plane];
                for (oh, gyrow) in gyp.chunks_exact(g.ow).enumerate() {
                    let n = gyrow.len();
                    for (&wv, &o) in wk.iter().zip(&offs) {
                        let d = &mut buf[oh * step + o..oh * step + o + n];
                        for t in 0..n {
                            d[t] += wv * gyrow[t];
                        }
                    }
                }
                g.crop_padded(buf, dst, &starts);
            },
        );
    Ok(gx)
}

/// Gradient with respect to the weight: `x` is `[n, c, h, w]`, `gy` is `[n, c, oh, ow]`,
/// result `[c, 1, kh, kw]`.
pub(crate) fn backward_weight<T: Elem>(g: &Geom, x: &[T], gy: &[T]) -> Result<Vec<T>> {
    g.check_lens("input", x.len(), g.n * g.c * g.in_plane())?;
    g.check_lens("output gradient", gy.len(), g.n * g.c * g.out_plane())?;
    let taps = g.taps();
    let mut gw = vec![T::ZERO; g.c * taps];
    if gw.is_empty() {
        return Ok(gw);
    }
    let (in_plane, out_plane, ow, step) = (g.in_plane(), g.out_plane(), g.ow, g.row_step());
    let (offs, starts) = (g.tap_offsets(), g.phase_starts());
    gw.par_chunks_mut(taps)
        .with_min_len(g.min_planes(g.n * out_plane * taps))
        .enumerate()
        .for_each_init(
            // (padded phase buffer, one row of partial sums per tap)
            || (vec![T::ZERO; g.buf_len()], vec![T::ZERO; taps * ow]),
            |(buf, acc), (ch, gwc)| {
                acc.fill(T::ZERO);
                for b in 0..g.n {
                    let plane = b * g.c + ch;
                    g.fill_padded(&x[plane * in_plane..(plane + 1) * in_plane], buf, &starts);
                    let gyp = &gy[plane * out_plane..(plane + 1) * out_plane];
                    for (oh, gyrow) in gyp.chunks_exact(ow).enumerate() {
                        let n = gyrow.len();
                        for (arow, &o) in acc.chunks_exact_mut(ow).zip(&offs) {
                            let src = &buf[oh * step + o..oh * step + o + n];
                            let arow = &mut arow[..n];
                            for t in 0..n {
                                arow[t] += src[t] * gyrow[t];
                            }
                        }
                    }
                }
                for (dst, arow) in gwc.iter_mut().zip(acc.chunks_exact(ow)) {
                    let mut sum = T::ZERO;
                    for &v in arow {
                        sum += v;
                    }
                    *dst = sum;
                }
            },
        );
    Ok(gw)
}
