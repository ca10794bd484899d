//! The online kNN monitor: a fixed bank of training images and the test
//! split, scored at the end of an epoch when due.

use std::sync::Arc;

use crate::base::device::Compute;
use crate::base::error::{Error, Result};
use crate::data::{DataConfig, Dataset, Feed, Recipe, RecipeName, Split};
use crate::eval::{extract, knn_accuracy};
use crate::run::config::MonitorConfig;

/// The online kNN monitor: a fixed bank of training images and the test split.
pub struct KnnMonitor {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    bank: Vec<usize>,
    recipe: Recipe,
    classes: i64,
    k: i64,
    tau: f64,
    feed: Feed,
}

impl KnnMonitor {
    /// The monitor `cfg` sets up for the run's `images` of `train`, with
    /// the test split of `data`, on centre crops at the run's size, fed as
    /// `feed` says (the trainer's threads and pinned cap).
    pub fn new(
        cfg: &MonitorConfig,
        data: &DataConfig,
        train: &Arc<Dataset>,
        train_recipe: &Recipe,
        images: &[usize],
        feed: Feed,
    ) -> Result<KnnMonitor> {
        let test = data.open(Split::Test)?;
        if !train.has_labels() || !test.has_labels() {
            return Err(Error::config(
                "knn_every",
                "the kNN monitor needs labelled train and test splits; this dataset has none (set knn_every = 0)",
            ));
        }
        let recipe = Recipe::named(
            RecipeName::Eval,
            train_recipe.size(),
            train_recipe.channels,
            train_recipe.normalize.clone(),
        )?;
        let step = images.len().div_ceil(cfg.knn_bank).max(1);
        Ok(KnnMonitor {
            train: train.clone(),
            test: Arc::new(test),
            bank: images.iter().copied().step_by(step).collect(),
            recipe,
            classes: train.classes.len() as i64,
            k: cfg.knn_k,
            tau: cfg.knn_tau,
            feed,
        })
    }

    /// Top-1 kNN accuracy of the current backbone on the test split.
    pub fn top1(&self, backbone: &crate::model::ResNet, compute: Compute) -> Result<f64> {
        let extract = |dataset, images: &[usize]| {
            extract(backbone, dataset, &self.recipe, images, compute, self.feed)
        };
        let (bank, bank_labels) = extract(&self.train, &self.bank)?;
        let all: Vec<usize> = (0..self.test.len()).collect();
        let (test, test_labels) = extract(&self.test, &all)?;
        Ok(knn_accuracy(
            &bank,
            &bank_labels,
            &test,
            &test_labels,
            self.classes,
            self.k,
            self.tau,
        )?
        .top1)
    }
}
