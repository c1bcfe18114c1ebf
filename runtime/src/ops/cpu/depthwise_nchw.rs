//! Multi-threaded CPU loops of the depthwise convolution and its two gradients.
//!
//! Every kernel works plane by plane (one `(batch, channel)` pair, or one channel for the
//! weight gradient) in parallel with rayon.
//!
//! **Phase buffer.** A plane of the input is first copied into a per-thread scratch buffer
//! that holds the zero-*padded* plane in space-to-depth order: padded pixel `(r, c)` lives in
//! phase `(r % s, c % s)` (one `hq x wq` grid per phase, `s` the stride) at `(r / s, c / s)`.
//! The input pixel that tap `(i, j)` reads for output `(y, x)`, padded `(y*s + i*d, x*s + j*d)`
//! (`d` the dilation), is then at `(y + i*d / s, x + j*d / s)` of phase `(i*d % s, j*d % s)`:
//! for every tap, the output grid maps onto a *unit-stride* window of one phase, whatever the
//! stride and dilation.
//!
//! **Wide output.** Output `(y, x)` is computed at index `u = y * wq + x` of a "wide" row of
//! length `wide_len = (oh - 1) * wq + ow`: tap `(i, j)` reads phase element
//! `u + tap_offset(i, j)`, so a whole plane is *one* long loop over `u` with a fixed offset
//! per tap (the columns `x >= ow` of the wide row are junk and are dropped when the result is
//! compacted into the output). The loops have no bounds tests and no padding branches (the
//! padding is real zeros in the buffer), run over hundreds of elements even for 7x7 planes,
//! and the compiler vectorises them.
//!
//! Slice indexing in this file cannot go out of range: the lengths of all inputs are checked
//! at the top of each public function (`Geom::check_lens`), and [`Geom::new`] establishes
//! `(oh - 1) * s + (kh - 1) * d + 1 <= hp` (the same for the width), `hq = ceil(hp / s)`,
//! `wq = ceil(wp / s)`, from which `u + tap_offset(i, j) < s * s * hq * wq` for every
//! `u < wide_len` and tap (the largest such index is the last used padded pixel).

use std::ops::{Add, AddAssign, Mul};

use candle_core::{Result, bail};
use rayon::prelude::*;

use crate::ops::Padding2d;

/// A floating-point element the kernels compute in natively (`f16` and `bf16` are widened to
/// `f32` by the candle op's dtype dispatch, `crate::ops::candle::dtype`).
pub(crate) trait Elem:
    Copy + Send + Sync + 'static + Add<Output = Self> + Mul<Output = Self> + AddAssign
{
    const ZERO: Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
}

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
    /// The spacing of the taps: tap `(i, j)` reads `i * dilation` rows, `j * dilation`
    /// columns on.
    pub dilation: usize,
    pub pad: Padding2d,
    pub oh: usize,
    pub ow: usize,
    /// Rows per phase: `ceil((h + top + bottom) / stride)`.
    hq: usize,
    /// Columns per phase: `ceil((w + left + right) / stride)`.
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
    /// `oh = (h + top + bottom - (kh - 1) * dilation - 1) / stride + 1` (same for the width).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        dilation: usize,
        pad: Padding2d,
    ) -> Result<Self> {
        if stride == 0 || dilation == 0 {
            bail!("depthwise_conv2d: stride and dilation must be positive");
        }
        if kh == 0 || kw == 0 {
            bail!("depthwise_conv2d: empty {kh}x{kw} kernel");
        }
        // The rows and columns the dilated kernel spans.
        let ekh = checked(
            (kh - 1)
                .checked_mul(dilation)
                .and_then(|v| v.checked_add(1)),
            "dilated kernel height",
        )?;
        let ekw = checked(
            (kw - 1)
                .checked_mul(dilation)
                .and_then(|v| v.checked_add(1)),
            "dilated kernel width",
        )?;
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
        if hp < ekh || wp < ekw {
            bail!(
                "depthwise_conv2d: padded input {hp}x{wp} is smaller than the {kh}x{kw} kernel \
                 (spanning {ekh}x{ekw})"
            );
        }
        let oh = (hp - ekh) / stride + 1;
        let ow = (wp - ekw) / stride + 1;
        let (hq, wq) = (hp.div_ceil(stride), wp.div_ceil(stride));
        // Every buffer below must be addressable.
        checked(
            stride
                .checked_mul(stride)
                .and_then(|v| v.checked_mul(hq))
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
            kh.checked_mul(kw).and_then(|v| v.checked_mul(c)),
            "weight size",
        )?;
        Ok(Self {
            n,
            c,
            h,
            w,
            kh,
            kw,
            stride,
            dilation,
            pad,
            oh,
            ow,
            hq,
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
        self.hq * self.wq
    }

    fn buf_len(&self) -> usize {
        self.stride * self.stride * self.phase_len()
    }

    /// Length of the wide output row: `(oh - 1) * wq + ow`.
    fn wide_len(&self) -> usize {
        (self.oh - 1) * self.wq + self.ow
    }

    /// For every tap `(i, j)` in row-major order, the offset in the phase buffer of the
    /// pixel it reads for wide index `u = 0` (padded pixel `(i * d, j * d)`); index `u` adds
    /// `u`.
    fn tap_offsets(&self) -> Vec<usize> {
        let (s, d, pl, wq) = (self.stride, self.dilation, self.phase_len(), self.wq);
        (0..self.kh)
            .flat_map(|i| {
                (0..self.kw).map(move |j| {
                    let (r, c) = (i * d, j * d);
                    ((r % s) * s + c % s) * pl + (r / s) * wq + c / s
                })
            })
            .collect()
    }

    /// The rows the dilated kernel spans, `(kh - 1) * dilation + 1` (the columns: `ekw`).
    fn ekh(&self) -> usize {
        (self.kh - 1) * self.dilation + 1
    }

    fn ekw(&self) -> usize {
        (self.kw - 1) * self.dilation + 1
    }

    /// For each column phase `p`, the first unpadded column `c0` that lands in it and that
    /// column's index inside the phase; the following columns of the phase are
    /// `c0 + k * stride` at index `q0 + k`.
    fn phase_starts(&self) -> Vec<(usize, usize)> {
        let (s, left) = (self.stride, self.pad.left);
        (0..s)
            .map(|p| {
                let c0 = (p + s - left % s) % s;
                (c0, (c0 + left) / s)
            })
            .collect()
    }

    /// Offset in the phase buffer of (column phase 0, index 0) of unpadded input row `r`.
    #[inline]
    fn row_offset(&self, r: usize) -> usize {
        let pr = r + self.pad.top;
        (pr % self.stride) * self.stride * self.phase_len() + (pr / self.stride) * self.wq
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

    /// Copies an unpadded `h x w` plane into the phase buffer. The padding cells are never
    /// written, so they stay zero across planes. `starts` is [`Geom::phase_starts`].
    fn fill_padded<T: Elem>(&self, src: &[T], buf: &mut [T], starts: &[(usize, usize)]) {
        if self.w == 0 {
            return;
        }
        let (s, pl, wq) = (self.stride, self.phase_len(), self.wq);
        for (r, row) in src.chunks_exact(self.w).enumerate() {
            let ro = self.row_offset(r);
            if s == 1 {
                let o = ro + self.pad.left;
                copy_row(&mut buf[o..o + self.w], row);
                continue;
            }
            if s == 2 {
                let (a, b) = buf[ro..ro + pl + wq].split_at_mut(pl);
                let (even, odd) = self.split_phases2(&mut a[..wq], &mut b[..wq]);
                deinterleave2(row, even, odd);
                continue;
            }
            for (p, &(c0, q0)) in starts.iter().enumerate() {
                let dst = &mut buf[ro + p * pl + q0..ro + p * pl + wq];
                gather_every(dst, row.get(c0..).unwrap_or_default(), s);
            }
        }
    }

    /// Stride 2: given the two column phases of one padded row, the destinations of the
    /// unpadded row's even columns (`0, 2, ...`) and odd columns (`1, 3, ...`). Column `c`
    /// is padded column `c + left`, in phase `(c + left) % 2` at `(c + left) / 2`.
    fn split_phases2<'a, T>(
        &self,
        phase0: &'a mut [T],
        phase1: &'a mut [T],
    ) -> (&'a mut [T], &'a mut [T]) {
        let (q_even, q_odd) = (self.pad.left / 2, self.pad.left.div_ceil(2));
        if self.pad.left.is_multiple_of(2) {
            (&mut phase0[q_even..], &mut phase1[q_odd..])
        } else {
            (&mut phase1[q_even..], &mut phase0[q_odd..])
        }
    }

    /// The inverse of [`Geom::fill_padded`]: reads the phase buffer back into an unpadded
    /// `h x w` plane.
    fn crop_padded<T: Elem>(&self, buf: &[T], dst: &mut [T], starts: &[(usize, usize)]) {
        if self.w == 0 {
            return;
        }
        let (s, pl, wq) = (self.stride, self.phase_len(), self.wq);
        for (r, row) in dst.chunks_exact_mut(self.w).enumerate() {
            let ro = self.row_offset(r);
            if s == 1 {
                let o = ro + self.pad.left;
                copy_row(row, &buf[o..o + self.w]);
                continue;
            }
            if s == 2 {
                let (a, b) = buf[ro..ro + pl + wq].split_at(pl);
                let (q_even, q_odd) = (self.pad.left / 2, self.pad.left.div_ceil(2));
                let (even, odd) = if self.pad.left.is_multiple_of(2) {
                    (&a[q_even..wq], &b[q_odd..wq])
                } else {
                    (&b[q_even..wq], &a[q_odd..wq])
                };
                interleave2(even, odd, row);
                continue;
            }
            for (p, &(c0, q0)) in starts.iter().enumerate() {
                let src = &buf[ro + p * pl + q0..ro + p * pl + wq];
                for (d, &v) in row.iter_mut().skip(c0).step_by(s).zip(src) {
                    *d = v;
                }
            }
        }
    }

    /// Spreads an `oh x ow` plane over a wide row (stride `wq`). The junk columns are never
    /// written, so a zero-initialised `wide` keeps them zero.
    fn widen<T: Elem>(&self, plane: &[T], wide: &mut [T]) {
        for (row, dst) in plane.chunks_exact(self.ow).zip(wide.chunks_mut(self.wq)) {
            copy_row(&mut dst[..self.ow], row);
        }
    }

    /// Compacts a wide row into an `oh x ow` plane.
    fn compact<T: Elem>(&self, wide: &[T], plane: &mut [T]) {
        for (row, src) in plane.chunks_exact_mut(self.ow).zip(wide.chunks(self.wq)) {
            copy_row(row, &src[..self.ow]);
        }
    }
}

/// `dst.copy_from_slice(src)` for the short rows of a plane, without a call into `memcpy`
/// (whose fixed cost dominates a 7- or 28-element copy): fixed-size chunk copies, which the
/// compiler inlines as vector moves, with the tail covered by one overlapping chunk.
#[inline]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    if n >= 8 {
        for (d, s) in dst
            .as_chunks_mut::<8>()
            .0
            .iter_mut()
            .zip(src.as_chunks::<8>().0)
        {
            *d = *s;
        }
        copy_chunk::<T, 8>(&mut dst[n - 8..], &src[n - 8..]);
    } else if n >= 4 {
        copy_chunk::<T, 4>(&mut dst[..4], &src[..4]);
        copy_chunk::<T, 4>(&mut dst[n - 4..], &src[n - 4..]);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// Copies the first `N` elements (a fixed-size, inlined copy); shorter slices copy nothing.
#[inline(always)]
fn copy_chunk<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) {
    if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
        *d = *s;
    }
}

/// `even[k] = row[2k]`, `odd[k] = row[2k + 1]` in one pass (the compiler turns the pair
/// loads into vector shuffles).
fn deinterleave2<T: Copy>(row: &[T], even: &mut [T], odd: &mut [T]) {
    let (pairs, rest) = row.as_chunks::<2>();
    let m = pairs.len().min(even.len()).min(odd.len());
    let (whole, e, o) = (&pairs[..m], &mut even[..m], &mut odd[..m]);
    for k in 0..m {
        e[k] = whole[k][0];
        o[k] = whole[k][1];
    }
    if m == pairs.len()
        && let (Some(&v), Some(d)) = (rest.first(), even.get_mut(m))
    {
        *d = v;
    }
}

/// The inverse of [`deinterleave2`]: `row[2k] = even[k]`, `row[2k + 1] = odd[k]`.
fn interleave2<T: Copy>(even: &[T], odd: &[T], row: &mut [T]) {
    let (pairs, rest) = row.as_chunks_mut::<2>();
    let n_pairs = pairs.len();
    let m = n_pairs.min(even.len()).min(odd.len());
    let (whole, e, o) = (&mut pairs[..m], &even[..m], &odd[..m]);
    for k in 0..m {
        whole[k] = [e[k], o[k]];
    }
    if m == n_pairs
        && let (Some(d), Some(&v)) = (rest.first_mut(), even.get(m))
    {
        *d = v;
    }
}

/// `dst[k] = src[k * s]` (strides other than 1 and 2, which have their own paths) for as many `k` as both slices allow.
fn gather_every<T: Elem>(dst: &mut [T], src: &[T], s: usize) {
    fn fixed<T: Elem, const S: usize>(dst: &mut [T], src: &[T]) {
        let (chunks, rest) = (src.chunks_exact(S), src.chunks_exact(S).remainder());
        let full = chunks.len().min(dst.len());
        for (d, ch) in dst.iter_mut().zip(chunks) {
            *d = ch[0];
        }
        if let (Some(d), Some(&v)) = (dst.get_mut(full), rest.first()) {
            *d = v;
        }
    }
    match s {
        3 => fixed::<T, 3>(dst, src),
        _ => {
            for (d, &v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                *d = v;
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
    let (in_plane, taps, wide) = (g.in_plane(), g.taps(), g.wide_len());
    let (offs, starts) = (g.tap_offsets(), g.phase_starts());
    out.par_chunks_mut(out_plane)
        .with_min_len(g.min_planes(out_plane * taps))
        .enumerate()
        .for_each_init(
            || (vec![T::ZERO; g.buf_len()], vec![T::ZERO; wide]),
            |(buf, acc), (plane, o)| {
                let ch = plane % g.c;
                let src = &x[plane * in_plane..(plane + 1) * in_plane];
                g.fill_padded(src, buf, &starts);
                correlate(g, buf, &offs, &wt[ch * taps..(ch + 1) * taps], acc);
                g.compact(acc, o);
            },
        );
    Ok(out)
}

/// `acc[u] = sum over taps of w[tap] * buf[u + offs[tap]]` for the whole wide row.
fn correlate<T: Elem>(g: &Geom, buf: &[T], offs: &[usize], wk: &[T], acc: &mut [T]) {
    match (g.kh, g.kw) {
        (3, 3) => correlate_fused::<T, 9>(buf, offs, wk, acc),
        (5, 5) => correlate_grouped::<T, 5>(buf, offs, wk, acc),
        (7, 7) => correlate_grouped::<T, 7>(buf, offs, wk, acc),
        _ => correlate_grouped::<T, 1>(buf, offs, wk, acc),
    }
}

/// All `N` taps in one pass: one store and `N` loads per output.
fn correlate_fused<T: Elem, const N: usize>(buf: &[T], offs: &[usize], wk: &[T], acc: &mut [T]) {
    let n = acc.len();
    let wa: [T; N] = std::array::from_fn(|k| wk[k]);
    let src: [&[T]; N] = std::array::from_fn(|k| &buf[offs[k]..offs[k] + n]);
    for u in 0..n {
        let mut a = T::ZERO;
        for k in 0..N {
            a += wa[k] * src[k][u];
        }
        acc[u] = a;
    }
}

/// Taps in groups of `G` (one kernel row for `G = kw`), one pass per group, so only `G + 1`
/// streams are live at a time. Requires `offs.len() == wk.len()` to be a multiple of `G`.
fn correlate_grouped<T: Elem, const G: usize>(buf: &[T], offs: &[usize], wk: &[T], acc: &mut [T]) {
    let n = acc.len();
    acc.fill(T::ZERO);
    for (og, wg) in offs.chunks_exact(G).zip(wk.chunks_exact(G)) {
        let wa: [T; G] = std::array::from_fn(|k| wg[k]);
        let src: [&[T]; G] = std::array::from_fn(|k| &buf[og[k]..og[k] + n]);
        for u in 0..n {
            let mut a = acc[u];
            for k in 0..G {
                a += wa[k] * src[k][u];
            }
            acc[u] = a;
        }
    }
}

/// Gradient with respect to the input: `gy` is `[n, c, oh, ow]`, `wt` is `[c, 1, kh, kw]`,
/// result `[n, c, h, w]` (a transposed depthwise convolution).
pub(crate) fn backward_input<T: Elem>(g: &Geom, gy: &[T], wt: &[T]) -> Result<Vec<T>> {
    g.check_lens("output gradient", gy.len(), g.n * g.c * g.out_plane())?;
    g.check_lens("weight", wt.len(), g.c * g.taps())?;
    if g.n * g.c * g.in_plane() == 0 {
        return Ok(Vec::new());
    }
    let p = g.pad;
    let (ekh, ekw) = (g.ekh(), g.ekw());
    // (With `h, w >= 1` the flipped problem's padded size is `h + ekh - 1 >= ekh`, so it is
    // valid, and its output is exactly `h x w`.)
    if g.stride == 1 && p.top < ekh && p.bottom < ekh && p.left < ekw && p.right < ekw {
        // Stride 1: the transposed convolution is a plain correlation of the output gradient,
        // padded by `e - 1 - p` on each side (`e` the dilated kernel's span), with the
        // spatially flipped kernel, as dilated.
        let flipped_pad = Padding2d {
            top: ekh - 1 - p.top,
            bottom: ekh - 1 - p.bottom,
            left: ekw - 1 - p.left,
            right: ekw - 1 - p.right,
        };
        let gt = Geom::new(g.n, g.c, g.oh, g.ow, g.kh, g.kw, 1, g.dilation, flipped_pad)?;
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

/// General transposed convolution: scatter the (widened) output gradient into the phase
/// buffer, one multiply-add pass per tap, then crop the padding away.
fn backward_input_scatter<T: Elem>(g: &Geom, gy: &[T], wt: &[T]) -> Result<Vec<T>> {
    let in_plane = g.in_plane();
    let mut gx = vec![T::ZERO; g.n * g.c * in_plane];
    if gx.is_empty() {
        return Ok(gx);
    }
    let (out_plane, taps, wide) = (g.out_plane(), g.taps(), g.wide_len());
    let (offs, starts) = (g.tap_offsets(), g.phase_starts());
    gx.par_chunks_mut(in_plane)
        .with_min_len(g.min_planes(out_plane * taps))
        .enumerate()
        .for_each_init(
            // (phase buffer, widened output gradient: its junk columns stay zero)
            || (vec![T::ZERO; g.buf_len()], vec![T::ZERO; wide]),
            |(buf, gyw), (plane, dst)| {
                let ch = plane % g.c;
                g.widen(&gy[plane * out_plane..(plane + 1) * out_plane], gyw);
                buf.fill(T::ZERO);
                let n = gyw.len();
                for (&wv, &o) in wt[ch * taps..(ch + 1) * taps].iter().zip(&offs) {
                    let d = &mut buf[o..o + n];
                    for u in 0..n {
                        d[u] += wv * gyw[u];
                    }
                }
                g.crop_padded(buf, dst, &starts);
            },
        );
    Ok(gx)
}

/// `sum(a[k] * b[k])` over the common length, with eight independent partial sums so that
/// the loop vectorises without reassociating floating-point additions behind the
/// compiler's back.
fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (ac, ar) = a[..n].as_chunks::<8>();
    let (bc, br) = b[..n].as_chunks::<8>();
    let mut lanes = [T::ZERO; 8];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum = T::ZERO;
    for (x, y) in ar.iter().zip(br) {
        sum += *x * *y;
    }
    for v in lanes {
        sum += v;
    }
    sum
}

/// Gradient with respect to the weight: `x` is `[n, c, h, w]`, `gy` is `[n, c, oh, ow]`,
/// result `[c, 1, kh, kw]`.
///
/// The dot products run over the wide row, whose junk columns are zero in the widened output
/// gradient; a non-finite input pixel can therefore turn into NaN (`0 * inf`) in the gradient
/// of a tap that does not actually read it.
pub(crate) fn backward_weight<T: Elem>(g: &Geom, x: &[T], gy: &[T]) -> Result<Vec<T>> {
    g.check_lens("input", x.len(), g.n * g.c * g.in_plane())?;
    g.check_lens("output gradient", gy.len(), g.n * g.c * g.out_plane())?;
    let taps = g.taps();
    let mut gw = vec![T::ZERO; g.c * taps];
    if gw.is_empty() {
        return Ok(gw);
    }
    let (in_plane, out_plane, wide) = (g.in_plane(), g.out_plane(), g.wide_len());
    let (offs, starts) = (g.tap_offsets(), g.phase_starts());
    gw.par_chunks_mut(taps)
        .with_min_len(g.min_planes(g.n * out_plane * taps))
        .enumerate()
        .for_each_init(
            // (phase buffer, widened output gradient: its junk columns stay zero)
            || (vec![T::ZERO; g.buf_len()], vec![T::ZERO; wide]),
            |(buf, gyw), (ch, gwc)| {
                for b in 0..g.n {
                    let plane = b * g.c + ch;
                    g.fill_padded(&x[plane * in_plane..(plane + 1) * in_plane], buf, &starts);
                    g.widen(&gy[plane * out_plane..(plane + 1) * out_plane], gyw);
                    let n = gyw.len();
                    for (dst, &o) in gwc.iter_mut().zip(&offs) {
                        *dst += dot(&buf[o..o + n], gyw);
                    }
                }
            },
        );
    Ok(gw)
}
