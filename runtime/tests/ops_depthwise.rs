//! Depthwise convolution: the CPU custom op and the tensor-ops path against candle's grouped
//! `conv2d`, forward and backward, plus finite differences in f64. Dilated cases (what an
//! `output_stride` makes) against the same reference on the zero-inserted kernel, which is what
//! a dilated kernel is.

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use effnet_runtime::ops::{
    Padding2d, depthwise_conv2d, depthwise_conv2d_backward, depthwise_conv2d_backward_dilated,
    depthwise_conv2d_dilated, depthwise_conv2d_tensor_ops, depthwise_conv2d_tensor_ops_dilated,
};

/// Deterministic pseudo-random values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let len = dims.iter().product();
    Tensor::from_vec(data(len, seed), dims, &Device::Cpu)?.to_dtype(dtype)
}

/// `w` (`[C, 1, kh, kw]`) with `dilation - 1` zeros between its taps: `[C, 1, (kh - 1) * d + 1,
/// (kw - 1) * d + 1]`, built as `S w S^T` with 0/1 selection matrices so that autograd reaches
/// `w` through it.
fn zero_inserted(w: &Tensor, dilation: usize) -> Result<Tensor> {
    if dilation == 1 {
        return Ok(w.clone());
    }
    let (c, kh, kw) = (w.dim(0)?, w.dim(2)?, w.dim(3)?);
    let select = |k: usize| -> Result<Tensor> {
        let e = (k - 1) * dilation + 1;
        let mut m = vec![0f64; e * k];
        for i in 0..k {
            m[i * dilation * k + i] = 1.0;
        }
        Tensor::from_vec(m, (e, k), w.device())?.to_dtype(w.dtype())
    };
    let (sh, sw) = (select(kh)?, select(kw)?);
    let wk = w.reshape((c, kh, kw))?;
    let wd = sh
        .broadcast_matmul(&wk)?
        .broadcast_matmul(&sw.t()?.contiguous()?)?;
    wd.reshape((c, 1, (kh - 1) * dilation + 1, (kw - 1) * dilation + 1))
}

/// candle's grouped conv2d on an explicitly padded input, with the zero-inserted kernel when
/// dilated. The padded input is cropped to the rows/columns the strided kernel actually reads,
/// because candle's conv2d backward does not handle inputs with `(size - k) % stride != 0` (its
/// transposed convolution lacks an output padding); the cropped cells get a zero gradient
/// either way.
fn reference(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
) -> Result<Tensor> {
    let w = &zero_inserted(w, dilation)?;
    let c = x.dim(1)?;
    let (kh, kw) = (w.dim(2)?, w.dim(3)?);
    let xp = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?;
    let (hp, wp) = (xp.dim(2)?, xp.dim(3)?);
    let used_h = (hp - kh) / stride * stride + kh;
    let used_w = (wp - kw) / stride * stride + kw;
    xp.narrow(2, 0, used_h)?
        .narrow(3, 0, used_w)?
        .conv2d(w, 0, stride, 1, c)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
}

fn case(n: usize, c: usize, hw: (usize, usize), k: usize, stride: usize, pad: Padding2d) -> Case {
    Case {
        n,
        c,
        h: hw.0,
        w: hw.1,
        kh: k,
        kw: k,
        stride,
        dilation: 1,
        pad,
    }
}

/// A dilated case: `pad` is for the kernel's dilated extent.
fn dilated(c: Case, dilation: usize) -> Case {
    Case { dilation, ..c }
}

fn same(h: usize, w: usize, k: usize, s: usize) -> Padding2d {
    match Padding2d::same(h, w, k, s) {
        Ok(p) => p,
        Err(e) => panic!("same padding: {e}"),
    }
}

fn cases() -> Vec<Case> {
    let sym = Padding2d::symmetric;
    vec![
        case(1, 4, (7, 7), 3, 1, same(7, 7, 3, 1)),
        case(3, 5, (67, 67), 3, 2, same(67, 67, 3, 2)),
        case(3, 4, (28, 28), 3, 2, same(28, 28, 3, 2)), // asymmetric (0, 1)
        case(1, 3, (67, 67), 5, 1, same(67, 67, 5, 1)),
        case(2, 3, (14, 14), 5, 2, same(14, 14, 5, 2)), // asymmetric (1, 2)
        case(1, 3, (7, 9), 5, 2, same(7, 9, 5, 2)),
        case(3, 2, (7, 7), 3, 1, sym(1)),
        case(1, 2, (9, 8), 3, 2, sym(1)),
        case(2, 3, (11, 10), 5, 1, sym(2)),
        case(1, 3, (8, 8), 3, 1, Padding2d::zero()),
        case(1, 2, (6, 5), 3, 1, sym(4)), // padding larger than the kernel
        case(2, 2, (10, 9), 7, 1, same(10, 9, 7, 1)),
        case(1, 2, (13, 12), 7, 2, same(13, 12, 7, 2)),
        case(2, 3, (5, 6), 1, 1, Padding2d::zero()),
        case(1, 2, (9, 9), 3, 3, same(9, 9, 3, 3)),
        case(1, 3, (3, 2), 3, 2, same(3, 2, 3, 2)), // tiny planes
        Case {
            n: 2,
            c: 3,
            h: 9,
            w: 11,
            kh: 3,
            kw: 5,
            stride: 2,
            dilation: 1,
            pad: Padding2d {
                top: 1,
                bottom: 0,
                left: 2,
                right: 3,
            },
        },
        Case {
            n: 1,
            c: 2,
            h: 8,
            w: 7,
            kh: 2,
            kw: 4,
            stride: 1,
            dilation: 1,
            pad: Padding2d {
                top: 0,
                bottom: 1,
                left: 3,
                right: 0,
            },
        },
        // Dilated, as an output stride makes them: stride 1, padding `d * (k - 1) / 2`
        // (symmetric, and TF "same" at stride 1 is the same), on planes smaller than the
        // kernel's extent too (the 5x5 at dilation 4 spans 17 pixels of a 4x4 plane).
        dilated(case(2, 3, (9, 8), 3, 1, sym(2)), 2),
        dilated(case(1, 4, (7, 7), 5, 1, sym(4)), 2),
        dilated(case(1, 2, (4, 4), 5, 1, sym(8)), 4),
        dilated(case(2, 3, (6, 5), 3, 1, sym(8)), 8),
        dilated(case(1, 3, (11, 10), 7, 1, same(11, 10, 13, 1)), 2),
        // What no network makes but the op takes: dilation with stride 2 or 3, asymmetric,
        // unpadded, a non-square kernel.
        dilated(case(2, 3, (14, 13), 3, 2, same(14, 13, 5, 2)), 2),
        dilated(case(1, 2, (13, 12), 3, 3, same(13, 12, 7, 3)), 3),
        dilated(case(1, 3, (9, 9), 3, 1, Padding2d::zero()), 3),
        Case {
            n: 1,
            c: 2,
            h: 10,
            w: 9,
            kh: 2,
            kw: 3,
            stride: 2,
            dilation: 3,
            pad: Padding2d {
                top: 2,
                bottom: 0,
                left: 1,
                right: 4,
            },
        },
    ]
}

fn inputs(cs: &Case, dtype: DType, seed: u64) -> Result<(Tensor, Tensor)> {
    let x = tensor(&[cs.n, cs.c, cs.h, cs.w], seed, dtype)?;
    let w = tensor(&[cs.c, 1, cs.kh, cs.kw], seed + 1, dtype)?;
    Ok((x, w))
}

#[test]
fn forward_matches_grouped_conv2d() -> Result<()> {
    for (i, cs) in cases().into_iter().enumerate() {
        let (x, w) = inputs(&cs, DType::F32, i as u64)?;
        let (s, dl, p) = (cs.stride, cs.dilation, cs.pad);
        let want = reference(&x, &w, s, dl, p)?;
        let got = depthwise_conv2d_dilated(&x, &w, s, dl, p)?;
        let d = max_abs_diff(&got, &want)?;
        assert!(d < 1e-5, "{cs:?}: custom op differs by {d}");
        let got = depthwise_conv2d_tensor_ops_dilated(&x, &w, s, dl, p)?;
        let d = max_abs_diff(&got, &want)?;
        assert!(d < 1e-5, "{cs:?}: tensor-ops path differs by {d}");
    }
    Ok(())
}

#[test]
fn forward_f64_and_half_precision() -> Result<()> {
    for (i, cs) in cases().into_iter().enumerate().step_by(3) {
        let (x, w) = inputs(&cs, DType::F64, 100 + i as u64)?;
        let want = reference(&x, &w, cs.stride, cs.dilation, cs.pad)?;
        let got = depthwise_conv2d_dilated(&x, &w, cs.stride, cs.dilation, cs.pad)?;
        assert_eq!(got.dtype(), DType::F64);
        let d = max_abs_diff(&got, &want)?;
        assert!(d < 1e-12, "{cs:?}: f64 differs by {d}");
        for dt in [DType::F16, DType::BF16] {
            let (xh, wh) = (x.to_dtype(dt)?, w.to_dtype(dt)?);
            // Reference in f64 on the rounded inputs: only the output rounding differs.
            let want = reference(
                &xh.to_dtype(DType::F64)?,
                &wh.to_dtype(DType::F64)?,
                cs.stride,
                cs.dilation,
                cs.pad,
            )?;
            let got = depthwise_conv2d_dilated(&xh, &wh, cs.stride, cs.dilation, cs.pad)?;
            assert_eq!(got.dtype(), dt);
            let scale = want
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?
                .max(1.0);
            let tol = if dt == DType::F16 { 1e-3 } else { 8e-3 } * scale;
            let d = max_abs_diff(&got, &want)?;
            assert!(d <= tol, "{cs:?} {dt:?}: differs by {d} (tol {tol})");
        }
    }
    Ok(())
}

#[test]
fn non_contiguous_and_offset_inputs() -> Result<()> {
    let cs = case(2, 3, (9, 8), 3, 2, same(9, 8, 3, 2));
    let (x, w) = inputs(&cs, DType::F32, 7)?;
    let want = reference(&x, &w, cs.stride, 1, cs.pad)?;
    // A transposed-back view (non-contiguous strides) and a narrowed view (start offset).
    let xt = x.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    assert!(!xt.is_contiguous());
    let got = depthwise_conv2d(&xt, &w, cs.stride, cs.pad)?;
    assert!(max_abs_diff(&got, &want)? < 1e-5);
    let big = Tensor::cat(&[&x, &x], 0)?;
    let xs = big.narrow(0, 2, 2)?;
    let got = depthwise_conv2d(&xs, &w, cs.stride, cs.pad)?;
    assert!(max_abs_diff(&got, &want)? < 1e-5);
    Ok(())
}

#[test]
fn invalid_arguments_are_errors() -> Result<()> {
    let x = tensor(&[1, 3, 5, 5], 1, DType::F32)?;
    let w = tensor(&[3, 1, 3, 3], 2, DType::F32)?;
    let p = Padding2d::zero();
    assert!(depthwise_conv2d(&x, &w, 0, p).is_err(), "stride 0");
    assert!(
        depthwise_conv2d_dilated(&x, &w, 1, 0, p).is_err(),
        "dilation 0"
    );
    assert!(
        depthwise_conv2d_dilated(&x, &w, 1, 3, p).is_err(),
        "a 3x3 kernel at dilation 3 spans 7 pixels of a 5x5 input"
    );
    assert!(depthwise_conv2d(&x, &tensor(&[4, 1, 3, 3], 2, DType::F32)?, 1, p).is_err());
    assert!(depthwise_conv2d(&x, &tensor(&[3, 2, 3, 3], 2, DType::F32)?, 1, p).is_err());
    assert!(depthwise_conv2d(&x, &tensor(&[3, 1, 7, 7], 2, DType::F32)?, 1, p).is_err());
    assert!(
        depthwise_conv2d(&x.i(0)?, &w, 1, p).is_err(),
        "rank 3 input"
    );
    assert!(
        depthwise_conv2d(&x, &w.to_dtype(DType::F64)?, 1, p).is_err(),
        "dtype mismatch"
    );
    let xi = x.to_dtype(DType::U32)?;
    assert!(
        depthwise_conv2d(&xi, &w.to_dtype(DType::U32)?, 1, p).is_err(),
        "integer dtype"
    );
    Ok(())
}

/// Gradients of `sum(conv(x, w) * r)` via candle autograd.
fn autograd(
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let xv = Var::from_tensor(x)?;
    let wv = Var::from_tensor(w)?;
    let y = f(xv.as_tensor(), wv.as_tensor())?;
    let grads = (y * r)?.sum_all()?.backward()?;
    let gx = grads.get(xv.as_tensor()).cloned();
    let gw = grads.get(wv.as_tensor()).cloned();
    match (gx, gw) {
        (Some(gx), Some(gw)) => Ok((gx, gw)),
        _ => Err(candle_core::Error::Msg("missing gradient".into())),
    }
}

#[test]
fn backward_matches_grouped_conv2d() -> Result<()> {
    for (i, cs) in cases().into_iter().enumerate() {
        let (x, w) = inputs(&cs, DType::F32, 200 + i as u64)?;
        let (s, dl, p) = (cs.stride, cs.dilation, cs.pad);
        let y = reference(&x, &w, s, dl, p)?;
        let r = tensor(y.dims(), 300 + i as u64, DType::F32)?;
        let (gx_ref, gw_ref) = autograd(|x, w| reference(x, w, s, dl, p), &x, &w, &r)?;
        let (gx, gw) = autograd(|x, w| depthwise_conv2d_dilated(x, w, s, dl, p), &x, &w, &r)?;
        let (gx_t, gw_t) = autograd(
            |x, w| depthwise_conv2d_tensor_ops_dilated(x, w, s, dl, p),
            &x,
            &w,
            &r,
        )?;
        let (gx_d, gw_d) = depthwise_conv2d_backward_dilated(&x, &w, &r, s, dl, p)?;
        if dl == 1 {
            // The undilated entry points are the same ops.
            let (gx_1, gw_1) = depthwise_conv2d_backward(&x, &w, &r, s, p)?;
            assert_eq!(max_abs_diff(&gx_1, &gx_d)?, 0.0);
            assert_eq!(max_abs_diff(&gw_1, &gw_d)?, 0.0);
            let y1 = depthwise_conv2d_tensor_ops(&x, &w, s, p)?;
            assert!(max_abs_diff(&y1, &depthwise_conv2d(&x, &w, s, p)?)? < 1e-5);
        }
        // The weight gradient sums n * oh * ow products: scale the tolerance with that.
        let wtol = 1e-6 * (y.elem_count() / cs.c) as f64;
        for (name, a, b, tol) in [
            ("grad_x custom", &gx, &gx_ref, 1e-5),
            ("grad_x tensor-ops", &gx_t, &gx_ref, 1e-5),
            ("grad_x direct", &gx_d, &gx_ref, 1e-5),
            ("grad_w custom", &gw, &gw_ref, wtol),
            ("grad_w tensor-ops", &gw_t, &gw_ref, wtol),
            ("grad_w direct", &gw_d, &gw_ref, wtol),
        ] {
            let d = max_abs_diff(a, b)?;
            assert!(d < tol, "{cs:?}: {name} differs by {d} (tol {tol})");
        }
    }
    Ok(())
}

/// Central finite differences of `loss` with respect to every element of `t`.
fn finite_diff(t: &Tensor, loss: impl Fn(&Tensor) -> Result<f64>) -> Result<Vec<f64>> {
    let base = t.flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-6;
    let mut out = Vec::with_capacity(base.len());
    for k in 0..base.len() {
        let mut v = base.clone();
        v[k] = base[k] + eps;
        let lp = loss(&Tensor::from_vec(v.clone(), t.dims(), t.device())?)?;
        v[k] = base[k] - eps;
        let lm = loss(&Tensor::from_vec(v, t.dims(), t.device())?)?;
        out.push((lp - lm) / (2.0 * eps));
    }
    Ok(out)
}

fn assert_close(name: &str, got: &Tensor, want: &[f64], tol: f64) -> Result<()> {
    let got = got.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() < tol,
            "{name}[{k}]: autograd {a} vs finite difference {b}"
        );
    }
    Ok(())
}

#[test]
fn backward_matches_finite_differences_f64() -> Result<()> {
    let small = [
        case(2, 3, (6, 5), 3, 2, same(6, 5, 3, 2)),
        case(1, 2, (5, 6), 3, 1, same(5, 6, 3, 1)),
        case(1, 2, (7, 6), 5, 2, same(7, 6, 5, 2)),
        dilated(case(2, 2, (6, 7), 3, 1, Padding2d::symmetric(2)), 2),
        dilated(case(1, 2, (5, 5), 3, 1, Padding2d::symmetric(4)), 4),
        dilated(case(1, 2, (9, 8), 3, 2, same(9, 8, 7, 2)), 3),
    ];
    for (i, cs) in small.into_iter().enumerate() {
        let (x, w) = inputs(&cs, DType::F64, 400 + i as u64)?;
        let (s, dl, p) = (cs.stride, cs.dilation, cs.pad);
        let y = depthwise_conv2d_dilated(&x, &w, s, dl, p)?;
        let r = tensor(y.dims(), 500 + i as u64, DType::F64)?;
        let loss = |x: &Tensor, w: &Tensor| -> Result<f64> {
            (depthwise_conv2d_dilated(x, w, s, dl, p)? * &r)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let (gx, gw) = autograd(|x, w| depthwise_conv2d_dilated(x, w, s, dl, p), &x, &w, &r)?;
        assert_close("grad_x", &gx, &finite_diff(&x, |x| loss(x, &w))?, 1e-7)?;
        assert_close("grad_w", &gw, &finite_diff(&w, |w| loss(&x, w))?, 1e-7)?;
        let (gx_t, gw_t) = autograd(
            |x, w| depthwise_conv2d_tensor_ops_dilated(x, w, s, dl, p),
            &x,
            &w,
            &r,
        )?;
        assert!(
            max_abs_diff(&gx_t, &gx)? < 1e-12,
            "{cs:?}: tensor-ops grad_x"
        );
        assert!(
            max_abs_diff(&gw_t, &gw)? < 1e-12,
            "{cs:?}: tensor-ops grad_w"
        );
    }
    Ok(())
}

#[test]
fn backward_half_precision_runs() -> Result<()> {
    let cs = case(2, 3, (8, 8), 3, 2, same(8, 8, 3, 2));
    let (x, w) = inputs(&cs, DType::F32, 9)?;
    let y = depthwise_conv2d(&x, &w, cs.stride, cs.pad)?;
    let r = tensor(y.dims(), 10, DType::F32)?;
    let (gx, gw) = depthwise_conv2d_backward(&x, &w, &r, cs.stride, cs.pad)?;
    for dt in [DType::F16, DType::BF16] {
        let (gxh, gwh) = depthwise_conv2d_backward(
            &x.to_dtype(dt)?,
            &w.to_dtype(dt)?,
            &r.to_dtype(dt)?,
            cs.stride,
            cs.pad,
        )?;
        assert_eq!((gxh.dtype(), gwh.dtype()), (dt, dt));
        let tol = if dt == DType::F16 { 2e-2 } else { 1e-1 };
        assert!(max_abs_diff(&gxh, &gx)? < tol, "{dt:?} grad_x");
        assert!(max_abs_diff(&gwh, &gw)? < tol, "{dt:?} grad_w");
    }
    Ok(())
}

#[test]
fn degenerate_shapes() -> Result<()> {
    // Empty batch.
    let x = Tensor::zeros((0, 3, 5, 5), DType::F32, &Device::Cpu)?;
    let w = tensor(&[3, 1, 3, 3], 1, DType::F32)?;
    let y = depthwise_conv2d(&x, &w, 1, Padding2d::symmetric(1))?;
    assert_eq!(y.dims(), [0, 3, 5, 5]);
    // Empty spatial input whose padding still fits the kernel: all-zero output.
    let x = Tensor::zeros((1, 3, 0, 4), DType::F32, &Device::Cpu)?;
    let pad = Padding2d::symmetric(2);
    let y = depthwise_conv2d(&x, &w, 1, pad)?;
    assert_eq!(y.dims(), [1, 3, 2, 6]);
    assert_eq!(y.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    let r = tensor(y.dims(), 2, DType::F32)?;
    let (gx, gw) = depthwise_conv2d_backward(&x, &w, &r, 1, pad)?;
    assert_eq!((gx.dims(), gw.dims()), (x.dims(), w.dims()));
    assert_eq!(gw.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    // Single output pixel from a 1x1 input with stride larger than the plane.
    let x = tensor(&[2, 3, 1, 1], 3, DType::F32)?;
    let pad = Padding2d::same(1, 1, 3, 4)?;
    let want = reference(&x, &w, 4, 1, pad)?;
    let got = depthwise_conv2d(&x, &w, 4, pad)?;
    assert!(max_abs_diff(&got, &want)? < 1e-6);
    Ok(())
}
