//! Where and on how many threads a command computes: the `--device` and `--threads` options
//! that `train`, `eval`, `run`, `predict` and `bench` share, parsed in one place.

use candle_core::Device;
use clap::ValueEnum;

/// Where to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    #[default]
    Cpu,
    Cuda,
}

/// The options of every command that computes.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ComputeArgs {
    /// Where to compute: cpu, or cuda (GPU 0; needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceArg,
    /// Compute threads for every CPU kernel: effnet's own and candle's (default: one per
    /// core, or RAYON_NUM_THREADS). On a busy machine fewer can be faster: workers spin-wait
    /// at every operation while their partner core is taken.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The candle device for `--device`. CUDA in a build without it is an error that says how to
/// rebuild.
pub fn device(arg: DeviceArg) -> Result<Device, String> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda => cuda_device(0, "`--device cuda`"),
    }
}

/// GPU `ordinal` as a candle device; `flag` names the option that asked for it in errors.
pub fn cuda_device(ordinal: usize, flag: &str) -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err(format!(
            "{flag}: this effnet was built without CUDA support; rebuild it with \
             `cargo build --release --features cuda` (needs the CUDA toolkit)"
        ));
    }
    let dev =
        Device::new_cuda(ordinal).map_err(|e| format!("{flag}: cannot open GPU {ordinal}: {e}"))?;
    effnet_runtime::exec::cuda::configure_device(&dev)
        .map_err(|e| format!("{flag}: GPU {ordinal}: {e}"))?;
    Ok(dev)
}

/// Size the one compute pool to `--threads`, before any computation, and return the number of
/// threads the kernels run on. effnet's kernels and candle's matrix products split their work
/// over rayon's global pool; candle's own loops size themselves from CANDLE_NUM_THREADS. Both
/// are set, so `--threads N` holds for every kernel.
pub fn configure_threads(threads: Option<usize>) -> Result<usize, String> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(
                "--threads 0: expected at least 1 (leave it out for one thread per core)".into(),
            );
        }
        // SAFETY: called first thing in `cli::run`, while the process has a single thread
        // (argument parsing spawns none; rayon's pool, candle's and the data workers start
        // later), so no other thread can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", n.to_string()) };
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("--threads {n}: cannot size the compute pool: {e}"))?;
    }
    Ok(rayon::current_num_threads())
}
