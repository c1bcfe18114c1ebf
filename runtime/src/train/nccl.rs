//! The NCCL communicator (feature `nccl`): one rank per GPU, each a thread of this process,
//! the collectives NCCL's on candle's stream of each device, so they are ordered with the
//! step's kernels and never leave the device.
//!
//! NCCL itself cannot stop a collective whose peer never arrives: a rank waiting in
//! `ncclAllReduce` for a rank that failed would wait for ever. So every collective first
//! meets the other ranks on the host ([`CpuComm`]'s zero-length collective, which carries
//! the failure flag): once all ranks are there, each enqueues its NCCL call right after,
//! and a rank that failed is reported there instead of hanging the others.
//!
//! The collective timeout is honoured at that meeting: it is the [`CpuComm`]'s, so a rank that
//! never arrives stops the others after the timeout, naming it. NCCL has no timeout of its own
//! for a call once enqueued, and cudarc's `Comm` reaches `ncclCommAbort` only when dropped; a
//! call is enqueued only once every rank has met, so a rank that is gone is caught before.
//!
//! Not yet run on GPUs: this session had none. The CPU communicator runs the same trainer
//! code in the tests; a single GPU can only host world size 1 (NCCL refuses two ranks on one
//! device), several GPUs are needed to check this file.

use std::sync::Arc;
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::{CudaDType, CudaDevice, cudarc};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, bail};
use cudarc::nccl::{Comm, ReduceOp};

use super::parallel::{Communicator, CpuComm};
use super::{TrainError, TrainResult};

/// One GPU rank.
pub struct NcclComm {
    comm: Comm,
    device: CudaDevice,
    /// The host meeting before each collective, and the failure flag.
    control: CpuComm,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time. Each
// `NcclComm` is used for collectives by its rank's thread only (the trait's collectives are
// called from the rank's training loop); other threads call `abort`, which touches the host
// control alone.
unsafe impl Send for NcclComm {}
// SAFETY: as above: `&NcclComm` reaches NCCL only from the rank's own thread.
unsafe impl Sync for NcclComm {}

fn nccl_err(e: impl std::fmt::Debug) -> TrainError {
    TrainError::Config(format!("NCCL: {e:?}"))
}

/// One rank per device of `devices` (CUDA devices, one per GPU), as
/// [`super::parallel::run_ranks`] takes them; each waits at most `timeout` for the others at
/// a collective.
pub fn nccl_ranks(
    devices: &[Device],
    timeout: Duration,
) -> TrainResult<Vec<Arc<dyn Communicator>>> {
    let cuda = devices
        .iter()
        .map(|d| match d {
            Device::Cuda(c) => Ok(c.clone()),
            other => Err(TrainError::Config(format!(
                "NCCL ranks need CUDA devices, got {other:?}"
            ))),
        })
        .collect::<TrainResult<Vec<CudaDevice>>>()?;
    let streams = cuda.iter().map(CudaDevice::cuda_stream).collect();
    let comms = Comm::from_devices(streams).map_err(nccl_err)?;
    let controls = CpuComm::group_with_timeout(cuda.len(), timeout);
    Ok(comms
        .into_iter()
        .zip(cuda)
        .zip(controls)
        .map(|((comm, device), control)| {
            Arc::new(NcclComm {
                comm,
                device,
                control,
            }) as Arc<dyn Communicator>
        })
        .collect())
}

/// What a [`Collective`] computes.
#[derive(Clone, Copy)]
enum Reduction {
    /// The mean over the ranks (the gradients).
    Mean,
    /// The sum over the ranks (SyncBatchNorm's sums).
    Sum,
    /// Rank `root`'s values.
    Broadcast(usize),
}

/// A collective on a flat f32 or f64 CUDA tensor, as a candle op (its output a fresh buffer).
struct Collective<'a> {
    comm: &'a Comm,
    reduction: Reduction,
}

fn contiguous<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => bail!("an NCCL collective needs a contiguous buffer"),
    }
}

impl Collective<'_> {
    fn run<T>(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<CudaStorage>
    where
        T: CudaDType + cudarc::driver::DeviceRepr + cudarc::nccl::NcclType,
    {
        let src = contiguous::<T>(s, l)?;
        let n = l.shape().elem_count();
        let dev: &CudaDevice = s.device();
        // SAFETY: NCCL writes every element of the output before anyone reads it.
        let mut out = unsafe { dev.alloc::<T>(n) }?;
        let r = match self.reduction {
            Reduction::Mean => self.comm.all_reduce(&src, &mut out, &ReduceOp::Avg),
            Reduction::Sum => self.comm.all_reduce(&src, &mut out, &ReduceOp::Sum),
            Reduction::Broadcast(root) => {
                let root = i32::try_from(root).map_err(|_| {
                    candle_core::Error::Msg(format!("broadcast root {root} over 2^31"))
                })?;
                self.comm.broadcast(Some(&src), &mut out, root)
            }
        };
        if let Err(e) = r {
            bail!("NCCL: {e:?}");
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

impl CustomOp1 for Collective<'_> {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("an NCCL collective runs on a GPU tensor")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let storage = match s.dtype() {
            DType::F32 => self.run::<f32>(s, l)?,
            DType::F64 => self.run::<f64>(s, l)?,
            d => bail!("an NCCL collective on {} values (f32 or f64)", d.as_str()),
        };
        Ok((storage, Shape::from(l.shape().elem_count())))
    }
}

impl NcclComm {
    /// Every rank at the host meeting, or the failure that stopped one.
    fn meet(&self) -> TrainResult<()> {
        self.control
            .all_reduce_mean_host(&mut [])
            .map_err(|e| match e {
                // The host meeting is an empty collective: name what it stands for.
                TrainError::CollectiveTimeout {
                    missing,
                    collective,
                    timeout_s,
                } => TrainError::CollectiveTimeout {
                    missing,
                    collective: format!("the host meeting before an NCCL collective, {collective}"),
                    timeout_s,
                },
                e => e,
            })
    }

    fn collective(&self, flat: &Tensor, reduction: Reduction) -> TrainResult<Tensor> {
        self.meet()?;
        let flat = flat.flatten_all()?.contiguous()?;
        Ok(flat.apply_op1_no_bwd(&Collective {
            comm: &self.comm,
            reduction,
        })?)
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_mean(&self, bucket: &Tensor) -> TrainResult<Tensor> {
        self.collective(bucket, Reduction::Mean)
    }
    fn all_reduce_sum(&self, t: &Tensor) -> TrainResult<Tensor> {
        Ok(self
            .collective(&t.to_dtype(DType::F64)?, Reduction::Sum)?
            .reshape(t.dims())?)
    }
    fn all_reduce_mean_host(&self, values: &mut [f64]) -> TrainResult<()> {
        self.host_all_reduce(values, &ReduceOp::Avg)
    }
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> TrainResult<()> {
        self.host_all_reduce(values, &ReduceOp::Sum)
    }
    fn broadcast(&self, flat: &Tensor, root: usize) -> TrainResult<Tensor> {
        self.collective(flat, Reduction::Broadcast(root))
    }
    fn abort(&self, rank: usize, reason: &str) {
        self.control.abort(rank, reason);
    }
}

impl NcclComm {
    /// `op` over the ranks of host values, in place, through the device.
    fn host_all_reduce(&self, values: &mut [f64], op: &ReduceOp) -> TrainResult<()> {
        self.meet()?;
        let stream = self.device.cuda_stream();
        let src = stream.clone_htod(&*values).map_err(nccl_err)?;
        // SAFETY: NCCL writes every element before it is read back.
        let mut out = unsafe { stream.alloc::<f64>(values.len()) }.map_err(nccl_err)?;
        self.comm.all_reduce(&src, &mut out, op).map_err(nccl_err)?;
        let back = stream.clone_dtoh(&out).map_err(nccl_err)?;
        values.copy_from_slice(&back);
        Ok(())
    }
}
