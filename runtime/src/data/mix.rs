//! Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch, as timm's `Mixup` in
//! batch mode: each sample is mixed with the sample at the mirrored position (`x.flip(0)`),
//! `lambda ~ Beta(alpha, alpha)`, and the targets are mixed the same way, so the loss sees
//! soft targets. With both alphas set, each batch uses CutMix with probability 0.5.

use rand::Rng;
use rand_distr::{Beta, Distribution};

/// Label-smoothed one-hot targets, timm's convention: `1 - s + s / K` on the label and
/// `s / K` elsewhere.
pub fn smooth_targets(labels: &[usize], classes: usize, smoothing: f64) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let mut t = vec![off as f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l] = on as f32;
    }
    t
}

/// A draw from `Beta(alpha, alpha)`; 1 when `alpha` is not positive.
pub fn sample_lambda<R: Rng>(alpha: f64, rng: &mut R) -> f64 {
    if alpha <= 0.0 {
        return 1.0;
    }
    match Beta::new(alpha, alpha) {
        Ok(b) => b.sample(rng),
        Err(_) => 1.0,
    }
}

/// `v_i = lam * v_i + (1 - lam) * v_{n-1-i}` for rows of `row` values.
fn mix_rows(values: &mut [f32], row: usize, lam: f32) {
    let orig = values.to_vec();
    let n = values.len() / row.max(1);
    for i in 0..n {
        let j = n - 1 - i;
        for k in 0..row {
            values[i * row + k] = lam * orig[i * row + k] + (1.0 - lam) * orig[j * row + k];
        }
    }
}

/// Mixup of a batch of `images` (NCHW, `sample_len = C * H * W` values per sample) and its
/// `targets` (`classes` per sample), in place.
pub fn mixup(images: &mut [f32], sample_len: usize, targets: &mut [f32], classes: usize, lam: f64) {
    mix_rows(images, sample_len, lam as f32);
    mix_rows(targets, classes, lam as f32);
}

/// timm's `rand_bbox`: a box of `int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam))` centred at
/// a uniform position, clipped to the image. Returns `(y0, y1, x0, x1)`, half-open.
pub fn cutmix_box<R: Rng>(
    h: usize,
    w: usize,
    lam: f64,
    rng: &mut R,
) -> (usize, usize, usize, usize) {
    let ratio = (1.0 - lam).max(0.0).sqrt();
    let cut_h = (h as f64 * ratio) as i64;
    let cut_w = (w as f64 * ratio) as i64;
    let cy = rng.random_range(0..h.max(1)) as i64;
    let cx = rng.random_range(0..w.max(1)) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    (
        clip(cy - cut_h / 2, h),
        clip(cy + cut_h / 2, h),
        clip(cx - cut_w / 2, w),
        clip(cx + cut_w / 2, w),
    )
}

/// CutMix in place: the box `(y0, y1, x0, x1)` of each image is replaced by the mirrored
/// sample's, and the targets are mixed by the kept area, `lam = 1 - box area / (H * W)`,
/// which is returned.
#[allow(clippy::too_many_arguments)]
pub fn cutmix(
    images: &mut [f32],
    (c, h, w): (usize, usize, usize),
    targets: &mut [f32],
    classes: usize,
    (y0, y1, x0, x1): (usize, usize, usize, usize),
) -> f64 {
    let sample = c * h * w;
    let n = images.len() / sample.max(1);
    let orig = images.to_vec();
    for i in 0..n {
        let j = n - 1 - i;
        for ch in 0..c {
            for y in y0..y1 {
                for x in x0..x1 {
                    let off = ch * h * w + y * w + x;
                    images[i * sample + off] = orig[j * sample + off];
                }
            }
        }
    }
    let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
    mix_rows(targets, classes, lam as f32);
    lam
}

/// Which mixing a batch gets and with what strength.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixConfig {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
}

/// What was done to a batch (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mixed {
    None,
    Mixup(f64),
    Cutmix(f64),
}

impl MixConfig {
    pub fn active(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    /// Mix a batch in place.
    pub fn apply<R: Rng>(
        &self,
        images: &mut [f32],
        chw: (usize, usize, usize),
        targets: &mut [f32],
        classes: usize,
        rng: &mut R,
    ) -> Mixed {
        let use_cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (false, false) => return Mixed::None,
            (true, false) => false,
            (false, true) => true,
            (true, true) => rng.random_bool(0.5),
        };
        if use_cutmix {
            let lam = sample_lambda(self.cutmix_alpha, rng);
            let bbox = cutmix_box(chw.1, chw.2, lam, rng);
            Mixed::Cutmix(cutmix(images, chw, targets, classes, bbox))
        } else {
            let lam = sample_lambda(self.mixup_alpha, rng);
            mixup(images, chw.0 * chw.1 * chw.2, targets, classes, lam);
            Mixed::Mixup(lam)
        }
    }
}
