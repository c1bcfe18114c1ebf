//! Run-time instruction-set dispatch and the element-wise math of the CPU kernels.
//!
//! Element-wise loops are compiled three times (AVX-512, AVX2+FMA, baseline) by
//! [`multiversion!`] and one is chosen once at run time ([`level`]), so the binary stays
//! portable. The activations ([`act_one`], with [`sigmoid`] on our own `exp` and reciprocal)
//! are branch-free so that those loops vectorize; SiLU also has an AVX-512 form
//! ([`silu_zmm`]). [`Epilogue`] is the per-channel `act(y * scale + shift)` that the
//! convolutions apply to their output tiles ([`epilogue_tile`]).

use std::sync::OnceLock;

use crate::ops::Act;

/// Per-output-channel `act(y * scale + shift)`: eval BatchNorm folded to an affine map.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: Act,
}

// ---------------------------------------------------------------------------------------------
// Run-time SIMD dispatch.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The best instruction set this CPU has, detected once.
#[inline]
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Defines `fn $name(args)` that runs `$body` compiled for the best instruction set the CPU
/// has. The body is an `#[inline(always)]` function, so everything it inlines is compiled
/// for that instruction set too.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3($($arg: $ty),*) { body($($arg),*) }
                use $crate::ops::cpu::simd::{Level, level};
                match level() {
                    // SAFETY: `level()` reported these features on this CPU.
                    Level::Avx512 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { v3($($arg),*) },
                    Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `with_act!(act, go)` runs the local macro `go!` with the matching [`Act`] variant as a
/// constant, so each activation gets its own loop with `act_one` folded to that case.
macro_rules! with_act {
    ($act:expr, $go:ident) => {
        match $act {
            $crate::ops::Act::Identity => $go!($crate::ops::Act::Identity),
            $crate::ops::Act::Silu => $go!($crate::ops::Act::Silu),
            $crate::ops::Act::Relu => $go!($crate::ops::Act::Relu),
            $crate::ops::Act::Relu6 => $go!($crate::ops::Act::Relu6),
            $crate::ops::Act::HardSwish => $go!($crate::ops::Act::HardSwish),
            $crate::ops::Act::Gelu => $go!($crate::ops::Act::Gelu),
        }
    };
}
pub(crate) use with_act;

// ---------------------------------------------------------------------------------------------
// Element-wise math.

/// `e^x` for `x` clamped to `[-87, 88]` (so `2^n` stays a normal float), relative error
/// about 2e-7: `2^n * p(r)` with `n = round(x / ln 2)`, `r = x - n ln 2` in two parts and a
/// degree-6 Taylor polynomial. Branch-free and without float-to-int conversions (the
/// rounding and `2^n` come from the bits of `x / ln 2 + 1.5 * 2^23`), so loops over it
/// vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer (to nearest even) in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const MAGIC_BITS: i32 = 0x4B40_0000;
    // max/min rather than clamp: a NaN input becomes -87 (finite) instead of propagating.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p: f32 = 1.0 / 720.0;
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    // n is in [-126, 127]: the biased exponent n + 127 is in [1, 254].
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `1 / d` for a positive normal `d` without a division (a vector division costs about as
/// much as everything else in the activation): a bit-trick first guess, relative error under
/// 1/8, then three Newton steps `r (2 - d r)`, which square the error each time (< 1e-7).
#[inline(always)]
fn recip(d: f32) -> f32 {
    let r = f32::from_bits(0x7EF3_11C3_u32.wrapping_sub(d.to_bits()));
    let r = r * (-d).mul_add(r, 2.0);
    let r = r * (-d).mul_add(r, 2.0);
    r * (-d).mul_add(r, 2.0)
}

/// `1 / (1 + e^-x)`. The exponent is capped at 80 so that `1 + e^-x` stays below `1e35`
/// and its reciprocal a normal float (subnormals are slow, and `recip` needs normals); below
/// `x = -80` the result is about `2e-35` instead of smaller.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    recip(1.0 + exp((-x).min(80.0)))
}

#[inline(always)]
pub(crate) fn act_one(v: f32, act: Act) -> f32 {
    match act {
        Act::Identity => v,
        Act::Silu => v * sigmoid(v),
        Act::Relu => v.max(0.0),
        Act::Relu6 => v.clamp(0.0, 6.0),
        Act::HardSwish => v * ((v + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0)),
        Act::Gelu => 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)),
    }
}

/// `erf(x)` within 2.5e-7 (std has no erf): its Taylor series to x^11 below |x| = 0.5 (where
/// the rational form's absolute error would be large relative to erf), Abramowitz and
/// Stegun 7.1.26 above (`1 - t p(t) e^{-x^2}`, `t = 1 / (1 + 0.3275911 |x|)`, 1.5e-7 before
/// rounding); odd in `x`. Scalar: GELU networks are rare enough that this costs nothing that
/// matters.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const TWO_OVER_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;
    let a = x.abs();
    let y = if a < 0.5 {
        let x2 = a * a;
        let p = -1.0f32 / 1320.0;
        let p = p.mul_add(x2, 1.0 / 216.0);
        let p = p.mul_add(x2, -1.0 / 42.0);
        let p = p.mul_add(x2, 1.0 / 10.0);
        let p = p.mul_add(x2, -1.0 / 3.0);
        let p = p.mul_add(x2, 1.0);
        p * a * TWO_OVER_SQRT_PI
    } else {
        let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
        let p = 1.061_405_4f32;
        let p = p.mul_add(t, -1.453_152_1);
        let p = p.mul_add(t, 1.421_413_8);
        let p = p.mul_add(t, -0.284_496_72);
        let p = p.mul_add(t, 0.254_829_6);
        1.0 - p * t * (-a * a).exp()
    };
    y.copysign(x)
}

/// `silu(v)` on one vector: the same clamps and polynomial as [`exp`] and [`sigmoid`], with
/// AVX-512's rounding and `scalef` for `2^n` and its 14-bit reciprocal plus one Newton step
/// (relative error about 1e-8) for the division: about 19 vector operations per 16 outputs
/// where the portable form needs about 30. A NaN stays NaN.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn silu_zmm(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const COEF: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    // e^-v, with -v clamped as `sigmoid` and `exp` do (a NaN becomes -87 here and stays NaN
    // through the final product, as in the portable form).
    let t = _mm512_min_ps(
        _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), v), _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(80.0),
    );
    let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(t, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(
        k,
        _mm512_set1_ps(-2.121_944_4e-4),
        _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_359_4), t),
    );
    let mut p = _mm512_set1_ps(COEF[0]);
    for &c in &COEF[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let d = _mm512_add_ps(_mm512_set1_ps(1.0), _mm512_scalef_ps(p, k));
    let rc = _mm512_rcp14_ps(d);
    let rc = _mm512_mul_ps(rc, _mm512_fnmadd_ps(d, rc, _mm512_set1_ps(2.0)));
    _mm512_mul_ps(v, rc)
}

/// `row[i] = silu(row[i] * scale[i] + shift[i])` for the whole 16-lane vectors of `row`
/// ([`silu_zmm`]); returns how many elements it did (a multiple of 16).
///
/// # Safety
/// The CPU must have AVX-512F; `scale` and `shift` must be at least as long as `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_affine_avx512(row: &mut [f32], scale: &[f32], shift: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = row.len() / 16 * 16;
    if scale.len() < n || shift.len() < n {
        return 0;
    }
    let (rp, sp, hp) = (row.as_mut_ptr(), scale.as_ptr(), shift.as_ptr());
    for i in (0..n).step_by(16) {
        // SAFETY: `i + 16 <= n`, within all three slices (checked above); AVX-512F is the
        // caller's guarantee.
        unsafe {
            let v = _mm512_fmadd_ps(
                _mm512_loadu_ps(rp.add(i)),
                _mm512_loadu_ps(sp.add(i)),
                _mm512_loadu_ps(hp.add(i)),
            );
            _mm512_storeu_ps(rp.add(i), silu_zmm(v));
        }
    }
    n
}

/// `row[o] = act(row[o] * scale[o] + shift[o]) (+ res[o])`: one output pixel's channels.
#[inline(always)]
pub(crate) fn affine_act_channels(
    row: &mut [f32],
    scale: &[f32],
    shift: &[f32],
    act: Act,
    res: Option<&[f32]>,
    sums: Option<&mut [f32]>,
) {
    let n = row.len();
    let (scale, shift) = (&scale[..n], &shift[..n]);
    // SiLU, the common case, has an AVX-512 form for whole vectors; the rest (and other
    // CPUs) take the portable loop.
    #[cfg(target_arch = "x86_64")]
    let done = if act == Act::Silu && level() == Level::Avx512 {
        // SAFETY: `level()` reported AVX-512F on this CPU; the slices have equal lengths.
        unsafe { silu_affine_avx512(row, scale, shift) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    macro_rules! go {
        ($a:expr) => {{
            for ((v, &sc), &sh) in row[done..]
                .iter_mut()
                .zip(&scale[done..])
                .zip(&shift[done..])
            {
                *v = act_one(v.mul_add(sc, sh), $a);
            }
            if let Some(r) = res {
                for (v, &rv) in row.iter_mut().zip(&r[..n]) {
                    *v += rv;
                }
            }
            if let Some(s) = sums {
                for (acc, &v) in s[..n].iter_mut().zip(row.iter()) {
                    *acc += v;
                }
            }
        }};
    }
    with_act!(act, go)
}

multiversion! {
    /// The epilogue over a GEMM tile: `rows` pixels of `cols` channels from channel `o0`,
    /// rows `ld` apart; `res` (same layout) is added after the activation.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn epilogue_tile(
        tile: &mut [f32],
        res: Option<&[f32]>,
        rows: usize,
        cols: usize,
        ld: usize,
        o0: usize,
        epi: &Epilogue<'_>,
    ) {
        let (scale, shift) = (&epi.scale[o0..o0 + cols], &epi.shift[o0..o0 + cols]);
        for r in 0..rows {
            let at = r * ld;
            affine_act_channels(
                &mut tile[at..at + cols],
                scale,
                shift,
                epi.act,
                res.map(|x| &x[at..at + cols]),
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.043;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            assert!(rel < 5e-7, "exp({x}): {} vs {}", exp(x), x.exp());
        }
        assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
        for i in 0..1600 {
            let d = 1.0 + (i as f32 * 0.05).exp();
            assert!(((recip(d) - 1.0 / d) * d).abs() < 2e-7, "recip({d})");
        }
        for i in -3000..3000 {
            let v = i as f32 * 0.01;
            let want = v / (1.0 + (-v).exp());
            assert!(
                (act_one(v, Act::Silu) - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({v})"
            );
        }
        assert!(act_one(-1000.0, Act::Silu).abs() < 1e-30);
        assert!((act_one(1000.0, Act::Silu) - 1000.0).abs() < 1e-3);
    }

    /// GELU's erf against an f64 reference over the whole range where it matters, and GELU
    /// and its derivative (the step's) against the f64 formulas.
    #[test]
    fn erf_and_gelu_are_accurate() {
        use crate::ops::cpu::testing::erf64;
        for i in -6000..6000 {
            let x = i as f32 * 0.001;
            let want = erf64(f64::from(x));
            assert!((f64::from(erf(x)) - want).abs() < 3e-7, "erf({x})");
            let v = x * 2.0;
            let xv = f64::from(v);
            let phi = 0.5 * (1.0 + erf64(xv / std::f64::consts::SQRT_2));
            let gelu = xv * phi;
            // Absolute far left, where GELU is under 1e-8 and erf's 1.5e-7 is all there is.
            assert!(
                (f64::from(act_one(v, Act::Gelu)) - gelu).abs() <= 1e-6 * gelu.abs().max(1.0),
                "gelu({v})"
            );
            let grad = phi + xv * (-0.5 * xv * xv).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let got = f64::from(crate::ops::cpu::backward::act_derivative(v, Act::Gelu));
            assert!((got - grad).abs() < 1e-6, "gelu'({v}): {got} vs {grad}");
        }
        assert_eq!(erf(0.0), 0.0);
        assert!((erf(10.0) - 1.0).abs() < 1e-7 && (erf(-10.0) + 1.0).abs() < 1e-7);
    }

    /// The AVX-512 SiLU epilogue against the exact SiLU (and the portable one), over a
    /// row long enough for whole vectors and a tail, with extremes and a NaN.
    #[test]
    fn silu_epilogue_matches_exact() {
        let mut x: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.01).collect();
        x.extend([-1000.0, -90.0, -87.5, 80.5, 1000.0, f32::NAN, 0.0]);
        let scale: Vec<f32> = (0..x.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let shift: Vec<f32> = (0..x.len()).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
        let mut fast = x.clone();
        affine_act_channels(&mut fast, &scale, &shift, Act::Silu, None, None);
        for (i, ((&xi, &sc), &sh)) in x.iter().zip(&scale).zip(&shift).enumerate() {
            let v = xi.mul_add(sc, sh);
            if v.is_nan() {
                assert!(fast[i].is_nan(), "silu(NaN) gave {}", fast[i]);
                continue;
            }
            let exact = (v as f64 / (1.0 + (-v as f64).exp())) as f32;
            let portable = act_one(v, Act::Silu);
            let tol = 1e-6 * exact.abs().max(1e-3);
            assert!(
                (fast[i] - exact).abs() <= tol,
                "silu({v}): {} vs {exact}",
                fast[i]
            );
            assert!(
                (fast[i] - portable).abs() <= tol,
                "silu({v}): {} vs {portable}",
                fast[i]
            );
        }
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx512 {
            let mut row = vec![1.0f32; 37];
            // SAFETY: AVX-512 is present (checked); equal lengths.
            let done = unsafe { silu_affine_avx512(&mut row, &[1.0; 37], &[0.0; 37]) };
            assert_eq!(done, 32, "whole vectors only");
            assert_eq!(row[36], 1.0, "the tail is left to the portable loop");
        }
    }
}
