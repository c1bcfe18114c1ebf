//! The kernels of `kernels.cu` as candle custom ops on CUDA tensors (contiguous f32, NHWC),
//! compiled once per process by NVRTC. NVRTC rather than nvcc at build time: the PTX is made
//! by the machine's own NVRTC, so it always matches the driver that loads it (PTX from a newer
//! toolkit than the driver is refused with CUDA_ERROR_UNSUPPORTED_PTX_VERSION), and kernels
//! need no second toolkit at build time. No `arch` is given: NVRTC's default virtual
//! architecture JIT-compiles on every GPU the toolkit supports.
//!
//! Not yet run on a GPU: the kernels' arithmetic and indexing are checked on the CPU
//! (`effnet-cuda-emu`), these launches only type-checked; `runtime/tests/gpu.rs` and
//! `tools/gpu-check.sh` check them on a GPU.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, bail,
};

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

/// The f32 data of a contiguous CUDA storage under `l`.
fn view<'a>(s: &'a CudaStorage, l: &Layout, op: &str, what: &str) -> Result<CudaView<'a, f32>> {
    let slice = s.as_cuda_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

fn i32_of(v: usize, op: &str, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{op}: {what} = {v} over 2^31")))
}

fn launch_config(total: usize) -> Result<LaunchConfig> {
    let (grid, block) = grid_1d(total)?;
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn cpu_refused(op: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{op} runs on CUDA tensors only (the cuda plan)")
}

fn dims4(l: &Layout, op: &str) -> Result<[usize; 4]> {
    match l.shape().dims() {
        &[n, h, w, c] => Ok([n, h, w, c]),
        d => bail!("{op}: expected an NHWC map, got {d:?}"),
    }
}

/// Depthwise convolution with the BatchNorm + activation epilogue: `(x [n, h, w, c], weight
/// [c, 1, k, k], affine [2, c] = (scale, shift))` -> `[n, oh, ow, c]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depthwise {
    pub k: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
    pub act: i32,
}

impl CustomOp3 for Depthwise {
    fn name(&self) -> &'static str {
        "effnet_depthwise_nhwc"
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
        cpu_refused(self.name())
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
        let op = self.name();
        let [n, h, w, c] = dims4(l1, op)?;
        let k = self.k;
        if l2.shape().elem_count() != c * k * k || l3.shape().elem_count() != 2 * c {
            bail!(
                "{op}: a weight of {:?} and an affine of {:?} for {c} channels",
                l2.shape(),
                l3.shape()
            );
        }
        let dev: &CudaDevice = s1.device();
        let x = view(s1, l1, op, "input")?;
        let wt = view(s2, l2, op, "weight")?;
        let affine = view(s3, l3, op, "affine")?;
        let (scale, shift) = (affine.slice(0..c), affine.slice(c..2 * c));
        let total = n * self.oh * self.ow * c;
        // SAFETY: every element is written by the kernel below before anyone reads it.
        let y = unsafe { dev.alloc::<f32>(total) }?;
        let func = dev.get_or_load_custom_func(op, MODULE, ptx()?)?;
        let ints = [
            n,
            h,
            w,
            c,
            k,
            self.stride,
            self.dilation,
            self.pad_top,
            self.pad_left,
            self.oh,
            self.ow,
        ]
        .iter()
        .map(|&v| i32_of(v, op, "a size"))
        .collect::<Result<Vec<i32>>>()?;
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&wt);
        b.arg(&scale);
        b.arg(&shift);
        b.arg(&y);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&self.act);
        // SAFETY: the arguments match the kernel's parameters in order and type (pointers to
        // f32, then twelve ints), every buffer holds what the sizes say (checked above), and
        // threads past `total` return.
        unsafe { b.launch(launch_config(total)?) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            Shape::from((n, self.oh, self.ow, c)),
        ))
    }
}

/// A GEMM's epilogue: `(z [.., c], affine [2, c])` -> `act(z * scale + shift)`, plus a
/// residual shaped like `z` in [`AffineActResidual`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineAct {
    pub act: i32,
}

/// [`AffineAct`] with the block's residual added after the activation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AffineActResidual {
    pub act: i32,
}

fn affine_act(
    op: &str,
    act: i32,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let c = match l1.shape().dims().last() {
        Some(&c) if c > 0 => c,
        _ => bail!("{op}: an empty map {:?}", l1.shape()),
    };
    if l2.shape().elem_count() != 2 * c {
        bail!("{op}: an affine of {:?} for {c} channels", l2.shape());
    }
    let total = l1.shape().elem_count();
    let dev: &CudaDevice = s1.device();
    let z = view(s1, l1, op, "input")?;
    let affine = view(s2, l2, op, "affine")?;
    let (scale, shift) = (affine.slice(0..c), affine.slice(c..2 * c));
    let res = match residual {
        Some((s3, l3)) if l3.shape() == l1.shape() => Some(view(s3, l3, op, "residual")?),
        Some((_, l3)) => bail!("{op}: a residual of {:?} for {:?}", l3.shape(), l1.shape()),
        None => None,
    };
    // SAFETY: every element is written by the kernel below before anyone reads it.
    let y = unsafe { dev.alloc::<f32>(total) }?;
    let func = dev.get_or_load_custom_func("effnet_affine_act_nhwc", MODULE, ptx()?)?;
    let (total_l, c_i) = (total as i64, i32_of(c, op, "channels")?);
    // A null pointer says "no residual" to the kernel.
    let null: u64 = 0;
    let mut b = func.builder();
    b.arg(&z);
    b.arg(&scale);
    b.arg(&shift);
    match &res {
        Some(r) => b.arg(r),
        None => b.arg(&null),
    };
    b.arg(&y);
    b.arg(&total_l);
    b.arg(&c_i);
    b.arg(&act);
    // SAFETY: the arguments match the kernel's parameters in order and type (a pointer-sized
    // null for an absent residual), the buffers hold `total` and `c` values (checked above),
    // and threads past `total` return.
    unsafe { b.launch(launch_config(total)?) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l1.shape().clone(),
    ))
}

impl CustomOp2 for AffineAct {
    fn name(&self) -> &'static str {
        "effnet_affine_act_nhwc"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        affine_act(self.name(), self.act, (s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for AffineActResidual {
    fn name(&self) -> &'static str {
        "effnet_affine_act_nhwc (residual)"
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
        cpu_refused(self.name())
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
        affine_act(self.name(), self.act, (s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// Per-(image, channel) means of an NHWC map: `[n, h, w, c]` -> `[n, c]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelMeans;

impl CustomOp1 for ChannelMeans {
    fn name(&self) -> &'static str {
        "effnet_channel_means_nhwc"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let [n, h, w, c] = dims4(l, op)?;
        let dev: &CudaDevice = s.device();
        let x = view(s, l, op, "input")?;
        // SAFETY: every element is written by the kernel below before anyone reads it.
        let means = unsafe { dev.alloc::<f32>(n * c) }?;
        let func = dev.get_or_load_custom_func(op, MODULE, ptx()?)?;
        let (n_i, p_l, c_i) = (i32_of(n, op, "n")?, (h * w) as i64, i32_of(c, op, "c")?);
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&means);
        b.arg(&n_i);
        b.arg(&p_l);
        b.arg(&c_i);
        // SAFETY: the arguments match the kernel's parameters in order and type; `x` holds
        // n*h*w*c values and `means` n*c; threads past n*c return.
        unsafe { b.launch(launch_config(n * c)?) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(means, dev.clone()),
            Shape::from((n, c)),
        ))
    }
}

/// The excitation: `(x [n, h, w, c], gate [n, c])` -> `x * gate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateChannels;

impl CustomOp2 for GateChannels {
    fn name(&self) -> &'static str {
        "effnet_gate_channels_nhwc"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = self.name();
        let [n, h, w, c] = dims4(l1, op)?;
        if l2.shape().elem_count() != n * c {
            bail!("{op}: gates of {:?} for [{n}, {c}]", l2.shape());
        }
        let dev: &CudaDevice = s1.device();
        let x = view(s1, l1, op, "input")?;
        let gate = view(s2, l2, op, "gate")?;
        let total = n * h * w * c;
        // SAFETY: every element is written by the kernel below before anyone reads it.
        let y = unsafe { dev.alloc::<f32>(total) }?;
        let func = dev.get_or_load_custom_func(op, MODULE, ptx()?)?;
        let (n_i, p_l, c_i) = (i32_of(n, op, "n")?, (h * w) as i64, i32_of(c, op, "c")?);
        let mut b = func.builder();
        b.arg(&x);
        b.arg(&gate);
        b.arg(&y);
        b.arg(&n_i);
        b.arg(&p_l);
        b.arg(&c_i);
        // SAFETY: the arguments match the kernel's parameters in order and type; `x` and `y`
        // hold n*h*w*c values and `gate` n*c; threads past the end return.
        unsafe { b.launch(launch_config(total)?) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            l1.shape().clone(),
        ))
    }
}
