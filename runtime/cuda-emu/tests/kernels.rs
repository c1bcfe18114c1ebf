//! The CUDA kernels, run on the CPU ([`EMU`]), against effnet's CPU kernels on random
//! shapes: every kernel size and stride the language allows with both paddings (TensorFlow
//! "same", asymmetric on stride 2, and PyTorch's symmetric), odd sizes, batch 1 and 7, every
//! activation the kernels implement, thin and wide channel counts; forward and backward.

use candle_core::{DType, Device, Tensor};
use effnet_cuda_emu::EMU;
use effnet_runtime::exec::cuda::{CudaKernels, row_chunks};
use effnet_runtime::ops::cpu::backward::{
    BnAct, affine_act, bn_act_backward, bn_act_backward_eval, channel_stats, conv_backward,
    depthwise_backward,
};
use effnet_runtime::ops::cpu::{Epilogue, channel_means, conv2d, depthwise, gate_channels};
use effnet_runtime::ops::{Act, ConvGeom, Padding2d};

const ACTS: [Act; 6] = [
    Act::Identity,
    Act::Silu,
    Act::Relu,
    Act::Relu6,
    Act::HardSwish,
    Act::Gelu,
];

/// Deterministic values in [-2, 2).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

fn tensor(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &Device::Cpu).expect("tensor")
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flatten").to_vec1().expect("f32")
}

/// Every window the tests run, on the CPU kernels' `ConvGeom` (`o` is `c`; the dense tests
/// change it): each map shape with each (k, stride, dilation) and both paddings.
fn windows() -> Vec<ConvGeom> {
    let mut out = Vec::new();
    // An even height with an odd width gives "same" padding a different top and left side.
    for &(n, h, w, c) in &[
        (1, 7, 9, 8),
        (7, 14, 14, 24),
        (2, 15, 11, 33),
        (3, 14, 11, 16),
        (1, 8, 5, 8),
        (1, 1, 1, 5),
    ] {
        // Dilation 2 at stride 1 (past an output stride), and 3 at stride 2 (the kernel takes
        // it; no network makes it).
        for (k, stride, dilation) in [
            (3, 1, 1),
            (3, 2, 1),
            (5, 1, 1),
            (5, 2, 1),
            (3, 1, 2),
            (5, 1, 2),
            (3, 2, 3),
        ] {
            for same in [true, false] {
                let extent = (k - 1) * dilation + 1;
                let pad = if same {
                    Padding2d::same(h, w, extent, stride).expect("same")
                } else {
                    Padding2d::symmetric(extent / 2)
                };
                out.push(ConvGeom {
                    n,
                    c,
                    h,
                    w,
                    o: c,
                    k,
                    stride,
                    dilation,
                    pad,
                });
            }
        }
    }
    out
}

#[test]
fn depthwise_matches_the_cpu_kernel() {
    let mut case = 0u64;
    for g in windows() {
        let (n, c, k) = (g.n, g.c, g.k);
        let (oh, ow) = g.out_hw().expect("out");
        for act in ACTS {
            case += 1;
            let x = values(n * g.h * g.w * c, case);
            let wt = values(c * k * k, case + 100);
            let scale = values(c, case + 200);
            let shift = values(c, case + 300);
            let epi = Epilogue {
                scale: &scale,
                shift: &shift,
                act,
            };
            let (want, _) = depthwise(&x, &wt, &g, &epi, false).expect("cpu");
            let affine = [scale.clone(), shift.clone()].concat();
            let got = EMU
                .depthwise(
                    &tensor(&x, &[n, g.h, g.w, c]),
                    &tensor(&wt, &[c, 1, k, k]),
                    &tensor(&affine, &[2, c]),
                    &g,
                    act,
                )
                .expect("cuda");
            assert_eq!(got.dims(), [n, oh, ow, c]);
            let d = rel_diff(&flat(&got), &want);
            assert!(d < 1e-5, "{g:?} {act:?}: relative difference {d}");
        }
    }
    assert_eq!(case, 6 * 7 * 2 * 6);
}

#[test]
fn depthwise_backward_matches_the_cpu_kernel() {
    for (i, g) in windows().into_iter().enumerate() {
        let (n, c, k) = (g.n, g.c, g.k);
        let (oh, ow) = g.out_hw().expect("out");
        let seed = 1000 + i as u64 * 3;
        let x = values(n * g.h * g.w * c, seed);
        let wt = values(c * k * k, seed + 1);
        let dy = values(n * oh * ow * c, seed + 2);
        let (want_dw, want_dx) = depthwise_backward(&x, &wt, &g, &dy).expect("cpu");
        let dyt = tensor(&dy, &[n, oh, ow, c]);
        let dx = EMU
            .depthwise_input_grad(&dyt, &tensor(&wt, &[c, 1, k, k]), &g)
            .expect("cuda dx");
        let dw = EMU
            .depthwise_weight_grad(&tensor(&x, &[n, g.h, g.w, c]), &dyt, &g)
            .expect("cuda dw");
        assert_eq!(dx.dims(), [n, g.h, g.w, c]);
        assert_eq!(dw.dims(), [c, 1, k, k]);
        let (ddx, ddw) = (
            rel_diff(&flat(&dx), &want_dx),
            rel_diff(&flat(&dw), &want_dw),
        );
        assert!(ddx < 1e-5 && ddw < 1e-5, "{g:?}: dx {ddx}, dw {ddw}");
    }
}

/// A dense convolution as the cuda plans run it (patches, then one GEMM with the weight in
/// `[o, k, k, c]` order), and its backward (the weight gradient on the patches, the input
/// gradient through the patches' adjoint), against the CPU kernels.
#[test]
fn dense_convolution_on_patches_matches_the_cpu_kernels_forward_and_backward() {
    for (i, mut g) in windows().into_iter().enumerate().step_by(3) {
        g.o = [7, 16, 1][i % 3];
        let (n, c, o, k) = (g.n, g.c, g.o, g.k);
        let (oh, ow) = g.out_hw().expect("out");
        let seed = 5000 + i as u64 * 3;
        let x = values(n * g.h * g.w * c, seed);
        let wt = values(o * c * k * k, seed + 1);
        let dy = values(n * oh * ow * o, seed + 2);
        let (ones, zeros) = (vec![1f32; o], vec![0f32; o]);
        let epi = Epilogue {
            scale: &ones,
            shift: &zeros,
            act: Act::Identity,
        };
        let want = conv2d(&x, &wt, &g, &epi, None).expect("cpu conv");
        let (want_dw, want_dx) = conv_backward(&x, &wt, &g, &dy, true).expect("cpu backward");

        let xt = tensor(&x, &[n, g.h, g.w, c]);
        let w_gemm = tensor(&wt, &[o, c, k, k])
            .permute((0, 2, 3, 1))
            .and_then(|w| w.contiguous())
            .and_then(|w| w.reshape((o, k * k * c)))
            .expect("gemm weight");
        let cols = EMU.im2col(&xt, &g).expect("patches");
        assert_eq!(cols.dims(), [n * oh * ow, k * k * c]);
        let y = cols.matmul(&w_gemm.t().expect("t")).expect("gemm");
        let d = rel_diff(&flat(&y), &want);
        assert!(d < 1e-5, "{g:?}: forward {d}");

        let dyt = tensor(&dy, &[n * oh * ow, o]);
        let dw = dyt
            .t()
            .and_then(|t| t.matmul(&cols))
            .and_then(|t| t.reshape((o, k, k, c)))
            .and_then(|t| t.permute((0, 3, 1, 2)))
            .expect("dw");
        let dx = EMU
            .col2im(&dyt.matmul(&w_gemm).expect("dcols"), &g)
            .expect("adjoint");
        let (ddw, ddx) = (
            rel_diff(&flat(&dw), &want_dw),
            rel_diff(&flat(&dx), want_dx.as_deref().expect("dx")),
        );
        assert!(ddw < 1e-5 && ddx < 1e-5, "{g:?}: dw {ddw}, dx {ddx}");
    }
}

#[test]
fn affine_act_matches_the_cpu_kernel_with_and_without_a_residual() {
    for (i, &(rows, c)) in [(1usize, 1usize), (7 * 9, 24), (3 * 5 * 5, 1280), (257, 17)]
        .iter()
        .enumerate()
    {
        for act in ACTS {
            let seed = i as u64 * 10;
            let z = values(rows * c, seed);
            let scale = values(c, seed + 1);
            let shift = values(c, seed + 2);
            let want = affine_act(&z, c, &scale, &shift, act);
            let zt = tensor(&z, &[rows, c]);
            let affine = tensor(&[scale.clone(), shift.clone()].concat(), &[2, c]);
            let got = EMU.affine_act(&zt, &affine, None, act).expect("cuda");
            assert!(rel_diff(&flat(&got), &want) < 1e-6, "{rows}x{c} {act:?}");
            let r = values(rows * c, seed + 3);
            let want_r: Vec<f32> = want.iter().zip(&r).map(|(a, b)| a + b).collect();
            let got_r = EMU
                .affine_act(&zt, &affine, Some(&tensor(&r, &[rows, c])), act)
                .expect("cuda");
            let d = rel_diff(&flat(&got_r), &want_r);
            assert!(d < 1e-6, "{rows}x{c} {act:?} + residual: {d}");
        }
    }
}

#[test]
fn batch_statistics_and_the_batchnorm_backward_match_the_cpu_kernels() {
    // Rows past one chunk (the reduction splits them), and a single row.
    for (i, &(rows, c)) in [(7 * 9, 24usize), (3 * 225, 40), (1, 5), (5000, 3)]
        .iter()
        .enumerate()
    {
        let seed = 70 + i as u64 * 5;
        // An offset mean, as convolution outputs have.
        let z: Vec<f32> = values(rows * c, seed)
            .iter()
            .map(|v| v * 1.5 + 0.7)
            .collect();
        let zt = tensor(&z, &[rows, c]);
        let eps = 1e-3;
        let stats = EMU.batch_stats(&zt, eps).expect("stats");
        let (mean64, var64) = channel_stats(&z, c);
        let want_mean: Vec<f32> = mean64.iter().map(|&v| v as f32).collect();
        let want_inv: Vec<f32> = var64
            .iter()
            .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
            .collect();
        let m = rows as f64;
        let want_unbiased: Vec<f32> = var64
            .iter()
            .map(|&v| {
                if rows > 1 {
                    (v * m / (m - 1.0)) as f32
                } else {
                    v as f32
                }
            })
            .collect();
        let got = flat(&stats);
        let dm = rel_diff(&got[..c], &want_mean);
        // The CPU kernel sums each task's rows (up to 2^14 values) in f32, the CUDA one in f64.
        assert!(dm < 1e-5, "mean {rows}x{c}: {dm}");
        assert!(
            rel_diff(&got[c..2 * c], &want_inv) < 1e-5,
            "inv_std {rows}x{c}"
        );
        assert!(
            rel_diff(&got[2 * c..], &want_unbiased) < 1e-5,
            "var {rows}x{c}"
        );

        let gamma = values(c, seed + 1);
        let beta = values(c, seed + 2);
        let d = values(rows * c, seed + 3);
        let (mean, inv) = (&got[..c], &got[c..2 * c]);
        for act in ACTS {
            for eval in [false, true] {
                let bn = BnAct {
                    mean,
                    inv_std: inv,
                    gamma: &gamma,
                    beta: &beta,
                    act,
                };
                let mut want_dz = d.clone();
                let (want_dw, want_db) = if eval {
                    bn_act_backward_eval(&mut want_dz, &z, c, &bn)
                } else {
                    bn_act_backward(&mut want_dz, &z, c, &bn)
                };
                let params = tensor(&[mean, inv, &gamma, &beta].concat(), &[4, c]);
                let dt = tensor(&d, &[rows, c]);
                let sums = flat(
                    &EMU.bn_act_param_grads(&dt, &zt, &params, act)
                        .expect("sums"),
                );
                assert!(
                    rel_diff(&sums[..c], &want_db) < 1e-5,
                    "dbeta {rows}x{c} {act:?}"
                );
                assert!(
                    rel_diff(&sums[c..], &want_dw) < 1e-5,
                    "dgamma {rows}x{c} {act:?}"
                );
                let all = tensor(
                    &[mean, inv, &gamma, &beta, &sums[..c], &sums[c..]].concat(),
                    &[6, c],
                );
                let dz = EMU
                    .bn_act_input_grad(&dt, &zt, &all, act, eval, rows)
                    .expect("dz");
                let e = rel_diff(&flat(&dz), &want_dz);
                assert!(e < 1e-4, "dz {rows}x{c} {act:?} eval {eval}: {e}");
            }
        }
    }
}

#[test]
fn squeeze_and_excitation_match_the_cpu_kernels() {
    for (i, &(n, p, c)) in [(1usize, 1usize, 4usize), (7, 49, 96), (2, 225, 33)]
        .iter()
        .enumerate()
    {
        let x = values(n * p * c, 40 + i as u64);
        let xt = tensor(&x, &[n, p, 1, c]);
        let want = channel_means(&x, n, p, c);
        let got = EMU.channel_means(&xt).expect("cuda");
        assert!(rel_diff(&flat(&got), &want) < 1e-5, "means [{n}, {p}, {c}]");

        let gate = values(n * c, 50 + i as u64);
        let mut want = x.clone();
        gate_channels(&mut want, &gate, n, p, c);
        let gt = tensor(&gate, &[n, c]);
        let got = EMU.gate_channels(&xt, &gt).expect("cuda");
        assert_eq!(flat(&got), want, "gates [{n}, {p}, {c}]");

        let y = values(n * p * c, 60 + i as u64);
        let add = values(n * c, 70 + i as u64);
        let mut dots = vec![0f32; n * c];
        let mut gated_add = vec![0f32; n * p * c];
        for b in 0..n {
            for q in 0..p {
                for ch in 0..c {
                    let at = (b * p + q) * c + ch;
                    dots[b * c + ch] += x[at] * y[at];
                    gated_add[at] = x[at] * gate[b * c + ch] + add[b * c + ch];
                }
            }
        }
        let got = EMU
            .channel_dots(&xt, &tensor(&y, &[n, p, 1, c]))
            .expect("dots");
        assert!(rel_diff(&flat(&got), &dots) < 1e-5, "dots [{n}, {p}, {c}]");
        let got = EMU
            .gate_add(&xt, &gt, &tensor(&add, &[n, c]))
            .expect("gate add");
        assert_eq!(flat(&got), gated_add, "gate + add [{n}, {p}, {c}]");
    }
}

/// `v` rounded to bf16 and back (what a bf16 map holds).
fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

fn bf16_tensor(v: &[f32], dims: &[usize]) -> Tensor {
    tensor(v, dims).to_dtype(DType::BF16).expect("bf16")
}

/// `v` rounded to f16 and back (what an f16 map holds).
fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// The bf16 twins of the inference kernels against the f32 CPU kernels on the same
/// (bf16-rounded) inputs: equal within one bf16 rounding of the result (2^-8 relative).
#[test]
fn bf16_map_kernels_match_the_f32_cpu_kernels_within_a_rounding() {
    half_map_kernels_match_the_f32_cpu_kernels(DType::BF16, bf16_round, 1.0 / 256.0);
}

/// The f16 twins of the inference kernels likewise (one f16 rounding, 2^-11 relative).
#[test]
fn f16_map_kernels_match_the_f32_cpu_kernels_within_a_rounding() {
    half_map_kernels_match_the_f32_cpu_kernels(DType::F16, f16_round, 1.0 / 2048.0);
}

/// The inference kernels on maps of `dtype` (whose rounding is `round`, one rounding `ulp`
/// relative) against the f32 CPU kernels on the same rounded inputs.
fn half_map_kernels_match_the_f32_cpu_kernels(
    dtype: DType,
    round: fn(&[f32]) -> Vec<f32>,
    ulp: f32,
) {
    let maps = |v: &[f32], dims: &[usize]| tensor(v, dims).to_dtype(dtype).expect("maps");
    for (i, g) in windows().into_iter().enumerate().step_by(5) {
        let (n, c, k) = (g.n, g.c, g.k);
        let (oh, ow) = g.out_hw().expect("out");
        let seed = 9000 + i as u64 * 7;
        let x = round(&values(n * g.h * g.w * c, seed));
        let xt = maps(&x, &[n, g.h, g.w, c]);
        let wt = values(c * k * k, seed + 1);
        let (scale, shift) = (values(c, seed + 2), values(c, seed + 3));
        let affine = tensor(&[scale.clone(), shift.clone()].concat(), &[2, c]);
        let act = ACTS[i % ACTS.len()];
        let epi = Epilogue {
            scale: &scale,
            shift: &shift,
            act,
        };
        let (want, _) = depthwise(&x, &wt, &g, &epi, false).expect("cpu");
        let got = EMU
            .depthwise(&xt, &tensor(&wt, &[c, 1, k, k]), &affine, &g, act)
            .expect("half depthwise");
        assert_eq!(got.dtype(), dtype);
        assert_eq!(got.dims(), [n, oh, ow, c]);
        let d = rel_diff(&flat(&got.to_dtype(DType::F32).expect("f32")), &want);
        assert!(d <= ulp, "{dtype:?} {g:?} depthwise: {d}");

        let cols = EMU.im2col(&xt, &g).expect("half patches");
        let want = flat(&EMU.im2col(&tensor(&x, &[n, g.h, g.w, c]), &g).expect("f32"));
        assert!(
            flat(&cols.to_dtype(DType::F32).expect("f32")) == want,
            "{dtype:?} {g:?} patches"
        );

        let means = EMU.channel_means(&xt).expect("half means");
        assert_eq!(means.dtype(), DType::F32);
        let want = channel_means(&x, n, g.h * g.w, c);
        assert!(rel_diff(&flat(&means), &want) < 1e-5, "{g:?} means");

        let gate = values(n * c, seed + 4);
        let mut want = x.clone();
        gate_channels(&mut want, &gate, n, g.h * g.w, c);
        let got = EMU
            .gate_channels(&xt, &tensor(&gate, &[n, c]))
            .expect("half gates");
        let gated = flat(&got.to_dtype(DType::F32).expect("f32"));
        assert!(gated == round(&want), "{dtype:?} {g:?} gates");

        let z = round(&values(n * g.h * g.w * c, seed + 5));
        let r = round(&values(n * g.h * g.w * c, seed + 6));
        let plain = affine_act(&z, c, &scale, &shift, act);
        let with_r: Vec<f32> = plain.iter().zip(&r).map(|(a, b)| a + b).collect();
        let zt = maps(&z, &[n * g.h * g.w, c]);
        let rt = maps(&r, &[n * g.h * g.w, c]);
        // The CPU kernel fuses the affine map's multiply-add; the result may round either way.
        let got = EMU
            .affine_act(&zt, &affine, None, act)
            .expect("half epilogue");
        let d = rel_diff(&flat(&got.to_dtype(DType::F32).expect("f32")), &plain);
        assert!(d <= ulp, "{dtype:?} {g:?} epilogue: {d}");
        let got = EMU
            .affine_act(&zt, &affine, Some(&rt), act)
            .expect("half epilogue + residual");
        let d = rel_diff(&flat(&got.to_dtype(DType::F32).expect("f32")), &with_r);
        assert!(d <= ulp, "{dtype:?} {g:?} epilogue + residual: {d}");
    }
}

/// The kernels' hand-written f16 conversions against the `half` crate's, bit for bit: loads
/// of every f16 value (subnormals, infinities, NaN), and stores of f32 values around every
/// boundary (ties to even, the subnormal range, overflow to infinity at 65520, NaN).
#[test]
fn f16_loads_and_stores_match_the_half_crate_bit_for_bit() {
    // Loads: every f16 bit pattern through `x * 1` (exact), stored back.
    let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    let c = 1;
    let x = Tensor::from_vec(all.clone(), (1, 1, all.len(), c), &Device::Cpu).expect("x");
    let ones = tensor(&[1.0], &[1, 1]);
    let got: Vec<half::f16> = EMU
        .gate_channels(&x, &ones)
        .expect("gate")
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("f16");
    for (a, b) in all.iter().zip(&got) {
        if a.is_nan() {
            assert!(b.is_nan(), "{:#06x}: NaN lost", a.to_bits());
        } else {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{:#06x} loaded and stored",
                a.to_bits()
            );
        }
    }
    // Stores: f16 `z` times an f32 scale, `z * s + 0` (identity activation) rounded to f16.
    let z: Vec<f32> = (0..=u16::MAX)
        .map(half::f16::from_bits)
        .filter(|h| h.is_finite())
        .map(half::f16::to_f32)
        .collect();
    for s in [
        1.000_244_1_f32, // half an f16 step above 1: ties
        1.000_122_1,
        0.999_877_9,
        3.0,
        1.0e-3,
        1.0e-6,
        6.1e-5,
        1.5e3,
        2.0e4,
        f32::INFINITY,
    ] {
        let zt = Tensor::from_vec(
            z.iter()
                .map(|&v| half::f16::from_f32(v))
                .collect::<Vec<_>>(),
            (z.len(), 1),
            &Device::Cpu,
        )
        .expect("z");
        let affine = tensor(&[s, 0.0], &[2, 1]);
        let got: Vec<half::f16> = EMU
            .affine_act(&zt, &affine, None, Act::Identity)
            .expect("store")
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("f16");
        for (&v, g) in z.iter().zip(&got) {
            let want = half::f16::from_f32(v * s + 0.0);
            if want.is_nan() {
                assert!(g.is_nan(), "{v} * {s}: NaN lost");
            } else {
                assert_eq!(want.to_bits(), g.to_bits(), "{v} * {s} stored");
            }
        }
    }
}

/// The bf16 twins of the training step's kernels against their f32 kernels on the same
/// (bf16-rounded) inputs: map results within one bf16 rounding, reductions (which read bf16
/// and sum in f64) equal to the f32 kernel's up to summation order.
#[test]
fn bf16_training_kernels_match_their_f32_kernels() {
    const ULP: f32 = 1.0 / 256.0;
    let as_f32 = |t: &Tensor| flat(&t.to_dtype(DType::F32).expect("f32"));
    for (i, mut g) in windows().into_iter().enumerate().step_by(5) {
        g.o = g.c;
        let (n, c, k) = (g.n, g.c, g.k);
        let (oh, ow) = g.out_hw().expect("out");
        let seed = 12_000 + i as u64 * 11;
        let x = bf16_round(&values(n * g.h * g.w * c, seed));
        let dy = bf16_round(&values(n * oh * ow * c, seed + 1));
        let wt = values(c * k * k, seed + 2);
        let (x32, dy32) = (tensor(&x, &[n, g.h, g.w, c]), tensor(&dy, &[n, oh, ow, c]));
        let (x16, dy16) = (
            bf16_tensor(&x, &[n, g.h, g.w, c]),
            bf16_tensor(&dy, &[n, oh, ow, c]),
        );
        let w = tensor(&wt, &[c, 1, k, k]);

        let want = flat(&EMU.depthwise_input_grad(&dy32, &w, &g).expect("f32 dx"));
        let got = EMU.depthwise_input_grad(&dy16, &w, &g).expect("bf16 dx");
        assert_eq!(got.dtype(), DType::BF16);
        assert!(rel_diff(&as_f32(&got), &want) <= ULP, "{g:?} depthwise dx");

        let want = flat(&EMU.depthwise_weight_grad(&x32, &dy32, &g).expect("f32 dw"));
        let got = flat(&EMU.depthwise_weight_grad(&x16, &dy16, &g).expect("bf16 dw"));
        assert!(rel_diff(&got, &want) < 1e-6, "{g:?} depthwise dw");

        let width = k * k * c;
        let cols = bf16_round(&values(n * oh * ow * width, seed + 3));
        let want = flat(
            &EMU.col2im(&tensor(&cols, &[n * oh * ow, width]), &g)
                .expect("f32"),
        );
        let got = EMU
            .col2im(&bf16_tensor(&cols, &[n * oh * ow, width]), &g)
            .expect("bf16 col2im");
        assert!(rel_diff(&as_f32(&got), &want) <= ULP, "{g:?} col2im");

        let rows = n * g.h * g.w;
        let (z32, z16) = (tensor(&x, &[rows, c]), bf16_tensor(&x, &[rows, c]));
        let want = flat(&EMU.batch_stats(&z32, 1e-3).expect("f32 stats"));
        let got = flat(&EMU.batch_stats(&z16, 1e-3).expect("bf16 stats"));
        assert!(rel_diff(&got, &want) < 1e-6, "{g:?} batch statistics");

        let d = bf16_round(&values(rows * c, seed + 4));
        let (d32, d16) = (tensor(&d, &[rows, c]), bf16_tensor(&d, &[rows, c]));
        let act = ACTS[i % ACTS.len()];
        let mut bn = flat(&EMU.batch_stats(&z32, 1e-3).expect("stats"))[..2 * c].to_vec();
        bn.extend(values(2 * c, seed + 5));
        let bn4 = tensor(&bn, &[4, c]);
        let want = flat(&EMU.bn_act_param_grads(&d32, &z32, &bn4, act).expect("f32"));
        let got = flat(&EMU.bn_act_param_grads(&d16, &z16, &bn4, act).expect("bf16"));
        assert!(
            rel_diff(&got, &want) < 1e-6,
            "{g:?} BatchNorm parameter gradients"
        );
        bn.extend(&got);
        let bn6 = tensor(&bn, &[6, c]);
        for eval in [false, true] {
            let want = flat(
                &EMU.bn_act_input_grad(&d32, &z32, &bn6, act, eval, rows)
                    .expect("f32"),
            );
            let got = EMU
                .bn_act_input_grad(&d16, &z16, &bn6, act, eval, rows)
                .expect("bf16 dz");
            assert!(
                rel_diff(&as_f32(&got), &want) <= ULP,
                "{g:?} BatchNorm dz (eval {eval})"
            );
        }

        let want = flat(&EMU.channel_dots(&x32, &x32).expect("f32 dots"));
        let got = flat(&EMU.channel_dots(&x16, &x16).expect("bf16 dots"));
        assert!(rel_diff(&got, &want) < 1e-6, "{g:?} dots");
        let (gate, add) = (
            tensor(&values(n * c, seed + 6), &[n, c]),
            tensor(&values(n * c, seed + 7), &[n, c]),
        );
        let want = flat(&EMU.gate_add(&x32, &gate, &add).expect("f32 gate add"));
        let got = EMU.gate_add(&x16, &gate, &add).expect("bf16 gate add");
        assert!(rel_diff(&as_f32(&got), &want) <= ULP, "{g:?} gate add");
    }
}

#[test]
fn reductions_cover_every_row_exactly_once() {
    for rows in [0usize, 1, 2, 63, 64, 65, 1000, 1 << 20, (1 << 20) + 7] {
        for width in [1usize, 3, 24, 1280, 1 << 17] {
            let (chunks, per) = row_chunks(rows, width);
            assert!(chunks >= 1 && per >= 1, "{rows} x {width}");
            assert!(chunks * per >= rows, "{rows} x {width}: {chunks} x {per}");
            assert!(
                (chunks - 1) * per < rows.max(1),
                "{rows} x {width}: an empty chunk"
            );
        }
    }
}

#[test]
fn wrong_operands_are_refused_before_any_launch() {
    let g = ConvGeom {
        n: 1,
        c: 4,
        h: 5,
        w: 5,
        o: 4,
        k: 3,
        stride: 1,
        dilation: 1,
        pad: Padding2d::symmetric(1),
    };
    let x = tensor(&values(100, 1), &[1, 5, 5, 4]);
    let affine = tensor(&[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], &[2, 4]);
    let e = EMU.depthwise(&x, &tensor(&values(35, 2), &[35]), &affine, &g, Act::Silu);
    assert!(e.is_err(), "a 35-value weight for 4 channels of 3x3");
    let e = EMU.gate_channels(&x, &tensor(&values(5, 3), &[5]));
    assert!(e.is_err(), "5 gates for 4 channels");
    let z = tensor(&values(12, 4), &[4, 3]);
    let e = EMU.affine_act(&z, &tensor(&[1.0; 4], &[2, 2]), None, Act::Relu);
    assert!(e.is_err(), "an affine of 2 channels for 3");
    let e = EMU.column_moments_partial(&z, (1, 2));
    assert!(e.is_err(), "one chunk of 2 rows for 4 rows");
    let e = EMU.sum_chunks(&z);
    assert!(e.is_err(), "f32 partials");
}

/// Where a CUDA toolkit is on the PATH (`eval "$(bash tools/cuda-toolkit.sh)"`), the kernel
/// source also compiles as CUDA: nvcc to PTX for sm_90, every kernel an entry. Elsewhere
/// (CI, whose nvcc is the type-checking stand-in, or none) it says so and passes.
#[test]
fn the_source_compiles_as_cuda_where_a_toolkit_is_present() {
    use effnet_runtime::exec::cuda::{KERNELS, SOURCE};
    let version = std::process::Command::new("nvcc").arg("--version").output();
    let real = matches!(&version, Ok(o) if o.status.success()
        && !String::from_utf8_lossy(&o.stdout).contains("stand-in"));
    if !real {
        eprintln!("skipped: no CUDA toolkit on the PATH (eval \"$(bash tools/cuda-toolkit.sh)\")");
        return;
    }
    let dir = std::env::temp_dir().join(format!("effnet-cuda-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (src, ptx) = (dir.join("kernels.cu"), dir.join("kernels.ptx"));
    std::fs::write(&src, SOURCE).expect("write source");
    let o = std::process::Command::new("nvcc")
        .args(["--ptx", "-arch=compute_90", "-o"])
        .arg(&ptx)
        .arg(&src)
        .output()
        .expect("run nvcc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&ptx).expect("ptx");
    for k in KERNELS {
        assert!(
            text.contains(&format!(".entry {k}(")),
            "no entry {k} in the PTX"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A launch that does not match its kernel's declaration is refused before the kernel runs:
/// scalars of the wrong C type or number, a buffer of the wrong element type, a kernel the
/// source does not have.
#[test]
fn the_emulator_refuses_launches_that_do_not_match_the_declaration() {
    use effnet_cuda_emu::CpuExec;
    use effnet_runtime::exec::cuda::launch::{Arg, Execute, Launch};
    let partial = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).expect("partials");
    let launch = |scalars: Vec<Arg>| Launch {
        kernel: "effnet_sum_chunks",
        threads: 3,
        out: vec![3],
        out_dtype: DType::F32,
        scalars,
    };
    let ok = CpuExec
        .execute(&launch(vec![Arg::Int(2), Arg::Long(3)]), &[&partial])
        .expect("a matching launch");
    assert_eq!(ok.dims(), [3]);
    for wrong in [
        vec![Arg::Long(2), Arg::Long(3)],
        vec![Arg::Int(2)],
        vec![Arg::Int(2), Arg::Long(3), Arg::Double(1.0)],
    ] {
        let e = CpuExec.execute(&launch(wrong.clone()), &[&partial]);
        assert!(e.is_err(), "scalars {wrong:?} accepted");
    }
    let f32_partial = partial.to_dtype(DType::F32).expect("f32");
    let e = CpuExec.execute(&launch(vec![Arg::Int(2), Arg::Long(3)]), &[&f32_partial]);
    assert!(e.is_err(), "an f32 buffer where the kernel reads double");
    let mut unknown = launch(vec![]);
    unknown.kernel = "effnet_no_such_kernel";
    assert!(CpuExec.execute(&unknown, &[&partial]).is_err());
}
