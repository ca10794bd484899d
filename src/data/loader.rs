//! The two-view loader: per-epoch shuffling, drop-last batches of two
//! independent augmentations of each image, built by worker threads ahead of
//! the training step.
//!
//! Worker `w` of `T` builds batches `w, w + T, w + 2T, …` of an epoch and
//! hands them over through its own bounded channel (`prefetch` deep); the
//! consumer takes batch b from worker `b mod T`, so batches arrive in order.
//! Each image's views come from an RNG seeded by (seed, epoch, index), so the
//! output is the same whatever the thread count. For a CUDA target, batches
//! are built in pinned memory and copied without blocking.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::{Dataset, Recipe};
use crate::error::{Error, Result};
use crate::seed::derive;

/// Stream tags for [`derive`].
const SHUFFLE: u64 = 1;
const AUGMENT: u64 = 2;

/// How batches are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch N.
    pub batch_size: usize,
    /// Worker threads.
    pub threads: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// Base seed of the shuffles and augmentations.
    pub seed: u64,
    /// Shuffle the images each epoch.
    pub shuffle: bool,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
    /// Where the batches go.
    pub device: Device,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 256,
            threads: 2,
            prefetch: 2,
            seed: 0,
            shuffle: true,
            drop_last: true,
            device: Device::Cpu,
        }
    }
}

/// Two views of N images, on the loader's device.
#[derive(Debug)]
pub struct TwoViewBatch {
    /// First views `[N, C, H, W]`, float32.
    pub view1: Tensor,
    /// Second views `[N, C, H, W]`, float32.
    pub view2: Tensor,
    /// The images' indices in the dataset, `[N]` int64.
    pub indices: Tensor,
    /// Their labels `[N]` int64, if the dataset has labels.
    pub labels: Option<Tensor>,
}

/// Batches of two augmented views of a dataset's images.
pub struct Loader {
    dataset: Arc<Dataset>,
    recipe: Arc<Recipe>,
    cfg: LoaderConfig,
    /// The images an epoch visits (all, or a subset).
    images: Vec<usize>,
}

impl Loader {
    /// A loader over `dataset` with `recipe`; checks the configuration.
    pub fn new(dataset: Arc<Dataset>, recipe: Recipe, cfg: LoaderConfig) -> Result<Loader> {
        let all = (0..dataset.len()).collect();
        Self::with_images(dataset, recipe, cfg, all)
    }

    /// A loader over the images `images` of `dataset` only (a subset).
    pub fn with_images(
        dataset: Arc<Dataset>,
        recipe: Recipe,
        cfg: LoaderConfig,
        images: Vec<usize>,
    ) -> Result<Loader> {
        if let Some(&bad) = images.iter().find(|&&i| i >= dataset.len()) {
            return Err(Error::Internal(format!(
                "image index {bad} beyond the dataset's {}",
                dataset.len()
            )));
        }
        if cfg.batch_size == 0 {
            return Err(Error::config("batch_size", "0 (must be ≥ 1)"));
        }
        if cfg.drop_last && cfg.batch_size > images.len() {
            return Err(Error::config(
                "batch_size",
                format!(
                    "{} is larger than the dataset ({} images at {}), so no full batch can be made",
                    cfg.batch_size,
                    images.len(),
                    dataset.source.display()
                ),
            ));
        }
        if cfg.threads == 0 {
            return Err(Error::config("threads", "0 (must be ≥ 1)"));
        }
        if cfg.prefetch == 0 {
            return Err(Error::config("prefetch", "0 (must be ≥ 1)"));
        }
        Ok(Loader {
            dataset,
            recipe: Arc::new(recipe),
            cfg,
            images,
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The augmentation recipe.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.images.len();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// The indices of the images an epoch visits, in dataset order.
    pub fn images(&self) -> &[usize] {
        &self.images
    }

    /// The number of images an epoch visits.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether an epoch visits no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The order in which epoch `epoch` visits the images.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.images.clone();
        if self.cfg.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(derive(self.cfg.seed, &[SHUFFLE, epoch]));
            order.shuffle(&mut rng);
        }
        order
    }

    /// The batches of epoch `epoch`, in order, built ahead by the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// Epoch `epoch` starting at batch `first` (to resume mid-epoch).
    pub fn epoch_from(&self, epoch: u64, first: usize) -> Epoch {
        let order = Arc::new(self.order(epoch));
        let n_batches = self.batches_per_epoch();
        let workers = self.cfg.threads.min(n_batches.saturating_sub(first)).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.cfg.prefetch);
            receivers.push(rx);
            let (dataset, recipe, order, stop) = (
                self.dataset.clone(),
                self.recipe.clone(),
                order.clone(),
                stop.clone(),
            );
            let cfg = self.cfg;
            handles.push(std::thread::spawn(move || {
                let mut b = first + w;
                while b < n_batches && !stop.load(Ordering::Relaxed) {
                    let lo = b * cfg.batch_size;
                    let hi = (lo + cfg.batch_size).min(order.len());
                    let batch = build(&dataset, &recipe, &cfg, epoch, &order[lo..hi]);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                    b += workers;
                }
            }));
        }
        Epoch {
            receivers,
            next: first,
            first,
            n_batches,
            device: self.cfg.device,
            stop,
            handles,
        }
    }

    /// Two views of image `index` as in epoch `epoch`, CHW floats each.
    pub fn views(&self, epoch: u64, index: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let len = self.recipe.view_len();
        let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
        two_views(
            &self.dataset,
            &self.recipe,
            self.cfg.seed,
            epoch,
            index,
            &mut a,
            &mut b,
        )?;
        Ok((a, b))
    }
}

fn two_views(
    dataset: &Dataset,
    recipe: &Recipe,
    seed: u64,
    epoch: u64,
    index: usize,
    a: &mut [f32],
    b: &mut [f32],
) -> Result<()> {
    let img = dataset.image(index)?;
    let mut rng = ChaCha8Rng::seed_from_u64(derive(seed, &[AUGMENT, epoch, index as u64]));
    recipe.apply(&img, &mut rng, a)?;
    recipe.apply(&img, &mut rng, b)
}

/// A batch in host memory (pinned for a CUDA target).
struct HostBatch {
    view1: Tensor,
    view2: Tensor,
    indices: Tensor,
    labels: Option<Tensor>,
}

fn build(
    dataset: &Dataset,
    recipe: &Recipe,
    cfg: &LoaderConfig,
    epoch: u64,
    idx: &[usize],
) -> Result<HostBatch> {
    let len = recipe.view_len();
    let (mut v1, mut v2) = (vec![0f32; idx.len() * len], vec![0f32; idx.len() * len]);
    for ((&i, a), b) in idx
        .iter()
        .zip(v1.chunks_exact_mut(len))
        .zip(v2.chunks_exact_mut(len))
    {
        two_views(dataset, recipe, cfg.seed, epoch, i, a, b)?;
    }
    let s = recipe.size() as i64;
    let shape = [idx.len() as i64, recipe.channels as i64, s, s];
    let host = |v: &[f32]| {
        let t = Tensor::from_slice(v).view(shape);
        if cfg.device.is_cuda() {
            t.pin_memory(cfg.device)
        } else {
            t
        }
    };
    let indices: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    let labels: Option<Vec<i64>> = idx.iter().map(|&i| dataset.label(i)).collect();
    Ok(HostBatch {
        view1: host(&v1),
        view2: host(&v2),
        indices: Tensor::from_slice(&indices),
        labels: labels.map(|l| Tensor::from_slice(&l)),
    })
}

/// One epoch's batches, in order. Dropping it stops the workers.
pub struct Epoch {
    receivers: Vec<Receiver<Result<HostBatch>>>,
    next: usize,
    first: usize,
    n_batches: usize,
    device: Device,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Iterator for Epoch {
    type Item = Result<TwoViewBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.n_batches {
            return None;
        }
        let worker = (self.next - self.first) % self.receivers.len();
        self.next += 1;
        let host = match self.receivers[worker].recv() {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.next = self.n_batches;
                return Some(Err(e));
            }
            Err(_) => {
                self.next = self.n_batches;
                return Some(Err(Error::Internal(
                    "a loader worker stopped unexpectedly".into(),
                )));
            }
        };
        let to = |t: Tensor| {
            if self.device.is_cuda() {
                t.to_device_(self.device, Kind::Float, true, false)
            } else {
                t
            }
        };
        let dev = |t: Tensor| {
            if self.device.is_cuda() {
                t.to_device(self.device)
            } else {
                t
            }
        };
        Some(Ok(TwoViewBatch {
            view1: to(host.view1),
            view2: to(host.view2),
            indices: dev(host.indices),
            labels: host.labels.map(dev),
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.n_batches.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
