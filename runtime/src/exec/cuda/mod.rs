//! The CUDA inference plan: effnet's kernels ([`SOURCE`], compiled by NVRTC at run time on a
//! GPU machine so the PTX always matches the driver, and compiled for the CPU by the
//! `effnet-cuda-emu` crate in `cargo test`), their launch geometry, and, with the `cuda`
//! feature, the candle custom ops that launch them (`ops`) and the backend of the forward walk
//! (`backend`). The kernels' arithmetic is tested on every machine; the launches and the
//! backend only on a GPU (`runtime/tests/gpu.rs`, `tools/gpu-check.sh`).

#[cfg(feature = "cuda")]
pub(crate) mod backend;
#[cfg(feature = "cuda")]
pub(crate) mod ops;

use candle_core::{Result, bail};

use crate::ops::Act;

/// The kernels' CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel `SOURCE` defines, by its `extern "C"` name.
pub const KERNELS: &[&str] = &[
    "effnet_depthwise_nhwc",
    "effnet_affine_act_nhwc",
    "effnet_channel_means_nhwc",
    "effnet_gate_channels_nhwc",
];

/// Threads per block of every 1-D launch: 256 keeps eight warps per block, enough to hide
/// memory latency in these bandwidth-bound kernels on any GPU since Volta.
pub const BLOCK: u32 = 256;

/// `(grid, block)` of a 1-D launch with one thread per element of `total`; an error when the
/// grid would exceed CUDA's limit of 2^31 - 1 blocks.
pub fn grid_1d(total: usize) -> Result<(u32, u32)> {
    let blocks = total.div_ceil(BLOCK as usize).max(1);
    match u32::try_from(blocks) {
        Ok(b) if b <= i32::MAX as u32 => Ok((b, BLOCK)),
        _ => bail!("a launch of {total} threads needs {blocks} blocks, over CUDA's 2^31 - 1"),
    }
}

/// The kernels' code for an activation (`effnet_act` in the source).
pub fn act_code(act: Act) -> i32 {
    match act {
        Act::Identity => 0,
        Act::Silu => 1,
        Act::Relu => 2,
        Act::Relu6 => 3,
        Act::HardSwish => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_defines_every_kernel_once_and_includes_nothing() {
        for k in KERNELS {
            let decl = format!("extern \"C\" __global__ void {k}(");
            assert_eq!(SOURCE.matches(&decl).count(), 1, "{k}");
        }
        assert_eq!(
            SOURCE.matches("extern \"C\" __global__").count(),
            KERNELS.len()
        );
        // NVRTC would need a toolkit's headers for an #include.
        assert!(
            !SOURCE
                .lines()
                .any(|l| l.trim_start().starts_with("#include"))
        );
    }

    #[test]
    fn launch_geometry_covers_every_element_and_refuses_an_oversized_grid() -> Result<()> {
        assert_eq!(grid_1d(0)?, (1, BLOCK));
        assert_eq!(grid_1d(1)?, (1, BLOCK));
        assert_eq!(grid_1d(256)?, (1, BLOCK));
        assert_eq!(grid_1d(257)?, (2, BLOCK));
        let (g, b) = grid_1d(32 * 384 * 384 * 24)?;
        assert!(g as usize * b as usize >= 32 * 384 * 384 * 24);
        assert!(grid_1d(usize::MAX / 2).is_err());
        Ok(())
    }
}
