//! The data section of a run's configuration: which images, which split,
//! how they are augmented, and how many threads load them.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::formats::{self, idx::FASHION_MNIST_DEFAULT_DIR, Format};
use super::{Dataset, Normalize, OpenOptions, Recipe, RecipeName, Split};
use crate::base::error::{Error, Result};
use crate::base::seed::derive;

/// Seed stream of the image subset.
const SUBSET: u64 = 21;

/// The names `dataset` accepts.
const DATASETS: [&str; 8] = [
    "fashion-mnist",
    "auto",
    "idx",
    "cifar10",
    "cifar100",
    "stl10",
    "imagefolder",
    "filelist",
];

/// The keys `dataset` … `loader_threads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `fashion-mnist` (the Debian package's files), or a format read from
    /// `data_dir`: `auto`, `idx`, `cifar10`, `cifar100`, `stl10`,
    /// `imagefolder` (any folder of images), `filelist` (a text file).
    pub dataset: String,
    /// The dataset's folder or file list (not needed for `fashion-mnist`).
    pub data_dir: Option<PathBuf>,
    /// Image files that fail to decode are left out (and counted) instead
    /// of stopping the run at the first one.
    pub skip_undecodable: bool,
    /// The split trained on.
    pub split: Split,
    /// Train on a random subset of this many images (fixed by `seed`).
    pub max_images: Option<usize>,
    /// Augmentation recipe: `mocov1`, `mocov2`, `simclr`, or `supervised`
    /// (crop 0.08–1 and flip: the supervised baseline's).
    pub augment: RecipeName,
    /// Side of the views [default: the images' own side, 224 for ImageFolder].
    pub image_size: Option<u32>,
    /// Channels of the views: 1 keeps grayscale, 3 replicates it [default: the images' own].
    pub channels: Option<u8>,
    /// Data-loading worker threads [default: the `--threads` value].
    pub loader_threads: Option<usize>,
}

impl Default for DataConfig {
    /// Fashion-MNIST's training split with MoCo v2's augmentations.
    fn default() -> Self {
        DataConfig {
            dataset: "fashion-mnist".into(),
            data_dir: None,
            skip_undecodable: false,
            split: Split::Train,
            max_images: None,
            augment: RecipeName::Mocov2,
            image_size: None,
            channels: None,
            loader_threads: None,
        }
    }
}

impl DataConfig {
    /// Checks every key of the section; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !DATASETS.contains(&self.dataset.as_str()) {
            return Err(Error::config(
                "dataset",
                format!("'{}' (one of: {})", self.dataset, DATASETS.join(", ")),
            ));
        }
        if self.max_images == Some(0) {
            return Err(Error::config("max_images", "0 (must be ≥ 1)"));
        }
        if let Some(c) = self.channels.filter(|&c| c != 1 && c != 3) {
            return Err(Error::config("channels", format!("{c} (must be 1 or 3)")));
        }
        if self.augment == RecipeName::Eval {
            return Err(Error::config(
                "augment",
                "eval (pretraining needs a random recipe: mocov1, mocov2, simclr)",
            ));
        }
        if self.image_size == Some(0) {
            return Err(Error::config("image_size", "0 (must be ≥ 1)"));
        }
        if self.loader_threads == Some(0) {
            return Err(Error::config("loader_threads", "0 (must be ≥ 1)"));
        }
        Ok(())
    }

    /// The same data read from another folder, its format detected
    /// (evaluation and embedding on a dataset other than the run's).
    pub fn with_dir(&self, dir: PathBuf) -> DataConfig {
        DataConfig {
            dataset: "auto".into(),
            data_dir: Some(dir),
            ..self.clone()
        }
    }

    /// The dataset folder.
    pub fn data_path(&self) -> Result<PathBuf> {
        match (&self.data_dir, self.dataset.as_str()) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, "fashion-mnist") => Ok(PathBuf::from(FASHION_MNIST_DEFAULT_DIR)),
            (None, other) => Err(Error::config(
                "data_dir",
                format!("not set; dataset '{other}' is read from files you supply (--set data_dir=PATH)"),
            )),
        }
    }

    /// The format `dataset` names, or `None` for `auto` (detected).
    fn format(&self) -> Option<Format> {
        match self.dataset.as_str() {
            "fashion-mnist" | "idx" => Some(Format::Idx),
            "cifar10" => Some(Format::Cifar10),
            "cifar100" => Some(Format::Cifar100),
            "stl10" => Some(Format::Stl10),
            "imagefolder" => Some(Format::ImageFolder),
            "filelist" => Some(Format::FileList),
            _ => None,
        }
    }

    /// Opens `split` of the configured dataset (the split trained on is `self.split`).
    pub fn open(&self, split: Split) -> Result<Dataset> {
        let path = self.data_path()?;
        let opts = OpenOptions {
            split,
            skip_undecodable: self.skip_undecodable,
            ..Default::default()
        };
        match self.format() {
            Some(f) => {
                formats::detect(&path)?; // Names a missing folder clearly.
                formats::open_as(&path, f, &opts)
            }
            None => formats::open(&path, &opts),
        }
    }

    /// The recipe `name` at the configured view size and channels (the
    /// images' own unless configured), normalised with the dataset's statistics.
    pub fn recipe(&self, dataset: &Dataset, name: RecipeName) -> Result<Recipe> {
        let shape = dataset.image_shape();
        let channels = self.channels.unwrap_or_else(|| shape.map_or(3, |s| s.2));
        let size = self
            .image_size
            .unwrap_or_else(|| shape.map_or(224, |(w, h, _)| w.min(h)));
        Recipe::named(
            name,
            size,
            channels,
            Normalize::for_dataset(dataset, channels),
        )
    }

    /// The images trained on of `n`: all, or a random subset of
    /// `max_images` drawn from `seed`.
    pub fn training_images(&self, seed: u64, n: usize) -> Vec<usize> {
        subset(n, self.max_images, seed)
    }
}

/// Indices `0..n` in order, or a random subset of `max` of them (in
/// order) drawn from `seed`.
pub fn subset(n: usize, max: Option<usize>, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    if let Some(m) = max.filter(|&m| m < n) {
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(derive(seed, &[SUBSET])));
        all.truncate(m);
        all.sort_unstable();
    }
    all
}
