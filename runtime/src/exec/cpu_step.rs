//! The CPU training-step plan's backend: forward and backward by hand in f32, activations in
//! NHWC order from the stem to the pooling, every layer a whole-batch operation on effnet's
//! kernels (`crate::ops::cpu` forward, `crate::ops::cpu::backward` backward). It computes what
//! candle's autograd computes through the forward walk (`runtime/tests/train_step.rs` checks
//! loss, gradients and statistics), without candle's per-node costs: autograd accumulates
//! every node's gradient into a freshly zeroed tensor, and its NCHW layout runs a 1x1
//! convolution as one small product per image.

use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{DType, Device, Result, Tensor, bail};
use rayon::prelude::*;

use super::cpu_fused::kernel_act;
use super::host::{HostData, host};
use super::shared::update_running_stats;
use super::step::StepOps;
use super::sync_bn::{BatchNormSync, Moments, unbiased_variance};
use crate::nn::Param;
use crate::nn::{ConvBnAct, SqueezeExcite};
use crate::ops::candle::cpu_data::with_cpu_f32;
use crate::ops::cpu::backward::{self as kernels, BnAct};
use crate::ops::cpu::{self as fused, Act, ConvGeom, Epilogue, Mat};

const OP: &str = "cpu-step plan";

/// An NHWC activation map, or a gradient shaped like one.
#[derive(Debug)]
pub(crate) struct Map {
    data: Vec<f32>,
    /// `[n, h, w, c]`.
    dims: [usize; 4],
}

/// The effnet CPU kernels' training step; the gradients accumulate here by tensor name.
#[derive(Default)]
pub(crate) struct CpuStepOps<'a> {
    grads: HashMap<String, Vec<f32>>,
    /// SyncBatchNorm: the other ranks' statistics and gradient sums come through it
    /// (`None`: each BatchNorm normalizes with this batch's statistics alone).
    sync: Option<&'a dyn BatchNormSync>,
}

impl<'a> CpuStepOps<'a> {
    pub(crate) fn new(sync: Option<&'a dyn BatchNormSync>) -> Self {
        CpuStepOps {
            grads: HashMap::new(),
            sync,
        }
    }
}

fn view<'a>(t: &'a Tensor, what: impl std::fmt::Display) -> Result<HostData<'a>> {
    host(t, OP, what)
}

fn add_grad(grads: &mut HashMap<String, Vec<f32>>, name: String, g: Vec<f32>) {
    match grads.get_mut(&name) {
        Some(acc) => acc.iter_mut().zip(g).for_each(|(a, v)| *a += v),
        None => {
            grads.insert(name, g);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// conv, BatchNorm (train mode), activation.

/// What a conv-bn-act layer keeps for its backward pass.
pub(crate) struct LayerTape {
    input: Rc<Map>,
    geom: ConvGeom,
    /// The convolution's output, the BatchNorm's input.
    z: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// The BatchNorm ran in eval mode (frozen): `mean` and `inv_std` are its running ones.
    eval_bn: bool,
    /// The values per channel the statistics were taken over: this batch's, or with
    /// SyncBatchNorm every rank's.
    count: f64,
}

fn layer_forward(
    l: &ConvBnAct,
    x: Rc<Map>,
    sync: Option<&dyn BatchNormSync>,
) -> Result<(LayerTape, Map)> {
    let [n, h, w, c] = x.dims;
    let g = l.conv.geom([n, c, h, w]);
    let (oh, ow) = g.out_hw()?;
    let o = g.o;
    let path = &l.conv.spec.path;
    let z = {
        let weight = l.conv.weight()?;
        let wv = view(&weight, format_args!("{path}.weight"))?;
        let bias = match &l.conv.bias {
            Some(b) => Some(view(b, format_args!("{path}.bias"))?),
            None => None,
        };
        let ones = vec![1f32; o];
        let zeros = vec![0f32; o];
        let epi = Epilogue {
            scale: &ones,
            shift: bias.as_ref().map_or(&zeros, |b| b.get()),
            act: Act::Identity,
        };
        if l.conv.spec.is_depthwise() {
            fused::depthwise(&x.data, wv.get(), &g, &epi, false)?.0
        } else {
            fused::conv2d(&x.data, wv.get(), &g, &epi, None)?
        }
    };
    // A frozen BatchNorm (fine-tuning) normalizes with its running statistics and keeps
    // them; otherwise the batch's statistics, and the running ones are updated below.
    let eps = l.bn.spec.eps;
    let stats = l.bn.running()?;
    let mut count = (n * oh * ow) as f64;
    let (mean, inv_std, unbiased) = if l.bn.frozen {
        let bp = &l.bn.spec.path;
        let rm = view(stats.mean.as_tensor(), format_args!("{bp}.running_mean"))?;
        let rv = view(stats.var.as_tensor(), format_args!("{bp}.running_var"))?;
        let inv_std: Vec<f32> = rv
            .get()
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
            .collect();
        (rm.get().to_vec(), inv_std, None)
    } else {
        let (mut mean64, mut var64) = kernels::channel_stats(&z, o);
        if let Some(sync) = sync {
            // The whole global batch's statistics, the same on every rank.
            let mut m = Moments::of(count, &mean64, &var64);
            sync.sum_over_ranks(&mut m.sums)?;
            (count, mean64, var64) = m.combined(o)?;
        }
        let mean: Vec<f32> = mean64.iter().map(|&v| v as f32).collect();
        let inv_std: Vec<f32> = var64
            .iter()
            .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
            .collect();
        let unbiased: Vec<f32> = var64.iter().map(|&v| unbiased_variance(v, count)).collect();
        (mean, inv_std, Some(unbiased))
    };
    if mean.len() != o || inv_std.len() != o {
        bail!(
            "{OP}: `{}` has statistics for {} channels, the convolution {o}",
            l.bn.spec.path,
            mean.len()
        );
    }
    let y = {
        let bp = &l.bn.spec.path;
        let gamma = view(&l.bn.weight, format_args!("{bp}.weight"))?;
        let beta = view(&l.bn.bias, format_args!("{bp}.bias"))?;
        let (gamma, beta) = (gamma.get(), beta.get());
        if gamma.len() != o || beta.len() != o {
            bail!(
                "{OP}: `{bp}` has {} parameters for {o} channels",
                gamma.len()
            );
        }
        let scale: Vec<f32> = (0..o).map(|ch| inv_std[ch] * gamma[ch]).collect();
        let shift: Vec<f32> = (0..o).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
        kernels::affine_act(&z, o, &scale, &shift, kernel_act(l.activation)?)
    };
    if let Some(unbiased) = unbiased {
        let dev = Device::Cpu;
        update_running_stats(
            &l.bn,
            &Tensor::from_vec(mean.clone(), o, &dev)?,
            &Tensor::from_vec(unbiased, o, &dev)?,
        )?;
    }
    let tape = LayerTape {
        input: x,
        geom: g,
        z,
        mean,
        inv_std,
        eval_bn: l.bn.frozen,
        count,
    };
    Ok((
        tape,
        Map {
            data: y,
            dims: [n, oh, ow, o],
        },
    ))
}

/// `d` is the gradient at the layer's output; returns the gradient at its input (with
/// `need_dx`).
fn layer_backward(
    l: &ConvBnAct,
    t: &LayerTape,
    mut d: Vec<f32>,
    need_dx: bool,
    grads: &mut HashMap<String, Vec<f32>>,
    sync: Option<&dyn BatchNormSync>,
) -> Result<Option<Vec<f32>>> {
    let o = t.geom.o;
    let bp = &l.bn.spec.path;
    let (dgamma, dbeta) = {
        let gamma = view(&l.bn.weight, format_args!("{bp}.weight"))?;
        let beta = view(&l.bn.bias, format_args!("{bp}.bias"))?;
        let bn = BnAct {
            mean: &t.mean,
            inv_std: &t.inv_std,
            gamma: gamma.get(),
            beta: beta.get(),
            act: kernel_act(l.activation)?,
        };
        match sync {
            _ if t.eval_bn => kernels::bn_act_backward_eval(&mut d, &t.z, o, &bn),
            None => kernels::bn_act_backward(&mut d, &t.z, o, &bn),
            Some(sync) => {
                // The input gradient needs the sums of `dy` and `dy * xhat` over every
                // rank's values; gamma's and beta's gradients stay this rank's (the
                // gradient averaging adds the ranks' shares).
                let (db, dw) = kernels::bn_act_grad_sums(&mut d, &t.z, o, &bn);
                let mut sums: Vec<f64> = db.iter().chain(&dw).map(|&v| f64::from(v)).collect();
                sync.sum_over_ranks(&mut sums)?;
                let all: Vec<f32> = sums.iter().map(|&v| v as f32).collect();
                let (all_db, all_dw) = all.split_at(o);
                kernels::bn_input_grad(&mut d, &t.z, o, &bn, t.count as f32, all_db, all_dw);
                (dw, db)
            }
        }
    };
    add_grad(grads, format!("{bp}.weight"), dgamma);
    add_grad(grads, format!("{bp}.bias"), dbeta);
    let path = &l.conv.spec.path;
    if l.conv.bias.is_some() {
        add_grad(grads, format!("{path}.bias"), kernels::column_sums(&d, o));
    }
    let weight = l.conv.weight()?;
    let wv = view(&weight, format_args!("{path}.weight"))?;
    let (dw, dx) = if l.conv.spec.is_depthwise() {
        let (dw, dx) = kernels::depthwise_backward(&t.input.data, wv.get(), &t.geom, &d)?;
        (dw, Some(dx))
    } else {
        kernels::conv_backward(&t.input.data, wv.get(), &t.geom, &d, need_dx)?
    };
    for (name, g) in l.conv.weight_grads(dw) {
        add_grad(grads, name, g);
    }
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// Squeeze-excitation.

pub(crate) struct SeTape {
    /// The map the SE gates.
    input: Rc<Map>,
    means: Vec<f32>,
    /// The reduced layer before and after its activation, `[N, R]`.
    hidden_pre: Vec<f32>,
    hidden: Vec<f32>,
    /// `[N, C]`.
    gate: Vec<f32>,
}

/// The SE's weights as `([R, C], [R], [C, R], [C])` slices (biases zero when absent).
struct SeWeights<'a> {
    reduce: HostData<'a>,
    reduce_bias: Option<HostData<'a>>,
    expand: HostData<'a>,
    expand_bias: Option<HostData<'a>>,
}

impl<'a> SeWeights<'a> {
    fn new(se: &'a SqueezeExcite) -> Result<Self> {
        let bias = |b: &'a Option<Tensor>, p: &str| -> Result<Option<HostData<'a>>> {
            b.as_ref()
                .map(|t| view(t, format_args!("{p}.bias")))
                .transpose()
        };
        let (rp, ep) = (&se.reduce.spec.path, &se.expand.spec.path);
        Ok(SeWeights {
            reduce: view(se.reduce.plain_weight(), format_args!("{rp}.weight"))?,
            reduce_bias: bias(&se.reduce.bias, rp)?,
            expand: view(se.expand.plain_weight(), format_args!("{ep}.weight"))?,
            expand_bias: bias(&se.expand.bias, ep)?,
        })
    }
}

/// `out[i, j] = sum_k a[i, k] * b[j, k] + bias[j]`: a linear layer (`b` is `[J, K]`).
fn linear_rows(a: &[f32], b: &[f32], bias: Option<&[f32]>, k: usize, j: usize) -> Result<Vec<f32>> {
    let rows = a.len().checked_div(k).unwrap_or(0);
    let mut out = kernels::a_b(a, rows, k, Mat::row_major(b, j, k).t())?;
    if let Some(bias) = bias {
        for row in out.chunks_exact_mut(j.max(1)) {
            row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
        }
    }
    Ok(out)
}

/// `out[j, k] = sum_i d[i, j] * x[i, k]`: a weight gradient.
fn outer_sum(d: &[f32], x: &[f32], rows: usize, j: usize, k: usize) -> Result<Vec<f32>> {
    kernels::at_b(d, x, rows, j, k)
}

fn se_forward(se: &SqueezeExcite, s: Rc<Map>) -> Result<(SeTape, Map)> {
    let [n, h, w, c] = s.dims;
    let p = h * w;
    let r = se.reduce.spec.out_channels;
    let act = kernel_act(Some(se.activation))?;
    let wts = SeWeights::new(se)?;
    if wts.reduce.get().len() != r * c || wts.expand.get().len() != c * r {
        bail!("{OP}: `{}` does not fit {c} channels", se.reduce.spec.path);
    }
    let means = fused::channel_means(&s.data, n, p, c);
    let hidden_pre = linear_rows(
        &means,
        wts.reduce.get(),
        wts.reduce_bias.as_ref().map(|b| b.get()),
        c,
        r,
    )?;
    let hidden: Vec<f32> = hidden_pre
        .iter()
        .map(|&v| kernels::act_value(v, act))
        .collect();
    let e = linear_rows(
        &hidden,
        wts.expand.get(),
        wts.expand_bias.as_ref().map(|b| b.get()),
        r,
        c,
    )?;
    let gate: Vec<f32> = e.iter().map(|&v| fused::sigmoid(v)).collect();
    let mut gated = s.data.clone();
    fused::gate_channels(&mut gated, &gate, n, p, c);
    let tape = SeTape {
        input: s,
        means,
        hidden_pre,
        hidden,
        gate,
    };
    Ok((
        tape,
        Map {
            data: gated,
            dims: [n, h, w, c],
        },
    ))
}

/// `d` is the gradient at the gated map; returns the gradient at the SE's input.
fn se_backward(
    se: &SqueezeExcite,
    t: &SeTape,
    mut d: Vec<f32>,
    grads: &mut HashMap<String, Vec<f32>>,
) -> Result<Vec<f32>> {
    let [n, h, w, c] = t.input.dims;
    let p = h * w;
    let r = se.reduce.spec.out_channels;
    let act = kernel_act(Some(se.activation))?;
    let wts = SeWeights::new(se)?;
    // The gate's gradient, `sum_p d * s` per image and channel, then through the sigmoid.
    let mut dgate = vec![0f32; n * c];
    dgate
        .par_chunks_mut(c.max(1))
        .zip(d.par_chunks(p * c).zip(t.input.data.par_chunks(p * c)))
        .for_each(|(g, (di, si))| {
            for (dr, sr) in di.chunks_exact(c).zip(si.chunks_exact(c)) {
                for ((a, &dv), &sv) in g.iter_mut().zip(dr).zip(sr) {
                    *a += dv * sv;
                }
            }
        });
    let de: Vec<f32> = dgate
        .iter()
        .zip(&t.gate)
        .map(|(&dg, &g)| dg * g * (1.0 - g))
        .collect();
    let (rp, ep) = (&se.reduce.spec.path, &se.expand.spec.path);
    add_grad(
        grads,
        format!("{ep}.weight"),
        outer_sum(&de, &t.hidden, n, c, r)?,
    );
    if se.expand.bias.is_some() {
        add_grad(grads, format!("{ep}.bias"), kernels::column_sums(&de, c));
    }
    // dhidden[i, rr] = sum_c de[i, c] * expand[c, rr]
    let we = wts.expand.get();
    let mut dh = vec![0f32; n * r];
    for i in 0..n {
        for cc in 0..c {
            let g = de[i * c + cc];
            for (o, &wv) in dh[i * r..(i + 1) * r]
                .iter_mut()
                .zip(&we[cc * r..(cc + 1) * r])
            {
                *o += g * wv;
            }
        }
    }
    for (g, &z) in dh.iter_mut().zip(&t.hidden_pre) {
        *g *= kernels::act_derivative(z, act);
    }
    add_grad(
        grads,
        format!("{rp}.weight"),
        outer_sum(&dh, &t.means, n, r, c)?,
    );
    if se.reduce.bias.is_some() {
        add_grad(grads, format!("{rp}.bias"), kernels::column_sums(&dh, r));
    }
    // dmeans[i, c] = sum_r dh[i, r] * reduce[r, c], spread evenly over the pixels.
    let wr = wts.reduce.get();
    let mut dmeans = vec![0f32; n * c];
    for i in 0..n {
        for rr in 0..r {
            let g = dh[i * r + rr] / p as f32;
            for (o, &wv) in dmeans[i * c..(i + 1) * c]
                .iter_mut()
                .zip(&wr[rr * c..(rr + 1) * c])
            {
                *o += g * wv;
            }
        }
    }
    fused::gate_channels(&mut d, &t.gate, n, p, c);
    d.par_chunks_mut(p * c)
        .zip(dmeans.par_chunks(c))
        .for_each(|(di, dm)| {
            for row in di.chunks_exact_mut(c) {
                for (v, &g) in row.iter_mut().zip(dm) {
                    *v += g;
                }
            }
        });
    Ok(d)
}

impl StepOps for CpuStepOps<'_> {
    type Map = Map;
    type LayerTape = LayerTape;
    type SeTape = SeTape;

    fn input(&mut self, x: &Tensor) -> Result<Map> {
        let (n, c, h, w) = x.dims4()?;
        let data = with_cpu_f32(x, OP, |v| Ok(fused::nchw_to_nhwc(v, n, c, h * w)))?;
        Ok(Map {
            data,
            dims: [n, h, w, c],
        })
    }

    fn layer_forward(&mut self, l: &ConvBnAct, x: Rc<Map>) -> Result<(LayerTape, Map)> {
        layer_forward(l, x, self.sync)
    }

    fn layer_backward(
        &mut self,
        l: &ConvBnAct,
        t: &LayerTape,
        d: Map,
        need_dx: bool,
    ) -> Result<Option<Map>> {
        let dims = t.input.dims;
        let dx = layer_backward(l, t, d.data, need_dx, &mut self.grads, self.sync)?;
        Ok(dx.map(|data| Map { data, dims }))
    }

    fn se_forward(&mut self, se: &SqueezeExcite, x: Rc<Map>) -> Result<(SeTape, Map)> {
        se_forward(se, x)
    }

    fn se_backward(&mut self, se: &SqueezeExcite, t: &SeTape, d: Map) -> Result<Map> {
        let dims = d.dims;
        let data = se_backward(se, t, d.data, &mut self.grads)?;
        Ok(Map { data, dims })
    }

    fn residual(&mut self, mut y: Map, x: &Map, keep: Option<&[f32]>) -> Result<Map> {
        if y.data.len() != x.data.len() {
            bail!("{OP}: a residual from {:?} to {:?}", x.dims, y.dims);
        }
        match keep {
            Some(k) => {
                let per = (y.data.len() / k.len().max(1)).max(1);
                y.data
                    .par_chunks_mut(per)
                    .zip(x.data.par_chunks(per))
                    .zip(k)
                    .for_each(|((o, xi), &f)| {
                        for (v, &r) in o.iter_mut().zip(xi) {
                            *v = *v * f + r;
                        }
                    });
            }
            None => y
                .data
                .par_chunks_mut(1 << 14)
                .zip(x.data.par_chunks(1 << 14))
                .for_each(|(o, xi)| o.iter_mut().zip(xi).for_each(|(v, &r)| *v += r)),
        }
        Ok(y)
    }

    fn scale_images(&mut self, mut d: Map, keep: &[f32]) -> Result<Map> {
        let per = (d.data.len() / keep.len().max(1)).max(1);
        d.data
            .par_chunks_mut(per)
            .zip(keep)
            .for_each(|(di, &f)| di.iter_mut().for_each(|v| *v *= f));
        Ok(d)
    }

    fn add(&mut self, mut a: Map, b: &Map) -> Result<Map> {
        a.data
            .par_chunks_mut(1 << 14)
            .zip(b.data.par_chunks(1 << 14))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(v, &g)| *v += g));
        Ok(a)
    }

    fn duplicate(&mut self, d: &Map) -> Result<Map> {
        Ok(Map {
            data: d.data.clone(),
            dims: d.dims,
        })
    }

    fn batch(&self, x: &Map) -> usize {
        x.dims[0]
    }

    fn pool(&mut self, y: Map) -> Result<(Tensor, [usize; 4])> {
        let [n, h, w, c] = y.dims;
        let pooled = fused::channel_means(&y.data, n, h * w, c);
        Ok((Tensor::from_vec(pooled, (n, c), &Device::Cpu)?, y.dims))
    }

    fn unpool(&mut self, d: &Tensor, dims: [usize; 4]) -> Result<Map> {
        let [n, h, w, c] = dims;
        let p = h * w;
        let dpooled = with_cpu_f32(&d.to_dtype(DType::F32)?, OP, |v| Ok(v.to_vec()))?;
        if dpooled.len() != n * c {
            bail!(
                "{OP}: a pooled gradient of {} values for [{n}, {c}]",
                dpooled.len()
            );
        }
        let inv_p = 1.0 / p as f32;
        let mut data = vec![0f32; n * p * c];
        data.par_chunks_mut((p * c).max(1))
            .zip(dpooled.par_chunks(c.max(1)))
            .for_each(|(di, g)| {
                for row in di.chunks_exact_mut(c.max(1)) {
                    row.iter_mut().zip(g).for_each(|(v, &gv)| *v = gv * inv_p);
                }
            });
        Ok(Map { data, dims })
    }

    fn add_grad(&mut self, name: String, g: &Tensor) -> Result<()> {
        let v = with_cpu_f32(&g.to_dtype(DType::F32)?, OP, |v| Ok(v.to_vec()))?;
        add_grad(&mut self.grads, name, v);
        Ok(())
    }

    fn into_grads(mut self, params: &[Param]) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(params.len());
        for p in params {
            let t = p.var.as_tensor();
            out.push(match self.grads.remove(&p.name) {
                Some(g) if g.len() == t.elem_count() => {
                    Tensor::from_vec(g, t.shape(), t.device())?.to_dtype(t.dtype())?
                }
                Some(g) => bail!(
                    "{OP}: gradient of `{}` has {} values, the tensor {:?}",
                    p.name,
                    g.len(),
                    t.dims()
                ),
                None => t.zeros_like()?,
            });
        }
        Ok(out)
    }
}
