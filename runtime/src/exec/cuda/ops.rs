//! [`CudaKernels`] on a GPU: each operation checks its operands, then launches the kernels of
//! `kernels.cu` through one candle custom op ([`Launch`]), compiled once per process by
//! NVRTC. NVRTC rather than nvcc at build time: the PTX is made by the machine's own NVRTC,
//! so it always matches the driver that loads it (PTX from a newer toolkit than the driver is
//! refused with CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and the kernels need no second toolkit
//! at build time. No `arch` is given: NVRTC's default virtual architecture JIT-compiles on
//! every GPU the toolkit supports.
//!
//! The kernels' arithmetic and the backends' use of them are checked on the CPU
//! (`effnet-cuda-emu`); these launches only on a GPU (`runtime/tests/gpu.rs`,
//! `tools/gpu-check.sh`).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
    bail,
};

use super::launch::{Arg, Execute, Launch, Launcher};
use super::{SOURCE, grid_1d};

const MODULE: &str = "effnet_kernels";

/// The kernels' PTX, compiled on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        compile_ptx_with_opts(
            SOURCE,
            CompileOptions {
                name: Some("effnet_kernels.cu".into()),
                ..Default::default()
            },
        )
        .map(|p| p.to_src())
        .map_err(|e| format!("NVRTC could not compile effnet's CUDA kernels: {e}"))
    });
    match compiled {
        Ok(p) => Ok(p.as_str()),
        Err(e) => bail!("{e}"),
    }
}

enum View<'a> {
    F32(CudaView<'a, f32>),
    F64(CudaView<'a, f64>),
    Bf16(CudaView<'a, half::bf16>),
    F16(CudaView<'a, half::f16>),
}

impl Launch {
    fn run(&self, inputs: &[(&CudaStorage, &Layout)]) -> Result<(CudaStorage, Shape)> {
        let op = self.kernel;
        let Some((first, _)) = inputs.first() else {
            bail!("{op}: no inputs");
        };
        let dev: &CudaDevice = first.device();
        let mut views = Vec::with_capacity(inputs.len());
        for (i, (s, l)) in inputs.iter().enumerate() {
            let Some((a, b)) = l.contiguous_offsets() else {
                bail!("{op}: input {i} must be contiguous");
            };
            views.push(match s.dtype() {
                DType::F32 => View::F32(s.as_cuda_slice::<f32>()?.slice(a..b)),
                DType::F64 => View::F64(s.as_cuda_slice::<f64>()?.slice(a..b)),
                DType::BF16 => View::Bf16(s.as_cuda_slice::<half::bf16>()?.slice(a..b)),
                DType::F16 => View::F16(s.as_cuda_slice::<half::f16>()?.slice(a..b)),
                d => bail!(
                    "{op}: input {i} is {}, the kernels take f32, f64, bf16 or f16",
                    d.as_str()
                ),
            });
        }
        let total: usize = self.out.iter().product();
        let func = dev.get_or_load_custom_func(op, MODULE, ptx()?)?;
        let (grid, block) = grid_1d(self.threads)?;
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        let shape = Shape::from(self.out.clone());
        macro_rules! launch {
            ($t:ty) => {{
                // SAFETY: every kernel writes each element of its output before anyone reads it
                // (the caller's `threads` covers the output, threads past the end return).
                let y = unsafe { dev.alloc::<$t>(total) }?;
                let mut b = func.builder();
                for v in &views {
                    match v {
                        View::F32(v) => b.arg(v),
                        View::F64(v) => b.arg(v),
                        View::Bf16(v) => b.arg(v),
                        View::F16(v) => b.arg(v),
                    };
                }
                b.arg(&y);
                for s in &self.scalars {
                    match s {
                        Arg::Int(v) => b.arg(v),
                        Arg::Long(v) => b.arg(v),
                        Arg::Double(v) => b.arg(v),
                    };
                }
                // SAFETY: the arguments follow the kernel's parameters in order and type (the
                // inputs' pointers, the output's, then the scalars as declared: each operation
                // of `Launched` builds them for its kernel), and the buffers hold what the
                // sizes say (each operation checks its operands' element counts first).
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }};
        }
        let storage = match self.out_dtype {
            DType::F64 => launch!(f64),
            DType::BF16 => launch!(half::bf16),
            DType::F16 => launch!(half::f16),
            _ => launch!(f32),
        };
        Ok((storage, shape))
    }
}

/// The CPU side of an op that only the cuda plans run (their kernels, cuDNN's calls).
pub(crate) fn cpu_refused(op: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{op} runs on CUDA tensors only (the cuda plans)")
}

impl CustomOp1 for Launch {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.kernel)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s, l)])
    }
}

impl CustomOp2 for Launch {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.kernel)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2)])
    }
}

impl CustomOp3 for Launch {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.kernel)
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// Carries out a [`Launch`] on the GPU, as a candle custom op on its inputs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OnGpu;

impl Execute for OnGpu {
    fn execute(&self, launch: &Launch, inputs: &[&Tensor]) -> Result<Tensor> {
        match inputs {
            [a] => a.apply_op1_no_bwd(launch),
            [a, b] => a.apply_op2_no_bwd(b, launch),
            [a, b, c] => a.apply_op3_no_bwd(b, c, launch),
            _ => bail!(
                "{}: {} inputs; a launch takes 1 to 3",
                launch.kernel,
                inputs.len()
            ),
        }
    }
}

/// effnet's kernels launched on the GPU.
pub(crate) type Launched = Launcher<OnGpu>;

/// The kernels the cuda plans run on a GPU: dense convolutions by the process's
/// [`super::DenseConv`] (cuDNN where the build has it, unless `EFFNET_DENSE_CONV=patches`).
pub(crate) fn launched() -> Result<Launched> {
    Ok(Launcher::new(OnGpu).with_library(super::DenseConv::of_process()?.library()))
}

/// The default pool of `d`'s stream-ordered allocator, or `None` when the GPU has none (then
/// cudarc allocates with plain cuMemAlloc).
fn default_pool(
    d: &CudaDevice,
) -> Result<Option<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool>> {
    use candle_core::cuda_backend::cudarc::driver::result;
    let ctx = d.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    // SAFETY: the device handle is the context's own.
    let pool = unsafe { result::device::get_default_mem_pool(ctx.cu_device()) };
    pool.map(Some)
        .map_err(|e| candle_core::Error::Msg(format!("the GPU's memory pool: {e:?}")))
}

/// See [`super::configure_device`].
pub(crate) fn configure(d: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    // SAFETY: every tensor of effnet is made and used on this device's one stream (no other
    // stream exists in effnet), so no cross-stream ordering is lost.
    unsafe { d.disable_event_tracking() };
    let Some(pool) = default_pool(d)? else {
        return Ok(());
    };
    let mut threshold = u64::MAX;
    // SAFETY: `pool` is the device's default pool; the release threshold attribute takes a
    // `cuuint64_t`, which `threshold` is, alive for the call.
    unsafe {
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .map_err(|e| candle_core::Error::Msg(format!("configuring the GPU's memory pool: {e:?}")))
}

/// See [`super::peak_device_bytes`].
pub(crate) fn pool_high_watermark(d: &CudaDevice) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let pool = default_pool(d).ok().flatten()?;
    let mut used: u64 = 0;
    // SAFETY: as in `configure`; the used-memory high watermark is a `cuuint64_t`.
    unsafe {
        result::mem_pool::get_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut used as *mut u64).cast(),
        )
    }
    .ok()
    .map(|()| used)
}
