//! RandAugment (Cubuk et al. 2019): each training image gets `N` operations drawn uniformly
//! from the 14 below, each at one global magnitude.
//!
//! # Magnitude convention
//! Magnitudes are on automl's and timm's 0-10 scale (`_MAX_LEVEL = 10`, timm's
//! `_LEVEL_DENOM = 10`): an op's strength is `level = min(magnitude, 10) / 10`, so a spec's
//! `randaug 5 -> 15` (the paper's values) ramps from half strength to full strength, reaching it
//! at 10 and staying there (capped, never past the ranges below). Every op uses the
//! "increasing" form (timm's `*Increasing` variants): magnitude 0 is the identity and strength
//! grows with the magnitude, which progressive learning relies on.
//!
//! | op | parameter at `level` (random sign where shown) |
//! |---|---|
//! | Identity, AutoContrast, Equalize | none |
//! | Rotate | `±30 * level` degrees, about the center |
//! | ShearX, ShearY | `±0.3 * level`, about the center |
//! | TranslateX, TranslateY | `±0.45 * level * size` pixels, rounded |
//! | Solarize | invert pixels `>= 256 - floor(256 * level)` |
//! | Posterize | keep `8 - floor(4 * level)` bits |
//! | Color, Contrast, Brightness, Sharpness | blend factor `1 ± 0.9 * level` |
//!
//! Geometric ops sample with nearest neighbour (pixel centers, PIL's convention) and fill
//! uncovered pixels with a fill value (0 for digits, 128 for natural images, as automl's
//! `replace`). Color ops follow PIL's `ImageOps` / `ImageEnhance`: AutoContrast maps each
//! channel's `[min, max]` to `[0, 255]`, Equalize is PIL's histogram equalization, the enhance
//! ops blend `degenerate + factor * (image - degenerate)` (rounded, clamped) with black
//! (Brightness), the gray image (Color), the mean gray level (Contrast) or the 3x3 smoothed
//! image (Sharpness, kernel `[[1,1,1],[1,5,1],[1,1,1]] / 13`, border pixels unchanged).

use rand::Rng;

use super::image::{Image, clamp_u8, luma};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Identity,
    AutoContrast,
    Equalize,
    Rotate,
    Solarize,
    Color,
    Posterize,
    Contrast,
    Brightness,
    Sharpness,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
}

pub const OPS: [Op; 14] = [
    Op::Identity,
    Op::AutoContrast,
    Op::Equalize,
    Op::Rotate,
    Op::Solarize,
    Op::Color,
    Op::Posterize,
    Op::Contrast,
    Op::Brightness,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
];

/// A magnitude on the 0-10 scale as a strength in `[0, 1]` (capped at 10).
pub fn level(magnitude: f64) -> f64 {
    (magnitude / 10.0).clamp(0.0, 1.0)
}

/// The RandAugment policy: `num_ops` ops per image at `magnitude`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandAugment {
    pub num_ops: usize,
    pub magnitude: f64,
    pub fill: u8,
}

impl RandAugment {
    pub fn apply<R: Rng>(&self, img: &Image, rng: &mut R) -> Image {
        let mut out = img.clone();
        if self.magnitude <= 0.0 {
            return out;
        }
        let l = level(self.magnitude);
        for _ in 0..self.num_ops {
            let op = OPS[rng.random_range(0..OPS.len())];
            let signed = if rng.random_bool(0.5) { -l } else { l };
            out = apply_op(op, &out, signed, self.fill);
        }
        out
    }
}

/// One op at a signed level in `[-1, 1]` (the sign matters only where the table shows `±`).
pub fn apply_op(op: Op, img: &Image, level: f64, fill: u8) -> Image {
    let mag = level.abs().min(1.0);
    match op {
        Op::Identity => img.clone(),
        Op::AutoContrast => auto_contrast(img),
        Op::Equalize => equalize(img),
        Op::Rotate => rotate(img, 30.0 * level, fill),
        Op::Solarize => solarize(img, 256 - (256.0 * mag).floor() as u32),
        Op::Posterize => posterize(img, 8 - (4.0 * mag).floor() as u32),
        Op::Color => color(img, 1.0 + 0.9 * level),
        Op::Contrast => contrast(img, 1.0 + 0.9 * level),
        Op::Brightness => brightness(img, 1.0 + 0.9 * level),
        Op::Sharpness => sharpness(img, 1.0 + 0.9 * level),
        Op::ShearX => shear_x(img, 0.3 * level, fill),
        Op::ShearY => shear_y(img, 0.3 * level, fill),
        Op::TranslateX => {
            let dx = (0.45 * level * img.width as f64).round() as i64;
            translate(img, dx, 0, fill)
        }
        Op::TranslateY => {
            let dy = (0.45 * level * img.height as f64).round() as i64;
            translate(img, 0, dy, fill)
        }
    }
}

fn map_lut(img: &Image, luts: &[[u8; 256]]) -> Image {
    let c = img.channels;
    let mut out = img.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        *v = luts[i % c][usize::from(*v)];
    }
    out
}

fn histograms(img: &Image) -> Vec<[u32; 256]> {
    let c = img.channels;
    let mut h = vec![[0u32; 256]; c];
    for (i, &v) in img.data.iter().enumerate() {
        h[i % c][usize::from(v)] += 1;
    }
    h
}

/// PIL's `ImageOps.autocontrast` (no cutoff): each channel's `[lo, hi]` stretched to
/// `[0, 255]` with `int(v * scale + offset)`; a flat channel is left alone.
pub fn auto_contrast(img: &Image) -> Image {
    let luts: Vec<[u8; 256]> = histograms(img)
        .iter()
        .map(|h| {
            let mut lut = [0u8; 256];
            let lo = h.iter().position(|&n| n > 0).unwrap_or(0);
            let hi = h.iter().rposition(|&n| n > 0).unwrap_or(255);
            for (i, l) in lut.iter_mut().enumerate() {
                *l = if hi <= lo {
                    i as u8
                } else {
                    let scale = 255.0 / (hi - lo) as f64;
                    let offset = -(lo as f64) * scale;
                    ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8
                };
            }
            lut
        })
        .collect();
    map_lut(img, &luts)
}

/// PIL's `ImageOps.equalize`: per channel, `step = (count - count of the last used level) / 255`,
/// and level `i` maps to `(step / 2 + pixels below i) / step`.
pub fn equalize(img: &Image) -> Image {
    let luts: Vec<[u8; 256]> = histograms(img)
        .iter()
        .map(|h| {
            let mut lut = [0u8; 256];
            for (i, l) in lut.iter_mut().enumerate() {
                *l = i as u8;
            }
            let used: Vec<u32> = h.iter().copied().filter(|&n| n > 0).collect();
            let total: u32 = h.iter().sum();
            let last = used.last().copied().unwrap_or(0);
            let step = (total - last) / 255;
            if step == 0 {
                return lut;
            }
            let mut n = step / 2;
            for (i, l) in lut.iter_mut().enumerate() {
                *l = (n / step).min(255) as u8;
                n += h[i];
            }
            lut
        })
        .collect();
    map_lut(img, &luts)
}

/// Invert every pixel at or above `threshold` (256 inverts nothing).
pub fn solarize(img: &Image, threshold: u32) -> Image {
    let mut out = img.clone();
    for v in &mut out.data {
        if u32::from(*v) >= threshold {
            *v = 255 - *v;
        }
    }
    out
}

/// Keep the top `bits` bits of every pixel (8 keeps all).
pub fn posterize(img: &Image, bits: u32) -> Image {
    let shift = 8 - bits.min(8);
    let mask = (0xFFu32 << shift) as u8;
    let mut out = img.clone();
    for v in &mut out.data {
        *v &= mask;
    }
    out
}

/// `degenerate + factor * (image - degenerate)`, rounded and clamped.
pub fn blend(degenerate: &Image, img: &Image, factor: f64) -> Image {
    let mut out = img.clone();
    for (o, (&d, &v)) in out
        .data
        .iter_mut()
        .zip(degenerate.data.iter().zip(img.data.iter()))
    {
        let (d, v) = (f64::from(d), f64::from(v));
        *o = clamp_u8((d + factor * (v - d)) as f32);
    }
    out
}

pub fn brightness(img: &Image, factor: f64) -> Image {
    blend(
        &Image::filled(img.width, img.height, img.channels, 0),
        img,
        factor,
    )
}

/// Saturation: a blend with the gray image (a gray image is unchanged).
pub fn color(img: &Image, factor: f64) -> Image {
    if img.channels < 3 {
        return img.clone();
    }
    let gray = img.with_channels(1).with_channels(img.channels);
    blend(&gray, img, factor)
}

/// A blend with the mean gray level (PIL: `int(mean + 0.5)` of the luma).
pub fn contrast(img: &Image, factor: f64) -> Image {
    let gray = img.with_channels(1);
    let n = gray.data.len().max(1) as f64;
    let mean = gray.data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let m = (mean + 0.5) as u8;
    blend(
        &Image::filled(img.width, img.height, img.channels, m),
        img,
        factor,
    )
}

/// A blend with PIL's SMOOTH filter output (interior pixels; borders keep their values).
pub fn sharpness(img: &Image, factor: f64) -> Image {
    let mut smooth = img.clone();
    let (w, h, c) = (img.width, img.height, img.channels);
    if w >= 3 && h >= 3 {
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                for ch in 0..c {
                    let mut s = 0u32;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let wgt = if dx == 1 && dy == 1 { 5 } else { 1 };
                            s += wgt * u32::from(img.at(x + dx - 1, y + dy - 1, ch));
                        }
                    }
                    smooth.set(x, y, ch, ((s as f64) / 13.0).round() as u8);
                }
            }
        }
    }
    blend(&smooth, img, factor)
}

/// Inverse-mapped affine warp about the image center with nearest-neighbour sampling: the
/// output pixel whose center is `(u, v)` from the center reads the input at
/// `(a u + b v + tx, c u + d v + ty)` from the center; outside the input it is `fill`.
fn warp(img: &Image, m: [f64; 4], t: [f64; 2], fill: u8) -> Image {
    let (w, h, ch) = (img.width, img.height, img.channels);
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let mut out = Image::filled(w, h, ch, fill);
    for y in 0..h {
        for x in 0..w {
            let u = x as f64 + 0.5 - cx;
            let v = y as f64 + 0.5 - cy;
            let sx = (m[0] * u + m[1] * v + t[0] + cx).floor();
            let sy = (m[2] * u + m[3] * v + t[1] + cy).floor();
            if sx >= 0.0 && sy >= 0.0 && (sx as usize) < w && (sy as usize) < h {
                for c in 0..ch {
                    out.set(x, y, c, img.at(sx as usize, sy as usize, c));
                }
            }
        }
    }
    out
}

/// Rotate counter-clockwise by `degrees` about the center.
pub fn rotate(img: &Image, degrees: f64, fill: u8) -> Image {
    let (s, c) = degrees.to_radians().sin_cos();
    // Snap the values of multiples of 90 degrees so quarter turns are exact.
    let snap = |v: f64| if v.abs() < 1e-12 { 0.0 } else { v };
    let (s, c) = (snap(s), snap(c));
    warp(img, [c, -s, s, c], [0.0, 0.0], fill)
}

/// Output `(u, v)` reads input `(u + s v, v)`.
pub fn shear_x(img: &Image, s: f64, fill: u8) -> Image {
    warp(img, [1.0, s, 0.0, 1.0], [0.0, 0.0], fill)
}

/// Output `(u, v)` reads input `(u, v + s u)`.
pub fn shear_y(img: &Image, s: f64, fill: u8) -> Image {
    warp(img, [1.0, 0.0, s, 1.0], [0.0, 0.0], fill)
}

/// Move the content by `(dx, dy)` pixels (right and down when positive).
pub fn translate(img: &Image, dx: i64, dy: i64, fill: u8) -> Image {
    warp(
        img,
        [1.0, 0.0, 0.0, 1.0],
        [-(dx as f64), -(dy as f64)],
        fill,
    )
}

/// Luma of an RGB pixel, re-exported for tests.
pub fn gray_level(r: u8, g: u8, b: u8) -> u8 {
    luma(r, g, b)
}
