//! Mixup and CutMix label arithmetic, and label smoothing.

use effnet_runtime::data::mix::{
    MixConfig, Mixed, cutmix, cutmix_box, mixup, sample_lambda, smooth_targets,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} != {b:?}");
    }
}

#[test]
fn label_smoothing_puts_s_over_k_everywhere() {
    let t = smooth_targets(&[2, 0], 4, 0.1);
    close(
        &t,
        &[0.025, 0.025, 0.925, 0.025, 0.925, 0.025, 0.025, 0.025],
    );
    close(&smooth_targets(&[1], 2, 0.0), &[0.0, 1.0]);
}

#[test]
fn mixup_mixes_each_sample_with_its_mirror() {
    // Two samples of two values, two classes, lambda 0.7.
    let mut x = vec![1.0, 2.0, 3.0, 4.0];
    let mut t = smooth_targets(&[0, 1], 2, 0.0);
    mixup(&mut x, 2, &mut t, 2, 0.7);
    close(&x, &[1.6, 2.6, 2.4, 3.4]);
    close(&t, &[0.7, 0.3, 0.3, 0.7]);
    // Three samples: the middle one is its own mirror and stays as it was.
    let mut x = vec![1.0, 5.0, 9.0];
    let mut t = smooth_targets(&[0, 1, 2], 3, 0.0);
    mixup(&mut x, 1, &mut t, 3, 0.25);
    close(&x, &[0.25 + 6.75, 5.0, 2.25 + 0.75]);
    close(&t, &[0.25, 0.0, 0.75, 0.0, 1.0, 0.0, 0.75, 0.0, 0.25]);
}

#[test]
fn cutmix_pastes_the_box_and_mixes_targets_by_area() {
    // Two 1x4x4 images: all 1s and all 2s; box rows 1..3, cols 0..2 (4 of 16 pixels).
    let mut x = vec![1.0f32; 16];
    x.extend(vec![2.0f32; 16]);
    let mut t = smooth_targets(&[0, 1], 2, 0.1);
    let lam = cutmix(&mut x, (1, 4, 4), &mut t, 2, (1, 3, 0, 2));
    assert!((lam - 0.75).abs() < 1e-12);
    for y in 0..4 {
        for xx in 0..4 {
            let inside = (1..3).contains(&y) && (0..2).contains(&xx);
            let (a, b) = (x[y * 4 + xx], x[16 + y * 4 + xx]);
            assert_eq!(a, if inside { 2.0 } else { 1.0 }, "image 0 at ({xx}, {y})");
            assert_eq!(b, if inside { 1.0 } else { 2.0 }, "image 1 at ({xx}, {y})");
        }
    }
    // Smoothed targets 0.95 / 0.05, mixed 0.75 / 0.25.
    close(&t, &[0.725, 0.275, 0.275, 0.725]);
}

#[test]
fn cutmix_box_has_the_area_lambda_asks_for_unless_clipped() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for _ in 0..50 {
        let (y0, y1, x0, x1) = cutmix_box(32, 32, 0.75, &mut rng);
        assert!(y0 <= y1 && y1 <= 32 && x0 <= x1 && x1 <= 32);
        // sqrt(1 - 0.75) * 32 = 16: at most 16 x 16 (less when clipped at an edge).
        assert!(y1 - y0 <= 16 && x1 - x0 <= 16);
    }
}

#[test]
fn beta_draws_and_mixed_targets_stay_distributions() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..100 {
        let l = sample_lambda(0.2, &mut rng);
        assert!((0.0..=1.0).contains(&l));
    }
    assert_eq!(sample_lambda(0.0, &mut rng), 1.0);
    let cfg = MixConfig {
        mixup_alpha: 0.2,
        cutmix_alpha: 1.0,
    };
    let (mut saw_mixup, mut saw_cutmix) = (false, false);
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x: Vec<f32> = (0..4 * 3 * 8 * 8).map(|i| i as f32).collect();
        let mut t = smooth_targets(&[0, 1, 2, 3], 5, 0.1);
        match cfg.apply(&mut x, (3, 8, 8), &mut t, 5, &mut rng) {
            Mixed::Mixup(_) => saw_mixup = true,
            Mixed::Cutmix(_) => saw_cutmix = true,
            Mixed::None => panic!("both alphas set: the batch must be mixed"),
        }
        for row in t.chunks(5) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    assert!(saw_mixup && saw_cutmix, "switches between mixup and cutmix");
    let none = MixConfig {
        mixup_alpha: 0.0,
        cutmix_alpha: 0.0,
    };
    let mut x = vec![1.0f32; 8];
    let mut t = smooth_targets(&[0, 1], 2, 0.0);
    assert_eq!(
        none.apply(
            &mut x,
            (1, 2, 2),
            &mut t,
            2,
            &mut ChaCha8Rng::seed_from_u64(0)
        ),
        Mixed::None
    );
}
