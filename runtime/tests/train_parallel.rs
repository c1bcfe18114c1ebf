//! Data-parallel training on the CPU communicator, through the trainer's one loop: two ranks
//! average to the whole batch's gradient, the ranks' parameters stay identical, only rank 0
//! writes a checkpoint and a run resumed from it continues identically, a failing rank stops
//! every rank with its error and leaves the last checkpoint intact, a rank that never arrives
//! at a collective stops the others after the collective timeout, SyncBatchNorm's ranks
//! compute what one rank computes on the whole batch, and a batch that does not split over
//! the ranks is refused. (The shards themselves: `data_loaders.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{Device, Tensor};
use effnet_compiler::compile;
use effnet_compiler::ir::Network as IrNetwork;
use effnet_runtime::Precision;
use effnet_runtime::data::loader::{LoaderConfig, Shard, build_batch, epoch_order};
use effnet_runtime::data::mix::MixConfig;
use effnet_runtime::data::{self, Dataset, Split};
use effnet_runtime::train::parallel::{
    self, BatchNormOverRanks, CpuComm, cpu_ranks, cpu_ranks_with_timeout, run_ranks,
};
use effnet_runtime::train::{
    Communicator, Event, TrainError, TrainOptions, TrainResult, Trainer, checkpoint,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SPEC: &str = r#"
model tiny {
    input 1 x 12
    classes 10
    dropout 0.1
    drop_path 0.1
    normalize mean(0.1307) std(0.3081)
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage mbconv k3 e2 s2 -> 16 x1 se 0.25
    head conv k1 -> 32
}

schedule default for tiny {
    epochs 2
    stages 2
    image 8 -> 12
    randaug 2 -> 6
    mixup 0 -> 0.2
    dropout 0 -> 0.1
    drop_path 0.05
    batch 32
    optimizer rmsprop(decay = 0.9, momentum = 0.9, eps = 1e-3, weight_decay = 1e-5)
    lr 0.01 warmup 0.5 exponential(rate = 0.9, every = 1)
    label_smoothing 0.1
    ema 0.99
    grad_clip 5
}

model still {
    input 1 x 12
    classes 10
    normalize mean(0.1307) std(0.3081)
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage mbconv k3 e2 s2 -> 16 x1 se 0.25
    head conv k1 -> 32
}

schedule default for still {
    epochs 1
    stages 1
    image 12 -> 12
    batch 32
}
"#;

fn ir(name: &str) -> IrNetwork {
    compile(SPEC)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .network(Some(name))
        .expect("model")
        .clone()
}

fn mnist(split: Split, n: usize) -> Arc<Dataset> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    Arc::new(data::load(&dir, split).expect("bundled MNIST").truncate(n))
}

/// A trainer of `tiny` on `default` (3 steps an epoch), not yet a rank.
fn trainer(seed: u64) -> Trainer {
    let net = ir("tiny");
    let s = net.schedules[0].clone();
    let opts = TrainOptions {
        seed,
        workers: 1,
        eval_batch_size: 64,
        max_steps_per_epoch: Some(3),
        ..TrainOptions::default()
    };
    Trainer::with_shared_data(
        &net,
        s,
        opts,
        mnist(Split::Train, 128),
        Some(mnist(Split::Test, 64)),
    )
    .expect("trainer")
}

fn temp_dir(name: &str) -> PathBuf {
    common::fresh_temp_dir("parallel", name)
}

use common::named_values as values;

fn none(_: Event) {}

/// A CPU rank that counts its gradient all-reduces and, when told, fails at one of them
/// (an injected error, as a rank whose step fails would return) or stalls before one of
/// them until another rank's collective has failed (a stuck rank, without timing).
struct Probe {
    inner: CpuComm,
    calls: AtomicUsize,
    fail_at: Option<usize>,
    stall_at: Option<usize>,
    /// Set when a collective of any rank of the group returned an error.
    gave_up: Arc<AtomicBool>,
}

impl Communicator for Probe {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_mean(&self, bucket: &Tensor) -> TrainResult<Tensor> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_at == Some(call) {
            return Err(TrainError::Config(format!(
                "injected failure at all-reduce {call}"
            )));
        }
        if self.stall_at == Some(call) {
            while !self.gave_up.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let r = self.inner.all_reduce_mean(bucket);
        if r.is_err() {
            self.gave_up.store(true, Ordering::SeqCst);
        }
        r
    }
    fn all_reduce_mean_host(&self, values: &mut [f64]) -> TrainResult<()> {
        self.inner.all_reduce_mean_host(values)
    }
    fn broadcast(&self, flat: &Tensor, root: usize) -> TrainResult<Tensor> {
        self.inner.broadcast(flat, root)
    }
    fn abort(&self, rank: usize, reason: &str) {
        self.inner.abort(rank, reason)
    }
}

fn probes(world: usize, fail: Option<(usize, usize)>) -> Vec<Arc<Probe>> {
    probe_group(CpuComm::group(world), fail, None)
}

/// Probes over `group`: rank `fail.0` fails at its all-reduce `fail.1`, rank `stall.0`
/// stalls before its all-reduce `stall.1`.
fn probe_group(
    group: Vec<CpuComm>,
    fail: Option<(usize, usize)>,
    stall: Option<(usize, usize)>,
) -> Vec<Arc<Probe>> {
    let gave_up = Arc::new(AtomicBool::new(false));
    group
        .into_iter()
        .map(|inner| {
            let at = |f: Option<(usize, usize)>| f.filter(|f| f.0 == inner.rank()).map(|f| f.1);
            Arc::new(Probe {
                fail_at: at(fail),
                stall_at: at(stall),
                inner,
                calls: AtomicUsize::new(0),
                gave_up: gave_up.clone(),
            })
        })
        .collect()
}

fn as_comms(p: &[Arc<Probe>]) -> Vec<Arc<dyn Communicator>> {
    p.iter()
        .map(|p| p.clone() as Arc<dyn Communicator>)
        .collect()
}

/// One training batch of `still` (no dropout, no drop-path, no mixing) for `shard`, and the
/// loss and gradients of a freshly initialized network on it, its BatchNorm in eval mode
/// (`frozen`) or in train mode; with more than one rank, averaged through `comm` in buckets
/// of 1000 values.
fn shard_grads(comm: &dyn Communicator, frozen: bool) -> (f64, Vec<Vec<f32>>) {
    let (loss, grads, _) = shard_step(comm, frozen, false);
    (loss, grads)
}

/// [`shard_grads`], with SyncBatchNorm when `sync_bn`, and the BatchNorm running statistics
/// after the step.
fn shard_step(comm: &dyn Communicator, frozen: bool, sync_bn: bool) -> ShardStep {
    let net = ir("still");
    let mut t = Trainer::with_shared_data(
        &net,
        net.schedules[0].clone(),
        TrainOptions {
            seed: 5,
            ..TrainOptions::default()
        },
        mnist(Split::Train, 64),
        None,
    )
    .expect("trainer");
    for l in std::iter::once(&mut t.net.stem)
        .chain(
            t.net
                .stages
                .iter_mut()
                .flatten()
                .flat_map(|b| b.layers.iter_mut()),
        )
        .chain(t.net.head.as_mut())
    {
        l.bn.frozen = frozen;
    }
    let cfg = LoaderConfig {
        transform: t.transform(t.train_data.kind, 12, true, 0.0),
        mix: MixConfig {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
        },
        label_smoothing: 0.1,
        batch_size: 32,
        seed: 5,
        shuffle: true,
        workers: 0,
        prefetch: 1,
        shard: Shard {
            rank: comm.rank(),
            world: comm.world_size(),
        },
    };
    let data = t.train_data.clone();
    let b = build_batch(&data, &cfg, &epoch_order(data.len(), 5, 0, true), 0, 1);
    let x = Tensor::from_vec(b.images, b.shape, &Device::Cpu).expect("x");
    let y = Tensor::from_vec(b.targets, (b.shape.0, b.classes), &Device::Cpu).expect("y");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut loss, grads) = if sync_bn {
        let sync = BatchNormOverRanks::new(comm);
        t.net
            .loss_and_grads_synced(Precision::F32, &t.params, &x, &y, &mut rng, &sync)
            .expect("synchronized step")
    } else {
        t.net
            .loss_and_grads(&t.params, &x, &y, &mut rng)
            .expect("step")
    };
    let grads = if comm.world_size() > 1 {
        let mut l = [loss];
        comm.all_reduce_mean_host(&mut l).expect("loss");
        loss = l[0];
        parallel::average_gradients(comm, grads, 1000).expect("average")
    } else {
        grads
    };
    let grads = grads
        .iter()
        .map(|g| g.flatten_all().and_then(|g| g.to_vec1()).expect("grad"))
        .collect();
    let stats = t
        .stats
        .iter()
        .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
        .map(|(_, v)| v.flatten_all().and_then(|v| v.to_vec1()).expect("stat"))
        .collect();
    (loss, grads, stats)
}

/// A step's loss, gradients and running statistics (means and variances).
type ShardStep = (f64, Vec<Vec<f32>>, Vec<Vec<f32>>);

fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            a.iter()
                .zip(b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
        })
        .fold(0f32, f32::max)
}

#[test]
fn two_ranks_average_to_the_whole_batch_gradient() {
    let single = shard_grads(&parallel::SingleRank, true);
    let p = probes(2, None);
    let ranks = run_ranks(as_comms(&p), |c| Ok(shard_grads(&*c, true))).expect("ranks");
    // Both ranks hold the same averaged gradient, to the bit.
    assert_eq!(ranks[0], ranks[1]);
    let (loss, grads) = &ranks[0];
    assert!(
        (loss - single.0).abs() < 1e-5 * single.0.abs(),
        "{loss} vs {}",
        single.0
    );
    let d = max_rel_diff(grads, &single.1);
    // Measured: 1.5e-6 of the largest gradient entry.
    assert!(d < 1e-5, "the averaged gradient differs by {d}");
    // Bucketed: one all-reduce per bucket of up to 1000 values, not one per tensor.
    let mut buckets = 0;
    let mut size = 0;
    for g in &single.1 {
        if size > 0 && size + g.len() > 1000 {
            buckets += 1;
            size = 0;
        }
        size += g.len();
    }
    buckets += 1;
    let calls = p[0].calls.load(Ordering::SeqCst);
    assert_eq!(calls, buckets);
    assert!(1 < calls && calls < single.1.len(), "{calls} buckets");

    // In train mode each rank normalizes its shard with the shard's own statistics (as DDP
    // without SyncBatchNorm), so the average is not the whole batch's gradient.
    let single = shard_grads(&parallel::SingleRank, false);
    let ranks = run_ranks(cpu_ranks(2), |c| Ok(shard_grads(&*c, false))).expect("ranks");
    let d = max_rel_diff(&ranks[0].1, &single.1);
    assert!(
        d > 1e-3,
        "per-rank batch statistics should change the gradient ({d})"
    );
}

/// What a rank's run returns: its epochs' losses, its parameters and BatchNorm statistics,
/// and its EMA.
type RankRun = (
    Vec<f64>,
    Vec<(String, Vec<f32>)>,
    Option<Vec<(String, Vec<f32>)>>,
);

fn rank_run(t: &Trainer) -> RankRun {
    (
        t.history.iter().map(|m| m.train_loss).collect(),
        values(t.weights(false)),
        t.ema.as_ref().map(|_| values(t.weights(true))),
    )
}

#[test]
fn ranks_stay_identical_only_rank_0_writes_and_a_resumed_run_continues_identically() {
    // Two epochs straight on two ranks.
    let straight = run_ranks(cpu_ranks(2), |c| {
        let mut t = trainer(11);
        t.join(c)?;
        t.run_epoch(&mut none)?;
        t.run_epoch(&mut none)?;
        Ok(rank_run(&t))
    })
    .expect("straight run");
    let (r0, r1) = (&straight[0], &straight[1]);
    assert_eq!(r0.0, r1.0, "every rank sees the averaged loss");
    let stats = |n: &str| n.ends_with("running_mean") || n.ends_with("running_var");
    let params = |w: &[(String, Vec<f32>)]| {
        w.iter()
            .filter(|(n, _)| !stats(n) && !n.ends_with("num_batches_tracked"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(params(&r0.1), params(&r1.1), "identical parameters");
    assert!(
        r0.1.iter()
            .zip(&r1.1)
            .any(|(a, b)| stats(&a.0) && a.1 != b.1),
        "each rank keeps its own BatchNorm statistics"
    );
    assert!(r0.2.is_some() && r1.2.is_none(), "only rank 0 keeps an EMA");

    // One epoch, a checkpoint per rank's directory: only rank 0's is written.
    let dirs = [temp_dir("rank0"), temp_dir("rank1")];
    run_ranks(cpu_ranks(2), |c| {
        let dir = &dirs[c.rank()];
        let mut t = trainer(11);
        t.join(c)?;
        t.run_epoch(&mut none)?;
        t.save_checkpoint(dir)
    })
    .expect("first epoch");
    assert!(checkpoint::find(&dirs[0]).is_ok());
    assert!(!dirs[1].exists(), "rank 1 wrote nothing");
    let state: checkpoint::State = serde_json::from_str(
        &std::fs::read_to_string(dirs[0].join("checkpoint/state.json")).expect("state"),
    )
    .expect("state.json");
    assert_eq!((state.epoch, state.ranks), (1, 2));

    // Every rank resumes from it (a different seed is replaced by the checkpoint's).
    let resumed = run_ranks(cpu_ranks(2), |c| {
        let mut t = trainer(999);
        t.resume(&dirs[0])?;
        t.join(c)?;
        t.run_epoch(&mut none)?;
        Ok(rank_run(&t))
    })
    .expect("resumed run");
    let (a, b) = (&straight[0], &resumed[0]);
    // The first epoch's loss comes back from JSON: equal to an ulp.
    assert!((a.0[0] - b.0[0]).abs() < 1e-12);
    assert_eq!(a.0[1], b.0[1], "the resumed epoch's loss is bit-identical");
    assert_eq!(a.1, b.1, "same weights and rank 0's statistics");
    assert_eq!(a.2, b.2, "same EMA");
    assert_eq!(params(&resumed[1].1), params(&b.1));
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_failing_rank_stops_the_run_and_the_last_checkpoint_stays() {
    let dir = temp_dir("fail");
    // Three steps of one bucket each per epoch: rank 1 fails at its fifth all-reduce, the
    // second step of epoch 2, while rank 0 waits in that step's collective.
    let p = probes(2, Some((1, 4)));
    let e = run_ranks(as_comms(&p), |c| {
        let mut t = trainer(3);
        t.out_dir = Some(dir.clone());
        t.join(c)?;
        while !t.done() {
            t.run_epoch(&mut none)?;
            t.save_checkpoint(&dir)?;
        }
        Ok(())
    })
    .expect_err("rank 1 fails");
    let msg = e.to_string();
    assert!(
        matches!(e, TrainError::Rank { rank: 1, .. }),
        "the failing rank's error: {msg}"
    );
    assert!(
        msg.contains("rank 1 failed") && msg.contains("injected failure at all-reduce 4"),
        "{msg}"
    );
    // Epoch 1's checkpoint is complete and resumes.
    let mut t = trainer(3);
    t.resume(&dir).expect("the last checkpoint resumes");
    assert_eq!(t.epoch, 1);
    assert!(!dir.join("checkpoint.tmp").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let e = run_ranks(cpu_ranks(3), |c| {
        let mut t = trainer(0);
        t.join(c)?;
        t.run_epoch(&mut none).map(|_| ())
    })
    .expect_err("32 over 3 ranks");
    let msg = e.to_string();
    assert!(
        msg.contains("batch of 32") && msg.contains("3 ranks"),
        "{msg}"
    );
}

/// The CPU communicator sums in rank order whatever order the ranks arrive in: values whose
/// f32 sum depends on the order give the same mean on every run, and a broadcast is rank 0's.
#[test]
fn the_cpu_reduction_is_in_rank_order() {
    for delay_rank in 0..3 {
        let out = run_ranks(cpu_ranks(3), |c| {
            // One rank arrives late, so the last to arrive (who computes) changes.
            if c.rank() == delay_rank {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let mine = [1e8f32, 1.0, -1e8][c.rank()];
            let t = Tensor::new(&[mine, c.rank() as f32], &Device::Cpu)?;
            let mean = c.all_reduce_mean(&t)?.to_vec1::<f32>()?;
            let root = c.broadcast(&t, 0)?.to_vec1::<f32>()?;
            let mut sum = [c.rank() as f64 + 0.5];
            c.all_reduce_sum_host(&mut sum)?;
            Ok((mean, root, sum))
        })
        .expect("ranks");
        for (mean, root, sum) in out {
            // (1e8 + 1) rounds to 1e8 in f32, so rank order gives 0, not 1/3.
            assert_eq!(mean, [0.0, 1.0]);
            assert_eq!(root, [1e8, 0.0]);
            assert_eq!(sum, [4.5], "a sum, not a mean");
        }
    }
}

/// A rank whose thread panics stops the others too (they wait in a collective).
#[test]
fn a_panicking_rank_stops_the_others() {
    let e = run_ranks(cpu_ranks(2), |c| {
        if c.rank() == 1 {
            panic!("injected panic");
        }
        let mut v = [1.0];
        c.all_reduce_mean_host(&mut v)?;
        Ok(v[0])
    })
    .expect_err("rank 1 panics");
    assert!(matches!(e, TrainError::Rank { rank: 1, .. }), "{e}");
    assert!(e.to_string().contains("panicked"), "{e}");
}

/// SyncBatchNorm: two ranks, each on half the batch with BatchNorm in train mode, normalize
/// every layer with the whole batch's statistics, so the averaged gradients and the updated
/// running statistics are one rank's on the whole batch; without it, neither is.
#[test]
fn sync_bn_ranks_take_the_whole_batch_step() {
    let single = shard_step(&parallel::SingleRank, false, false);
    let synced = run_ranks(cpu_ranks(2), |c| Ok(shard_step(&*c, false, true))).expect("ranks");
    assert_eq!(
        synced[0], synced[1],
        "every rank holds the same gradients and running statistics, to the bit"
    );
    let (loss, grads, stats) = &synced[0];
    assert!(
        (loss - single.0).abs() < 1e-5 * single.0.abs(),
        "{loss} vs {}",
        single.0
    );
    // Measured: 2.5e-5 of the largest entry (per-rank statistics: 0.38).
    let d = max_rel_diff(grads, &single.1);
    assert!(d < 1e-4, "the synchronized gradient differs by {d}");
    // Measured: 4e-5 (per-rank statistics: 0.19), on a running mean whose entries are all below 3e-8 (a difference of
    // 4e-8 against the comparison's floor of 1e-3); every other statistic within 1.2e-6.
    let d = max_rel_diff(stats, &single.2);
    assert!(
        d < 2e-4,
        "the synchronized running statistics differ by {d}"
    );

    let per_rank = run_ranks(cpu_ranks(2), |c| Ok(shard_step(&*c, false, false))).expect("ranks");
    let d = max_rel_diff(&per_rank[0].1, &single.1);
    assert!(
        d > 1e-3,
        "per-rank statistics should change the gradient ({d})"
    );
    let d = max_rel_diff(&per_rank[0].2, &single.2);
    assert!(d > 1e-3, "per-rank running statistics should differ ({d})");
    assert_ne!(per_rank[0].2, per_rank[1].2, "each rank its own statistics");
}

/// Training with `sync_bn` on two ranks keeps the running statistics identical on both (not
/// only the parameters), and the checkpoint records it.
#[test]
fn sync_bn_training_keeps_every_ranks_statistics_and_records_it() {
    let dir = temp_dir("syncbn");
    let runs = run_ranks(cpu_ranks(2), |c| {
        let mut t = trainer(7);
        t.opts.sync_bn = true;
        t.join(c)?;
        t.run_epoch(&mut none)?;
        t.save_checkpoint(&dir)?;
        Ok(rank_run(&t))
    })
    .expect("a run with SyncBatchNorm");
    assert_eq!(
        runs[0].1, runs[1].1,
        "identical parameters and BatchNorm statistics on both ranks"
    );
    let state: checkpoint::State = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoint/state.json")).expect("state"),
    )
    .expect("state.json");
    assert_eq!((state.ranks, state.sync_bn), (2, true));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the training step falls back to candle's autograd (a Mish network has no CPU
/// kernel), its BatchNorm cannot meet the other ranks: `sync_bn` is refused, naming why,
/// rather than silently training per-rank statistics.
#[test]
fn sync_bn_on_the_candle_fallback_is_refused() {
    let spec = SPEC.replacen("classes 10", "classes 10\n    activation mish", 1);
    let net = compile(&spec)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .network(Some("tiny"))
        .expect("model")
        .clone();
    let e = run_ranks(cpu_ranks(2), |c| {
        let opts = TrainOptions {
            sync_bn: true,
            max_steps_per_epoch: Some(1),
            evaluate: false,
            ..TrainOptions::default()
        };
        let s = net.schedules[0].clone();
        let mut t = Trainer::with_shared_data(&net, s, opts, mnist(Split::Train, 64), None)?;
        t.join(c)?;
        t.run_epoch(&mut none).map(|_| ())
    })
    .expect_err("the candle plan cannot synchronize BatchNorm");
    let msg = e.to_string();
    assert!(
        msg.contains("--sync-bn") && msg.contains("cpu-step") && msg.contains("mish"),
        "{msg}"
    );
}

/// A collective whose ranks do not all arrive stops after the timeout on the ranks that
/// did, naming every rank that did not. (The absent ranks here wait until the present one
/// gave up, so nothing depends on how long anything takes.)
#[test]
fn a_collective_timeout_names_every_rank_that_did_not_arrive() {
    let gave_up = AtomicBool::new(false);
    let e = run_ranks(cpu_ranks_with_timeout(3, Duration::from_millis(100)), |c| {
        if c.rank() > 0 {
            while !gave_up.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let r = c.all_reduce_mean_host(&mut [1.0]);
        if r.is_err() {
            gave_up.store(true, Ordering::SeqCst);
        }
        r
    })
    .expect_err("ranks 1 and 2 never arrive in time");
    let msg = e.to_string();
    assert!(
        matches!(&e, TrainError::CollectiveTimeout { missing, .. } if missing == &[1, 2]),
        "{msg}"
    );
    assert!(
        msg.contains(
            "ranks 1, 2 did not arrive at collective 1 (an all-reduce (mean) of 1 values) \
             within 0.1 s"
        ),
        "{msg}"
    );
}

/// A rank stuck before a gradient all-reduce no longer hangs the others: they stop after the
/// collective timeout with an error naming it and the collective, and the last checkpoint
/// (written between epochs) resumes.
#[test]
fn a_stuck_rank_times_out_the_others_and_the_last_checkpoint_stays() {
    let dir = temp_dir("stuck");
    // Three steps of one bucket each per epoch: rank 1 stalls before its fifth all-reduce,
    // the second step of epoch 2. The timeout is far above a step of this network, so only
    // the stall trips it; nothing is evaluated, so rank 0 never works alone between epochs.
    let group = CpuComm::group_with_timeout(2, Duration::from_secs(3));
    let p = probe_group(group, None, Some((1, 4)));
    let e = run_ranks(as_comms(&p), |c| {
        let mut t = trainer(3);
        t.opts.evaluate = false;
        t.out_dir = Some(dir.clone());
        t.join(c)?;
        while !t.done() {
            t.run_epoch(&mut none)?;
            t.save_checkpoint(&dir)?;
        }
        Ok(())
    })
    .expect_err("rank 1 never arrives in time");
    let msg = e.to_string();
    assert!(
        matches!(&e, TrainError::CollectiveTimeout { missing, .. } if missing == &[1]),
        "{msg}"
    );
    assert!(
        msg.contains("rank 1 did not arrive at collective")
            && msg.contains("all-reduce (mean)")
            && msg.contains("within 3 s"),
        "{msg}"
    );
    let mut t = trainer(3);
    t.resume(&dir).expect("the last checkpoint resumes");
    assert_eq!(t.epoch, 1);
    assert!(!dir.join("checkpoint.tmp").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rank stuck inside its own work (at no collective) after another failed: the watcher tells
/// `on_stuck` which rank, after the grace, instead of waiting for it for ever (`effnet train`
/// reports and exits there). The stuck rank here runs until told, so the test can end.
#[test]
fn a_rank_stuck_outside_any_collective_is_reported_after_the_grace() {
    let released = AtomicBool::new(false);
    let heard: Mutex<Vec<TrainError>> = Mutex::new(Vec::new());
    let on_stuck = |e: TrainError| {
        heard.lock().expect("lock").push(e);
        released.store(true, Ordering::SeqCst);
    };
    let watch = parallel::Watch {
        grace: Duration::from_millis(200),
        on_stuck: &on_stuck,
    };
    let comms = cpu_ranks_with_timeout(2, Duration::from_millis(100));
    let e = parallel::run_ranks_watched(
        comms,
        |c| {
            if c.rank() == 1 {
                // Busy with something of its own, never reaching the collective.
                while !released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Ok(());
            }
            c.all_reduce_mean_host(&mut [1.0])
        },
        Some(watch),
    )
    .expect_err("rank 0 times out");
    assert!(matches!(e, TrainError::CollectiveTimeout { .. }), "{e}");
    let heard = heard.into_inner().expect("lock");
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(
        matches!(&heard[0], TrainError::Stuck { ranks, .. } if ranks == &[1]),
        "{}",
        heard[0]
    );
    assert_eq!(
        heard[0].to_string(),
        "stopped: rank 1 still had not stopped 0.2 s after the run failed (stuck inside its \
         own step, not at a collective)"
    );
}

/// Ranks that stop within the grace after a failure are not reported as stuck.
#[test]
fn ranks_that_stop_within_the_grace_are_not_reported() {
    let gave_up = AtomicBool::new(false);
    let on_stuck = |e: TrainError| panic!("reported as stuck: {e}");
    let watch = parallel::Watch {
        grace: Duration::from_secs(60),
        on_stuck: &on_stuck,
    };
    let e = parallel::run_ranks_watched(
        cpu_ranks_with_timeout(3, Duration::from_millis(100)),
        |c| {
            if c.rank() > 0 {
                while !gave_up.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Ok(());
            }
            let r = c.all_reduce_mean_host(&mut [1.0]);
            gave_up.store(true, Ordering::SeqCst);
            r
        },
        Some(watch),
    )
    .expect_err("rank 0 times out");
    assert!(matches!(e, TrainError::CollectiveTimeout { .. }), "{e}");
}
