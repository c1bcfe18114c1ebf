//! The CUDA inference plan's backend: NHWC f32 maps on the GPU from the stem to the pooling.
//! Depthwise convolutions run effnet's kernel with BatchNorm and activation fused; 1x1
//! convolutions are one cuBLAS GEMM over all pixels of the batch (candle's matmul) followed by
//! the epilogue kernel (BatchNorm, activation, and the block's residual in the same pass);
//! other dense convolutions (stem, Fused-MBConv) are candle's convolution in NCHW, then the
//! epilogue kernel; the squeeze-excitation pools with the means kernel, runs its two small
//! GEMMs and gates with the gate kernel, with no host round trip.
//!
//! Not yet run on a GPU (see `super::ops`); `runtime/tests/gpu.rs` compares it with the candle
//! plan on a GPU.

use candle_core::{DType, Result, Tensor, bail};

use super::act_code;
use super::ops::{AffineAct, AffineActResidual, ChannelMeans, Depthwise, GateChannels};
use crate::exec::candle::{conv, se_gates};
use crate::exec::cpu_fused::kernel_act;
use crate::exec::forward::ForwardOps;
use crate::nn::{Classifier, ConvBnAct, Norm, SqueezeExcite};
use crate::ops::linear;

/// An NHWC f32 map on the GPU, with its per-channel means when a following squeeze-excitation
/// asked for them.
pub(crate) struct CudaMap {
    t: Tensor,
    means: Option<Tensor>,
}

/// The CUDA kernels; results in `dtype` (the input's).
pub(crate) struct CudaOps {
    pub dtype: DType,
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

impl ForwardOps for CudaOps {
    type Map = CudaMap;

    fn input(&mut self, x: &Tensor) -> Result<CudaMap> {
        let t = x
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        Ok(CudaMap { t, means: None })
    }

    fn conv_bn_act(
        &mut self,
        l: &ConvBnAct,
        x: &CudaMap,
        residual: Option<&CudaMap>,
        squeeze: bool,
    ) -> Result<CudaMap> {
        let (cv, s) = (&l.conv, &l.conv.spec);
        let act = act_code(kernel_act(l.activation)?);
        let (n, h, w, c) = x.t.dims4()?;
        if c != s.in_channels {
            bail!(
                "cuda plan: `{}` takes {} channels, got {c}",
                s.path,
                s.in_channels
            );
        }
        let pad = cv.pad(h, w);
        let y = if s.is_depthwise() {
            if residual.is_some() {
                bail!("cuda plan: the depthwise kernel adds no residual");
            }
            let (oh, ow) = cv.geom([n, c, h, w]).out_hw()?;
            let op = Depthwise {
                k: s.kernel,
                stride: s.stride,
                dilation: s.dilation,
                pad_top: pad.top,
                pad_left: pad.left,
                oh,
                ow,
                act,
            };
            let wt = cv.weight()?.to_dtype(DType::F32)?.contiguous()?;
            x.t.apply_op3(&wt, &affine(&l.bn, cv.bias.as_ref())?, op)?
        } else {
            let (z, folded_bias) =
                if s.kernel == 1 && s.stride == 1 && pad.is_zero() && s.groups == 1 {
                    // One GEMM over every pixel of the batch: [n*h*w, c] x [c, o].
                    let o = s.out_channels;
                    let wt = cv.weight()?.to_dtype(DType::F32)?.reshape((o, c))?;
                    let z = x.t.reshape((n * h * w, c))?.matmul(&wt.t()?)?;
                    (z.reshape((n, h, w, o))?, cv.bias.as_ref())
                } else {
                    // candle's convolution (NCHW, bias included), back to NHWC.
                    let nchw = x.t.permute((0, 3, 1, 2))?.contiguous()?;
                    let z = conv(cv, &nchw, false)?
                        .permute((0, 2, 3, 1))?
                        .contiguous()?;
                    (z, None)
                };
            let aff = affine(&l.bn, folded_bias)?;
            match residual {
                Some(r) => z.apply_op3(&aff, &r.t, AffineActResidual { act })?,
                None => z.apply_op2(&aff, AffineAct { act })?,
            }
        };
        let means = if squeeze {
            Some(y.apply_op1(ChannelMeans)?)
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
            None => x.t.apply_op1(ChannelMeans)?,
        };
        // The plan runs only on f32 parameters, the dtype of the pooled means.
        let gate = se_gates(se, &means)?.contiguous()?;
        let t = x.t.apply_op2(&gate, GateChannels)?;
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
        x.t.apply_op1(ChannelMeans)
    }

    fn classify(&mut self, cls: &Classifier, pooled: &Tensor) -> Result<Tensor> {
        let w = cls.weight.to_dtype(DType::F32)?;
        let b = cls.bias.to_dtype(DType::F32)?;
        linear(pooled, &w, Some(&b))?.to_dtype(self.dtype)
    }
}
