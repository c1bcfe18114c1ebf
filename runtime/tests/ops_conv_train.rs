//! The dense training convolution (`conv2d_train`: im2col + GEMM forward, GEMM + col2im
//! backward) against candle's `conv2d` and its autograd: values and both gradients, for the
//! paddings EfficientNets use (symmetric, and TensorFlow's asymmetric "same" on stride 2), and
//! dilated (`conv2d_train_dilated`, past an output stride) against candle's undilated `conv2d`
//! with the zero-inserted kernel.

use candle_core::{Result, Tensor, Var};
use effnet_runtime::ops::{Padding2d, conv2d_train, conv2d_train_dilated};

mod common;
use common::{max_abs_diff, tensor};

/// The output and the gradients of `sum(f(x, w) * r)` with respect to `x` and `w`.
fn run(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    r_seed: u64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (xv, wv) = (Var::from_tensor(x)?, Var::from_tensor(w)?);
    let y = f(xv.as_tensor(), wv.as_tensor())?;
    let r = tensor(y.dims(), r_seed)?;
    let g = (&y * &r)?.sum_all()?.backward()?;
    let get = |v: &Var| {
        g.get(v.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))
    };
    Ok((y, get(&xv)?, get(&wv)?))
}

/// `w` (`[O, C, k, k]`) with `d - 1` zeros between its taps, as `S w S^T` so that autograd
/// reaches `w` through it.
fn zero_inserted(w: &Tensor, d: usize) -> Result<Tensor> {
    let (o, c, k) = (w.dim(0)?, w.dim(1)?, w.dim(2)?);
    let e = (k - 1) * d + 1;
    let mut m = vec![0f32; e * k];
    for i in 0..k {
        m[i * d * k + i] = 1.0;
    }
    let sel = Tensor::from_vec(m, (e, k), w.device())?;
    let wk = w.reshape((o * c, k, k))?;
    sel.broadcast_matmul(&wk)?
        .broadcast_matmul(&sel.t()?.contiguous()?)?
        .reshape((o, c, e, e))
}

#[test]
fn conv2d_train_matches_candle_values_and_gradients() -> Result<()> {
    let cases = [
        // (n, c, o, h, w, k, stride, padding)
        (2, 3, 8, 9, 9, 3, 1, Padding2d::symmetric(1)),
        (3, 4, 5, 8, 8, 3, 2, Padding2d::symmetric(1)),
        // TensorFlow "same" on stride 2 over an even input: the extra row and column after.
        (
            2,
            4,
            6,
            8,
            10,
            3,
            2,
            Padding2d {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1,
            },
        ),
        // Odd input, 5x5 kernel, asymmetric columns. (candle's own conv2d backward, the
        // reference, gets non-square cases wrong where the stride drops a column: it sizes the
        // input gradient from the height alone, so the cases keep to where it is right.)
        (
            2,
            3,
            4,
            7,
            7,
            5,
            2,
            Padding2d {
                top: 2,
                bottom: 2,
                left: 1,
                right: 3,
            },
        ),
        (1, 2, 3, 5, 6, 3, 1, Padding2d::symmetric(0)),
    ];
    // Dilated (the fused, edge and conv blocks past an output stride): stride 1 with padding
    // `d * (k - 1) / 2`, a map smaller than the kernel's extent, and stride 2.
    let dilated = [
        ((2, 3, 8, 9, 9, 3, 1, Padding2d::symmetric(2)), 2),
        ((1, 4, 5, 4, 4, 3, 1, Padding2d::symmetric(4)), 4),
        ((2, 2, 3, 9, 9, 5, 1, Padding2d::symmetric(4)), 2),
        ((1, 3, 4, 11, 11, 3, 2, Padding2d::symmetric(2)), 2),
    ];
    let all = cases.iter().map(|&c| (c, 1)).chain(dilated);
    for (i, ((n, c, o, h, w, k, stride, pad), d)) in all.enumerate() {
        let seed = 10 * i as u64;
        let x = tensor(&[n, c, h, w], seed + 1)?;
        let wt = tensor(&[o, c, k, k], seed + 2)?;
        // The reference differentiates with respect to the padded input (candle's padding
        // is kept out of the autograd graph); the interior of that gradient is x's.
        let xp = x
            .pad_with_zeros(2, pad.top, pad.bottom)?
            .pad_with_zeros(3, pad.left, pad.right)?;
        let (y0, gxp, gw0) = run(
            &|x, w| x.conv2d(&zero_inserted(w, d)?, 0, stride, 1, 1),
            &xp,
            &wt,
            seed + 3,
        )?;
        let gx0 = gxp.narrow(2, pad.top, h)?.narrow(3, pad.left, w)?;
        let (y1, gx1, gw1) = if d == 1 {
            run(&|x, w| conv2d_train(x, w, stride, pad), &x, &wt, seed + 3)?
        } else {
            run(
                &|x, w| conv2d_train_dilated(x, w, stride, d, pad),
                &x,
                &wt,
                seed + 3,
            )?
        };
        assert!(max_abs_diff(&y0, &y1)? < 1e-5, "case {i}: values");
        assert!(max_abs_diff(&gx0, &gx1)? < 1e-4, "case {i}: input gradient");
        assert!(
            max_abs_diff(&gw0, &gw1)? < 1e-4,
            "case {i}: weight gradient"
        );
    }
    Ok(())
}

#[test]
fn conv2d_train_rejects_bad_shapes() -> Result<()> {
    let x = tensor(&[1, 3, 2, 2], 1)?;
    let w = tensor(&[4, 3, 5, 5], 2)?;
    let err = conv2d_train(&x, &w, 1, Padding2d::symmetric(0)).expect_err("too small");
    assert!(err.to_string().contains("does not fit"), "{err}");
    let w = tensor(&[4, 2, 3, 3], 2)?;
    let err = conv2d_train(&x, &w, 1, Padding2d::symmetric(1)).expect_err("channels");
    assert!(err.to_string().contains("expected"), "{err}");
    Ok(())
}
