//! The cuda-fused plan's backend of the forward walk: NHWC f32 maps from the stem to the
//! pooling, over [`CudaKernels`]. Depthwise convolutions run effnet's kernel with BatchNorm and
//! activation fused; 1x1 convolutions are one GEMM over all pixels of the batch (candle's
//! matmul: cuBLAS on a GPU) followed by the epilogue kernel (BatchNorm, activation, and the
//! block's residual in the same pass); other dense convolutions (stem, Fused-MBConv) are the
//! kernels' convolution library (cuDNN, NHWC) where they have one, else the patches kernel and
//! one GEMM, then the epilogue, so no map leaves NHWC; the
//! squeeze-excitation pools with the means kernel, runs its two small GEMMs and gates with the
//! gate kernel, with no host round trip.
//!
//! Each layer's weight in the kernels' layout and its folded BatchNorm are prepared once and
//! kept in the network's [`PreparedCache`] (the plan runs only on parameters that are not
//! training variables): about eight small launches per layer that a call no longer makes,
//! which is most of a batch-1 forward's launches. They are prepared again when a tensor is
//! replaced (its id changes) or the running statistics change in place (their generation).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, TensorId, bail};

use super::{ConvLibrary, CudaKernels, conv_library, image_chunks};
use crate::exec::candle::se_gates;
use crate::exec::cpu_fused::kernel_act;
use crate::exec::forward::ForwardOps;
use crate::nn::{Classifier, Conv2d, ConvBnAct, Norm, PreparedCache, SqueezeExcite};
use crate::ops::{ConvGeom, linear};

/// An NHWC f32 map, with its per-channel means when a following squeeze-excitation asked for
/// them.
pub(crate) struct CudaMap {
    t: Tensor,
    means: Option<Tensor>,
}

/// The forward walk's backend over `kernels`, with the layers' prepared weights in
/// `prepared`; maps in `maps` (see [`map_dtype`]), results in `dtype` (the input's).
pub(crate) struct CudaOps<'a, K> {
    pub kernels: K,
    pub prepared: &'a PreparedCache,
    pub maps: DType,
    pub dtype: DType,
}

/// The maps' dtype for parameters in `params`: bf16 or f16 for half-precision parameters
/// (`--dtype bf16 | f16`: half the memory traffic, and half-precision GEMMs, which cuBLAS runs
/// on the tensor cores, accumulating in f32), f32 otherwise. The kernels compute in f32 either
/// way and keep BatchNorm and the squeeze-excitation's gates in f32.
pub(crate) fn map_dtype(params: DType) -> DType {
    match params {
        DType::BF16 | DType::F16 => params,
        _ => DType::F32,
    }
}

/// A conv-bn-act layer as the kernels take it: the weight in their layout (depthwise `[c, 1,
/// k, k]`, dense `[o, k * k * c]`) and the folded BatchNorm `[2, o]`, with what they were made
/// from.
struct PreparedLayer {
    made_from: Vec<Option<TensorId>>,
    generation: u64,
    weight: Tensor,
    affine: Tensor,
}

/// The ids of every tensor a layer's prepared form depends on, and its statistics'
/// generation.
fn provenance(l: &ConvBnAct) -> Result<(Vec<Option<TensorId>>, u64)> {
    let stats = l.bn.running()?;
    let ids = vec![
        Some(l.conv.weight_id()),
        l.conv.bias.as_ref().map(Tensor::id),
        Some(l.bn.weight.id()),
        Some(l.bn.bias.id()),
        Some(stats.mean.as_tensor().id()),
        Some(stats.var.as_tensor().id()),
    ];
    Ok((ids, stats.generation()))
}

impl<K> CudaOps<'_, K> {
    /// `l`'s weight and folded BatchNorm: the cached ones while they hold, else made now.
    fn prepared(&self, l: &ConvBnAct, g: &ConvGeom) -> Result<(Tensor, Tensor)> {
        let key = &l.conv.spec.path;
        let (made_from, generation) = provenance(l)?;
        if let Some(p) = self.prepared.get::<PreparedLayer>(key)
            && p.made_from == made_from
            && p.generation == generation
        {
            return Ok((p.weight.clone(), p.affine.clone()));
        }
        let cv = &l.conv;
        let weight = if cv.spec.is_depthwise() {
            cv.weight()?.to_dtype(DType::F32)?.contiguous()?
        } else {
            gemm_weight(cv, g)?.to_dtype(self.maps)?.contiguous()?
        };
        let affine = affine(&l.bn, cv.bias.as_ref())?;
        let entry = PreparedLayer {
            made_from,
            generation,
            weight: weight.clone(),
            affine: affine.clone(),
        };
        self.prepared.insert(key, Arc::new(entry));
        Ok((weight, affine))
    }
}

/// The eval BatchNorm as a `[2, c]` f32 tensor `(scale, shift)` on the weights' device, with
/// `conv_bias` folded into the shift.
fn affine(bn: &Norm, conv_bias: Option<&Tensor>) -> Result<Tensor> {
    let (scale, shift) = bn.folded()?;
    let shift = match conv_bias {
        Some(b) => (shift + (&scale * b.to_dtype(DType::F32)?)?)?,
        None => shift,
    };
    Tensor::stack(&[scale, shift], 0)?.contiguous()
}

/// The NHWC window of `cv` on an `[n, h, w, c]` map.
pub(crate) fn nhwc_geom(cv: &Conv2d, x: &Tensor) -> Result<ConvGeom> {
    let (n, h, w, c) = x.dims4()?;
    let s = &cv.spec;
    if c != s.in_channels {
        bail!(
            "cuda plan: `{}` takes {} channels, got {c}",
            s.path,
            s.in_channels
        );
    }
    Ok(cv.geom([n, c, h, w]))
}

/// The kernels' convolution library when they have one and `cv` is a dense convolution of one
/// group (grouped ones stay on the plans' other paths).
pub(crate) fn library_for<'k, K: CudaKernels>(
    k: &'k K,
    cv: &Conv2d,
) -> Option<&'k dyn ConvLibrary> {
    k.conv_library()
        .filter(|_| cv.spec.groups == 1 && !cv.spec.is_depthwise())
}

/// Whether `g` is a pointwise convolution: one GEMM over the map's pixels, no patches.
pub(crate) fn is_pointwise(g: &ConvGeom, groups: usize) -> bool {
    g.k == 1 && g.stride == 1 && g.pad.is_zero() && groups == 1
}

/// A dense convolution's weight `[o, c, k, k]` as the GEMM operand `[o, k * k * c]` (the
/// patches' tap order).
pub(crate) fn gemm_weight(cv: &Conv2d, g: &ConvGeom) -> Result<Tensor> {
    let w = cv.weight()?.to_dtype(DType::F32)?;
    if g.k == 1 {
        return w.reshape((g.o, g.c));
    }
    w.permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((g.o, g.k * g.k * g.c))
}

/// The output `[n * oh * ow, o]` of a dense (not depthwise) convolution before its
/// BatchNorm, without bias: one GEMM with `wt` (from [`gemm_weight`]) when the convolution is
/// pointwise; else by the kernels' convolution library when they have one, or on the patches,
/// a GEMM a chunk of images when the whole batch's patches would exceed
/// [`CudaKernels::patch_values`].
pub(crate) fn dense_conv<K: CudaKernels>(
    k: &K,
    cv: &Conv2d,
    wt: &Tensor,
    x: &Tensor,
    g: &ConvGeom,
) -> Result<Tensor> {
    if is_pointwise(g, cv.spec.groups) {
        return x.reshape((g.n * g.h * g.w, g.c))?.matmul(&wt.t()?);
    }
    if let Some(lib) = library_for(k, cv) {
        return conv_library::forward(lib, x, wt, g);
    }
    let wt = wt.t()?;
    let chunks = image_chunks(g, k.patch_values())?;
    if let [_] = chunks.as_slice() {
        return k.im2col(x, g)?.matmul(&wt);
    }
    let parts = chunks
        .iter()
        .map(|&(start, n)| {
            let gc = ConvGeom { n, ..*g };
            k.im2col(&x.narrow(0, start, n)?, &gc)?.matmul(&wt)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

impl<K: CudaKernels> ForwardOps for CudaOps<'_, K> {
    type Map = CudaMap;

    fn input(&mut self, x: &Tensor) -> Result<CudaMap> {
        let t = x.to_dtype(self.maps)?.permute((0, 2, 3, 1))?.contiguous()?;
        Ok(CudaMap { t, means: None })
    }

    fn conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &CudaMap,
        residual: Option<&CudaMap>,
        squeeze: bool,
    ) -> Result<CudaMap> {
        let cv = &l.conv;
        let act = kernel_act(l.activation)?;
        let g = nhwc_geom(cv, &x.t)?;
        let (wt, aff) = self.prepared(l, &g)?;
        let y = if cv.spec.is_depthwise() {
            if residual.is_some() {
                bail!("cuda plan: the depthwise kernel adds no residual");
            }
            self.kernels.depthwise(&x.t, &wt, &aff, &g, act)?
        } else {
            let (oh, ow) = g.out_hw()?;
            let z = dense_conv(&self.kernels, cv, &wt, &x.t, &g)?.reshape((g.n, oh, ow, g.o))?;
            self.kernels
                .affine_act(&z, &aff, residual.map(|r| &r.t), act)?
        };
        let means = if squeeze {
            Some(self.kernels.channel_means(&y)?)
        } else {
            None
        };
        Ok(CudaMap { t: y, means })
    }

    fn fuses_residual(&self, l: &ConvBnAct) -> bool {
        !l.conv.spec.is_depthwise()
    }

    fn squeeze_excite(&mut self, se: &SqueezeExcite, mut x: CudaMap) -> Result<CudaMap> {
        let means = match x.means.take() {
            Some(m) => m,
            None => self.kernels.channel_means(&x.t)?,
        };
        // The means are f32; the SE's small GEMMs run in its weights' dtype, the gates in f32.
        let wdtype = se.reduce.plain_weight().dtype();
        let gate = se_gates(se, &means.to_dtype(wdtype)?)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let t = self.kernels.gate_channels(&x.t, &gate)?;
        Ok(CudaMap { t, means: None })
    }

    fn add_residual(&mut self, y: CudaMap, x: &CudaMap, keep: Option<Vec<f32>>) -> Result<CudaMap> {
        if keep.is_some() {
            bail!("cuda plan: inference draws no drop-path masks");
        }
        Ok(CudaMap {
            t: (y.t + &x.t)?,
            means: None,
        })
    }

    fn batch(&self, x: &CudaMap) -> Result<usize> {
        x.t.dim(0)
    }

    fn output(&mut self, x: &CudaMap) -> Result<Tensor> {
        x.t.permute((0, 3, 1, 2))?
            .contiguous()?
            .to_dtype(self.dtype)
    }

    fn pool(&mut self, x: CudaMap) -> Result<Tensor> {
        self.kernels.channel_means(&x.t)
    }

    fn classify(&mut self, cls: &Classifier, pooled: &Tensor) -> Result<Tensor> {
        let w = cls.weight.to_dtype(DType::F32)?;
        let b = cls.bias.to_dtype(DType::F32)?;
        linear(pooled, &w, Some(&b))?.to_dtype(self.dtype)
    }
}
