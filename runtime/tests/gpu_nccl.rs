//! On GPUs, with `--features nccl`: the NCCL communicator's collectives on every visible GPU
//! (one rank each; world size 1 on a single GPU, where NCCL refuses a second rank), then two
//! training epochs data-parallel over them, the ranks' parameters identical afterwards.
//! Anywhere else each test prints why it skipped and passes. Run it on a GPU machine:
//! `cargo test --release --features nccl -p effnet-runtime --test gpu_nccl -- --nocapture`
//! (libnccl.so.2 must be found at run time). Not yet run: written in a session without GPUs.
#![cfg(feature = "nccl")]

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use effnet_runtime::data::{self, Split};
use effnet_runtime::train::nccl::nccl_ranks;
use effnet_runtime::train::parallel::{DEFAULT_COLLECTIVE_TIMEOUT, run_ranks};
use effnet_runtime::train::{TrainOptions, Trainer};

fn gpus() -> Option<Vec<Device>> {
    let n = candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().unwrap_or(0);
    if n < 1 {
        println!("skipped: no GPU");
        return None;
    }
    Some(
        (0..n as usize)
            .map(|i| Device::new_cuda(i).expect("GPU"))
            .collect(),
    )
}

#[test]
fn nccl_collectives_on_every_gpu() {
    let Some(devices) = gpus() else { return };
    let w = devices.len();
    let comms = nccl_ranks(&devices, DEFAULT_COLLECTIVE_TIMEOUT).expect("NCCL communicators");
    let out = run_ranks(comms, |c| {
        let r = c.rank() as f32;
        let t = Tensor::new(&[r, 1.0, 2.0 * r], &devices[c.rank()])?;
        let mean = c.all_reduce_mean(&t)?.to_vec1::<f32>()?;
        let root = c.broadcast(&t, 0)?.to_vec1::<f32>()?;
        let mut host = [f64::from(r)];
        c.all_reduce_mean_host(&mut host)?;
        // SyncBatchNorm's sums: f64, on the device, in the tensor's shape.
        let sums = Tensor::new(
            &[[f64::from(r), 1.0], [0.5, -f64::from(r)]],
            &devices[c.rank()],
        )?;
        let summed = c.all_reduce_sum(&sums)?;
        assert_eq!(summed.dims(), [2, 2]);
        assert!(summed.device().is_cuda());
        Ok((mean, root, host[0], summed.flatten_all()?.to_vec1::<f64>()?))
    })
    .expect("collectives");
    let m = (w - 1) as f32 / 2.0;
    let total = (w * (w - 1) / 2) as f64;
    for (mean, root, host, summed) in out {
        assert_eq!(mean, [m, 1.0, 2.0 * m]);
        assert_eq!(root, [0.0, 1.0, 0.0]);
        assert_eq!(host, f64::from(m));
        assert_eq!(summed, [total, w as f64, 0.5 * w as f64, -total]);
    }
}

const SPEC: &str = r#"
model tiny {
    input 1 x 12
    classes 10
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage mbconv k3 e2 s2 -> 16 x1 se 0.25
    head conv k1 -> 32
}

schedule default for tiny {
    epochs 2
    stages 1
    image 12 -> 12
    batch 32
    optimizer sgd(momentum = 0.9)
    lr 0.01 cosine
}
"#;

#[test]
fn data_parallel_epochs_keep_the_ranks_identical() {
    let Some(devices) = gpus() else { return };
    let net = effnet_compiler::compile(SPEC)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .network(Some("tiny"))
        .expect("tiny")
        .clone();
    // The checkout it was built in, or (a binary carried to a GPU machine and run from the
    // repository's root there) the working directory's.
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist");
    let dir = if built.exists() {
        built
    } else {
        Path::new("data/mnist").to_path_buf()
    };
    let train = Arc::new(data::load(&dir, Split::Train).expect("MNIST").truncate(256));
    let comms = nccl_ranks(&devices, DEFAULT_COLLECTIVE_TIMEOUT).expect("NCCL communicators");
    let out = run_ranks(comms, |c| {
        let opts = TrainOptions {
            device: devices[c.rank()].clone(),
            evaluate: false,
            max_steps_per_epoch: Some(4),
            ..TrainOptions::default()
        };
        let mut t =
            Trainer::with_shared_data(&net, net.schedules[0].clone(), opts, train.clone(), None)?;
        t.join(c)?;
        while !t.done() {
            t.run_epoch(&mut |_| {})?;
        }
        let params = t
            .params
            .iter()
            .map(|p| {
                p.var
                    .as_tensor()
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((t.history[1].train_loss, params))
    })
    .expect("training");
    for (loss, params) in &out[1..] {
        assert_eq!(*loss, out[0].0, "every rank sees the averaged loss");
        assert_eq!(*params, out[0].1, "identical parameters");
    }
    assert!(out[0].0.is_finite());
}
