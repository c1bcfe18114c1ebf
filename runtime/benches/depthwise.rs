//! Depthwise convolution on EfficientNetV2-S's MBConv shapes (224x224 input, batch 8):
//! the CPU custom op (`effnet_runtime::ops::depthwise_conv2d`) against candle's grouped
//! `conv2d` (`groups = C`, which runs one convolution per channel), forward and
//! forward + backward.
//!
//! Run with `RAYON_NUM_THREADS=2 cargo bench -p effnet-runtime --bench depthwise --
//! --warm-up-time 1 --measurement-time 3` for numbers comparable across machines; set
//! `EFFNET_BENCH_SKIP_CANDLE=1` to skip the (slow) candle baselines.

use std::hint::black_box;

use candle_core::{Device, Result, Tensor, Var};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use effnet_runtime::ops::{Padding2d, depthwise_conv2d, depthwise_conv2d_backward};

/// One depthwise layer: channels, input size, kernel, stride.
struct Shape {
    name: &'static str,
    c: usize,
    hw: usize,
    k: usize,
    stride: usize,
}

const BATCH: usize = 8;

/// EfficientNetV2-S at 224: stage 4 (MBConv4, 64 -> 128, k3), stage 5 (MBConv6, 128 -> 160,
/// k3), stage 6 (MBConv6, 160 -> 256, k3). Mid channels are `in * expansion`. The first
/// entry is the [8, 256, 28, 28] stride-1 shape the kernel was tuned on.
const SHAPES: &[Shape] = &[
    Shape {
        name: "c256_28x28_s1",
        c: 256,
        hw: 28,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "s4b1_c256_28x28_s2",
        c: 256,
        hw: 28,
        k: 3,
        stride: 2,
    },
    Shape {
        name: "s4_c512_14x14_s1",
        c: 512,
        hw: 14,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "s5b1_c768_14x14_s1",
        c: 768,
        hw: 14,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "s5_c960_14x14_s1",
        c: 960,
        hw: 14,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "s6b1_c960_14x14_s2",
        c: 960,
        hw: 14,
        k: 3,
        stride: 2,
    },
    Shape {
        name: "s6_c1536_7x7_s1",
        c: 1536,
        hw: 7,
        k: 3,
        stride: 1,
    },
];

fn inputs(s: &Shape) -> Result<(Tensor, Tensor, Padding2d)> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1f32, (BATCH, s.c, s.hw, s.hw), &dev)?;
    let w = Tensor::randn(0f32, 1f32, (s.c, 1, s.k, s.k), &dev)?;
    let pad = Padding2d::same(s.hw, s.hw, s.k, s.stride)?;
    Ok((x, w, pad))
}

/// candle's grouped conv2d with the (possibly asymmetric) padding applied explicitly; the
/// padded input is cropped to the rows/columns the kernel reads (candle's conv2d backward
/// needs `(size - k) % stride == 0`).
fn candle_grouped(x: &Tensor, w: &Tensor, stride: usize, pad: Padding2d) -> Result<Tensor> {
    let (c, k) = (x.dim(1)?, w.dim(2)?);
    let xp = x
        .pad_with_zeros(2, pad.top, pad.bottom)?
        .pad_with_zeros(3, pad.left, pad.right)?;
    let used_h = (xp.dim(2)? - k) / stride * stride + k;
    let used_w = (xp.dim(3)? - k) / stride * stride + k;
    xp.narrow(2, 0, used_h)?
        .narrow(3, 0, used_w)?
        .conv2d(w, 0, stride, 1, c)
}

/// Forward then backward of `sum(conv(x, w) * r)` through candle's autograd.
fn fwd_bwd(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Var,
    w: &Var,
    r: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let y = f(x.as_tensor(), w.as_tensor())?;
    let grads = (y * r)?.sum_all()?.backward()?;
    match (grads.get(x.as_tensor()), grads.get(w.as_tensor())) {
        (Some(gx), Some(gw)) => Ok((gx.clone(), gw.clone())),
        _ => Err(candle_core::Error::Msg("missing gradient".into())),
    }
}

fn bench(c: &mut Criterion) {
    if let Err(e) = run(c) {
        eprintln!("depthwise bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(c: &mut Criterion) -> Result<()> {
    let skip_candle = std::env::var_os("EFFNET_BENCH_SKIP_CANDLE").is_some_and(|v| v != "0");
    eprintln!("rayon threads: {}", rayon::current_num_threads());
    for s in SHAPES {
        let (x, w, pad) = inputs(s)?;
        let stride = s.stride;
        let ours = move |x: &Tensor, w: &Tensor| depthwise_conv2d(x, w, stride, pad);
        let theirs = move |x: &Tensor, w: &Tensor| candle_grouped(x, w, stride, pad);
        let y = ours(&x, &w)?;
        let r = Tensor::randn(0f32, 1f32, y.dims(), x.device())?;
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);

        let mut g = c.benchmark_group(format!("depthwise/{}", s.name));
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("forward", "ours"), |b| {
            b.iter(|| ours(black_box(&x), black_box(&w)))
        });
        g.bench_function(BenchmarkId::new("backward_only", "ours"), |b| {
            b.iter(|| depthwise_conv2d_backward(black_box(&x), black_box(&w), &r, stride, pad))
        });
        g.bench_function(BenchmarkId::new("fwd+bwd", "ours"), |b| {
            b.iter(|| fwd_bwd(&ours, black_box(&xv), black_box(&wv), &r))
        });
        if !skip_candle {
            // One convolution per channel: slow, so flat sampling keeps the run short.
            g.sampling_mode(SamplingMode::Flat);
            g.bench_function(BenchmarkId::new("forward", "candle_grouped"), |b| {
                b.iter(|| theirs(black_box(&x), black_box(&w)))
            });
            g.bench_function(BenchmarkId::new("fwd+bwd", "candle_grouped"), |b| {
                b.iter(|| fwd_bwd(&theirs, black_box(&xv), black_box(&wv), &r))
            });
        }
        g.finish();
    }
    Ok(())
}

criterion_group!(benches, bench);
criterion_main!(benches);
