//! MNIST's IDX format: a big-endian header (magic `0x0000_08DD`, `DD` the number of dimensions,
//! then one `u32` size per dimension) and unsigned bytes. Files may be gzip'd (`.gz`).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Dataset, Image, Kind, Split};
use crate::error::{Error, Result};

fn stem(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

fn existing(dir: &Path, name: &str) -> Option<PathBuf> {
    [format!("{name}.gz"), name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The images and labels files of a split in `dir`, if the images file is there.
pub fn find(dir: &Path, split: Split) -> Option<(PathBuf, Option<PathBuf>)> {
    let s = stem(split);
    let images = existing(dir, &format!("{s}-images-idx3-ubyte"))?;
    Some((images, existing(dir, &format!("{s}-labels-idx1-ubyte"))))
}

/// Read a whole file, un-gzipping it when its name ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Input(format!(
                    "`{}` is not a valid gzip file: {e}",
                    path.display()
                ))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse an IDX buffer of unsigned bytes: its dimensions and its data.
pub fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |why: String| Error::Input(format!("`{}` is not an IDX file: {why}", path.display()));
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes, too short for a header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!(
            "magic number starts with {:#04x} {:#04x}, expected 0x00 0x00",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type {:#04x}, only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let ndim = usize::from(bytes[3]);
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(bad(format!(
            "{ndim} dimensions, header needs {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[header..];
    if data.len() != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} data bytes, found {}",
            data.len()
        )));
    }
    Ok((dims, data.to_vec()))
}

/// Load one split of an MNIST-style directory: 28x28 (or any HxW) gray digits, labels 0-9.
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    let s = stem(split);
    let (images_path, labels_path) = find(dir, split).ok_or_else(|| {
        Error::Input(format!(
            "`{}` has no {} images: expected {s}-images-idx3-ubyte.gz (or without .gz)",
            dir.display(),
            split.name()
        ))
    })?;
    let labels_path = labels_path.ok_or_else(|| {
        Error::Input(format!(
            "`{}` has no {} labels: expected {s}-labels-idx1-ubyte.gz (or without .gz)",
            dir.display(),
            split.name()
        ))
    })?;
    let (idims, pixels) = parse(&read_maybe_gz(&images_path)?, &images_path)?;
    let (ldims, labels) = parse(&read_maybe_gz(&labels_path)?, &labels_path)?;
    let (n, h, w) = match idims.as_slice() {
        [n, h, w] => (*n, *h, *w),
        d => {
            return Err(Error::Input(format!(
                "`{}`: images must have 3 dimensions [count, height, width], found {d:?}",
                images_path.display()
            )));
        }
    };
    if ldims.as_slice() != [n] {
        return Err(Error::Input(format!(
            "`{}`: {ldims:?} labels for {n} images in `{}`",
            labels_path.display(),
            images_path.display()
        )));
    }
    if let Some(bad) = labels.iter().position(|&l| l > 9) {
        return Err(Error::Input(format!(
            "`{}`: label {} at index {bad} is not a digit 0-9",
            labels_path.display(),
            labels[bad]
        )));
    }
    let images = pixels
        .chunks_exact(h * w)
        .map(|px| Image::gray(w, h, px.to_vec()))
        .collect();
    Ok(Dataset {
        source: images_path,
        kind: Kind::Digits,
        classes: (0..10).map(|d| d.to_string()).collect(),
        images,
        labels: labels.into_iter().map(usize::from).collect(),
    })
}
