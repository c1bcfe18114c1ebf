//! The CPU inference plan's backend: activations in NHWC order (channels last) from the stem
//! to the pooling, always f32; each convolution runs with its eval-mode BatchNorm, its
//! activation and (at a block's end) the residual in one kernel (`crate::ops::cpu`); a
//! squeeze-excitation's squeeze is accumulated by the layer that produces its input. The
//! convolutions' packed weights are prepared once per layer and kept in the network's
//! [`PreparedCache`] (the plan runs only on parameters that are not training variables, so a
//! tensor's id says whether its prepared form still holds).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, bail};

use super::forward::ForwardOps;
use super::host::host;
use crate::nn::{Classifier, Conv2d, ConvBnAct, Norm, PreparedCache, SqueezeExcite};
use crate::ops::cpu::{self as fused, Act, ConvGeom, Epilogue};
use crate::ops::linear;

const OP: &str = "cpu-fused plan";

/// An activation map of the fused plan, NHWC, f32.
pub(crate) struct FusedMap {
    pub data: Vec<f32>,
    /// `[n, h, w, c]`.
    pub dims: [usize; 4],
    /// Per-channel means of `data` (`[N, C]`) when asked for.
    pub means: Option<Vec<f32>>,
}

/// The kernels' activation; the plan runs only networks whose activations have one.
pub(crate) fn kernel_act(a: Option<effnet_compiler::ir::Activation>) -> Result<Act> {
    use effnet_compiler::ir::Activation as A;
    Ok(match a {
        None => Act::Identity,
        Some(A::Silu) => Act::Silu,
        Some(A::Relu) => Act::Relu,
        Some(A::Relu6) => Act::Relu6,
        Some(A::HardSwish) => Act::HardSwish,
        Some(A::Gelu) => Act::Gelu,
        Some(A::Mish) => bail!("Mish has no CPU kernel (the plan should have been candle)"),
    })
}

/// A convolution's weights in the kernels' packed form, with the id of the tensor they came
/// from.
struct Prepared {
    weight: candle_core::TensorId,
    packed: Arc<fused::ConvWeights>,
}

/// The CPU fused kernels on `prepared`'s packed weights; results in `dtype` (the input's).
pub(crate) struct CpuFusedOps<'a> {
    pub prepared: &'a PreparedCache,
    pub dtype: DType,
}

impl CpuFusedOps<'_> {
    /// `conv`'s packed weights for geometry `g`: the cached ones while they hold (same
    /// weight tensor, same geometry), else packed now and cached.
    fn packed(&self, conv: &Conv2d, g: &ConvGeom) -> Result<Arc<fused::ConvWeights>> {
        let key = &conv.spec.path;
        if let Some(p) = self.prepared.get::<Prepared>(key)
            && p.weight == conv.weight_id()
            && p.packed.fits(g)
        {
            return Ok(Arc::clone(&p.packed));
        }
        let weight = conv.weight()?;
        let w = host(&weight, OP, format_args!("{key}.weight"))?;
        let packed = Arc::new(fused::ConvWeights::new(
            w.get(),
            g,
            fused::GemmKernel::Best,
        )?);
        let entry = Prepared {
            weight: conv.weight_id(),
            packed: Arc::clone(&packed),
        };
        self.prepared.insert(key, Arc::new(entry));
        Ok(packed)
    }
}

/// Eval-mode BatchNorm as per-channel `(scale, shift)` on the host, with the convolution's
/// bias folded into the shift: `BN(conv + b) = scale * conv + (scale * b + shift)`.
fn eval_affine(bn: &Norm, conv_bias: Option<&Tensor>) -> Result<(Vec<f32>, Vec<f32>)> {
    let p = &bn.spec.path;
    let stats = bn.running()?;
    let w = host(&bn.weight, OP, format_args!("{p}.weight"))?;
    let b = host(&bn.bias, OP, format_args!("{p}.bias"))?;
    let rm = host(stats.mean.as_tensor(), OP, format_args!("{p}.running_mean"))?;
    let rv = host(stats.var.as_tensor(), OP, format_args!("{p}.running_var"))?;
    let (w, b, rm, rv) = (w.get(), b.get(), rm.get(), rv.get());
    let c = bn.spec.channels;
    if [w.len(), b.len(), rm.len(), rv.len()] != [c; 4] {
        bail!("{OP}: `{p}` does not have {c} values in each of its four tensors");
    }
    let eps = bn.spec.eps;
    let scale: Vec<f32> = w
        .iter()
        .zip(rv)
        .map(|(&w, &v)| (f64::from(w) / (f64::from(v) + eps).sqrt()) as f32)
        .collect();
    let mut shift: Vec<f32> = b
        .iter()
        .zip(rm)
        .zip(&scale)
        .map(|((&b, &m), &s)| (f64::from(b) - f64::from(m) * f64::from(s)) as f32)
        .collect();
    if let Some(cb) = conv_bias {
        let bv = host(cb, OP, "convolution bias")?;
        for ((sh, &sc), &bb) in shift.iter_mut().zip(&scale).zip(bv.get()) {
            *sh += sc * bb;
        }
    }
    Ok((scale, shift))
}

impl ForwardOps for CpuFusedOps<'_> {
    type Map = FusedMap;

    fn input(&mut self, x: &Tensor) -> Result<FusedMap> {
        let (n, c, h, w) = x.dims4()?;
        let v = host(x, OP, "input")?;
        Ok(FusedMap {
            data: fused::nchw_to_nhwc(v.get(), n, c, h * w),
            dims: [n, h, w, c],
            means: None,
        })
    }

    fn conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &FusedMap,
        residual: Option<&FusedMap>,
        squeeze: bool,
    ) -> Result<FusedMap> {
        let (conv, bn) = (&l.conv, &l.bn);
        let act = kernel_act(l.activation)?;
        let [n, h, w, c] = x.dims;
        if c != conv.spec.in_channels || bn.spec.channels != conv.spec.out_channels {
            bail!(
                "{OP}: `{}` takes {} channels to {}, got {c} in and a BatchNorm of {}",
                conv.spec.path,
                conv.spec.in_channels,
                conv.spec.out_channels,
                bn.spec.channels
            );
        }
        let (scale, shift) = eval_affine(bn, conv.bias.as_ref())?;
        let g = conv.geom([n, c, h, w]);
        let (oh, ow) = g.out_hw()?;
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            act,
        };
        let o = conv.spec.out_channels;
        let dims = [n, oh, ow, o];
        if conv.spec.is_depthwise() {
            if residual.is_some() {
                bail!("{OP}: the depthwise kernel adds no residual");
            }
            let weight = conv.weight()?;
            let wv = host(&weight, OP, format_args!("{}.weight", conv.spec.path))?;
            let (data, means) = fused::depthwise(&x.data, wv.get(), &g, &epi, squeeze)?;
            return Ok(FusedMap { data, dims, means });
        }
        let packed = self.packed(conv, &g)?;
        let res = residual.map(|r| r.data.as_slice());
        let data = fused::conv2d_prepared(&x.data, &packed, &g, &epi, res)?;
        let means = squeeze.then(|| fused::channel_means(&data, n, oh * ow, o));
        Ok(FusedMap { data, dims, means })
    }

    fn fuses_residual(&self, l: &ConvBnAct) -> bool {
        !l.conv.spec.is_depthwise()
    }

    fn squeeze_excite(&mut self, se: &SqueezeExcite, mut x: FusedMap) -> Result<FusedMap> {
        let [n, h, w, c] = x.dims;
        let means = match x.means.take() {
            Some(m) => m,
            None => fused::channel_means(&x.data, n, h * w, c),
        };
        let act = kernel_act(Some(se.activation))?;
        let r = se.reduce.spec.out_channels;
        let (rp, ep) = (&se.reduce.spec.path, &se.expand.spec.path);
        let wr = host(se.reduce.plain_weight(), OP, format_args!("{rp}.weight"))?;
        let we = host(se.expand.plain_weight(), OP, format_args!("{ep}.weight"))?;
        let bias = |b: &Option<Tensor>, len: usize, p: &str| -> Result<Vec<f32>> {
            match b {
                Some(t) => Ok(host(t, OP, format_args!("{p}.bias"))?.get().to_vec()),
                None => Ok(vec![0.0; len]),
            }
        };
        let br = bias(&se.reduce.bias, r, rp)?;
        let be = bias(&se.expand.bias, c, ep)?;
        let gate = fused::se_gates(&means, n, c, r, wr.get(), &br, we.get(), &be, act)?;
        fused::gate_channels(&mut x.data, &gate, n, h * w, c);
        Ok(x)
    }

    fn add_residual(
        &mut self,
        mut y: FusedMap,
        x: &FusedMap,
        keep: Option<Vec<f32>>,
    ) -> Result<FusedMap> {
        if keep.is_some() {
            bail!("{OP}: inference draws no drop-path masks");
        }
        if y.data.len() != x.data.len() {
            bail!("{OP}: a residual from {:?} to {:?}", x.dims, y.dims);
        }
        y.data.iter_mut().zip(&x.data).for_each(|(v, &r)| *v += r);
        Ok(y)
    }

    fn batch(&self, x: &FusedMap) -> Result<usize> {
        Ok(x.dims[0])
    }

    fn output(&mut self, x: &FusedMap) -> Result<Tensor> {
        let [n, h, w, c] = x.dims;
        let data = fused::nhwc_to_nchw(&x.data, n, h * w, c);
        Tensor::from_vec(data, (n, c, h, w), &Device::Cpu)?.to_dtype(self.dtype)
    }

    fn pool(&mut self, x: FusedMap) -> Result<Tensor> {
        let [n, h, w, c] = x.dims;
        let pooled = fused::channel_means(&x.data, n, h * w, c);
        Tensor::from_vec(pooled, (n, c), &Device::Cpu)
    }

    /// In f32 (the pooled features are), then back to the input's dtype.
    fn classify(&mut self, cls: &Classifier, pooled: &Tensor) -> Result<Tensor> {
        let w = cls.weight.to_dtype(DType::F32)?;
        let b = cls.bias.to_dtype(DType::F32)?;
        linear(pooled, &w, Some(&b))?.to_dtype(self.dtype)
    }
}
