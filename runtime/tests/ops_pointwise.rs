//! Pointwise (1x1) convolution and squeeze-and-excitation helpers against candle's `conv2d`.

use candle_core::{DType, Result, Tensor, Var};
use effnet_runtime::ops::{
    global_avg_pool, linear, pointwise_conv2d, pointwise_conv2d_for_training, squeeze_excite,
};

mod common;
use common::{max_abs_diff, tensor};

fn reference(x: &Tensor, w4: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.conv2d(w4, 0, 1, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

#[test]
fn pointwise_matches_conv2d() -> Result<()> {
    for (i, &(n, c, o, h, w)) in [(1, 4, 6, 5, 5), (3, 8, 5, 7, 9), (2, 16, 32, 1, 1)]
        .iter()
        .enumerate()
    {
        let seed = 10 * i as u64;
        let x = tensor(&[n, c, h, w], seed)?;
        let w4 = tensor(&[o, c, 1, 1], seed + 1)?;
        let b = tensor(&[o], seed + 2)?;
        let want = reference(&x, &w4, Some(&b))?;
        assert!(max_abs_diff(&pointwise_conv2d(&x, &w4, Some(&b))?, &want)? < 1e-5);
        let w2 = w4.reshape((o, c))?;
        let want = reference(&x, &w4, None)?;
        assert!(max_abs_diff(&pointwise_conv2d(&x, &w2, None)?, &want)? < 1e-5);
    }
    Ok(())
}

#[test]
fn pointwise_gradients_match_conv2d() -> Result<()> {
    let (n, c, o, h, w) = (3, 6, 4, 5, 4);
    let x = tensor(&[n, c, h, w], 1)?;
    let w4 = tensor(&[o, c, 1, 1], 2)?;
    let b = tensor(&[o], 3)?;
    let r = tensor(&[n, o, h, w], 4)?;
    let grads = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
        let (xv, wv, bv) = (
            Var::from_tensor(&x)?,
            Var::from_tensor(&w4)?,
            Var::from_tensor(&b)?,
        );
        let g = (f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor())? * &r)?
            .sum_all()?
            .backward()?;
        [xv, wv, bv]
            .iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))
            })
            .collect()
    };
    let want = grads(&|x, w, b| reference(x, w, Some(b)))?;
    // Both formulations differentiate to the reference's gradients.
    for got in [
        grads(&|x, w, b| pointwise_conv2d(x, w, Some(b)))?,
        grads(&|x, w, b| pointwise_conv2d_for_training(x, w, Some(b)))?,
    ] {
        for (g, w) in got.iter().zip(&want) {
            assert!(max_abs_diff(g, w)? < 1e-4);
        }
    }
    // Without a bias (every EfficientNet 1x1 convolution), training on the CPU takes the
    // single-node GEMM op.
    let grads2 = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w4)?);
        let g = (f(xv.as_tensor(), wv.as_tensor())? * &r)?
            .sum_all()?
            .backward()?;
        [xv, wv]
            .iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))
            })
            .collect()
    };
    let want = grads2(&|x, w| reference(x, w, None))?;
    let got = grads2(&|x, w| pointwise_conv2d_for_training(x, w, None))?;
    for (g, w) in got.iter().zip(&want) {
        assert!(max_abs_diff(g, w)? < 1e-4);
    }
    // Values too, in train mode (a variable weight).
    let wv = Var::from_tensor(&w4)?;
    let y = pointwise_conv2d_for_training(&x, wv.as_tensor(), None)?;
    assert!(max_abs_diff(&y, &reference(&x, &w4, None)?)? < 1e-5);
    Ok(())
}

#[test]
fn squeeze_excite_matches_conv_formulation() -> Result<()> {
    let (n, c, r, h, w) = (2, 8, 2, 5, 6);
    let x = tensor(&[n, c, h, w], 5)?;
    let (w1, b1) = (tensor(&[r, c, 1, 1], 6)?, tensor(&[r], 7)?);
    let (w2, b2) = (tensor(&[c, r, 1, 1], 8)?, tensor(&[c], 9)?);
    let pooled = x.mean_keepdim((2, 3))?;
    let s = reference(&pooled, &w1, Some(&b1))?.silu()?;
    let s = reference(&s, &w2, Some(&b2))?;
    let want = x.broadcast_mul(&candle_nn::ops::sigmoid(&s)?)?;
    let got = squeeze_excite(&x, &w1, Some(&b1), &w2, Some(&b2))?;
    assert!(max_abs_diff(&got, &want)? < 1e-5);
    let gap = global_avg_pool(&x)?;
    assert_eq!(gap.dims(), [n, c]);
    assert!(max_abs_diff(&gap, &pooled.reshape((n, c))?)? < 1e-6);
    let lin = linear(&gap, &w1.reshape((r, c))?, None)?;
    assert_eq!(lin.dims(), [n, r]);
    assert!(pointwise_conv2d(&x, &tensor(&[3, c + 1], 1)?, None).is_err());
    assert!(pointwise_conv2d(&x, &w2, Some(&tensor(&[r + 1], 1)?)).is_err());
    assert_eq!(x.dtype(), DType::F32);
    Ok(())
}
