//! The cuda-step plan's backend of the training-step walk: forward in train mode and backward
//! by hand, NHWC f32 maps from the stem to the pooling, over [`CudaKernels`] and candle's
//! matmul (cuBLAS on a GPU). It computes what the cpu-step plan computes, layer for layer:
//!
//! - depthwise convolutions: effnet's kernel forward, its input-gradient kernel (gathered per
//!   input pixel, no atomics) and its weight-gradient kernel (partials per chunk of pixels);
//! - pointwise convolutions: one GEMM forward, two GEMMs backward (`dz^T x`, `dz w`);
//! - other dense convolutions (stem, Fused-MBConv): the kernels' convolution library (cuDNN
//!   forward, backward-data and backward-filter) where they have one, else the patches kernel
//!   and the same GEMMs, with the patches' adjoint for the input gradient (the patches are
//!   recomputed in the backward, not kept: they are k^2 times the input);
//! - train-mode BatchNorm: the statistics kernel (f64 partials), the epilogue kernel, the
//!   parameter-gradient and input-gradient kernels;
//! - squeeze-excitation: the means, dot and gate kernels; its small GEMMs on `[N, C]`.
//!
//! Gradients accumulate on the device by tensor name; nothing goes back to the host but the
//! loss (the walk's tail, shared by every plan). The step runs wherever `K` runs: on a GPU
//! with the kernels launched, in `cargo test` on the CPU under `effnet-cuda-emu`.
//!
//! Mixed precision (`--precision bf16`): the maps (activations, the convolutions' outputs and
//! every gradient shaped like them) are bf16 and the GEMMs take the weights cast to bf16,
//! while the parameters and their gradients, the BatchNorm statistics and parameters, the
//! squeeze-excitation's small layers and every reduction stay f32 (the kernels compute in f32
//! and sum in f64): PyTorch's autocast in bf16, with f32 master weights.
//!
//! SyncBatchNorm (`--sync-bn` in a data-parallel run): each train-mode BatchNorm's moments
//! and its backward's two sums meet the other ranks' through the [`BatchNormSync`] the step
//! holds, as on the cpu-step plan, as device tensors (f64 sums of `z` and `z^2`; NCCL adds
//! them on the GPU, with no host wait); the host only learns the global batch's images, once
//! a step, for the counts the kernels take as scalars.

use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{DType, Result, Tensor, bail};

use super::CudaKernels;
use super::backend::{dense_conv, gemm_weight, is_pointwise, library_for, nhwc_geom};
use crate::exec::candle::activate;
use crate::exec::cpu_fused::kernel_act;
use crate::exec::shared::update_running_stats;
use crate::exec::step::StepOps;
use crate::exec::sync_bn::BatchNormSync;
use crate::nn::{ConvBnAct, Param, SqueezeExcite};
use crate::ops::{Act, ConvGeom, linear};

const OP: &str = "cuda-step plan";

/// The training step over `kernels` with maps in `maps` (f32, or bf16 for mixed precision),
/// its train-mode BatchNorm layers meeting the other ranks' through `sync` when given;
/// gradients accumulate here by tensor name, in f32.
pub(crate) struct CudaStepOps<'a, K> {
    kernels: K,
    maps: DType,
    sync: Option<&'a dyn BatchNormSync>,
    /// With `sync`: `(this rank's images, the global batch's)`, asked once a step.
    images: Option<(usize, usize)>,
    grads: HashMap<String, Tensor>,
}

impl<'a, K: CudaKernels> CudaStepOps<'a, K> {
    pub(crate) fn new(kernels: K, maps: DType, sync: Option<&'a dyn BatchNormSync>) -> Self {
        CudaStepOps {
            kernels,
            maps,
            sync,
            images: None,
            grads: HashMap::new(),
        }
    }

    /// The batch statistics `[3, c]` (mean, `1 / sqrt(var + eps)`, unbiased variance) of the
    /// `[rows, c]` map `z` of `n` images combined with every other rank's, and the rows they
    /// cover. The sums `(sum z, sum z^2)` per channel meet on the device (f64); the global
    /// batch's images are asked once a step, on the host (the kernels take counts as
    /// scalars).
    fn synced_stats(
        &mut self,
        sync: &dyn BatchNormSync,
        z: &Tensor,
        n: usize,
        eps: f64,
    ) -> Result<(Tensor, usize)> {
        let (rows, c) = z.dims2()?;
        let global = match self.images {
            Some((local, global)) if local == n => global,
            _ => {
                let mut images = [n as f64];
                sync.sum_over_ranks(&mut images)?;
                let global = images[0].round() as usize;
                self.images = Some((n, global));
                global
            }
        };
        if n == 0 || rows % n != 0 {
            bail!("{OP}: SyncBatchNorm over {rows} rows of {n} images");
        }
        let count = rows / n * global;
        let partial = self
            .kernels
            .column_moments_partial(z, super::row_chunks(rows, c))?;
        let sums = sync.sum_tensor_over_ranks(&partial.sum_keepdim(0)?)?;
        Ok((self.kernels.batch_stats_of(&sums, c, count, eps)?, count))
    }

    /// A dense convolution's weight gradient `[o, k * k * c]` (f32, the patches' tap order)
    /// and, when `need_dx`, its input gradient, from `dz` `[rows, o]`: on the input's patches
    /// and the patches' gradient, a chunk of images at a time when the whole batch's would
    /// exceed [`CudaKernels::patch_values`] (the chunks' weight gradients added in f32).
    fn dense_backward_on_patches(
        &self,
        x: &Tensor,
        dz: &Tensor,
        wt: &Tensor,
        g: &ConvGeom,
        need_dx: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (oh, ow) = g.out_hw()?;
        let mut dw: Option<Tensor> = None;
        let mut dxs = Vec::new();
        for (start, n) in super::image_chunks(g, self.kernels.patch_values())? {
            let gc = ConvGeom { n, ..*g };
            let xc = x.narrow(0, start, n)?;
            let dzc = dz.narrow(0, start * oh * ow, n * oh * ow)?;
            let cols = self.kernels.im2col(&xc, &gc)?;
            // [o, rows] x [rows, k*k*c]: the weight gradient in the patches' tap order.
            let part = f32_of(&dzc.t()?.matmul(&cols)?)?;
            dw = Some(match dw {
                Some(acc) => (acc + part)?,
                None => part,
            });
            if need_dx {
                dxs.push(self.kernels.col2im(&dzc.matmul(wt)?, &gc)?);
            }
        }
        let Some(dw) = dw else {
            bail!("{OP}: a dense convolution over an empty batch");
        };
        let dx = match dxs.len() {
            0 => None,
            1 => dxs.pop(),
            _ => Some(Tensor::cat(&dxs, 0)?),
        };
        Ok((dw, dx))
    }

    fn add_grad(&mut self, name: String, g: Tensor) -> Result<()> {
        let g = f32_of(&g)?;
        let sum = match self.grads.remove(&name) {
            Some(acc) => (acc + g)?,
            None => g,
        };
        self.grads.insert(name, sum);
        Ok(())
    }
}

/// What a conv-bn-act layer keeps for its backward.
pub(crate) struct LayerTape {
    input: Rc<Tensor>,
    geom: ConvGeom,
    /// The convolution's output `[rows, o]` (with its bias), the BatchNorm's input.
    z: Tensor,
    /// `(mean, inv_std)`, `[2, o]`: the batch's, or a frozen BatchNorm's running ones.
    stats: Tensor,
    /// The rows the statistics cover: this map's, or every rank's with SyncBatchNorm.
    count: usize,
    eval_bn: bool,
}

/// What a squeeze-excitation keeps for its backward.
pub(crate) struct SeTape {
    input: Rc<Tensor>,
    means: Tensor,
    hidden_pre: Tensor,
    hidden: Tensor,
    gate: Tensor,
}

fn f32_of(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// The derivative of `act` at `z`, as the CPU step takes it.
fn activation_grad(z: &Tensor, act: Act) -> Result<Tensor> {
    let mask = |m: Tensor| m.to_dtype(DType::F32);
    match act {
        Act::Identity => z.ones_like(),
        Act::Silu => {
            let s = candle_nn::ops::sigmoid(z)?;
            &s * ((z * (1.0 - &s)?)? + 1.0)?
        }
        Act::Relu => mask(z.gt(0f32)?),
        Act::Relu6 => mask(z.gt(0f32)?)? * mask(z.lt(6f32)?)?,
        Act::HardSwish => {
            let above = mask(z.ge(3f32)?)?;
            let inside = (mask(z.gt(-3f32)?)? * (1.0 - &above)?)?;
            (((z * 2.0)? + 3.0)? / 6.0)?.mul(&inside)? + above
        }
        // Phi(z) + z phi(z).
        Act::Gelu => {
            let phi = ((z.sqr()? * -0.5)?.exp()? * 0.398_942_280_401_432_7)?;
            (((z * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5)? + (z * phi)?
        }
    }
}

/// `[n]` per-image factors as an `[n, 1, 1, 1]` tensor on `like`'s device, in its dtype.
fn per_image(keep: &[f32], like: &Tensor) -> Result<Tensor> {
    Tensor::from_slice(keep, (keep.len(), 1, 1, 1), like.device())?.to_dtype(like.dtype())
}

impl<K: CudaKernels> StepOps for CudaStepOps<'_, K> {
    type Map = Tensor;
    type LayerTape = LayerTape;
    type SeTape = SeTape;

    fn input(&mut self, x: &Tensor) -> Result<Tensor> {
        x.to_dtype(self.maps)?.permute((0, 2, 3, 1))?.contiguous()
    }

    fn layer_forward(&mut self, l: &ConvBnAct, x: Rc<Tensor>) -> Result<(LayerTape, Tensor)> {
        let cv = &l.conv;
        let g = nhwc_geom(cv, &x)?;
        let (oh, ow) = g.out_hw()?;
        let o = g.o;
        let rows = g.n * oh * ow;
        let bias = cv.bias.as_ref().map(f32_of).transpose()?;
        let z = if cv.spec.is_depthwise() {
            let ones = Tensor::ones(o, DType::F32, x.device())?;
            let shift = match &bias {
                Some(b) => b.clone(),
                None => ones.zeros_like()?,
            };
            let affine = Tensor::stack(&[ones, shift], 0)?;
            let w = f32_of(&cv.weight()?)?.contiguous()?;
            self.kernels
                .depthwise(&x, &w, &affine, &g, Act::Identity)?
                .reshape((rows, o))?
        } else {
            let wt = gemm_weight(cv, &g)?.to_dtype(self.maps)?;
            let z = dense_conv(&self.kernels, cv, &wt, &x, &g)?;
            match &bias {
                Some(b) => z.broadcast_add(&b.to_dtype(self.maps)?)?,
                None => z,
            }
        };
        let bn = &l.bn;
        let running = bn.running()?;
        let (stats, count) = if bn.frozen {
            // A frozen BatchNorm (fine-tuning) normalizes with its running statistics.
            let mean = f32_of(running.mean.as_tensor())?;
            let var = running.var.as_tensor().to_dtype(DType::F64)?;
            let inv_std = (var + bn.spec.eps)?.sqrt()?.recip()?.to_dtype(DType::F32)?;
            (Tensor::stack(&[mean, inv_std], 0)?, rows)
        } else {
            let (s, count) = match self.sync {
                Some(sync) => self.synced_stats(sync, &z, g.n, bn.spec.eps)?,
                None => (self.kernels.batch_stats(&z, bn.spec.eps)?, rows),
            };
            update_running_stats(bn, &s.get(0)?, &s.get(2)?)?;
            (s.narrow(0, 0, 2)?, count)
        };
        if stats.dims() != [2, o] {
            bail!(
                "{OP}: `{}` has statistics for {:?}, the convolution {o} channels",
                bn.spec.path,
                stats.dims()
            );
        }
        let gamma = f32_of(&bn.weight)?;
        let beta = f32_of(&bn.bias)?;
        if gamma.elem_count() != o || beta.elem_count() != o {
            bail!(
                "{OP}: `{}` has {} parameters for {o} channels",
                bn.spec.path,
                gamma.elem_count()
            );
        }
        let scale = (stats.get(1)? * &gamma)?;
        let shift = (&beta - (stats.get(0)? * &scale)?)?;
        let affine = Tensor::stack(&[scale, shift], 0)?;
        let y = self
            .kernels
            .affine_act(&z, &affine, None, kernel_act(l.activation)?)?
            .reshape((g.n, oh, ow, o))?;
        let tape = LayerTape {
            input: x,
            geom: g,
            z,
            stats: stats.contiguous()?,
            count,
            eval_bn: bn.frozen,
        };
        Ok((tape, y))
    }

    fn layer_backward(
        &mut self,
        l: &ConvBnAct,
        t: &LayerTape,
        d: Tensor,
        need_dx: bool,
    ) -> Result<Option<Tensor>> {
        let g = &t.geom;
        let o = g.o;
        let rows = t.z.dim(0)?;
        let d = d.reshape((rows, o))?;
        let act = kernel_act(l.activation)?;
        let bn = &l.bn;
        let gamma = f32_of(&bn.weight)?;
        let beta = f32_of(&bn.bias)?;
        let params = Tensor::cat(&[&t.stats, &gamma.unsqueeze(0)?, &beta.unsqueeze(0)?], 0)?;
        let sums = self.kernels.bn_act_param_grads(&d, &t.z, &params, act)?;
        let (dbeta, dgamma) = (sums.get(0)?, sums.get(1)?);
        // The input gradient needs the sums over every rank's rows with SyncBatchNorm;
        // gamma's and beta's gradients stay this rank's (the gradient averaging adds them up).
        let input_sums = match self.sync {
            Some(sync) if !t.eval_bn => sync
                .sum_tensor_over_ranks(&sums.to_dtype(DType::F64)?)?
                .to_dtype(DType::F32)?,
            _ => sums.clone(),
        };
        let all = Tensor::cat(&[&params, &input_sums], 0)?;
        let dz = self
            .kernels
            .bn_act_input_grad(&d, &t.z, &all, act, t.eval_bn, t.count)?;
        let bp = &bn.spec.path;
        self.add_grad(format!("{bp}.weight"), dgamma)?;
        self.add_grad(format!("{bp}.bias"), dbeta)?;
        let cv = &l.conv;
        let path = &cv.spec.path;
        if cv.bias.is_some() {
            self.add_grad(format!("{path}.bias"), f32_of(&dz)?.sum(0)?)?;
        }
        let x = &t.input;
        let (dw, dx) = if cv.spec.is_depthwise() {
            let (oh, ow) = g.out_hw()?;
            let dy = dz.reshape((g.n, oh, ow, o))?;
            let w = f32_of(&cv.weight()?)?.contiguous()?;
            let dw = self.kernels.depthwise_weight_grad(x, &dy, g)?;
            let dx = if need_dx {
                Some(self.kernels.depthwise_input_grad(&dy, &w, g)?)
            } else {
                None
            };
            (dw, dx)
        } else {
            let wt = gemm_weight(cv, g)?.to_dtype(self.maps)?;
            let (dw, dx) = if is_pointwise(g, cv.spec.groups) {
                let cols = x.reshape((g.n * g.h * g.w, g.c))?;
                let dx = match need_dx {
                    true => Some(dz.matmul(&wt)?.reshape((g.n, g.h, g.w, g.c))?),
                    false => None,
                };
                (f32_of(&dz.t()?.matmul(&cols)?)?, dx)
            } else if let Some(lib) = library_for(&self.kernels, cv) {
                let (dw, dx) = super::conv_library::backward(lib, x, &dz, &wt, g, need_dx)?;
                (f32_of(&dw)?, dx)
            } else {
                self.dense_backward_on_patches(x, &dz, &wt, g, need_dx)?
            };
            let dw = if g.k == 1 {
                dw.reshape((o, g.c, 1, 1))?
            } else {
                dw.reshape((o, g.k, g.k, g.c))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?
            };
            (dw, dx)
        };
        for (name, gw) in cv.weight_grad_tensors(&dw)? {
            self.add_grad(name, gw)?;
        }
        Ok(dx)
    }

    fn se_forward(&mut self, se: &SqueezeExcite, s: Rc<Tensor>) -> Result<(SeTape, Tensor)> {
        if se.context.is_some() {
            bail!("{OP}: global context attention has no CUDA kernel");
        }
        let means = self.kernels.channel_means(&s)?;
        // The SE's small layers as the candle plan runs them (the plan's parameters are f32,
        // the means' dtype).
        let hidden_pre = linear(&means, se.reduce.plain_weight(), se.reduce.bias.as_ref())?;
        let hidden = activate(&hidden_pre, se.activation)?;
        let e = linear(&hidden, se.expand.plain_weight(), se.expand.bias.as_ref())?;
        let gate = candle_nn::ops::sigmoid(&e)?.contiguous()?;
        let gated = self.kernels.gate_channels(&s, &gate)?;
        let tape = SeTape {
            input: s,
            means,
            hidden_pre,
            hidden,
            gate,
        };
        Ok((tape, gated))
    }

    fn se_backward(&mut self, se: &SqueezeExcite, t: &SeTape, d: Tensor) -> Result<Tensor> {
        let (_, h, w, c) = t.input.dims4()?;
        let p = (h * w) as f64;
        let act = kernel_act(Some(se.activation))?;
        let dgate = self.kernels.channel_dots(&d, &t.input)?;
        let de = (dgate * (&t.gate * (1.0 - &t.gate)?)?)?;
        let (rp, ep) = (&se.reduce.spec.path, &se.expand.spec.path);
        let we = f32_of(se.expand.plain_weight())?.flatten_from(1)?;
        let wr = f32_of(se.reduce.plain_weight())?.flatten_from(1)?;
        let dwe = de.t()?.matmul(&t.hidden)?;
        self.add_grad(
            format!("{ep}.weight"),
            dwe.reshape(se.expand.plain_weight().shape())?,
        )?;
        if se.expand.bias.is_some() {
            self.add_grad(format!("{ep}.bias"), de.sum(0)?)?;
        }
        let dh = (de.matmul(&we)? * activation_grad(&t.hidden_pre, act)?)?;
        let dwr = dh.t()?.matmul(&t.means)?;
        self.add_grad(
            format!("{rp}.weight"),
            dwr.reshape(se.reduce.plain_weight().shape())?,
        )?;
        if se.reduce.bias.is_some() {
            self.add_grad(format!("{rp}.bias"), dh.sum(0)?)?;
        }
        // The squeeze's gradient, spread evenly over the pixels.
        let dmeans = (dh.matmul(&wr)? / p)?.contiguous()?;
        if dmeans.dims() != [t.gate.dim(0)?, c] {
            bail!("{OP}: `{rp}` does not fit {c} channels");
        }
        self.kernels.gate_add(&d, &t.gate, &dmeans)
    }

    fn residual(&mut self, y: Tensor, x: &Tensor, keep: Option<&[f32]>) -> Result<Tensor> {
        if y.dims() != x.dims() {
            bail!("{OP}: a residual from {:?} to {:?}", x.dims(), y.dims());
        }
        match keep {
            Some(k) => y.broadcast_mul(&per_image(k, &y)?)? + x,
            None => y + x,
        }
    }

    fn scale_images(&mut self, d: Tensor, keep: &[f32]) -> Result<Tensor> {
        d.broadcast_mul(&per_image(keep, &d)?)
    }

    fn add(&mut self, a: Tensor, b: &Tensor) -> Result<Tensor> {
        a + b
    }

    fn duplicate(&mut self, d: &Tensor) -> Result<Tensor> {
        // Tensors are immutable: sharing is a copy.
        Ok(d.clone())
    }

    fn batch(&self, x: &Tensor) -> usize {
        x.dims().first().copied().unwrap_or(0)
    }

    fn pool(&mut self, y: Tensor) -> Result<(Tensor, [usize; 4])> {
        let (n, h, w, c) = y.dims4()?;
        Ok((self.kernels.channel_means(&y)?, [n, h, w, c]))
    }

    fn unpool(&mut self, d: &Tensor, [n, h, w, c]: [usize; 4]) -> Result<Tensor> {
        (f32_of(d)? / (h * w) as f64)?
            .to_dtype(self.maps)?
            .reshape((n, 1, 1, c))?
            .broadcast_as((n, h, w, c))?
            .contiguous()
    }

    fn add_grad(&mut self, name: String, g: &Tensor) -> Result<()> {
        CudaStepOps::add_grad(self, name, f32_of(g)?)
    }

    fn into_grads(mut self, params: &[Param]) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(params.len());
        for p in params {
            let t = p.var.as_tensor();
            out.push(match self.grads.remove(&p.name) {
                Some(g) if g.elem_count() == t.elem_count() => g
                    .reshape(t.shape())?
                    .to_dtype(t.dtype())?
                    .to_device(t.device())?,
                Some(g) => bail!(
                    "{OP}: gradient of `{}` has {} values, the tensor {:?}",
                    p.name,
                    g.elem_count(),
                    t.dims()
                ),
                None => t.zeros_like()?,
            });
        }
        Ok(out)
    }
}
