//! The training step written out by hand: forward and backward through the whole network on
//! the CPU in f32, activations in NHWC order from the stem to the pooling, every layer a
//! whole-batch operation (`crate::ops::cpu` forward, `crate::ops::cpu::backward` backward).
//!
//! It computes what [`Network::forward_train`] followed by candle's `backward` computes (same
//! layers, batch statistics and running-statistic update, the same drop-path and dropout masks
//! drawn from the caller's generator in the same order, the same soft-target cross-entropy),
//! without candle's per-node costs: autograd accumulates every node's gradient into a freshly
//! zeroed tensor, and its NCHW layout runs a 1x1 convolution as one small product per image.
//! `runtime/tests/train_step.rs` checks that both give the same loss, gradients and
//! statistics. [`loss_and_grads`] uses this step where it applies (CPU, f32, activations the
//! kernels implement) and candle's autograd otherwise.

use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{DType, Result, Tensor, bail};
use effnet_compiler::ir::Activation;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::fast::keep_mask;
use super::optim::Param;
use super::soft_cross_entropy;
use crate::layers::{BatchNorm, HostData, SqueezeExcite, fused_act};
use crate::network::{Block, ConvBnAct, Network};
use crate::ops::candle::cpu_data::with_cpu_f32;
use crate::ops::cpu::backward::{self as kernels, BnAct};
use crate::ops::cpu::{self as fused, Act, ConvGeom, Epilogue, Mat};

const OP: &str = "training step";

/// The loss of one batch (before the update) and the gradient of every trainable tensor, by
/// its (timm) name.
#[derive(Debug)]
pub struct StepGrads {
    pub loss: f64,
    pub grads: HashMap<String, Vec<f32>>,
}

/// An NHWC activation map.
#[derive(Debug)]
struct Map {
    data: Vec<f32>,
    /// `[n, h, w, c]`.
    dims: [usize; 4],
}

fn view<'a>(t: &'a Tensor, what: &str) -> Result<HostData<'a>> {
    match HostData::new(t) {
        Some(v) => Ok(v),
        None => bail!("{OP}: `{what}` is not a CPU tensor"),
    }
}

fn act_of(a: Option<Activation>) -> Result<Act> {
    match fused_act(a) {
        Some(act) => Ok(act),
        None => bail!("{OP}: activation {a:?} has no hand-written backward"),
    }
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
struct LayerTape {
    input: Rc<Map>,
    geom: ConvGeom,
    /// The convolution's output, the BatchNorm's input.
    z: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

/// PyTorch's running-statistic update, `running = (1 - m) * running + m * batch` with the
/// unbiased batch variance.
fn update_running(bn: &BatchNorm, mean: &[f32], var_unbiased: &[f32]) -> Result<()> {
    let m = bn.spec.momentum as f32;
    for (var, batch, what) in [
        (&bn.running_mean, mean, "running_mean"),
        (&bn.running_var, var_unbiased, "running_var"),
    ] {
        let t = var.as_tensor();
        let new: Vec<f32> = {
            let old = view(t, &format!("{}.{what}", bn.spec.path))?;
            if old.get().len() != batch.len() {
                bail!(
                    "{OP}: `{}.{what}` has {} values for {} channels",
                    bn.spec.path,
                    old.get().len(),
                    batch.len()
                );
            }
            old.get()
                .iter()
                .zip(batch)
                .map(|(&r, &b)| r * (1.0 - m) + b * m)
                .collect()
        };
        var.set(&Tensor::from_vec(new, t.shape(), t.device())?.to_dtype(t.dtype())?)?;
    }
    Ok(())
}

fn layer_forward(l: &ConvBnAct, x: Rc<Map>) -> Result<(LayerTape, Map)> {
    let [n, h, w, c] = x.dims;
    let g = l.conv.geom([n, c, h, w]);
    let (oh, ow) = g.out_hw()?;
    let o = g.o;
    let path = &l.conv.spec.path;
    let z = {
        let wv = view(&l.conv.weight, &format!("{path}.weight"))?;
        let bias = match &l.conv.bias {
            Some(b) => Some(view(b, &format!("{path}.bias"))?),
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
    let (mean64, var64) = kernels::channel_stats(&z, o);
    let count = (n * oh * ow) as f64;
    let eps = l.bn.spec.eps;
    let mean: Vec<f32> = mean64.iter().map(|&v| v as f32).collect();
    let inv_std: Vec<f32> = var64
        .iter()
        .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
        .collect();
    let unbiased: Vec<f32> = var64
        .iter()
        .map(|&v| {
            if count > 1.0 {
                (v * count / (count - 1.0)) as f32
            } else {
                v as f32
            }
        })
        .collect();
    let y = {
        let bp = &l.bn.spec.path;
        let gamma = view(&l.bn.weight, &format!("{bp}.weight"))?;
        let beta = view(&l.bn.bias, &format!("{bp}.bias"))?;
        let (gamma, beta) = (gamma.get(), beta.get());
        if gamma.len() != o || beta.len() != o {
            bail!(
                "{OP}: `{bp}` has {} parameters for {o} channels",
                gamma.len()
            );
        }
        let scale: Vec<f32> = (0..o).map(|ch| inv_std[ch] * gamma[ch]).collect();
        let shift: Vec<f32> = (0..o).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
        kernels::affine_act(&z, o, &scale, &shift, act_of(l.activation)?)
    };
    update_running(&l.bn, &mean, &unbiased)?;
    let tape = LayerTape {
        input: x,
        geom: g,
        z,
        mean,
        inv_std,
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
) -> Result<Option<Vec<f32>>> {
    let o = t.geom.o;
    let bp = &l.bn.spec.path;
    let (dgamma, dbeta) = {
        let gamma = view(&l.bn.weight, &format!("{bp}.weight"))?;
        let beta = view(&l.bn.bias, &format!("{bp}.bias"))?;
        let bn = BnAct {
            mean: &t.mean,
            inv_std: &t.inv_std,
            gamma: gamma.get(),
            beta: beta.get(),
            act: act_of(l.activation)?,
        };
        kernels::bn_act_backward(&mut d, &t.z, o, &bn)
    };
    add_grad(grads, format!("{bp}.weight"), dgamma);
    add_grad(grads, format!("{bp}.bias"), dbeta);
    let path = &l.conv.spec.path;
    if l.conv.bias.is_some() {
        add_grad(grads, format!("{path}.bias"), kernels::column_sums(&d, o));
    }
    let wv = view(&l.conv.weight, &format!("{path}.weight"))?;
    let (dw, dx) = if l.conv.spec.is_depthwise() {
        let (dw, dx) = kernels::depthwise_backward(&t.input.data, wv.get(), &t.geom, &d)?;
        (dw, Some(dx))
    } else {
        kernels::conv_backward(&t.input.data, wv.get(), &t.geom, &d, need_dx)?
    };
    add_grad(grads, format!("{path}.weight"), dw);
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// Squeeze-excitation.

struct SeTape {
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
                .map(|t| view(t, &format!("{p}.bias")))
                .transpose()
        };
        let (rp, ep) = (&se.reduce.spec.path, &se.expand.spec.path);
        Ok(SeWeights {
            reduce: view(&se.reduce.weight, &format!("{rp}.weight"))?,
            reduce_bias: bias(&se.reduce.bias, rp)?,
            expand: view(&se.expand.weight, &format!("{ep}.weight"))?,
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
    let act = act_of(Some(se.activation))?;
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
    let act = act_of(Some(se.activation))?;
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

// ---------------------------------------------------------------------------------------------
// Blocks.

struct BlockTape {
    layers: Vec<LayerTape>,
    se: Option<SeTape>,
    /// The drop-path factors, one per image, when the block drew them.
    mask: Option<Vec<f32>>,
}

fn block_forward(
    b: &Block,
    x: Rc<Map>,
    drop_path_scale: f64,
    rng: &mut ChaCha8Rng,
) -> Result<(BlockTape, Map)> {
    let mut cur = x.clone();
    let mut layers = Vec::with_capacity(b.layers.len());
    let mut se_tape = None;
    for (i, l) in b.layers.iter().enumerate() {
        let (t, y) = layer_forward(l, cur)?;
        layers.push(t);
        cur = Rc::new(y);
        if i == b.se_after
            && let Some(se) = &b.se
        {
            let (t, gated) = se_forward(se, cur)?;
            se_tape = Some(t);
            cur = Rc::new(gated);
        }
    }
    // The output map is shared only if a tape kept it (an SE after the last layer).
    let mut out = Rc::try_unwrap(cur).unwrap_or_else(|rc| Map {
        data: rc.data.clone(),
        dims: rc.dims,
    });
    let mut mask = None;
    if b.spec.residual {
        if out.data.len() != x.data.len() {
            bail!(
                "{OP}: block `{}` has a residual but maps its input {:?} to {:?}",
                b.spec.path,
                x.dims,
                out.dims
            );
        }
        let rate = b.spec.drop_path * drop_path_scale;
        let n = out.dims[0];
        let per = out.data.len() / n.max(1);
        if rate > 0.0 {
            let m = keep_mask(n, 1.0 - rate, rng);
            out.data
                .par_chunks_mut(per.max(1))
                .zip(x.data.par_chunks(per.max(1)))
                .zip(&m)
                .for_each(|((o, xi), &f)| {
                    for (v, &r) in o.iter_mut().zip(xi) {
                        *v = *v * f + r;
                    }
                });
            mask = Some(m);
        } else {
            out.data
                .par_chunks_mut(1 << 14)
                .zip(x.data.par_chunks(1 << 14))
                .for_each(|(o, xi)| o.iter_mut().zip(xi).for_each(|(v, &r)| *v += r));
        }
    }
    let tape = BlockTape {
        layers,
        se: se_tape,
        mask,
    };
    Ok((tape, out))
}

/// `d` is the gradient at the block's output; returns the gradient at its input.
fn block_backward(
    b: &Block,
    t: &BlockTape,
    d: Vec<f32>,
    grads: &mut HashMap<String, Vec<f32>>,
) -> Result<Vec<f32>> {
    let residual = b.spec.residual.then(|| d.clone());
    let mut d = d;
    if let Some(m) = &t.mask {
        let per = d.len() / m.len().max(1);
        d.par_chunks_mut(per.max(1))
            .zip(m)
            .for_each(|(di, &f)| di.iter_mut().for_each(|v| *v *= f));
    }
    for (i, l) in b.layers.iter().enumerate().rev() {
        if i == b.se_after
            && let (Some(se), Some(st)) = (&b.se, &t.se)
        {
            d = se_backward(se, st, d, grads)?;
        }
        d = match layer_backward(l, &t.layers[i], d, true, grads)? {
            Some(dx) => dx,
            None => bail!("{OP}: no input gradient from `{}`", l.conv.spec.path),
        };
    }
    if let Some(r) = residual {
        d.par_chunks_mut(1 << 14)
            .zip(r.par_chunks(1 << 14))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(v, &g)| *v += g));
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// The whole network.

fn f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

impl Network {
    /// Whether [`Network::train_step`] can run this network on `x`: CPU f32 tensors, dense
    /// or depthwise convolutions, activations the kernels implement.
    pub fn hand_step_supported(&self, x: &Tensor) -> bool {
        let layer_ok = |l: &ConvBnAct| {
            fused_act(l.activation).is_some()
                && (l.conv.spec.groups == 1 || l.conv.spec.is_depthwise())
        };
        f32_cpu(x)
            && self.named_tensors().iter().all(|t| f32_cpu(&t.tensor))
            && layer_ok(&self.stem)
            && self.head.as_ref().is_none_or(layer_ok)
            && self.stages.iter().flatten().all(|b| {
                b.layers.iter().all(layer_ok)
                    && b.se
                        .as_ref()
                        .is_none_or(|se| fused_act(Some(se.activation)).is_some())
            })
    }

    /// One training batch by hand (see the module docs): `x` is `[N, C, H, W]`, `targets`
    /// `[N, classes]` (soft targets: one-hot, smoothed or mixed). Updates the BatchNorm
    /// running statistics; draws the drop-path and dropout masks from `rng`. `None` when
    /// [`Network::hand_step_supported`] says no.
    pub fn train_step(
        &self,
        x: &Tensor,
        targets: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<StepGrads>> {
        if !self.hand_step_supported(x) {
            return Ok(None);
        }
        let (n, c, h, w) = match x.dims() {
            &[n, c, h, w] if c == self.ir.input_channels && h > 0 && w > 0 => (n, c, h, w),
            d => bail!(
                "`{}` expects input [batch, {}, height, width], got {d:?}",
                self.ir.name,
                self.ir.input_channels
            ),
        };
        let classes = self.ir.num_classes;
        if targets.dims() != [n, classes] {
            bail!(
                "{OP}: targets must be [{n}, {classes}], got {:?}",
                targets.dims()
            );
        }
        let targets = with_cpu_f32(&targets.to_dtype(DType::F32)?, OP, |t| Ok(t.to_vec()))?;
        let input = with_cpu_f32(x, OP, |v| Ok(fused::nchw_to_nhwc(v, n, c, h * w)))?;
        let mut grads = HashMap::new();

        // Forward.
        let (stem_tape, y) = layer_forward(
            &self.stem,
            Rc::new(Map {
                data: input,
                dims: [n, h, w, c],
            }),
        )?;
        let mut y = y;
        let mut tapes = Vec::new();
        for b in self.stages.iter().flatten() {
            let (t, out) = block_forward(b, Rc::new(y), self.drop_path_scale, rng)?;
            tapes.push(t);
            y = out;
        }
        let head_tape = match &self.head {
            Some(hd) => {
                let (t, out) = layer_forward(hd, Rc::new(y))?;
                y = out;
                Some(t)
            }
            None => None,
        };
        let [_, fh, fw, fc] = y.dims;
        let p = fh * fw;
        let pooled = fused::channel_means(&y.data, n, p, fc);
        drop(y);
        let mask = (self.dropout > 0.0).then(|| keep_mask(n * fc, 1.0 - self.dropout, rng));
        let dropped: Vec<f32> = match &mask {
            Some(m) => pooled.iter().zip(m).map(|(a, b)| a * b).collect(),
            None => pooled,
        };
        let cls = &self.classifier;
        let cp = &cls.spec.path;
        let logits = {
            let wv = view(&cls.weight, &format!("{cp}.weight"))?;
            let bv = view(&cls.bias, &format!("{cp}.bias"))?;
            if wv.get().len() != classes * fc || bv.get().len() != classes {
                bail!("{OP}: `{cp}` does not fit {fc} features and {classes} classes");
            }
            linear_rows(&dropped, wv.get(), Some(bv.get()), fc, classes)?
        };

        // Soft-target cross-entropy, mean over the batch, and its gradient at the logits.
        let mut loss = 0f64;
        let mut dlogits = vec![0f32; n * classes];
        for i in 0..n {
            let l = &logits[i * classes..(i + 1) * classes];
            let t = &targets[i * classes..(i + 1) * classes];
            let mx = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let sum: f64 = l.iter().map(|&v| f64::from(v - mx).exp()).sum();
            let lse = f64::from(mx) + sum.ln();
            let tsum: f64 = t.iter().map(|&v| f64::from(v)).sum();
            for k in 0..classes {
                let logp = f64::from(l[k]) - lse;
                loss -= f64::from(t[k]) * logp;
                dlogits[i * classes + k] =
                    ((logp.exp() * tsum - f64::from(t[k])) / n as f64) as f32;
            }
        }
        let loss = loss / n.max(1) as f64;

        // Backward.
        add_grad(
            &mut grads,
            format!("{cp}.weight"),
            outer_sum(&dlogits, &dropped, n, classes, fc)?,
        );
        add_grad(
            &mut grads,
            format!("{cp}.bias"),
            kernels::column_sums(&dlogits, classes),
        );
        let mut dpooled = {
            let wv = view(&cls.weight, &format!("{cp}.weight"))?;
            let wt = fused::nhwc_to_nchw(wv.get(), 1, classes, fc);
            linear_rows(&dlogits, &wt, None, classes, fc)?
        };
        if let Some(m) = &mask {
            dpooled.iter_mut().zip(m).for_each(|(g, f)| *g *= f);
        }
        let inv_p = 1.0 / p as f32;
        let mut d = vec![0f32; n * p * fc];
        d.par_chunks_mut(p * fc)
            .zip(dpooled.par_chunks(fc))
            .for_each(|(di, g)| {
                for row in di.chunks_exact_mut(fc) {
                    row.iter_mut().zip(g).for_each(|(v, &gv)| *v = gv * inv_p);
                }
            });
        if let (Some(hd), Some(t)) = (&self.head, &head_tape) {
            d = match layer_backward(hd, t, d, true, &mut grads)? {
                Some(dx) => dx,
                None => bail!("{OP}: no input gradient from the head"),
            };
        }
        let blocks: Vec<&Block> = self.stages.iter().flatten().collect();
        for (b, t) in blocks.into_iter().zip(&tapes).rev() {
            d = block_backward(b, t, d, &mut grads)?;
        }
        layer_backward(&self.stem, &stem_tape, d, false, &mut grads)?;
        Ok(Some(StepGrads { loss, grads }))
    }
}

/// The loss of one batch and the gradients of `params` (in their order): the hand-written
/// step where it applies, candle's autograd through [`Network::forward_train`] otherwise.
/// `targets` is `[N, classes]`.
pub fn loss_and_grads(
    net: &Network,
    params: &[Param],
    x: &Tensor,
    targets: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<(f64, Vec<Tensor>)> {
    if let Some(step) = net.train_step(x, targets, rng)? {
        let mut grads = step.grads;
        let mut out = Vec::with_capacity(params.len());
        for p in params {
            let t = p.var.as_tensor();
            out.push(match grads.remove(&p.name) {
                Some(g) if g.len() == t.elem_count() => Tensor::from_vec(g, t.shape(), t.device())?,
                Some(g) => bail!(
                    "{OP}: gradient of `{}` has {} values, the tensor {:?}",
                    p.name,
                    g.len(),
                    t.dims()
                ),
                None => t.zeros_like()?,
            });
        }
        return Ok((step.loss, out));
    }
    let logits = net.forward_train(x, rng)?;
    let loss = soft_cross_entropy(&logits, targets)?;
    let lv = f64::from(loss.to_scalar::<f32>()?);
    let grads = loss.backward()?;
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        let t = p.var.as_tensor();
        out.push(match grads.get(t) {
            Some(g) => g.clone(),
            None => t.zeros_like()?,
        });
    }
    Ok((lv, out))
}

/// One-hot targets `[N, classes]` from class indices (for callers with hard labels).
pub fn one_hot(labels: &[usize], classes: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        if l >= classes {
            bail!("label {l} out of range for {classes} classes");
        }
        v[i * classes + l] = 1.0;
    }
    Tensor::from_vec(v, (labels.len(), classes), device)
}
