//! The fused dense convolution (`effnet_runtime::ops::cpu::conv2d`: GEMM + BatchNorm +
//! activation) on tf_efficientnetv2_b0's shapes at 224x224, batch 8: the layers that hold
//! most of its inference time, each on our AVX-512 GEMM kernel (the default) and on the
//! `gemm` crate (`/gemm_crate`, the portable path), side by side in one run.
//!
//! Run with `RAYON_NUM_THREADS=2 cargo bench -p effnet-runtime --bench fused_conv --
//! --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use effnet_runtime::ops::Padding2d;
use effnet_runtime::ops::cpu::{Act, ConvGeom, ConvWeights, Epilogue, GemmKernel, conv2d_prepared};

/// One dense layer: input channels, output channels, input size, kernel, stride.
struct Shape {
    name: &'static str,
    c: usize,
    o: usize,
    hw: usize,
    k: usize,
    stride: usize,
}

const BATCH: usize = 8;

const SHAPES: &[Shape] = &[
    // The stem: 3 -> 32, 3x3 stride 2 at 224x224 (a K of only 27).
    Shape {
        name: "stem_k3s2_3to32_224",
        c: 3,
        o: 32,
        hw: 224,
        k: 3,
        stride: 2,
    },
    // Stage 1 (Fused-MBConv e1: one 3x3 convolution, 32 -> 16 at 112x112), and
    // efficientnetv2_s's 24-channel version of it.
    Shape {
        name: "s1_k3_32to16_112",
        c: 32,
        o: 16,
        hw: 112,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "v2s_s1_k3_24to24_112",
        c: 24,
        o: 24,
        hw: 112,
        k: 3,
        stride: 1,
    },
    // Fused-MBConv stage 2 (k3 e4 s2, 16 -> 32): the expansion (im2col) and the projection
    // (few output channels, run along pixels).
    Shape {
        name: "s2_expand_k3s2_16to64_112",
        c: 16,
        o: 64,
        hw: 112,
        k: 3,
        stride: 2,
    },
    Shape {
        name: "s2_project_1x1_128to32_56",
        c: 128,
        o: 32,
        hw: 56,
        k: 1,
        stride: 1,
    },
    // MBConv stage 5 (e6, 112 channels at 14x14): expansion and projection.
    Shape {
        name: "s5_expand_1x1_112to672_14",
        c: 112,
        o: 672,
        hw: 14,
        k: 1,
        stride: 1,
    },
    Shape {
        name: "s5_project_1x1_672to112_14",
        c: 672,
        o: 112,
        hw: 14,
        k: 1,
        stride: 1,
    },
    // MBConv stage 6 (e6, 192 channels at 7x7) and the head.
    Shape {
        name: "s6_expand_1x1_192to1152_7",
        c: 192,
        o: 1152,
        hw: 7,
        k: 1,
        stride: 1,
    },
    Shape {
        name: "s6_project_1x1_1152to192_7",
        c: 1152,
        o: 192,
        hw: 7,
        k: 1,
        stride: 1,
    },
    Shape {
        name: "head_1x1_192to1280_7",
        c: 192,
        o: 1280,
        hw: 7,
        k: 1,
        stride: 1,
    },
];

/// Deterministic, non-trivial values in [-1, 1).
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for s in SHAPES {
        let pad = if s.k == 1 {
            Padding2d::zero()
        } else {
            Padding2d::same(s.hw, s.hw, s.k, s.stride).unwrap_or_default()
        };
        let g = ConvGeom {
            n: BATCH,
            c: s.c,
            h: s.hw,
            w: s.hw,
            o: s.o,
            k: s.k,
            stride: s.stride,
            dilation: 1,
            pad,
        };
        let x = values(BATCH * s.hw * s.hw * s.c, 1);
        let w = values(s.o * s.c * s.k * s.k, 2);
        let scale = values(s.o, 3);
        let shift = values(s.o, 4);
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            act: Act::Silu,
        };
        let (oh, ow) = g.out_hw().unwrap_or((0, 0));
        let mut group = c.benchmark_group("fused_conv");
        group.throughput(Throughput::Elements(
            (2 * BATCH * oh * ow * s.o * s.c * s.k * s.k) as u64,
        ));
        for (tag, kernel) in [
            ("", GemmKernel::Best),
            ("/gemm_crate", GemmKernel::GemmCrate),
        ] {
            // Prepared once, as a layer keeps them.
            let Ok(cw) = ConvWeights::new(&w, &g, kernel) else {
                continue;
            };
            group.bench_function(format!("{}{tag}", s.name), |b| {
                b.iter(|| conv2d_prepared(black_box(&x), &cw, &g, &epi, None).map(|y| y.len()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
