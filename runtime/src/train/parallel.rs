//! Data-parallel training: `W` ranks, each a [`super::Trainer`] with its own copy of the
//! network, run the same loop on their shards of every global batch
//! ([`crate::data::loader::Shard`]) and meet in a [`Communicator`] after each backward:
//!
//! - the gradients are averaged over the ranks (bucketed: one collective per bucket of about
//!   [`BUCKET_FLOATS`] values, not one per tensor), so every rank takes the same optimizer
//!   step from the same parameters and the parameters stay identical without being sent;
//! - the loss is averaged too, so every rank sees the same loss (the divergence check stops
//!   all ranks at once, and rank 0 reports the global batch's loss);
//! - the parameters and BatchNorm statistics are broadcast from rank 0 once, when a rank
//!   joins ([`super::Trainer::join`]), as PyTorch's DDP does at construction.
//!
//! By default BatchNorm normalizes each rank's shard with the shard's own statistics and
//! each rank keeps its own running statistics, as DDP does without `SyncBatchNorm`; rank 0's
//! are the ones saved and evaluated. With `sync_bn` ([`super::TrainOptions::sync_bn`]) every
//! train-mode BatchNorm takes the global batch's statistics instead
//! ([`BatchNormOverRanks`], `crate::exec::sync_bn`), so the running statistics are the same on
//! every rank. Only rank 0 keeps an EMA, evaluates, and (in `effnet train`) writes
//! checkpoints, metrics and logs.
//!
//! A rank that fails calls [`Communicator::abort`]; every other rank's next (or current)
//! collective then returns [`TrainError::PeerFailed`] instead of waiting, so the run stops
//! with the failing rank's error ([`run_ranks`]) and a checkpoint is only ever written
//! between epochs, complete. A rank that never arrives (stuck, or far too slow) cannot call
//! anything: the others wait for it at most the collective timeout
//! ([`DEFAULT_COLLECTIVE_TIMEOUT`] unless set), then stop with
//! [`TrainError::CollectiveTimeout`] naming the ranks that did not arrive. A rank stuck inside
//! its own work then still holds its thread: [`run_ranks_watched`] reports it
//! ([`TrainError::Stuck`]) a grace after the failure, so `effnet train` can say so and exit
//! instead of waiting for a thread nothing can stop.
//!
//! Two communicators implement the trait: [`CpuComm`] (one thread per rank in one process,
//! sharing memory; what the tests run) and, with the `nccl` feature, `super::nccl::NcclComm`
//! (one thread per GPU, NCCL's all-reduce on the device).

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::{TrainError, TrainResult};
use crate::exec::BatchNormSync;

/// How long a collective waits for the other ranks by default: 30 minutes. The longest
/// legitimate wait is at an epoch's end, where the other ranks wait in the next epoch's first
/// collective while rank 0 alone evaluates on the test set and writes the checkpoint; on a
/// large test set on a CPU that takes minutes. NCCL's own watchdog in PyTorch waits 10 to 30
/// minutes; this takes the long end, so only a rank that is truly stuck trips it.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// About 16 MB of f32 per collective: large enough that the per-call cost is amortized, small
/// enough that a bucket's flat copy stays a small share of memory (DDP's default is 25 MB).
pub const BUCKET_FLOATS: usize = 1 << 22;

/// What the ranks of a data-parallel run share. Every method is a collective: every rank
/// calls it, in the same order, with buffers of the same length.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The mean over the ranks of a flat f32 bucket (a 1-D tensor on the rank's device).
    fn all_reduce_mean(&self, bucket: &Tensor) -> TrainResult<Tensor>;
    /// The mean over the ranks of a few host scalars (the loss), in place.
    fn all_reduce_mean_host(&self, values: &mut [f64]) -> TrainResult<()>;
    /// The sum over the ranks of host values (SyncBatchNorm's per-channel sums), in place.
    /// By default the mean times the world size; a communicator that can sum exactly does.
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> TrainResult<()> {
        self.all_reduce_mean_host(values)?;
        let w = self.world_size() as f64;
        values.iter_mut().for_each(|v| *v *= w);
        Ok(())
    }
    /// The sum over the ranks of an f64 tensor on the rank's device (SyncBatchNorm's sums on
    /// a GPU), as a tensor of its shape there. By default through the host
    /// ([`Communicator::all_reduce_sum_host`]); NCCL sums on the device, with no host wait.
    fn all_reduce_sum(&self, t: &Tensor) -> TrainResult<Tensor> {
        let mut v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.all_reduce_sum_host(&mut v)?;
        Ok(Tensor::from_vec(v, t.dims(), t.device())?)
    }
    /// Rank `root`'s flat f32 buffer, on every rank.
    fn broadcast(&self, flat: &Tensor, root: usize) -> TrainResult<Tensor>;
    /// Stop the run: every rank's pending and later collectives fail with
    /// [`TrainError::PeerFailed`] naming `rank` and `reason`. The first abort wins.
    fn abort(&self, rank: usize, reason: &str);
}

/// World size 1: every collective is the identity. The trainer skips the collectives when
/// the world size is 1, so a single rank runs exactly what it ran before data parallelism.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleRank;

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_mean(&self, bucket: &Tensor) -> TrainResult<Tensor> {
        Ok(bucket.clone())
    }
    fn all_reduce_mean_host(&self, _: &mut [f64]) -> TrainResult<()> {
        Ok(())
    }
    fn broadcast(&self, flat: &Tensor, _: usize) -> TrainResult<Tensor> {
        Ok(flat.clone())
    }
    fn abort(&self, _: usize, _: &str) {}
}

/// Average `grads` over the ranks in buckets of at most `bucket_floats` values (a tensor
/// larger than that is a bucket of its own): one [`Communicator::all_reduce_mean`] per
/// bucket, in the parameters' order on every rank.
pub fn average_gradients(
    comm: &dyn Communicator,
    grads: Vec<Tensor>,
    bucket_floats: usize,
) -> TrainResult<Vec<Tensor>> {
    let mut out = Vec::with_capacity(grads.len());
    let mut bucket: Vec<Tensor> = Vec::new();
    let mut size = 0;
    for g in grads {
        let n = g.elem_count();
        if !bucket.is_empty() && size + n > bucket_floats {
            reduce_bucket(comm, std::mem::take(&mut bucket), &mut out)?;
            size = 0;
        }
        size += n;
        bucket.push(g);
    }
    if !bucket.is_empty() {
        reduce_bucket(comm, bucket, &mut out)?;
    }
    Ok(out)
}

/// SyncBatchNorm's sums over the ranks of a communicator, as the training step's backend
/// asks for them. The step's errors are candle's, which cannot carry a [`TrainError`]: the
/// collective's own error is kept here, so the trainer reports a peer's failure or a timeout
/// as such ([`BatchNormOverRanks::into_failure`]) rather than as this rank's.
pub struct BatchNormOverRanks<'a> {
    comm: &'a dyn Communicator,
    failure: Mutex<Option<TrainError>>,
}

impl<'a> BatchNormOverRanks<'a> {
    pub fn new(comm: &'a dyn Communicator) -> Self {
        BatchNormOverRanks {
            comm,
            failure: Mutex::new(None),
        }
    }

    /// The collective's error that failed the step, if one did.
    pub fn into_failure(self) -> Option<TrainError> {
        self.failure
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl BatchNormOverRanks<'_> {
    /// A collective's error as candle's, kept to be reported as itself.
    fn keep(&self, e: TrainError) -> candle_core::Error {
        let msg = e.to_string();
        let mut kept = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        kept.get_or_insert(e);
        candle_core::Error::Msg(msg)
    }
}

impl BatchNormSync for BatchNormOverRanks<'_> {
    fn sum_over_ranks(&self, values: &mut [f64]) -> candle_core::Result<()> {
        self.comm
            .all_reduce_sum_host(values)
            .map_err(|e| self.keep(e))
    }

    fn sum_tensor_over_ranks(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        self.comm.all_reduce_sum(t).map_err(|e| self.keep(e))
    }
}

fn reduce_bucket(
    comm: &dyn Communicator,
    bucket: Vec<Tensor>,
    out: &mut Vec<Tensor>,
) -> TrainResult<()> {
    let flat = flatten(&bucket)?;
    let mean = comm.all_reduce_mean(&flat)?;
    unflatten(&mean, &bucket, out)
}

/// The tensors' values, one after another, as a 1-D f32 tensor.
pub(crate) fn flatten(tensors: &[Tensor]) -> TrainResult<Tensor> {
    let parts = tensors
        .iter()
        .map(|t| t.to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// `flat` cut back into tensors shaped like `like`, appended to `out`.
pub(crate) fn unflatten(flat: &Tensor, like: &[Tensor], out: &mut Vec<Tensor>) -> TrainResult<()> {
    let mut at = 0;
    for t in like {
        let n = t.elem_count();
        out.push(
            flat.narrow(0, at, n)?
                .reshape(t.shape())?
                .to_dtype(t.dtype())?,
        );
        at += n;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The CPU communicator.

/// A contribution to a collective.
#[derive(Debug)]
enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Mean,
    Sum,
    Broadcast(usize),
}

impl Op {
    /// The collective, for messages.
    fn describe(self, values: usize) -> String {
        match self {
            Op::Mean => format!("an all-reduce (mean) of {values} values"),
            Op::Sum => format!("an all-reduce (sum) of {values} values"),
            Op::Broadcast(root) => format!("a broadcast of {values} values from rank {root}"),
        }
    }
}

/// Why a group stopped.
#[derive(Debug, Clone)]
enum Failure {
    /// A rank called [`Communicator::abort`].
    Aborted { rank: usize, reason: String },
    /// A rank waited longer than the timeout for these ranks.
    TimedOut {
        missing: Vec<usize>,
        collective: String,
        timeout: Duration,
    },
}

impl Failure {
    fn error(&self) -> TrainError {
        match self {
            Failure::Aborted { rank, reason } => peer_failed(*rank, reason),
            Failure::TimedOut {
                missing,
                collective,
                timeout,
            } => TrainError::CollectiveTimeout {
                missing: missing.clone(),
                collective: collective.clone(),
                timeout_s: timeout.as_secs_f64(),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Round {
    /// Completed collectives; a waiting rank wakes when it moves on.
    generation: u64,
    /// Each rank's contribution to the collective under way.
    slots: Vec<Option<Buf>>,
    /// What the last collective produced; it stays until every rank has arrived at the next
    /// one, so a slow reader always finds its own result.
    result: Option<Arc<Buf>>,
    failed: Option<Failure>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    round: Mutex<Round>,
    cv: Condvar,
    /// How long a rank waits in a collective for the others.
    timeout: Duration,
}

/// One rank of a group of threads in one process that share memory. The last rank to arrive
/// at a collective computes it, summing the contributions in rank order, so a run's results do
/// not depend on which thread came first.
#[derive(Debug, Clone)]
pub struct CpuComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl CpuComm {
    /// The ranks `0..world` of one group, one per thread, waiting for each other at most
    /// [`DEFAULT_COLLECTIVE_TIMEOUT`] in a collective.
    pub fn group(world: usize) -> Vec<CpuComm> {
        Self::group_with_timeout(world, DEFAULT_COLLECTIVE_TIMEOUT)
    }

    /// [`CpuComm::group`] whose collectives wait at most `timeout` for the other ranks; past
    /// it the run stops with [`TrainError::CollectiveTimeout`] on every rank.
    pub fn group_with_timeout(world: usize, timeout: Duration) -> Vec<CpuComm> {
        let shared = Arc::new(Shared {
            world: world.max(1),
            round: Mutex::new(Round {
                slots: (0..world.max(1)).map(|_| None).collect(),
                ..Round::default()
            }),
            cv: Condvar::new(),
            timeout,
        });
        (0..world.max(1))
            .map(|rank| CpuComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn collective(&self, mine: Buf, op: Op) -> TrainResult<Arc<Buf>> {
        let sh = &self.shared;
        let mut r = sh.round.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = &r.failed {
            return Err(f.error());
        }
        let generation = r.generation;
        let values = mine.len();
        r.slots[self.rank] = Some(mine);
        if r.slots.iter().all(Option::is_some) {
            let slots: Vec<Buf> = r.slots.iter_mut().filter_map(Option::take).collect();
            match combine(slots, op, sh.world) {
                Ok(b) => r.result = Some(Arc::new(b)),
                Err(reason) => {
                    r.failed = Some(Failure::Aborted {
                        rank: self.rank,
                        reason: reason.clone(),
                    });
                    sh.cv.notify_all();
                    return Err(TrainError::Config(reason));
                }
            }
            r.generation += 1;
            sh.cv.notify_all();
        } else {
            // `None`: a timeout too long to represent, so no deadline.
            let deadline = Instant::now().checked_add(sh.timeout);
            while r.generation == generation && r.failed.is_none() {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                match left {
                    Some(left) if left.is_zero() => {
                        // The ranks whose slot is empty never came: stop the whole group,
                        // naming them, instead of waiting for ever.
                        let missing = (0..sh.world).filter(|&k| r.slots[k].is_none()).collect();
                        r.failed = Some(Failure::TimedOut {
                            missing,
                            collective: format!(
                                "collective {} ({})",
                                generation + 1,
                                op.describe(values)
                            ),
                            timeout: sh.timeout,
                        });
                        sh.cv.notify_all();
                    }
                    Some(left) => {
                        r = sh
                            .cv
                            .wait_timeout(r, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    None => r = sh.cv.wait(r).unwrap_or_else(PoisonError::into_inner),
                }
            }
            if r.generation == generation
                && let Some(f) = &r.failed
            {
                return Err(f.error());
            }
        }
        r.result
            .clone()
            .ok_or_else(|| TrainError::Config("a collective finished without a result".into()))
    }
}

fn peer_failed(rank: usize, reason: &str) -> TrainError {
    TrainError::PeerFailed {
        rank,
        reason: reason.to_string(),
    }
}

/// The collective's result from every rank's contribution, in rank order.
fn combine(slots: Vec<Buf>, op: Op, world: usize) -> Result<Buf, String> {
    let len = slots[0].len();
    if let Some((r, b)) = slots.iter().enumerate().find(|(_, b)| b.len() != len) {
        return Err(format!(
            "rank {r} sent {} values to a collective where rank 0 sent {len}",
            b.len()
        ));
    }
    match op {
        Op::Broadcast(root) => slots
            .into_iter()
            .nth(root)
            .ok_or_else(|| format!("broadcast from rank {root} of {world}")),
        Op::Mean | Op::Sum => {
            let divide = op == Op::Mean;
            let mut it = slots.into_iter();
            match it.next() {
                Some(Buf::F32(mut acc)) => {
                    for b in it {
                        let Buf::F32(v) = b else {
                            return Err("a collective mixed f32 and f64 buffers".into());
                        };
                        acc.iter_mut().zip(v).for_each(|(a, v)| *a += v);
                    }
                    if divide {
                        let w = world as f32;
                        acc.iter_mut().for_each(|a| *a /= w);
                    }
                    Ok(Buf::F32(acc))
                }
                Some(Buf::F64(mut acc)) => {
                    for b in it {
                        let Buf::F64(v) = b else {
                            return Err("a collective mixed f32 and f64 buffers".into());
                        };
                        acc.iter_mut().zip(v).for_each(|(a, v)| *a += v);
                    }
                    if divide {
                        let w = world as f64;
                        acc.iter_mut().for_each(|a| *a /= w);
                    }
                    Ok(Buf::F64(acc))
                }
                None => Err("a collective with no ranks".into()),
            }
        }
    }
}

fn f32_result(b: &Buf) -> TrainResult<Vec<f32>> {
    match b {
        Buf::F32(v) => Ok(v.clone()),
        Buf::F64(_) => Err(TrainError::Config(
            "an f32 collective returned f64 values".into(),
        )),
    }
}

impl Communicator for CpuComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_mean(&self, bucket: &Tensor) -> TrainResult<Tensor> {
        let v = bucket.flatten_all()?.to_vec1::<f32>()?;
        let r = self.collective(Buf::F32(v), Op::Mean)?;
        Ok(Tensor::from_vec(
            f32_result(&r)?,
            bucket.elem_count(),
            bucket.device(),
        )?)
    }
    fn all_reduce_mean_host(&self, values: &mut [f64]) -> TrainResult<()> {
        self.host_collective(values, Op::Mean)
    }
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> TrainResult<()> {
        self.host_collective(values, Op::Sum)
    }
    fn broadcast(&self, flat: &Tensor, root: usize) -> TrainResult<Tensor> {
        let v = flat.flatten_all()?.to_vec1::<f32>()?;
        let r = self.collective(Buf::F32(v), Op::Broadcast(root))?;
        Ok(Tensor::from_vec(
            f32_result(&r)?,
            flat.elem_count(),
            flat.device(),
        )?)
    }
    fn abort(&self, rank: usize, reason: &str) {
        let mut r = self
            .shared
            .round
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if r.failed.is_none() {
            r.failed = Some(Failure::Aborted {
                rank,
                reason: reason.to_string(),
            });
        }
        self.shared.cv.notify_all();
    }
}

impl CpuComm {
    /// An f64 collective on host values, in place.
    fn host_collective(&self, values: &mut [f64], op: Op) -> TrainResult<()> {
        let r = self.collective(Buf::F64(values.to_vec()), op)?;
        match &*r {
            Buf::F64(v) => values.copy_from_slice(v),
            Buf::F32(_) => {
                return Err(TrainError::Config(
                    "an f64 collective returned f32 values".into(),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running the ranks.

/// Aborts the group if the rank's thread unwinds (a panic) before it finished, and tells the
/// watcher the rank is done either way (a panic counts as a failure).
struct AbortOnUnwind<'a> {
    comm: &'a dyn Communicator,
    armed: bool,
    /// Where to report `(rank index, failed)` when the rank is done.
    done: Option<(std::sync::mpsc::Sender<(usize, bool)>, usize)>,
}

impl AbortOnUnwind<'_> {
    fn finished(&mut self, failed: bool) {
        if let Some((tx, index)) = self.done.take() {
            // The watcher may have gone (no watch): nothing to tell.
            let _ = tx.send((index, failed));
        }
    }
}

impl Drop for AbortOnUnwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.comm
                .abort(self.comm.rank(), "the rank's thread panicked");
        }
        self.finished(true);
    }
}

/// Wait for the ranks to finish; once one has failed, give the rest `watch.grace`, then tell
/// `watch.on_stuck` which are still running.
fn watch_ranks(done: &std::sync::mpsc::Receiver<(usize, bool)>, world: usize, watch: &Watch<'_>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut running = vec![true; world];
    let mut failed_at: Option<Instant> = None;
    while running.iter().any(|&r| r) {
        let next = match failed_at {
            None => done.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => done.recv_timeout(watch.grace.saturating_sub(t.elapsed())),
        };
        match next {
            Ok((index, failed)) => {
                running[index] = false;
                if failed && failed_at.is_none() {
                    failed_at = Some(Instant::now());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let stuck = (0..world).filter(|&i| running[i]).collect();
                (watch.on_stuck)(TrainError::Stuck {
                    ranks: stuck,
                    grace_s: watch.grace.as_secs_f64(),
                });
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Run `body` on every rank, one thread each, and wait for all of them. A rank whose body
/// fails aborts the group, so the others stop at their next collective; the error returned is
/// then the failing rank's ([`TrainError::Rank`]), not the others' reports of it. On success,
/// every rank's value in rank order.
pub fn run_ranks<T, F>(comms: Vec<Arc<dyn Communicator>>, body: F) -> TrainResult<Vec<T>>
where
    T: Send,
    F: Fn(Arc<dyn Communicator>) -> TrainResult<T> + Sync,
{
    run_ranks_watched(comms, body, None)
}

/// What [`run_ranks_watched`] does about ranks that are still running after the run failed.
pub struct Watch<'a> {
    /// How long the ranks still running may take to stop once one has failed (the others
    /// stop at their next collective, which may be a whole step away).
    pub grace: Duration,
    /// Told which ranks are stuck ([`TrainError::Stuck`]) once the grace has passed. A
    /// process that cannot wait ends here (`effnet train` reports and exits): the threads of
    /// the stuck ranks cannot be stopped from outside, and returning joins them.
    pub on_stuck: &'a (dyn Fn(TrainError) + Sync),
}

/// [`run_ranks`], watched: a rank stuck inside its own work (not at a collective, where the
/// timeout catches it) would keep the run waiting for ever after the others stopped; with a
/// [`Watch`], `on_stuck` hears of it `grace` after the first failure.
pub fn run_ranks_watched<T, F>(
    comms: Vec<Arc<dyn Communicator>>,
    body: F,
    watch: Option<Watch<'_>>,
) -> TrainResult<Vec<T>>
where
    T: Send,
    F: Fn(Arc<dyn Communicator>) -> TrainResult<T> + Sync,
{
    let world = comms.len();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, bool)>();
    let results: Vec<std::thread::Result<TrainResult<T>>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .enumerate()
            .map(|(index, comm)| {
                let comm = comm.clone();
                let body = &body;
                let done = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("effnet-rank-{}", comm.rank()))
                    .spawn_scoped(s, move || {
                        let mut guard = AbortOnUnwind {
                            comm: &*comm,
                            armed: true,
                            done: Some((done, index)),
                        };
                        let r = body(comm.clone());
                        if let Err(e) = &r
                            && !e.is_peers()
                        {
                            comm.abort(comm.rank(), &e.to_string());
                        }
                        guard.armed = false;
                        guard.finished(r.is_err());
                        r
                    })
            })
            .collect();
        drop(done_tx);
        if let Some(w) = &watch {
            watch_ranks(&done_rx, world, w);
        }
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join(),
                Err(e) => Ok(Err(TrainError::Config(format!(
                    "cannot start a rank's thread: {e}"
                )))),
            })
            .collect()
    });
    let mut values = Vec::with_capacity(results.len());
    let mut first: Option<TrainError> = None;
    let mut peer: Option<TrainError> = None;
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(Ok(v)) => values.push(v),
            Ok(Err(e)) if e.is_peers() => {
                peer.get_or_insert(e);
            }
            Ok(Err(e)) => {
                first.get_or_insert(TrainError::Rank {
                    rank,
                    source: Box::new(e),
                });
            }
            Err(_) => {
                first.get_or_insert(TrainError::Rank {
                    rank,
                    source: Box::new(TrainError::Config("its thread panicked".into())),
                });
            }
        }
    }
    match first.or(peer) {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

/// `n` CPU ranks, as [`run_ranks`] takes them.
pub fn cpu_ranks(n: usize) -> Vec<Arc<dyn Communicator>> {
    cpu_ranks_with_timeout(n, DEFAULT_COLLECTIVE_TIMEOUT)
}

/// [`cpu_ranks`] whose collectives wait at most `timeout` for each other.
pub fn cpu_ranks_with_timeout(n: usize, timeout: Duration) -> Vec<Arc<dyn Communicator>> {
    CpuComm::group_with_timeout(n, timeout)
        .into_iter()
        .map(|c| Arc::new(c) as Arc<dyn Communicator>)
        .collect()
}
