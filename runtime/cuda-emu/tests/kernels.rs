//! The CUDA kernels, run on the CPU (`effnet-cuda-emu`), against effnet's CPU kernels on random
//! shapes: every kernel size and stride the language allows with both paddings (TensorFlow
//! "same", asymmetric on stride 2, and PyTorch's symmetric), odd sizes, batch 1 and 7, every
//! activation the kernels implement, thin and wide channel counts.

use effnet_cuda_emu::{affine_act_nhwc, channel_means_nhwc, depthwise_nhwc, gate_channels_nhwc};
use effnet_runtime::ops::cpu::backward::affine_act;
use effnet_runtime::ops::cpu::{Epilogue, channel_means, depthwise, gate_channels};
use effnet_runtime::ops::{Act, ConvGeom, Padding2d};

const ACTS: [Act; 5] = [
    Act::Identity,
    Act::Silu,
    Act::Relu,
    Act::Relu6,
    Act::HardSwish,
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

#[test]
fn depthwise_matches_the_cpu_kernel() {
    let mut case = 0u64;
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
        let kernels = [
            (3, 1, 1),
            (3, 2, 1),
            (5, 1, 1),
            (5, 2, 1),
            (3, 1, 2),
            (5, 1, 2),
            (3, 2, 3),
        ];
        for (k, stride, dilation) in kernels {
            for same in [true, false] {
                let extent = (k - 1) * dilation + 1;
                let pad = if same {
                    Padding2d::same(h, w, extent, stride).expect("same")
                } else {
                    Padding2d::symmetric(extent / 2)
                };
                let g = ConvGeom {
                    n,
                    c,
                    h,
                    w,
                    o: c,
                    k,
                    stride,
                    dilation,
                    pad,
                };
                for act in ACTS {
                    case += 1;
                    let x = values(n * h * w * c, case);
                    let wt = values(c * k * k, case + 100);
                    let scale = values(c, case + 200);
                    let shift = values(c, case + 300);
                    let epi = Epilogue {
                        scale: &scale,
                        shift: &shift,
                        act,
                    };
                    let (want, _) = depthwise(&x, &wt, &g, &epi, false).expect("cpu");
                    let got = depthwise_nhwc(&x, &wt, &g, &scale, &shift, act).expect("cuda");
                    let d = rel_diff(&got, &want);
                    assert!(d < 1e-5, "{g:?} {act:?}: relative difference {d}");
                }
            }
        }
    }
    assert_eq!(case, 6 * 7 * 2 * 5);
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
            let got = affine_act_nhwc(&z, c, &scale, &shift, None, act).expect("cuda");
            assert!(rel_diff(&got, &want) < 1e-6, "{rows}x{c} {act:?}");
            let r = values(rows * c, seed + 3);
            let want_r: Vec<f32> = want.iter().zip(&r).map(|(a, b)| a + b).collect();
            let got_r = affine_act_nhwc(&z, c, &scale, &shift, Some(&r), act).expect("cuda");
            let d = rel_diff(&got_r, &want_r);
            assert!(d < 1e-6, "{rows}x{c} {act:?} + residual: {d}");
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
        let want = channel_means(&x, n, p, c);
        let got = channel_means_nhwc(&x, n, p, c).expect("cuda");
        assert!(rel_diff(&got, &want) < 1e-5, "means [{n}, {p}, {c}]");

        let gate = values(n * c, 50 + i as u64);
        let mut want = x.clone();
        gate_channels(&mut want, &gate, n, p, c);
        let mut got = x.clone();
        gate_channels_nhwc(&mut got, &gate, n, p, c).expect("cuda");
        assert_eq!(got, want, "gates [{n}, {p}, {c}]");
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
    let x = values(100, 1);
    let e = depthwise_nhwc(&x, &values(35, 2), &g, &[1.0; 4], &[0.0; 4], Act::Silu);
    assert!(e.is_err(), "a 35-value weight for 4 channels of 3x3");
    assert!(channel_means_nhwc(&x, 2, 10, 4).is_err());
    assert!(affine_act_nhwc(&x, 3, &[1.0; 3], &[0.0; 3], None, Act::Relu).is_err());
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
