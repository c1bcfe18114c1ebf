//! The cuda plans' walks over the CUDA kernels run on the CPU ([`EMU`]) against the CPU
//! plans: eval-mode logits (cuda-fused against cpu-fused) and one training step (cuda-step
//! against cpu-step: loss, every gradient, the updated BatchNorm statistics, the masks drawn).
//! What a GPU adds is only the launches; everything the backends compute is checked here.
//! Both walks also run with a convolution library for the dense convolutions (candle's CPU
//! convolution in cuDNN's place, [`emu_with_library`]): the library path's padding, layouts
//! and backward against the same CPU plans.

#[path = "../../tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{max_diff, values as vals};
use effnet_cuda_emu::{EMU, Emulated, emu_with_library};
use effnet_runtime::exec::cuda::{logits_with, loss_and_grads_with};
use effnet_runtime::train::optim::Param;
use effnet_runtime::{Network, Plan};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use common::{SAME, SYMMETRIC};

/// The emulated kernels, on their own and with a convolution library.
fn every_kernels() -> [(&'static str, Emulated); 2] {
    [("patches", EMU), ("library", emu_with_library())]
}

/// MixNet's mixed depthwise kernels (one convolution of zero-padded parts, each part's
/// gradient cut out of it), ReLU6 in a stage, and dilation past `output_stride 8`.
const MIXED_DILATED: &str = r#"
model mixed_dilated {
    input 3 x 17
    classes 6
    activation relu
    padding same
    output_stride 8
    drop_path 0.2
    stem conv k3 s2 -> 16
    stage dsa    k3 s1 -> 16 x1
    stage ds     k3.5 p1.1 s1 -> 16 x1
    stage mbconv k3.5.7 a1.1 p1.1 e4 s2 -> 24 x2 se 0.5 act silu
    stage mbconv k3 e3 s2 -> 32 x2 se 0.25 act relu6
    stage edge   k3.5 e4 p1.1 s2 -> 32 x1
    head conv k1 -> 48
}
"#;

/// [`SYMMETRIC`] with GELU (the exact, erf form) everywhere.
const GELU: &str = r#"
model gelu {
    input 3 x 15
    classes 5
    activation gelu
    stem conv k3 s2 -> 8
    stage fused  k3 e1 s1 -> 8 x2 skip
    stage fused  k3 e4 s2 -> 16 x2
    stage mbconv k3 e4 s2 -> 24 x2 se 0.25
    head conv k1 -> 32
}
"#;

fn plain_network(spec: &str) -> Network {
    let (ir, tensors) = common::plain_tensors(spec);
    Network::from_ir(
        &ir,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .expect("net")
}

fn trainable(spec: &str) -> (Network, Vec<Param>) {
    let net = common::trainable_network(spec, &Device::Cpu);
    let params = common::trainable_params(&net);
    (net, params)
}

fn targets(n: usize, classes: usize) -> Tensor {
    common::soft_targets(n, classes, &Device::Cpu)
}

/// A fixed input batch (the same on every run), values in [-1, 1).
fn input(n: usize, size: usize) -> Tensor {
    common::tensor(&[n, 3, size, size], (n * 1000 + size) as u64).expect("x")
}

#[test]
fn cuda_fused_walk_matches_the_cpu_fused_plan() {
    for (spec, n, size) in [
        (SYMMETRIC, 7, 15),
        (SAME, 1, 19),
        (SAME, 3, 18),
        (MIXED_DILATED, 2, 17),
        (GELU, 3, 15),
    ] {
        let net = plain_network(spec);
        let x = input(n, size);
        let want = vals(&net.forward_on(Plan::CpuFused, &x, false).expect("cpu"));
        for (path, kernels) in every_kernels() {
            let got = vals(&logits_with(&net, &x, kernels).expect("cuda walk"));
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let d = max_diff(&got, &want);
            assert!(
                d < 1e-4 * scale,
                "{} ({path}): logits differ by {d} (largest {scale})",
                net.ir.name
            );
        }
    }
}

/// One training step on the cuda-step walk against the cpu-step plan, the network prepared by
/// `prepare`, with the dense convolutions on patches and by a library.
fn compare_step(spec: &str, n: usize, size: usize, prepare: impl Fn(&mut Network)) {
    for (path, kernels) in every_kernels() {
        compare_step_with(kernels, path, spec, n, size, &prepare);
    }
}

/// One training step on the cuda-step walk over `kernels` (network `b`) against the cpu-step
/// plan (network `a`), both prepared by `prepare`.
fn compare_step_with(
    kernels: Emulated,
    path: &str,
    spec: &str,
    n: usize,
    size: usize,
    prepare: &impl Fn(&mut Network),
) {
    let (mut a, params_a) = trainable(spec);
    let (mut b, params_b) = trainable(spec);
    prepare(&mut a);
    prepare(&mut b);
    let x = input(n, size);
    let t = targets(n, a.ir.num_classes);
    let mut rng_a = ChaCha8Rng::seed_from_u64(11);
    let (loss_a, grads_a) = a
        .loss_and_grads_on(Plan::CpuStep, &params_a, &x, &t, &mut rng_a)
        .expect("cpu step");
    let mut rng_b = ChaCha8Rng::seed_from_u64(11);
    let (loss_b, grads_b) =
        loss_and_grads_with(&b, &params_b, &x, &t, &mut rng_b, kernels, DType::F32, None)
            .expect("cuda step");
    let name = format!("{} ({path})", a.ir.name);
    assert!(
        (loss_a - loss_b).abs() < 1e-5 * loss_a.abs().max(1.0),
        "{name}: loss cpu {loss_a}, cuda {loss_b}"
    );
    // The same masks, drawn in the same order.
    assert_eq!(
        rand::Rng::random::<u64>(&mut rng_a),
        rand::Rng::random::<u64>(&mut rng_b)
    );
    let mut checked = 0;
    let mut gi = 0;
    for (ta, tb) in a.named_tensors().iter().zip(b.named_tensors().iter()) {
        assert_eq!(ta.name, tb.name);
        if ta.trainable {
            let (ga, gb) = (vals(&grads_a[gi]), vals(&grads_b[gi]));
            assert_eq!(grads_a[gi].dims(), grads_b[gi].dims(), "{}", ta.name);
            gi += 1;
            // Relative to the tensor's largest gradient, with a floor for the nearly-zero
            // gradients of layers far from the loss.
            let scale = ga.iter().map(|v| v.abs()).fold(1e-3, f32::max);
            let d = max_diff(&ga, &gb);
            assert!(
                d <= 1e-3 * scale,
                "{name}: `{}` gradient differs by {d} (largest {scale})",
                ta.name
            );
            if ga.iter().any(|v| *v != 0.0) {
                checked += 1;
            }
        } else {
            let d = max_diff(&vals(&ta.tensor), &vals(&tb.tensor));
            assert!(d < 1e-5, "{name}: `{}` differs by {d}", ta.name);
        }
    }
    assert_eq!(gi, params_b.len());
    assert!(
        checked > 20,
        "{name}: only {checked} nonzero gradients compared"
    );
}

#[test]
fn cuda_step_walk_matches_the_cpu_step_plan_on_every_block_kind() {
    compare_step(SYMMETRIC, 6, 15, |_| {});
    compare_step(SAME, 5, 18, |_| {});
    // An odd size: "same" pads asymmetrically on every stride-2 layer.
    compare_step(SAME, 3, 19, |_| {});
    compare_step(MIXED_DILATED, 4, 17, |_| {});
    let gelu = SYMMETRIC.replace("classes 5", "classes 5\n    activation gelu");
    compare_step(&gelu, 4, 15, |_| {});
}

/// Fine-tuning: a frozen stem and first stage (their BatchNorm layers in eval mode on moved
/// running statistics, no backward through them) and a frozen head.
#[test]
fn cuda_step_walk_matches_the_cpu_step_plan_with_frozen_layers() {
    compare_step(SYMMETRIC, 6, 15, |net| {
        let layers = std::iter::once(&mut net.stem)
            .chain(net.stages[0].iter_mut().flat_map(|b| b.layers.iter_mut()))
            .chain(net.head.as_mut());
        for (i, l) in layers.enumerate() {
            let c = l.bn.spec.channels;
            let mean: Vec<f32> = (0..c).map(|j| 0.05 * ((i + j) % 5) as f32 - 0.1).collect();
            let var: Vec<f32> = (0..c)
                .map(|j| 0.5 + 0.1 * ((i * 3 + j) % 7) as f32)
                .collect();
            let stats = l.bn.running().expect("BatchNorm");
            let dev = Device::Cpu;
            stats
                .mean
                .set(&Tensor::from_vec(mean, c, &dev).expect("mean"))
                .expect("mean");
            stats
                .var
                .set(&Tensor::from_vec(var, c, &dev).expect("var"))
                .expect("var");
            l.bn.frozen = true;
        }
    });
}

/// The cuda-fused walk keeps each layer's prepared weight and folded BatchNorm between calls;
/// a replaced weight and running statistics updated in place (a train-mode forward) are
/// prepared again, so the logits follow them as the cpu-fused plan's do.
#[test]
fn cuda_fused_walk_follows_new_weights_and_statistics() {
    let mut net = plain_network(SYMMETRIC);
    let x = input(3, 15);
    let check = |net: &Network, what: &str| {
        let want = vals(&net.forward_on(Plan::CpuFused, &x, false).expect("cpu"));
        let got = vals(&logits_with(net, &x, EMU).expect("cuda walk"));
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let d = max_diff(&got, &want);
        assert!(
            d < 1e-4 * scale,
            "{what}: logits differ by {d} (largest {scale})"
        );
        got
    };
    let first = check(&net, "first call");
    assert_eq!(first, check(&net, "second call (prepared)"));

    // Running statistics updated in place: same tensors, new values.
    net.forward_t(&input(4, 15), true)
        .expect("train-mode forward");
    let after_stats = check(&net, "after a train-mode forward");
    assert_ne!(first, after_stats, "the statistics did not change");

    // A replaced weight (the head's 1x1 and the stem's 3x3).
    let head = net.head.as_mut().expect("head");
    let w = head
        .conv
        .plain_weight()
        .affine(-0.5, 0.01)
        .expect("head weight");
    head.conv.set_weight(w);
    let w = net
        .stem
        .conv
        .plain_weight()
        .affine(0.7, 0.0)
        .expect("stem weight");
    net.stem.conv.set_weight(w);
    let after_weights = check(&net, "after new weights");
    assert_ne!(after_stats, after_weights, "the weights did not change");
}

/// `--dtype bf16` on the cuda-fused walk: bf16 weights, bf16 maps and GEMMs, f32 arithmetic
/// in the kernels, BatchNorm and the gates in f32. Against the f32 network on the cpu-fused
/// plan: what bf16 costs in accuracy (printed), bounded.
#[test]
fn cuda_fused_walk_in_bf16_stays_near_f32() {
    half_walk_stays_near_f32(DType::BF16, 2e-2);
}

/// f16: a 10-bit mantissa, eight times closer than bf16 (measured 5.2e-4 and 5.8e-4).
#[test]
fn cuda_fused_walk_in_f16_stays_near_f32() {
    half_walk_stays_near_f32(DType::F16, 3e-3);
}

/// The cuda-fused walk with weights and maps in `dtype` against the f32 network on the
/// cpu-fused plan: logits within `bound` relative to the largest, and not identical.
fn half_walk_stays_near_f32(dtype: DType, bound: f32) {
    for (spec, n, size) in [(SYMMETRIC, 4, 15), (SAME, 3, 19)] {
        let f32_net = plain_network(spec);
        let (ir, tensors) = common::plain_tensors(spec);
        let half_net =
            Network::from_ir(&ir, VarBuilder::from_tensors(tensors, dtype, &Device::Cpu))
                .expect("half net");
        let x = input(n, size);
        let want = vals(&f32_net.forward_on(Plan::CpuFused, &x, false).expect("f32"));
        for (path, kernels) in every_kernels() {
            let got = logits_with(&half_net, &x, kernels).expect("half walk");
            assert_eq!(got.dtype(), DType::F32, "logits in the input's dtype");
            let got = vals(&got);
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let rel = max_diff(&got, &want) / scale;
            eprintln!(
                "{} ({path}): {dtype:?} logits against f32, relative max error {rel:.2e}",
                ir.name
            );
            assert!(
                rel > 0.0,
                "{}: {dtype:?} identical to f32: not run in half precision",
                ir.name
            );
            assert!(
                rel < bound,
                "{}: {dtype:?} logits differ by {rel} (relative)",
                ir.name
            );
        }
    }
}

/// Mixed precision (`--precision bf16`) on the cuda-step walk: bf16 maps and GEMMs, f32
/// master weights, statistics and reductions. Against the f32 cpu-step plan on one step: the
/// loss within 1e-2 relative; all gradients together pointing the same way (cosine above
/// 0.98) and each tensor's that is not zero but for rounding above 0.9; the running
/// statistics within 1e-2. bf16's 8-bit mantissa compounds through the layers, the small
/// batch statistics and the kinks of ReLU and hard-swish: measured, 0.9996 for the SiLU
/// network and 0.988 for the ReLU / hard-swish one (least aligned tensors about 0.95); a
/// wrong index or sign lands far below. Each bf16 kernel is checked against its f32 twin in
/// `kernels.rs`.
#[test]
fn cuda_step_walk_in_mixed_precision_stays_near_f32() {
    for ((spec, n, size), (path, kernels)) in [(SYMMETRIC, 6, 15), (SAME, 5, 18)]
        .into_iter()
        .flat_map(|case| every_kernels().map(|k| (case, k)))
    {
        let (a, params_a) = trainable(spec);
        let (b, params_b) = trainable(spec);
        let x = input(n, size);
        let t = targets(n, a.ir.num_classes);
        let mut rng_a = ChaCha8Rng::seed_from_u64(5);
        let (loss_a, grads_a) = a
            .loss_and_grads_on(Plan::CpuStep, &params_a, &x, &t, &mut rng_a)
            .expect("cpu step");
        let mut rng_b = ChaCha8Rng::seed_from_u64(5);
        let (loss_b, grads_b) = loss_and_grads_with(
            &b,
            &params_b,
            &x,
            &t,
            &mut rng_b,
            kernels,
            DType::BF16,
            None,
        )
        .expect("bf16 step");
        let name = &format!("{} ({path})", a.ir.name);
        let rel = (loss_a - loss_b).abs() / loss_a.abs();
        assert!(rel > 0.0, "{name}: bf16 identical to f32: not run in bf16");
        assert!(rel < 1e-2, "{name}: loss f32 {loss_a}, bf16 {loss_b}");
        let all_a: Vec<f32> = grads_a.iter().flat_map(vals).collect();
        let all_b: Vec<f32> = grads_b.iter().flat_map(vals).collect();
        let global = norm(&all_a);
        let mut worst = (1.0f64, String::new());
        for ((p, ga), gb) in params_a.iter().zip(&grads_a).zip(&grads_b) {
            assert_eq!(gb.dtype(), DType::F32, "master gradients in f32");
            let (va, vb) = (vals(ga), vals(gb));
            // A gradient that is zero but for rounding (a bias whose shift the next
            // train-mode BatchNorm takes out again) has no direction to keep.
            if norm(&va) < 1e-4 * global {
                continue;
            }
            let cos = cosine(&va, &vb);
            if cos < worst.0 {
                worst = (cos, p.name.clone());
            }
            assert!(cos > 0.9, "{name}: `{}` gradient cosine {cos}", p.name);
        }
        let all = cosine(&all_a, &all_b);
        assert!(all > 0.98, "{name}: the gradient's cosine {all}");
        for (ta, tb) in a.named_tensors().iter().zip(b.named_tensors().iter()) {
            if !ta.trainable {
                let d = max_diff(&vals(&ta.tensor), &vals(&tb.tensor));
                assert!(d < 1e-2, "{name}: `{}` differs by {d}", ta.name);
            }
        }
        eprintln!(
            "{name}: bf16 step against f32: loss {rel:.1e} relative, gradient cosine {all:.5}, \
             least aligned tensor `{}` at {:.4}",
            worst.1, worst.0
        );
    }
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// The cosine of two vectors (1 for two zero vectors: nothing to disagree on).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na * nb).max(f64::MIN_POSITIVE)
    }
}

/// SyncBatchNorm on the cuda-step walk: two ranks (threads with a CPU communicator), each on
/// its shard of the batch (samples r, r + 2, ...), take the step one rank takes on the whole
/// batch: the averaged gradients and every rank's running statistics equal the whole batch's.
/// Without dropout and drop-path, whose masks a rank draws for its own samples.
#[test]
fn cuda_step_walk_with_sync_batchnorm_takes_the_whole_batch_step() {
    sync_bn_step(DType::F32, 1e-4, 1e-5);
}

/// The same in mixed precision (bf16 maps): the ranks' bf16 maps are the whole batch's rows
/// (a GEMM's rows do not depend on the others), so only the order of the sums differs.
#[test]
fn cuda_step_walk_in_mixed_precision_with_sync_batchnorm_takes_the_whole_batch_step() {
    sync_bn_step(DType::BF16, 2e-2, 1e-4);
}

/// Two ranks with SyncBatchNorm against one rank on the whole batch, maps in `maps`: the
/// averaged gradients within `grad_tol` of the largest, the running statistics within
/// `stats_tol`, and identical on both ranks.
fn sync_bn_step(maps: DType, grad_tol: f32, stats_tol: f32) {
    use effnet_runtime::train::parallel::{BatchNormOverRanks, cpu_ranks, run_ranks};
    let spec = SYMMETRIC.replace("    dropout 0.3\n    drop_path 0.3\n", "");
    let (n, size) = (6, 15);
    let x = input(n, size);
    let (whole, params) = trainable(&spec);
    let t = targets(n, whole.ir.num_classes);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (loss, grads) = loss_and_grads_with(&whole, &params, &x, &t, &mut rng, EMU, maps, None)
        .expect("whole batch");
    let stats = |net: &Network| -> Vec<Vec<f32>> {
        net.named_tensors()
            .iter()
            .filter(|t| !t.trainable)
            .map(|t| vals(&t.tensor))
            .collect()
    };
    let world = 2;
    let ranks = run_ranks(cpu_ranks(world), |comm| {
        let r = comm.rank();
        let rows: Vec<u32> = (r..n).step_by(world).map(|i| i as u32).collect();
        let pick = Tensor::new(rows.as_slice(), &Device::Cpu)?;
        let (xs, ts) = (x.index_select(&pick, 0)?, t.index_select(&pick, 0)?);
        let (net, params) = trainable(&spec);
        let sync = BatchNormOverRanks::new(&*comm);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (loss, grads) =
            loss_and_grads_with(&net, &params, &xs, &ts, &mut rng, EMU, maps, Some(&sync))?;
        let grads: Vec<Vec<f32>> = grads.iter().map(vals).collect();
        Ok((loss, grads, stats(&net)))
    })
    .expect("two ranks");
    let mean_loss = ranks.iter().map(|r| r.0).sum::<f64>() / world as f64;
    assert!(
        (mean_loss - loss).abs() < 1e-5 * loss.abs(),
        "loss {mean_loss} vs {loss}"
    );
    for (i, (p, g)) in params.iter().zip(&grads).enumerate() {
        let want = vals(g);
        let got: Vec<f32> = (0..want.len())
            .map(|k| ranks.iter().map(|r| r.1[i][k]).sum::<f32>() / world as f32)
            .collect();
        let scale = want.iter().map(|v| v.abs()).fold(1e-3, f32::max);
        let d = max_diff(&got, &want);
        assert!(
            d <= grad_tol * scale,
            "`{}`: averaged gradient differs by {d}",
            p.name
        );
    }
    let want = stats(&whole);
    for r in &ranks {
        for (a, b) in r.2.iter().zip(&want) {
            let d = max_diff(a, b);
            assert!(d < stats_tol, "running statistics differ by {d}");
        }
    }
    assert_eq!(
        ranks[0].2, ranks[1].2,
        "the ranks' statistics are identical"
    );
}

/// Dense convolutions a chunk of images at a time (patches bounded by `patch_values`): the
/// same logits, loss and gradients as on the whole batch's patches, for one image a chunk and
/// for uneven chunks.
#[test]
fn dense_convolutions_in_chunks_of_images_match_the_whole_batch() {
    use effnet_cuda_emu::CpuExec;
    use effnet_runtime::exec::cuda::launch::Launcher;
    let (n, size) = (5, 19);
    let x = input(n, size);
    for budget in [1, 2_000] {
        let chunked = Launcher {
            exec: CpuExec,
            patch_values: budget,
            library: None,
        };
        let net = plain_network(SAME);
        let want = vals(&logits_with(&net, &x, EMU).expect("whole"));
        let got = vals(&logits_with(&net, &x, chunked).expect("chunked"));
        let d = max_diff(&got, &want);
        assert!(d < 1e-6, "budget {budget}: logits differ by {d}");

        let (a, pa) = trainable(SAME);
        let (b, pb) = trainable(SAME);
        let t = targets(n, a.ir.num_classes);
        let step = |net, params, kernels| {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            loss_and_grads_with(net, params, &x, &t, &mut rng, kernels, DType::F32, None)
                .expect("step")
        };
        let (la, ga) = step(&a, &pa, EMU);
        let (lb, gb) = step(&b, &pb, chunked);
        assert!((la - lb).abs() < 1e-6 * la.abs().max(1.0), "{la} vs {lb}");
        for ((p, ga), gb) in pa.iter().zip(&ga).zip(&gb) {
            let (ga, gb) = (vals(ga), vals(gb));
            let scale = ga.iter().map(|v| v.abs()).fold(1e-3, f32::max);
            let d = max_diff(&ga, &gb);
            assert!(d <= 1e-5 * scale, "budget {budget}: `{}` by {d}", p.name);
        }
    }
}
