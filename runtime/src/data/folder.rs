//! An image-folder dataset: `ROOT/train/<class>/<image>` and `ROOT/test/<class>/<image>`,
//! PNG or JPEG, classes named by their folders and numbered in sorted order (as torchvision's
//! `ImageFolder`). The test split must use the training split's classes.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Dataset, Image, Kind, Split};
use crate::error::{Error, Result};

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The class folders under `dir`, sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if path.is_dir() {
            out.push((entry.file_name().to_string_lossy().into_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Decode one image file into 8-bit gray or RGB.
pub fn decode(path: &Path) -> Result<Image> {
    let img = ::image::ImageReader::open(path)
        .map_err(io(path))?
        .with_guessed_format()
        .map_err(io(path))?
        .decode()
        .map_err(|e| Error::Input(format!("cannot decode image `{}`: {e}", path.display())))?;
    let gray = matches!(
        img.color(),
        ::image::ColorType::L8 | ::image::ColorType::L16 | ::image::ColorType::La8
    );
    Ok(if gray {
        let g = img.to_luma8();
        Image {
            width: g.width() as usize,
            height: g.height() as usize,
            channels: 1,
            data: g.into_raw(),
        }
    } else {
        let rgb = img.to_rgb8();
        Image {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            channels: 3,
            data: rgb.into_raw(),
        }
    })
}

pub fn load(root: &Path, split: Split) -> Result<Dataset> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(Error::Input(format!(
            "image folder `{}` has no train/ subdirectory (the classes are read from it)",
            root.display()
        )));
    }
    let classes = class_dirs(&train_dir)?;
    if classes.is_empty() {
        return Err(Error::Input(format!(
            "`{}` has no class folders",
            train_dir.display()
        )));
    }
    let dir = root.join(split.name());
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "image folder `{}` has no {}/ subdirectory",
            root.display(),
            split.name()
        )));
    }
    let mut files = Vec::new();
    for (label, (name, _)) in classes.iter().enumerate() {
        let class_dir = dir.join(name);
        if !class_dir.is_dir() {
            continue;
        }
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(io(&class_dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        paths.sort();
        files.extend(paths.into_iter().map(|p| (p, label)));
    }
    for (name, _) in class_dirs(&dir)? {
        if !classes.iter().any(|(n, _)| *n == name) {
            return Err(Error::Input(format!(
                "`{}` has class folder `{name}`, which `{}` lacks",
                dir.display(),
                train_dir.display()
            )));
        }
    }
    if files.is_empty() {
        return Err(Error::Input(format!(
            "`{}` has no PNG or JPEG images in its class folders",
            dir.display()
        )));
    }
    let images = files
        .par_iter()
        .map(|(p, _)| decode(p))
        .collect::<Result<Vec<Image>>>()?;
    Ok(Dataset {
        source: dir,
        kind: Kind::Natural,
        classes: classes.into_iter().map(|(n, _)| n).collect(),
        images,
        labels: files.into_iter().map(|(_, l)| l).collect(),
    })
}
