//! The two-view loader: per-epoch shuffling, drop-last batches of two
//! independent augmentations of each image, built by worker threads ahead of
//! the training step.
//!
//! Worker `w` of `T` builds batches `w, w + T, w + 2T, …` of an epoch and
//! hands them over through its own bounded channel (`prefetch` deep); the
//! consumer takes batch b from worker `b mod T`, so batches arrive in order.
//! Each image's views come from an RNG seeded by (seed, epoch, index), so the
//! output is the same whatever the thread count.
//!
//! A worker writes a whole batch into one float32 buffer: view 1, view 2,
//! then the labels. The views are written in the layout the model reads
//! (NHWC for channels-last), so no copy is made on the way to the model.
//! For a CUDA target the buffer is page-locked and the batch reaches the
//! GPU in one copy that does not block.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// Write the views channels-last (NHWC memory, seen as NCHW).
    pub channels_last: bool,
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
            channels_last: false,
        }
    }
}

/// Two views of N images, on the loader's device.
#[derive(Debug)]
pub struct TwoViewBatch {
    /// First views `[N, C, H, W]`, float32 (channels-last if configured).
    pub view1: Tensor,
    /// Second views `[N, C, H, W]`, float32 (channels-last if configured).
    pub view2: Tensor,
    /// The images' indices in the dataset.
    pub indices: Vec<usize>,
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
            recipe: self.recipe.clone(),
            channels_last: self.cfg.channels_last,
            waited: Duration::ZERO,
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
            false,
        )?;
        Ok((a, b))
    }
}

/// Writes the two views of image `index` in epoch `epoch` into `a` and `b`
/// (HWC when `hwc`, else CHW).
#[allow(clippy::too_many_arguments)]
fn two_views(
    dataset: &Dataset,
    recipe: &Recipe,
    seed: u64,
    epoch: u64,
    index: usize,
    a: &mut [f32],
    b: &mut [f32],
    hwc: bool,
) -> Result<()> {
    let img = dataset.image(index)?;
    let mut rng = ChaCha8Rng::seed_from_u64(derive(seed, &[AUGMENT, epoch, index as u64]));
    recipe.apply_as(&img, &mut rng, a, hwc)?;
    recipe.apply_as(&img, &mut rng, b, hwc)
}

/// A batch in host memory (page-locked for a CUDA target): one float32
/// buffer holding view 1, view 2 and, for a labelled dataset, the labels.
struct HostBatch {
    buffer: Tensor,
    indices: Vec<usize>,
    labelled: bool,
}

/// The shape of one view's memory, and the permutation that shows it as
/// `[N, C, H, W]`.
fn view_layout(recipe: &Recipe, n: usize, channels_last: bool) -> ([i64; 4], [i64; 4]) {
    let (n, c, s) = (n as i64, recipe.channels as i64, recipe.size() as i64);
    if channels_last {
        ([n, s, s, c], [0, 3, 1, 2])
    } else {
        ([n, c, s, s], [0, 1, 2, 3])
    }
}

/// An uninitialised float32 host buffer of `len` elements; page-locked for
/// a CUDA target, so that its copy to the GPU does not block.
fn host_buffer(len: usize, device: Device) -> Result<Tensor> {
    if device.is_cuda() {
        crate::data::pinned::empty(len)
    } else {
        Ok(Tensor::empty([len as i64], (Kind::Float, Device::Cpu)))
    }
}

fn build(
    dataset: &Dataset,
    recipe: &Recipe,
    cfg: &LoaderConfig,
    epoch: u64,
    idx: &[usize],
) -> Result<HostBatch> {
    let len = recipe.view_len();
    let n = idx.len();
    let labelled = dataset.has_labels();
    let buffer = host_buffer(2 * n * len + if labelled { n } else { 0 }, cfg.device)?;
    // SAFETY: a new contiguous float32 tensor of that many elements, owned
    // by this thread until it is sent; nothing else reads or writes it.
    let data =
        unsafe { std::slice::from_raw_parts_mut(buffer.data_ptr() as *mut f32, buffer.numel()) };
    let (views, labels) = data.split_at_mut(2 * n * len);
    let (v1, v2) = views.split_at_mut(n * len);
    for ((&i, a), b) in idx
        .iter()
        .zip(v1.chunks_exact_mut(len))
        .zip(v2.chunks_exact_mut(len))
    {
        two_views(dataset, recipe, cfg.seed, epoch, i, a, b, cfg.channels_last)?;
    }
    for (slot, &i) in labels.iter_mut().zip(idx) {
        // Exact: class numbers are far below 2^24.
        *slot = dataset.label(i).unwrap_or(-1) as f32;
    }
    Ok(HostBatch {
        buffer,
        indices: idx.to_vec(),
        labelled,
    })
}

/// The views and labels of a batch whose buffer is on its device.
fn split(buffer: &Tensor, host: &HostBatch, recipe: &Recipe, channels_last: bool) -> TwoViewBatch {
    let n = host.indices.len();
    let len = (n * recipe.view_len()) as i64;
    let (shape, perm) = view_layout(recipe, n, channels_last);
    let view = |i: i64| buffer.narrow(0, i * len, len).view(shape).permute(perm);
    TwoViewBatch {
        view1: view(0),
        view2: view(1),
        indices: host.indices.clone(),
        labels: host
            .labelled
            .then(|| buffer.narrow(0, 2 * len, n as i64).to_kind(Kind::Int64)),
    }
}

/// One epoch's batches, in order. Dropping it stops the workers.
pub struct Epoch {
    receivers: Vec<Receiver<Result<HostBatch>>>,
    next: usize,
    first: usize,
    n_batches: usize,
    device: Device,
    recipe: Arc<Recipe>,
    channels_last: bool,
    waited: Duration,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Epoch {
    /// Time spent so far waiting for the workers (a batch not ready when asked for).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for Epoch {
    type Item = Result<TwoViewBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.n_batches {
            return None;
        }
        let worker = (self.next - self.first) % self.receivers.len();
        self.next += 1;
        let asked = Instant::now();
        let received = self.receivers[worker].recv();
        self.waited += asked.elapsed();
        let host = match received {
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
        // One copy of the whole batch, queued without waiting (page-locked source).
        let buffer = if self.device.is_cuda() {
            host.buffer
                .to_device_(self.device, Kind::Float, true, false)
        } else {
            host.buffer.shallow_clone()
        };
        Some(Ok(split(&buffer, &host, &self.recipe, self.channels_last)))
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
