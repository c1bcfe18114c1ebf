//! Datasets and the training input pipeline.
//!
//! - [`image`]: an 8-bit image type, resizing, random-resized crop and flips.
//! - [`idx`]: MNIST's IDX files (gzip'd or not).
//! - [`folder`]: an image-folder dataset (`train/<class>/*.png|jpg`, `test/<class>/...`).
//! - [`randaug`]: RandAugment's 14 operations and the N-ops-per-image policy.
//! - [`mix`]: mixup and cutmix on a batch, with soft targets.
//! - [`loader`]: worker threads that build and prefetch batches while the model computes.
//!
//! Every random decision comes from a ChaCha8 generator seeded from `(seed, epoch, index)`
//! ([`sample_rng`]), so a batch does not depend on which worker built it or on what ran
//! before: a run is reproducible, and a resumed run sees the same batches.

pub mod folder;
pub mod idx;
pub mod image;
pub mod loader;
pub mod mix;
pub mod randaug;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
pub use image::Image;

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// What the images are: digits are resized as they are; natural images get a random-resized
/// crop and a horizontal flip in training, a center crop in evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Digits,
    Natural,
}

/// Images in memory, with their labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where it was read from (for messages).
    pub source: PathBuf,
    pub kind: Kind,
    pub classes: Vec<String>,
    pub images: Vec<Image>,
    pub labels: Vec<usize>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The first `n` samples (all of them when `n` is larger).
    pub fn truncate(mut self, n: usize) -> Self {
        self.images.truncate(n);
        self.labels.truncate(n);
        self
    }
}

/// Load one split of the dataset at `path`: a directory of MNIST IDX files
/// (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...` for the test
/// split) or an image folder with `train/` and `test/` subdirectories, one folder per class.
pub fn load(path: &Path, split: Split) -> Result<Dataset> {
    if !path.exists() {
        return Err(Error::Input(format!(
            "dataset `{}` does not exist (expected a directory of MNIST IDX files such as \
             data/mnist, or an image folder with train/ and test/ subdirectories)",
            path.display()
        )));
    }
    if idx::find(path, Split::Train).is_some() || idx::find(path, Split::Test).is_some() {
        return idx::load_mnist(path, split);
    }
    if path.join("train").is_dir() || path.join("test").is_dir() {
        return folder::load(path, split);
    }
    Err(Error::Input(format!(
        "`{}` is neither an MNIST directory (no train-images-idx3-ubyte[.gz] or \
         t10k-images-idx3-ubyte[.gz] in it) nor an image folder (no train/ or test/ subdirectory)",
        path.display()
    )))
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed derived from a base seed and a path of indices (epoch, sample, purpose, ...).
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix(seed), |acc, &p| splitmix(acc ^ splitmix(p)))
}

/// The generator for one `(seed, parts...)` pair: independent of every other pair.
pub fn sample_rng(seed: u64, parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, parts))
}

/// Purposes, so that streams drawn for the same epoch and index never coincide.
pub mod stream {
    pub const SHUFFLE: u64 = 1;
    pub const SAMPLE: u64 = 2;
    pub const MIX: u64 = 3;
    pub const NETWORK: u64 = 4;
    pub const INIT: u64 = 5;
}
