//! effnet's CUDA kernels (`runtime/src/exec/cuda/kernels.cu`) compiled for the CPU, each grid
//! run as loops (`src/cuda_on_cpu.h`), behind safe functions with the same arguments the CUDA
//! backend passes and the same launch geometry ([`effnet_runtime::exec::cuda::grid_1d`]).
//! `tests/kernels.rs` compares them with the CPU kernels on random shapes, so the kernels'
//! arithmetic and indexing are tested on every machine; races, memory ordering and speed are
//! not (only a GPU run shows those).

use std::ffi::{c_int, c_long, c_uint};

use candle_core::{Result, bail};
use effnet_runtime::exec::cuda::{act_code, grid_1d};
use effnet_runtime::ops::{Act, ConvGeom};

unsafe extern "C" {
    fn emu_depthwise_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const f32,
        w: *const f32,
        scale: *const f32,
        shift: *const f32,
        y: *mut f32,
        n: c_int,
        h: c_int,
        wd: c_int,
        c: c_int,
        k: c_int,
        stride: c_int,
        dil: c_int,
        pad_top: c_int,
        pad_left: c_int,
        oh: c_int,
        ow: c_int,
        act: c_int,
    );
    fn emu_affine_act_nhwc(
        grid: c_uint,
        block: c_uint,
        z: *const f32,
        scale: *const f32,
        shift: *const f32,
        residual: *const f32,
        y: *mut f32,
        total: c_long,
        c: c_int,
        act: c_int,
    );
    fn emu_channel_means_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const f32,
        means: *mut f32,
        n: c_int,
        p: c_long,
        c: c_int,
    );
    fn emu_gate_channels_nhwc(
        grid: c_uint,
        block: c_uint,
        x: *const f32,
        gate: *const f32,
        y: *mut f32,
        n: c_int,
        p: c_long,
        c: c_int,
    );
}

fn int(v: usize, what: &str) -> Result<c_int> {
    match c_int::try_from(v) {
        Ok(i) => Ok(i),
        Err(_) => bail!("{what} = {v} does not fit the kernels' int"),
    }
}

fn long(v: usize, what: &str) -> Result<c_long> {
    match c_long::try_from(v) {
        Ok(i) => Ok(i),
        Err(_) => bail!("{what} = {v} does not fit the kernels' long"),
    }
}

/// `effnet_depthwise_nhwc`: `x` NHWC `[n, h, w, c]`, `w` timm's `[c, 1, k, k]`, the folded
/// BatchNorm `scale` / `shift` (`[c]`) and the activation; returns the NHWC output.
pub fn depthwise_nhwc(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scale: &[f32],
    shift: &[f32],
    act: Act,
) -> Result<Vec<f32>> {
    let (oh, ow) = g.out_hw()?;
    let (n, c, k) = (g.n, g.c, g.k);
    if x.len() != n * g.h * g.w * c || w.len() != c * k * k || scale.len() != c || shift.len() != c
    {
        bail!("depthwise_nhwc: operands do not fit {g:?}");
    }
    let mut y = vec![0f32; n * oh * ow * c];
    let (grid, block) = grid_1d(y.len())?;
    // SAFETY: every pointer is a live slice of the length the kernel indexes for these sizes
    // (checked above: x is n*h*w*c, w is c*k*k, scale/shift c, y n*oh*ow*c), the kernel
    // returns for indices past n*oh*ow*c, and the emulated grid runs on this thread.
    unsafe {
        emu_depthwise_nhwc(
            grid,
            block,
            x.as_ptr(),
            w.as_ptr(),
            scale.as_ptr(),
            shift.as_ptr(),
            y.as_mut_ptr(),
            int(n, "n")?,
            int(g.h, "h")?,
            int(g.w, "w")?,
            int(c, "c")?,
            int(k, "k")?,
            int(g.stride, "stride")?,
            int(g.dilation, "dilation")?,
            int(g.pad.top, "pad top")?,
            int(g.pad.left, "pad left")?,
            int(oh, "oh")?,
            int(ow, "ow")?,
            act_code(act),
        );
    }
    Ok(y)
}

/// `effnet_affine_act_nhwc`: `act(z * scale + shift)` per channel, `+ residual` when given.
pub fn affine_act_nhwc(
    z: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    residual: Option<&[f32]>,
    act: Act,
) -> Result<Vec<f32>> {
    if c == 0 || !z.len().is_multiple_of(c) || scale.len() != c || shift.len() != c {
        bail!("affine_act_nhwc: {} values, {c} channels", z.len());
    }
    if residual.is_some_and(|r| r.len() != z.len()) {
        bail!("affine_act_nhwc: the residual is not shaped like the map");
    }
    let mut y = vec![0f32; z.len()];
    let (grid, block) = grid_1d(z.len())?;
    // SAFETY: z, y and the residual (if any) hold `total` values and scale/shift `c` (checked
    // above); a null residual is what the kernel tests for; the grid runs on this thread.
    unsafe {
        emu_affine_act_nhwc(
            grid,
            block,
            z.as_ptr(),
            scale.as_ptr(),
            shift.as_ptr(),
            residual.map_or(std::ptr::null(), <[f32]>::as_ptr),
            y.as_mut_ptr(),
            long(z.len(), "total")?,
            int(c, "c")?,
            act_code(act),
        );
    }
    Ok(y)
}

/// `effnet_channel_means_nhwc`: the `[n, c]` per-channel means of an `[n, p, c]` map.
pub fn channel_means_nhwc(x: &[f32], n: usize, p: usize, c: usize) -> Result<Vec<f32>> {
    if x.len() != n * p * c || p == 0 {
        bail!("channel_means_nhwc: {} values for [{n}, {p}, {c}]", x.len());
    }
    let mut means = vec![0f32; n * c];
    let (grid, block) = grid_1d(n * c)?;
    // SAFETY: x holds n*p*c values and means n*c (checked above); the kernel returns past
    // n*c; the grid runs on this thread.
    unsafe {
        emu_channel_means_nhwc(
            grid,
            block,
            x.as_ptr(),
            means.as_mut_ptr(),
            int(n, "n")?,
            long(p, "p")?,
            int(c, "c")?,
        );
    }
    Ok(means)
}

/// `effnet_gate_channels_nhwc` in place (`y` is `x`): `x[b, q, ch] *= gate[b, ch]`.
pub fn gate_channels_nhwc(x: &mut [f32], gate: &[f32], n: usize, p: usize, c: usize) -> Result<()> {
    if x.len() != n * p * c || gate.len() != n * c {
        bail!(
            "gate_channels_nhwc: {} values and {} gates for [{n}, {p}, {c}]",
            x.len(),
            gate.len()
        );
    }
    let (grid, block) = grid_1d(x.len())?;
    let y = x.as_mut_ptr();
    // SAFETY: x holds n*p*c values and gate n*c (checked above); the kernel returns past
    // n*p*c and reads each x[i] only in the thread that writes y[i], so y may alias x; the
    // grid runs on this thread.
    unsafe {
        emu_gate_channels_nhwc(
            grid,
            block,
            y,
            gate.as_ptr(),
            y,
            int(n, "n")?,
            long(p, "p")?,
            int(c, "c")?,
        );
    }
    Ok(())
}
