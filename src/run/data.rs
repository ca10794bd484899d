//! The data a run trains on: its dataset, its augmentation recipes at the
//! run's size and channels, and its image subset.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::PretrainConfig;
use crate::data::{Dataset, Format, Normalize, OpenOptions, Recipe};
use crate::error::Result;
use crate::seed::derive;

/// Seed stream of the image subset.
const SUBSET: u64 = 21;

/// Opens the configured dataset.
pub fn open_dataset(cfg: &PretrainConfig) -> Result<Dataset> {
    let path = cfg.data_path()?;
    let opts = OpenOptions {
        split: cfg.split,
        ..Default::default()
    };
    let format = match cfg.dataset.as_str() {
        "fashion-mnist" | "idx" => Some(Format::Idx),
        "cifar10" => Some(Format::Cifar10),
        "cifar100" => Some(Format::Cifar100),
        "stl10" => Some(Format::Stl10),
        "imagefolder" => Some(Format::ImageFolder),
        _ => None,
    };
    match format {
        Some(f) => {
            crate::data::formats::detect(&path)?; // Names a missing folder clearly.
            Dataset::open_as(&path, f, &opts)
        }
        None => Dataset::open(&path, &opts),
    }
}

/// The recipe `name` at the run's view size and channels (the images' own
/// unless configured), normalised with the dataset's statistics.
pub fn recipe_for(
    cfg: &PretrainConfig,
    dataset: &Dataset,
    name: crate::data::RecipeName,
) -> Result<Recipe> {
    let shape = dataset.image_shape();
    let channels = cfg.channels.unwrap_or_else(|| shape.map_or(3, |s| s.2));
    let size = cfg
        .image_size
        .unwrap_or_else(|| shape.map_or(224, |(w, h, _)| w.min(h)));
    Recipe::named(
        name,
        size,
        channels,
        Normalize::for_dataset(dataset, channels),
    )
}

/// The images a run trains on: all, or a seeded random subset of `max_images`.
pub fn training_images(cfg: &PretrainConfig, n: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    if let Some(m) = cfg.max_images.filter(|&m| m < n) {
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(derive(cfg.seed, &[SUBSET])));
        all.truncate(m);
        all.sort_unstable();
    }
    all
}
