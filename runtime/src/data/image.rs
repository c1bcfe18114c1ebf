//! An 8-bit image (height x width x channels, row-major, channels interleaved) and the
//! geometric steps of the input pipeline: resizing, crops and flips.

use rand::Rng;

/// An 8-bit image with 1 (gray) or 3 (RGB) interleaved channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    /// `height * width * channels` bytes, row by row.
    pub data: Vec<u8>,
}

impl Image {
    /// An image filled with `value`.
    pub fn filled(width: usize, height: usize, channels: usize, value: u8) -> Self {
        Image {
            width,
            height,
            channels,
            data: vec![value; width * height * channels],
        }
    }

    /// A gray image from its rows, for tests and small examples.
    pub fn gray(width: usize, height: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), width * height);
        Image {
            width,
            height,
            channels: 1,
            data,
        }
    }

    #[inline]
    pub fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, c: usize, v: u8) {
        let i = (y * self.width + x) * self.channels + c;
        self.data[i] = v;
    }

    /// The same picture with `channels` channels: gray is repeated into RGB, RGB is reduced to
    /// gray with ITU-R 601-2 luma (PIL's `convert("L")`).
    pub fn with_channels(&self, channels: usize) -> Image {
        if channels == self.channels {
            return self.clone();
        }
        let n = self.width * self.height;
        let mut data = Vec::with_capacity(n * channels);
        match (self.channels, channels) {
            (1, c) => {
                for &v in &self.data {
                    data.extend(std::iter::repeat_n(v, c));
                }
            }
            (c, 1) if c >= 3 => {
                for px in self.data.chunks_exact(c) {
                    data.push(luma(px[0], px[1], px[2]));
                }
            }
            _ => {
                // Any other mix: take the first channel as gray, then expand.
                for px in self.data.chunks_exact(self.channels) {
                    data.extend(std::iter::repeat_n(px[0], channels));
                }
            }
        }
        Image {
            width: self.width,
            height: self.height,
            channels,
            data,
        }
    }

    /// The `w x h` window whose top-left corner is `(x, y)` (must lie inside the image).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Image {
        let c = self.channels;
        let mut data = Vec::with_capacity(w * h * c);
        for row in y..y + h {
            let start = (row * self.width + x) * c;
            data.extend_from_slice(&self.data[start..start + w * c]);
        }
        Image {
            width: w,
            height: h,
            channels: c,
            data,
        }
    }

    /// Mirror left to right.
    pub fn flip_horizontal(&self) -> Image {
        let c = self.channels;
        let mut out = self.clone();
        for y in 0..self.height {
            for x in 0..self.width {
                let src = (y * self.width + (self.width - 1 - x)) * c;
                let dst = (y * self.width + x) * c;
                out.data[dst..dst + c].copy_from_slice(&self.data[src..src + c]);
            }
        }
        out
    }

    /// Resize to `width x height` with a triangle (bilinear) filter whose support widens when
    /// shrinking, as PIL's `resize(..., BILINEAR)` does: downscaling averages every source
    /// pixel instead of skipping some. Same size returns a copy.
    pub fn resize(&self, width: usize, height: usize) -> Image {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let c = self.channels;
        let wx = filter_weights(self.width, width);
        let wy = filter_weights(self.height, height);
        // Horizontal pass into f32, then vertical.
        let mut tmp = vec![0f32; self.height * width * c];
        for y in 0..self.height {
            for (x, (start, ws)) in wx.iter().enumerate() {
                for ch in 0..c {
                    let mut acc = 0f32;
                    for (k, w) in ws.iter().enumerate() {
                        acc += w * f32::from(self.at(start + k, y, ch));
                    }
                    tmp[(y * width + x) * c + ch] = acc;
                }
            }
        }
        let mut out = Image::filled(width, height, c, 0);
        for (y, (start, ws)) in wy.iter().enumerate() {
            for x in 0..width {
                for ch in 0..c {
                    let mut acc = 0f32;
                    for (k, w) in ws.iter().enumerate() {
                        acc += w * tmp[((start + k) * width + x) * c + ch];
                    }
                    out.set(x, y, ch, clamp_u8(acc));
                }
            }
        }
        out
    }

    /// Resize the shorter side to `size / crop_pct` and take the central `size x size`
    /// (timm's evaluation transform; `crop_pct` 1 resizes the whole image).
    pub fn resize_center_crop(&self, size: usize, crop_pct: f64) -> Image {
        let scale_to = ((size as f64) / crop_pct).floor().max(size as f64) as usize;
        let (w, h) = if self.width <= self.height {
            (
                scale_to,
                ((self.height * scale_to) as f64 / self.width as f64).round() as usize,
            )
        } else {
            (
                ((self.width * scale_to) as f64 / self.height as f64).round() as usize,
                scale_to,
            )
        };
        let (w, h) = (w.max(size), h.max(size));
        let resized = self.resize(w, h);
        resized.crop((w - size) / 2, (h - size) / 2, size, size)
    }

    /// timm / torchvision `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`:
    /// up to ten tries at a random area and aspect ratio, else a central crop, then resize.
    pub fn random_resized_crop<R: Rng>(&self, size: usize, rng: &mut R) -> Image {
        let (w, h) = (self.width as f64, self.height as f64);
        let area = w * h;
        let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        for _ in 0..10 {
            let target = area * rng.random_range(0.08..=1.0);
            let ratio = rng.random_range(log_lo..=log_hi).exp();
            let cw = (target * ratio).sqrt().round() as usize;
            let ch = (target / ratio).sqrt().round() as usize;
            if cw > 0 && ch > 0 && cw <= self.width && ch <= self.height {
                let x = rng.random_range(0..=self.width - cw);
                let y = rng.random_range(0..=self.height - ch);
                return self.crop(x, y, cw, ch).resize(size, size);
            }
        }
        // Fallback: the central crop clamped to the ratio range.
        let in_ratio = w / h;
        let (cw, ch) = if in_ratio < 3.0 / 4.0 {
            (self.width, (w / (3.0 / 4.0)).round() as usize)
        } else if in_ratio > 4.0 / 3.0 {
            ((h * (4.0 / 3.0)).round() as usize, self.height)
        } else {
            (self.width, self.height)
        };
        let (cw, ch) = (cw.min(self.width).max(1), ch.min(self.height).max(1));
        self.crop((self.width - cw) / 2, (self.height - ch) / 2, cw, ch)
            .resize(size, size)
    }
}

/// PIL's luma: `L = R * 299/1000 + G * 587/1000 + B * 114/1000`, in its fixed-point form.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

#[inline]
pub fn clamp_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// For each output position along one axis, the first source index and the normalized
/// triangle-filter weights (PIL's `precompute_coeffs` with the bilinear filter).
fn filter_weights(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let fscale = scale.max(1.0);
    let support = fscale; // bilinear support 1, widened when shrinking
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(input);
            let mut ws: Vec<f64> = (lo..hi)
                .map(|i| {
                    let d = ((i as f64 + 0.5 - center) / fscale).abs();
                    (1.0 - d).max(0.0)
                })
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                for w in &mut ws {
                    *w /= total;
                }
            } else {
                // Cannot happen for input > 0; keep the nearest pixel anyway.
                ws = vec![1.0];
            }
            (lo, ws.into_iter().map(|w| w as f32).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constant_images_and_averages_when_halving() {
        let img = Image::filled(7, 5, 3, 77);
        let r = img.resize(3, 9);
        assert!(r.data.iter().all(|&v| v == 77));
        // 4 -> 2: each output pixel is the mean of a pair (weights 1/4, 3/4, 3/4, 1/4 over
        // the four pixels around it, normalized).
        let img = Image::gray(4, 1, vec![0, 100, 200, 40]);
        let r = img.resize(2, 1);
        assert_eq!(r.data.len(), 2);
        // Output 0: center 1.0, support 2: pixels 0,1,2 with weights 0.75, 0.75, 0.25
        // -> (0 * .75 + 100 * .75 + 200 * .25) / 1.75 = 71.4
        assert_eq!(r.data[0], 71);
    }

    #[test]
    fn flip_and_crop() {
        let img = Image::gray(3, 2, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(img.flip_horizontal().data, vec![3, 2, 1, 6, 5, 4]);
        assert_eq!(img.crop(1, 0, 2, 2).data, vec![2, 3, 5, 6]);
    }
}
