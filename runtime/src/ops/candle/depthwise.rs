//! Depthwise 2-D convolution: `groups == channels`, one `kh x kw` filter per channel, no bias.
//!
//! * On the CPU, [`depthwise_conv2d`] applies the custom op [`DepthwiseConv2d`]
//!   (`CustomOp2` on `(input NCHW, weight [C, 1, kh, kw])`), whose multi-threaded direct loops
//!   live in `ops::cpu::depthwise_nchw`. Its backward pass is two further custom ops (input
//!   gradient, a transposed depthwise convolution, and weight gradient), which in turn have
//!   backward passes expressed with the same three ops, so candle's autograd works to any
//!   order.
//! * On any other device it uses [`depthwise_conv2d_tensor_ops`], built from zero padding,
//!   strided views and broadcast multiply-adds: `kh * kw` element-wise kernels instead of
//!   the one-convolution-per-channel loop of candle's grouped `conv2d`.
//!
//! dtypes: `f32` and `f64` are computed natively; `f16` and `bf16` are widened to `f32`,
//! computed (and accumulated) in `f32` and rounded back once. Other dtypes are an error.
//! The tensor-ops path supports whatever candle's element-wise ops support on that device.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, Var, bail};

use crate::ops::Padding2d;
use crate::ops::cpu::depthwise_nchw::{self as kernels, Elem, Geom};

use super::dtype::{Kernel2, dispatch2};

/// Depthwise convolution of `x` (`[N, C, H, W]`) with `w` (`[C, 1, kh, kw]`): every channel
/// is correlated with its own filter, `stride` applies to both spatial dimensions and `pad`
/// adds explicit zero rows/columns on each side first. The output is `[N, C, OH, OW]` with
/// `OH = (H + top + bottom - kh) / stride + 1` (same for the width).
///
/// On the CPU this is a multi-threaded custom op with a backward pass (gradients for both `x`
/// and `w`); elsewhere it is composed from candle tensor ops (see
/// [`depthwise_conv2d_tensor_ops`]). `x` and `w` must have the same dtype and device.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
    depthwise_conv2d_dilated(x, w, stride, 1, pad)
}

/// [`depthwise_conv2d`] with the taps `dilation` pixels apart (timm's `dilation`, which an
/// `output_stride` below the network's strides brings): tap `(i, j)` of output `(y, x)` reads
/// padded input `(y * stride + i * dilation, x * stride + j * dilation)`, and
/// `OH = (H + top + bottom - (kh - 1) * dilation - 1) / stride + 1`.
pub fn depthwise_conv2d_dilated(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
) -> Result<Tensor> {
    geometry(x, w, stride, dilation, pad)?;
    if x.device().is_cpu() {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        x.apply_op2(
            &w,
            DepthwiseConv2d {
                stride,
                dilation,
                pad,
            },
        )
    } else {
        depthwise_conv2d_tensor_ops_dilated(x, w, stride, dilation, pad)
    }
}

/// Gradients of `sum(depthwise_conv2d(x, w, stride, pad) * grad_out)` with respect to `x` and
/// `w`, computed directly (without building an autograd graph) by the CPU custom ops, or by
/// autograd through [`depthwise_conv2d_tensor_ops`] on other devices.
/// Returns `(grad_x, grad_w)` shaped like `x` and `w`.
pub fn depthwise_conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    grad_out: &Tensor,
    stride: usize,
    pad: Padding2d,
) -> Result<(Tensor, Tensor)> {
    depthwise_conv2d_backward_dilated(x, w, grad_out, stride, 1, pad)
}

/// [`depthwise_conv2d_backward`] of [`depthwise_conv2d_dilated`].
pub fn depthwise_conv2d_backward_dilated(
    x: &Tensor,
    w: &Tensor,
    grad_out: &Tensor,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
) -> Result<(Tensor, Tensor)> {
    let g = geometry(x, w, stride, dilation, pad)?;
    let expected = [g.n, g.c, g.oh, g.ow];
    if grad_out.dims() != expected {
        bail!(
            "depthwise_conv2d_backward: grad_out has shape {:?}, expected {expected:?}",
            grad_out.dims()
        );
    }
    if x.device().is_cpu() {
        let (x, w, gy) = (x.contiguous()?, w.contiguous()?, grad_out.contiguous()?);
        let gx = gy.apply_op2(&w, input_grad_op(&g))?;
        let gw = x.apply_op2(&gy, weight_grad_op(&g))?;
        Ok((gx, gw))
    } else {
        let xv = Var::from_tensor(&x.detach())?;
        let wv = Var::from_tensor(&w.detach())?;
        let y = depthwise_conv2d_tensor_ops_dilated(
            xv.as_tensor(),
            wv.as_tensor(),
            stride,
            dilation,
            pad,
        )?;
        let grads = (y * grad_out.detach())?.sum_all()?.backward()?;
        let (Some(gx), Some(gw)) = (grads.get(xv.as_tensor()), grads.get(wv.as_tensor())) else {
            bail!("depthwise_conv2d_backward: autograd produced no gradient");
        };
        Ok((gx.clone(), gw.clone()))
    }
}

/// Device-generic depthwise convolution from candle tensor ops, used on non-CPU devices.
///
/// The input is zero padded (and, for `stride > 1`, split into `stride x stride` phases
/// with a reshape so that strided sampling becomes plain slicing); the output is the sum over
/// the `kh * kw` taps of the shifted view times that tap's per-channel weight broadcast over
/// `[1, C, 1, 1]`. Autograd works through it like any composition of candle ops.
pub fn depthwise_conv2d_tensor_ops(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: Padding2d,
) -> Result<Tensor> {
    depthwise_conv2d_tensor_ops_dilated(x, w, stride, 1, pad)
}

/// [`depthwise_conv2d_tensor_ops`] with the taps `dilation` pixels apart: tap `(i, j)` reads
/// the view of its phase at `(i * dilation / stride, j * dilation / stride)`.
pub fn depthwise_conv2d_tensor_ops_dilated(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
) -> Result<Tensor> {
    let g = geometry(x, w, stride, dilation, pad)?;
    let (s, d) = (g.stride, g.dilation);
    // Rows/columns of each phase: enough to cover the padded input and every tap's view.
    let hq = (g.h + pad.top + pad.bottom)
        .div_ceil(s)
        .max(g.oh + (g.kh - 1) * d / s);
    let wq = (g.w + pad.left + pad.right)
        .div_ceil(s)
        .max(g.ow + (g.kw - 1) * d / s);
    // `hq * s >= h + top + bottom >= h + top`, so these never underflow.
    let xp = x
        .pad_with_zeros(2, pad.top, hq * s - g.h - pad.top)?
        .pad_with_zeros(3, pad.left, wq * s - g.w - pad.left)?;
    // phases[a * s + b] = xp[:, :, a::s, b::s], each [N, C, hq, wq].
    let phases: Vec<Tensor> = if s == 1 {
        vec![xp]
    } else {
        let x6 = xp.reshape((g.n, g.c, hq, s, wq, s))?;
        let mut v = Vec::with_capacity(s * s);
        for a in 0..s {
            for b in 0..s {
                v.push(
                    x6.narrow(3, a, 1)?
                        .narrow(5, b, 1)?
                        .squeeze(5)?
                        .squeeze(3)?,
                );
            }
        }
        v
    };
    let wf = w.reshape((g.c, g.kh * g.kw))?;
    let mut acc: Option<Tensor> = None;
    for i in 0..g.kh {
        for j in 0..g.kw {
            let (r, c) = (i * d, j * d);
            let phase = &phases[(r % s) * s + (c % s)];
            let view = phase.narrow(2, r / s, g.oh)?.narrow(3, c / s, g.ow)?;
            let wt = wf.narrow(1, i * g.kw + j, 1)?.reshape((1, g.c, 1, 1))?;
            let term = view.broadcast_mul(&wt)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    match acc {
        Some(a) => Ok(a),
        // `Geom::new` rejects empty kernels, so there is at least one tap.
        None => bail!("depthwise_conv2d: empty kernel"),
    }
}

/// Validates shapes, dtypes and devices and returns the geometry.
fn geometry(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    dilation: usize,
    pad: Padding2d,
) -> Result<Geom> {
    let (n, c, h, wd) = match x.dims() {
        &[n, c, h, w] => (n, c, h, w),
        d => bail!("depthwise_conv2d: input must be [N, C, H, W], got {d:?}"),
    };
    let (kh, kw) = match w.dims() {
        &[wc, 1, kh, kw] if wc == c => (kh, kw),
        d => bail!("depthwise_conv2d: weight must be [{c}, 1, kh, kw] for {c} channels, got {d:?}"),
    };
    if x.dtype() != w.dtype() {
        bail!(
            "depthwise_conv2d: input dtype {:?} differs from weight dtype {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    if !x.device().same_device(w.device()) {
        bail!("depthwise_conv2d: input and weight are on different devices");
    }
    Geom::new(n, c, h, wd, kh, kw, stride, dilation, pad)
}

fn dims4(op: &str, what: &str, l: &Layout) -> Result<[usize; 4]> {
    match l.dims() {
        &[a, b, c, d] => Ok([a, b, c, d]),
        d => bail!("{op}: {what} must have rank 4, got {d:?}"),
    }
}

fn check_dims(op: &str, what: &str, got: [usize; 4], want: [usize; 4]) -> Result<()> {
    if got != want {
        bail!("{op}: {what} has shape {got:?}, expected {want:?}");
    }
    Ok(())
}

/// Forward custom op: `(x [N, C, H, W], w [C, 1, kh, kw]) -> [N, C, OH, OW]`.
#[derive(Clone, Copy, Debug)]
struct DepthwiseConv2d {
    stride: usize,
    dilation: usize,
    pad: Padding2d,
}

/// Input-gradient custom op (transposed depthwise convolution):
/// `(grad_y [N, C, OH, OW], w [C, 1, kh, kw]) -> grad_x [N, C, H, W]`.
#[derive(Clone, Copy, Debug)]
struct DepthwiseConv2dInputGrad {
    stride: usize,
    dilation: usize,
    pad: Padding2d,
    h: usize,
    w: usize,
}

/// Weight-gradient custom op: `(x [N, C, H, W], grad_y [N, C, OH, OW]) -> grad_w [C, 1, kh, kw]`.
#[derive(Clone, Copy, Debug)]
struct DepthwiseConv2dWeightGrad {
    stride: usize,
    dilation: usize,
    pad: Padding2d,
    kh: usize,
    kw: usize,
}

/// The input-gradient op of the convolution `g` describes.
fn input_grad_op(g: &Geom) -> DepthwiseConv2dInputGrad {
    DepthwiseConv2dInputGrad {
        stride: g.stride,
        dilation: g.dilation,
        pad: g.pad,
        h: g.h,
        w: g.w,
    }
}

/// The weight-gradient op of the convolution `g` describes.
fn weight_grad_op(g: &Geom) -> DepthwiseConv2dWeightGrad {
    DepthwiseConv2dWeightGrad {
        stride: g.stride,
        dilation: g.dilation,
        pad: g.pad,
        kh: g.kh,
        kw: g.kw,
    }
}

struct FwdKernel(Geom);
struct InputGradKernel(Geom);
struct WeightGradKernel(Geom);

impl Kernel2 for FwdKernel {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }
    fn run<T: Elem>(&self, x: &[T], w: &[T]) -> Result<Vec<T>> {
        kernels::forward(&self.0, x, w)
    }
}

impl Kernel2 for InputGradKernel {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }
    fn run<T: Elem>(&self, gy: &[T], w: &[T]) -> Result<Vec<T>> {
        kernels::backward_input(&self.0, gy, w)
    }
}

impl Kernel2 for WeightGradKernel {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-weight-grad"
    }
    fn run<T: Elem>(&self, x: &[T], gy: &[T]) -> Result<Vec<T>> {
        kernels::backward_weight(&self.0, x, gy)
    }
}

/// Makes a gradient usable by the custom ops (which require contiguous inputs).
fn contiguous(t: &Tensor) -> Result<Tensor> {
    t.contiguous()
}

impl CustomOp2 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let [n, c, h, w] = dims4(op, "input", l1)?;
        let [_, _, kh, kw] = dims4(op, "weight", l2)?;
        check_dims(op, "weight", dims4(op, "weight", l2)?, [c, 1, kh, kw])?;
        let g = Geom::new(n, c, h, w, kh, kw, self.stride, self.dilation, self.pad)?;
        let out = dispatch2(&FwdKernel(g), s1, l1, s2, l2)?;
        Ok((out, Shape::from((n, c, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, gy) = (contiguous(x)?, contiguous(w)?, contiguous(grad_res)?);
        let (n, c, h, wd) = x.dims4()?;
        let (kh, kw) = (w.dim(2)?, w.dim(3)?);
        let g = Geom::new(n, c, h, wd, kh, kw, self.stride, self.dilation, self.pad)?;
        let gx = gy.apply_op2(&w, input_grad_op(&g))?;
        let gw = x.apply_op2(&gy, weight_grad_op(&g))?;
        Ok((Some(gx), Some(gw)))
    }
}

impl CustomOp2 for DepthwiseConv2dInputGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let gy = dims4(op, "output gradient", l1)?;
        let [c, _, kh, kw] = dims4(op, "weight", l2)?;
        check_dims(op, "weight", dims4(op, "weight", l2)?, [c, 1, kh, kw])?;
        let g = Geom::new(
            gy[0],
            c,
            self.h,
            self.w,
            kh,
            kw,
            self.stride,
            self.dilation,
            self.pad,
        )?;
        check_dims(op, "output gradient", gy, [g.n, g.c, g.oh, g.ow])?;
        let out = dispatch2(&InputGradKernel(g), s1, l1, s2, l2)?;
        Ok((out, Shape::from((g.n, g.c, g.h, g.w))))
    }

    fn bwd(
        &self,
        gy: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // grad_x = T(gy, w) is linear in each argument; with G = d loss / d grad_x:
        // d/d gy = conv(G, w), d/d w = weight_grad(G, gy).
        let (gy, w, gg) = (contiguous(gy)?, contiguous(w)?, contiguous(grad_res)?);
        let (kh, kw) = (w.dim(2)?, w.dim(3)?);
        let (n, c) = (gy.dim(0)?, gy.dim(1)?);
        let g = Geom::new(
            n,
            c,
            self.h,
            self.w,
            kh,
            kw,
            self.stride,
            self.dilation,
            self.pad,
        )?;
        let d_gy = gg.apply_op2(
            &w,
            DepthwiseConv2d {
                stride: self.stride,
                dilation: self.dilation,
                pad: self.pad,
            },
        )?;
        let d_w = gg.apply_op2(&gy, weight_grad_op(&g))?;
        Ok((Some(d_gy), Some(d_w)))
    }
}

impl CustomOp2 for DepthwiseConv2dWeightGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let [n, c, h, w] = dims4(op, "input", l1)?;
        let g = Geom::new(
            n,
            c,
            h,
            w,
            self.kh,
            self.kw,
            self.stride,
            self.dilation,
            self.pad,
        )?;
        check_dims(
            op,
            "output gradient",
            dims4(op, "output gradient", l2)?,
            [n, c, g.oh, g.ow],
        )?;
        let out = dispatch2(&WeightGradKernel(g), s1, l1, s2, l2)?;
        Ok((out, Shape::from((c, 1, self.kh, self.kw))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gy: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // grad_w = W(x, gy) is linear in each argument; with G = d loss / d grad_w:
        // d/d x = T(gy, G), d/d gy = conv(x, G).
        let (x, gy, gg) = (contiguous(x)?, contiguous(gy)?, contiguous(grad_res)?);
        let (n, c, h, wd) = x.dims4()?;
        let g = Geom::new(
            n,
            c,
            h,
            wd,
            self.kh,
            self.kw,
            self.stride,
            self.dilation,
            self.pad,
        )?;
        let d_x = gy.apply_op2(&gg, input_grad_op(&g))?;
        let d_gy = x.apply_op2(
            &gg,
            DepthwiseConv2d {
                stride: self.stride,
                dilation: self.dilation,
                pad: self.pad,
            },
        )?;
        Ok((Some(d_x), Some(d_gy)))
    }
}

/// Dtypes the CPU custom op accepts (the others are rejected with an error).
pub const CPU_DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

#[cfg(test)]
mod tests {
    //! Second-order checks: the `bwd` of the two gradient ops against finite differences.

    use super::*;
    use candle_core::Device;

    fn tensor(dims: &[usize], seed: u64) -> Result<Tensor> {
        let len: usize = dims.iter().product();
        let v: Vec<f64> = (0..len)
            .map(|k| {
                (((k as u64 + 1) * (seed * 2 + 7) * 2_654_435_761) % 1000) as f64 / 500.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
    }

    /// d/dt of `<f(t), r>` by central differences (exact up to rounding: `f` is linear).
    fn fd(t: &Tensor, r: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<f64>> {
        let base = t.flatten_all()?.to_vec1::<f64>()?;
        let mut out = Vec::with_capacity(base.len());
        for k in 0..base.len() {
            let eval = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += d;
                let t = Tensor::from_vec(v, t.dims(), t.device())?;
                (f(&t)? * r)?.sum_all()?.to_scalar::<f64>()
            };
            out.push((eval(1e-6)? - eval(-1e-6)?) / 2e-6);
        }
        Ok(out)
    }

    fn close(name: &str, got: &Tensor, want: &[f64]) -> Result<()> {
        let got = got.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() < 1e-7, "{name}[{k}]: {a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn gradient_ops_have_correct_backward() -> Result<()> {
        let cases = [
            (2, (6, 5), 3, 1),
            (1, (5, 4), 3, 1),
            (2, (7, 6), 5, 1),
            // Dilated, as past an output stride (stride 1), and strided too.
            (1, (6, 7), 3, 2),
            (2, (9, 8), 3, 3),
        ];
        for (stride, (h, wd), k, dilation) in cases {
            let pad = Padding2d::same(h, wd, (k - 1) * dilation + 1, stride)?;
            let x = tensor(&[2, 2, h, wd], 1)?;
            let w = tensor(&[2, 1, k, k], 2)?;
            let y = depthwise_conv2d_dilated(&x, &w, stride, dilation, pad)?;
            let gy = tensor(y.dims(), 3)?;
            let g = Geom::new(2, 2, h, wd, k, k, stride, dilation, pad)?;

            let gi = input_grad_op(&g);
            let gx = gy.apply_op2_no_bwd(&w, &gi)?;
            let r = tensor(gx.dims(), 4)?;
            let (d_gy, d_w) = gi.bwd(&gy, &w, &gx, &r)?;
            let (Some(d_gy), Some(d_w)) = (d_gy, d_w) else {
                bail!("input-grad bwd returned no gradient");
            };
            close(
                "input-grad d_gy",
                &d_gy,
                &fd(&gy, &r, &|t| t.apply_op2_no_bwd(&w, &gi))?,
            )?;
            close(
                "input-grad d_w",
                &d_w,
                &fd(&w, &r, &|t| gy.apply_op2_no_bwd(t, &gi))?,
            )?;

            let gwop = weight_grad_op(&g);
            let gw = x.apply_op2_no_bwd(&gy, &gwop)?;
            let r = tensor(gw.dims(), 5)?;
            let (d_x, d_gy) = gwop.bwd(&x, &gy, &gw, &r)?;
            let (Some(d_x), Some(d_gy)) = (d_x, d_gy) else {
                bail!("weight-grad bwd returned no gradient");
            };
            close(
                "weight-grad d_x",
                &d_x,
                &fd(&x, &r, &|t| t.apply_op2_no_bwd(&gy, &gwop))?,
            )?;
            close(
                "weight-grad d_gy",
                &d_gy,
                &fd(&gy, &r, &|t| x.apply_op2_no_bwd(t, &gwop))?,
            )?;
        }
        Ok(())
    }
}
