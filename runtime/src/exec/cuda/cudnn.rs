//! The dense convolutions' library on a GPU: cuDNN (the `cudnn` feature), through cudarc's
//! bindings, on candle's stream. NHWC maps and `[o, k, k, c]` (cuDNN's KRSC) weights, as the
//! plans keep them, so no layout changes around a call.
//!
//! Per thread and device, one cuDNN handle; per convolution shape, pass and dtype, one
//! [`ConvPlan`]: the descriptors and the algorithm, chosen once by cuDNN's own benchmark
//! (`cudnnFindConvolution*Algorithm`, the fastest that succeeds: PyTorch's
//! `cudnn.benchmark = True`), with its workspace size. A call then only allocates its output
//! and workspace from candle's pool and launches.
//!
//! f32 convolutions are restricted to FMA kernels (`CUDNN_FMA_MATH`): cuDNN's default math
//! lets Ampere and later GPUs run f32 convolutions in TF32, 10-bit mantissas, which the f32
//! parity with timm (1e-4) and the CPU plans cannot afford. bf16 and f16 run on the tensor
//! cores, accumulating in f32.
//!
//! Checked only on a GPU (`runtime/tests/gpu.rs`); the plans' use of a library, on the CPU
//! with candle's convolution in cuDNN's place (`effnet-cuda-emu`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

use super::ConvLibrary;
use crate::ops::ConvGeom;

/// The most workspace one convolution may take: 1 GiB. cuDNN's fastest algorithms for the
/// stem and Fused-MBConv layers need a few MB to a few hundred; the limit only keeps a
/// pathological choice from taking a training run's memory.
const WORKSPACE_LIMIT: usize = 1 << 30;

/// cuDNN as a [`ConvLibrary`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cudnn;

/// The library the cuda plans use when the build has cuDNN.
pub(crate) static CUDNN: Cudnn = Cudnn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

impl Pass {
    fn what(self) -> &'static str {
        match self {
            Pass::Forward => "cudnn convolution",
            Pass::InputGrad => "cudnn convolution input gradient",
            Pass::WeightGrad => "cudnn convolution weight gradient",
        }
    }
}

/// One call: the pass and the window (padding symmetric, [`super::conv_library`]).
struct Call {
    pass: Pass,
    g: ConvGeom,
}

/// What a plan is chosen for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    pass: Pass,
    dtype: DType,
    dims: [c_int; 11],
}

enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    InputGrad(sys::cudnnConvolutionBwdDataAlgo_t),
    WeightGrad(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// A convolution's descriptors and algorithm, made once per shape.
struct ConvPlan {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    algo: Algo,
    workspace: usize,
}

impl Drop for ConvPlan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created for this plan and is destroyed once, here.
        // Errors at teardown (the driver already gone at process exit) have no one to go to.
        unsafe {
            let _ = result::destroy_tensor_descriptor(self.x);
            let _ = result::destroy_filter_descriptor(self.w);
            let _ = result::destroy_tensor_descriptor(self.y);
            let _ = result::destroy_convolution_descriptor(self.conv);
        }
    }
}

/// A thread's cuDNN handle on one device's stream, and its plans. The handle itself is never
/// destroyed: a thread's locals are dropped at its exit, for the main thread after the CUDA
/// context may be gone, where `cudnnDestroy` (which frees device memory and synchronizes)
/// is not safe to call; PyTorch leaks its cuDNN handles for the same reason. One handle per
/// thread and GPU is what that costs.
struct Handle {
    raw: sys::cudnnHandle_t,
    plans: HashMap<PlanKey, ConvPlan>,
}

thread_local! {
    /// cuDNN handles are not to be shared between threads (cuDNN's thread-safety rules): one
    /// per thread and device (a data-parallel run has a thread per GPU).
    static HANDLES: RefCell<HashMap<DeviceId, Handle>> = RefCell::new(HashMap::new());
}

/// What a user can do when cuDNN fails: run without it.
const WITHOUT_CUDNN: &str = "EFFNET_DENSE_CONV=patches runs the dense convolutions without cuDNN";

fn err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: cuDNN failed with {e:?} ({WITHOUT_CUDNN})"))
}

fn int(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v)
        .map_err(|_| candle_core::Error::Msg(format!("{what}: {v} exceeds cuDNN's int")))
}

fn data_type(dtype: DType, what: &str) -> Result<sys::cudnnDataType_t> {
    Ok(match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        d => bail!(
            "{what}: {} maps; cuDNN runs f32, bf16 and f16 here",
            d.as_str()
        ),
    })
}

impl Call {
    fn key(&self, dtype: DType) -> Result<PlanKey> {
        let g = &self.g;
        let what = self.pass.what();
        let mut dims = [0; 11];
        let values = [
            g.n,
            g.c,
            g.h,
            g.w,
            g.o,
            g.k,
            g.stride,
            g.dilation,
            g.pad.top,
            g.pad.left,
            usize::from(g.pad.top != g.pad.bottom || g.pad.left != g.pad.right),
        ];
        for (d, v) in dims.iter_mut().zip(values) {
            *d = int(v, what)?;
        }
        if dims[10] != 0 {
            bail!("{what}: cuDNN pads symmetrically, got {:?}", g.pad);
        }
        Ok(PlanKey {
            pass: self.pass,
            dtype,
            dims,
        })
    }

    /// The descriptors of this call's convolution and cuDNN's fastest algorithm for it.
    fn make_plan(&self, handle: sys::cudnnHandle_t, dtype: DType) -> Result<ConvPlan> {
        let what = self.pass.what();
        let e = |e| err(what, e);
        let g = &self.g;
        let (oh, ow) = g.out_hw()?;
        let dt = data_type(dtype, what)?;
        let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
        let [n, c, h, w, o, k, s, d, ph, pw, _] = self.key(dtype)?.dims;
        let (oh, ow) = (int(oh, what)?, int(ow, what)?);
        let mut plan = ConvPlan {
            x: result::create_tensor_descriptor().map_err(e)?,
            w: result::create_filter_descriptor().map_err(e)?,
            y: result::create_tensor_descriptor().map_err(e)?,
            conv: result::create_convolution_descriptor().map_err(e)?,
            algo: Algo::Forward(
                sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            ),
            workspace: 0,
        };
        let f32_maps = dtype == DType::F32;
        // SAFETY: the descriptors were just created for this plan; the handle is this thread's.
        unsafe {
            result::set_tensor4d_descriptor(plan.x, nhwc, dt, [n, c, h, w]).map_err(e)?;
            result::set_filter4d_descriptor(plan.w, dt, nhwc, [o, c, k, k]).map_err(e)?;
            result::set_tensor4d_descriptor(plan.y, nhwc, dt, [n, o, oh, ow]).map_err(e)?;
            result::set_convolution2d_descriptor(
                plan.conv,
                ph,
                pw,
                s,
                s,
                d,
                d,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(e)?;
            let math = if f32_maps {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            };
            result::set_convolution_math_type(plan.conv, math).map_err(e)?;
        }
        // cuDNN's benchmark, fastest first; keep the first that ran, fits the workspace limit,
        // and (for f32) stayed off the tensor cores.
        let usable = |status: sys::cudnnStatus_t, memory: usize, math: sys::cudnnMathType_t| {
            status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && memory <= WORKSPACE_LIMIT
                && !(f32_maps
                    && matches!(
                        math,
                        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
                            | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
                    ))
        };
        const WANTED: c_int = 16;
        let mut found: c_int = 0;
        // SAFETY: the descriptors describe this convolution; `perf` holds `WANTED` results and
        // cuDNN writes `found <= WANTED` of them.
        let chosen = unsafe {
            match self.pass {
                Pass::Forward => {
                    let mut perf =
                        [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); WANTED as usize];
                    sys::cudnnFindConvolutionForwardAlgorithm(
                        handle,
                        plan.x,
                        plan.w,
                        plan.conv,
                        plan.y,
                        WANTED,
                        &mut found,
                        perf.as_mut_ptr(),
                    )
                    .result()
                    .map_err(e)?;
                    perf.iter()
                        .take(found.max(0) as usize)
                        .find(|p| usable(p.status, p.memory, p.mathType))
                        .map(|p| (Algo::Forward(p.algo), p.memory, p.mathType))
                }
                Pass::InputGrad => {
                    let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>();
                        WANTED as usize];
                    sys::cudnnFindConvolutionBackwardDataAlgorithm(
                        handle,
                        plan.w,
                        plan.y,
                        plan.conv,
                        plan.x,
                        WANTED,
                        &mut found,
                        perf.as_mut_ptr(),
                    )
                    .result()
                    .map_err(e)?;
                    perf.iter()
                        .take(found.max(0) as usize)
                        .find(|p| usable(p.status, p.memory, p.mathType))
                        .map(|p| (Algo::InputGrad(p.algo), p.memory, p.mathType))
                }
                Pass::WeightGrad => {
                    let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>();
                        WANTED as usize];
                    sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                        handle,
                        plan.x,
                        plan.y,
                        plan.conv,
                        plan.w,
                        WANTED,
                        &mut found,
                        perf.as_mut_ptr(),
                    )
                    .result()
                    .map_err(e)?;
                    perf.iter()
                        .take(found.max(0) as usize)
                        .find(|p| usable(p.status, p.memory, p.mathType))
                        .map(|p| (Algo::WeightGrad(p.algo), p.memory, p.mathType))
                }
            }
        };
        let Some((algo, workspace, math)) = chosen else {
            bail!(
                "{what}: cuDNN found no algorithm for {g:?} in {} ({WITHOUT_CUDNN})",
                dtype.as_str()
            );
        };
        if !f32_maps {
            // The chosen algorithm's own math type (PyTorch sets it the same way).
            // SAFETY: the descriptor is this plan's.
            unsafe { result::set_convolution_math_type(plan.conv, math) }.map_err(e)?;
        }
        plan.algo = algo;
        plan.workspace = workspace;
        Ok(plan)
    }

    /// Runs the call on `a`, `b` (forward: x, w; input gradient: dy, w; weight gradient: x,
    /// dy), all of `T`, into a new buffer of `out` values.
    fn launch<T>(
        &self,
        dev: &CudaDevice,
        dtype: DType,
        a: (&CudaStorage, &Layout),
        b: (&CudaStorage, &Layout),
        out: usize,
    ) -> Result<CudaStorage>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
    {
        let what = self.pass.what();
        let e = |e| err(what, e);
        let key = self.key(dtype)?;
        let stream = dev.cuda_stream();
        let (va, vb) = (view::<T>(a, what, 0)?, view::<T>(b, what, 1)?);
        // SAFETY: the call writes every value of its output (beta = 0).
        let mut y = unsafe { dev.alloc::<T>(out) }?;
        HANDLES.with(|handles| {
            let mut handles = handles.borrow_mut();
            let handle = match handles.entry(dev.id()) {
                std::collections::hash_map::Entry::Occupied(h) => h.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    stream
                        .context()
                        .bind_to_thread()
                        .map_err(|er| candle_core::Error::Msg(format!("{what}: {er:?}")))?;
                    let raw = result::create_handle().map_err(e)?;
                    // SAFETY: the handle is new; candle's stream outlives the device's use.
                    unsafe { result::set_stream(raw, stream.cu_stream() as *mut _) }.map_err(e)?;
                    v.insert(Handle {
                        raw,
                        plans: HashMap::new(),
                    })
                }
            };
            let raw = handle.raw;
            let plan = match handle.plans.entry(key) {
                std::collections::hash_map::Entry::Occupied(p) => p.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(self.make_plan(raw, dtype)?)
                }
            };
            let mut ws = if plan.workspace > 0 {
                // SAFETY: scratch memory; cuDNN writes before it reads.
                Some(unsafe { dev.alloc::<u8>(plan.workspace) }?)
            } else {
                None
            };
            let (one, zero) = (1f32, 0f32);
            let (alpha, beta) = (
                (&one as *const f32).cast::<c_void>(),
                (&zero as *const f32).cast::<c_void>(),
            );
            let (pa, _ra) = va.device_ptr(&stream);
            let (pb, _rb) = vb.device_ptr(&stream);
            let (py, _ry) = y.device_ptr_mut(&stream);
            let (pw, _rw) = match ws.as_mut() {
                Some(w) => {
                    let (p, r) = w.device_ptr_mut(&stream);
                    (p as *mut c_void, Some(r))
                }
                None => (std::ptr::null_mut(), None),
            };
            let (pa, pb, py) = (pa as *const c_void, pb as *const c_void, py as *mut c_void);
            // SAFETY: the plan's descriptors describe these buffers (the key holds their shape
            // and dtype; each operation checks its operands' sizes before it gets here), the
            // workspace is the plan's size, alpha and beta are f32 as cuDNN's scaling
            // parameters are for float, half and bfloat16 data.
            unsafe {
                match plan.algo {
                    Algo::Forward(algo) => result::convolution_forward(
                        raw,
                        alpha,
                        plan.x,
                        pa,
                        plan.w,
                        pb,
                        plan.conv,
                        algo,
                        pw,
                        plan.workspace,
                        beta,
                        plan.y,
                        py,
                    ),
                    Algo::InputGrad(algo) => result::convolution_backward_data(
                        raw,
                        alpha,
                        plan.w,
                        pb,
                        plan.y,
                        pa,
                        plan.conv,
                        algo,
                        pw,
                        plan.workspace,
                        beta,
                        plan.x,
                        py,
                    ),
                    Algo::WeightGrad(algo) => result::convolution_backward_filter(
                        raw,
                        alpha,
                        plan.x,
                        pa,
                        plan.y,
                        pb,
                        plan.conv,
                        algo,
                        pw,
                        plan.workspace,
                        beta,
                        plan.w,
                        py,
                    ),
                }
            }
            .map_err(e)
        })?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
}

/// A contiguous operand's values on the device.
fn view<'a, T: candle_core::cuda_backend::CudaDType>(
    (s, l): (&'a CudaStorage, &Layout),
    what: &str,
    i: usize,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let Some((lo, hi)) = l.contiguous_offsets() else {
        bail!("{what}: operand {i} must be contiguous");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(lo..hi))
}

impl CustomOp2 for Call {
    fn name(&self) -> &'static str {
        self.pass.what()
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        super::ops::cpu_refused(self.pass.what())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let what = self.pass.what();
        let g = &self.g;
        let (oh, ow) = g.out_hw()?;
        let x_dims = [g.n, g.h, g.w, g.c];
        let y_dims = [g.n, oh, ow, g.o];
        let w_dims = [g.o, g.k, g.k, g.c];
        let (a, b, out) = match self.pass {
            Pass::Forward => (x_dims, w_dims, y_dims),
            Pass::InputGrad => (y_dims, w_dims, x_dims),
            Pass::WeightGrad => (x_dims, y_dims, w_dims),
        };
        for (i, (l, want)) in [(l1, a), (l2, b)].into_iter().enumerate() {
            if l.shape().dims() != want {
                bail!(
                    "{what}: operand {i} is {:?}, expected {want:?}",
                    l.shape().dims()
                );
            }
        }
        let dtype = s1.dtype();
        if s2.dtype() != dtype {
            bail!(
                "{what}: operands of {} and {}",
                dtype.as_str(),
                s2.dtype().as_str()
            );
        }
        let dev = s1.device().clone();
        let len = out.iter().product();
        let args = ((s1, l1), (s2, l2));
        let storage = match dtype {
            DType::F32 => self.launch::<f32>(&dev, dtype, args.0, args.1, len)?,
            DType::BF16 => self.launch::<half::bf16>(&dev, dtype, args.0, args.1, len)?,
            DType::F16 => self.launch::<half::f16>(&dev, dtype, args.0, args.1, len)?,
            d => bail!(
                "{what}: {} maps; cuDNN runs f32, bf16 and f16 here",
                d.as_str()
            ),
        };
        Ok((storage, Shape::from(out.to_vec())))
    }
}

impl Cudnn {
    fn run(&self, pass: Pass, a: &Tensor, b: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        let call = Call { pass, g: *g };
        a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &call)
    }
}

impl ConvLibrary for Cudnn {
    fn name(&self) -> &'static str {
        "cudnn"
    }

    fn forward(&self, x: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        self.run(Pass::Forward, x, &w.to_dtype(x.dtype())?, g)
    }

    fn input_grad(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        self.run(Pass::InputGrad, dy, &w.to_dtype(dy.dtype())?, g)
    }

    fn weight_grad(&self, x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Result<Tensor> {
        self.run(Pass::WeightGrad, x, &dy.to_dtype(x.dtype())?, g)
    }
}
