//! The loader: per-epoch shuffling, batches of one or two independent
//! augmentations of each image, built by worker threads ahead of the
//! training step (two views for pretraining, one for evaluation).
//!
//! Worker `w` of `T` builds batches `w, w + T, w + 2T, …` of an epoch and
//! hands them over through its own bounded channel (`prefetch` deep); the
//! consumer takes batch b from worker `b mod T`, so batches arrive in order.
//! Each image's views come from an RNG seeded by (seed, epoch, index), so the
//! output is the same whatever the thread count.
//!
//! A worker writes a whole batch into one float32 buffer: the views, then
//! the labels. The views are written in the layout the model reads (NHWC
//! for channels-last). On the CPU that buffer is the batch: no copy is made
//! on the way to the model. For a GPU the buffer is a slot of a bounded
//! pool of page-locked [staging](super::staging) buffers, and the batch
//! reaches the device in one copy that does not block.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::staging::{Lease, PinnedCap, PoolPlan, StagingPool};
use super::{Dataset, Recipe};
use crate::base::device::memory::{
    pinned_stats, release_cached_pinned, set_thread_device, CopyStream,
};
use crate::base::error::{Error, Result};
use crate::base::seed::derive;

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
    /// The cap of page-locked memory for batches (the `pinned_memory_mib`
    /// key, shared by the machine's `LOCAL_WORLD_SIZE` processes); a pool
    /// takes what this process's share has left beside its other pinned
    /// memory (the trainer's pool, for an evaluation during training).
    pub pinned: PinnedCap,
    /// When this process's share of the cap has no room left for one batch,
    /// stage batches in pageable memory instead of failing (their copies to
    /// the GPU then wait for the host): the kNN monitor's and evaluation's
    /// loaders, which take what the trainer's pool leaves of the share.
    pub pageable_when_full: bool,
    /// Pass batches through the staging pool on the CPU too (always done
    /// for a GPU, where its buffers are page-locked): the same path, with
    /// plain memory and a copy, so that it can be tested without a GPU.
    pub stage_on_cpu: bool,
    /// `(rank, world size)`: each batch is this rank's contiguous share of
    /// the global batch of `batch_size` images (the same images and views a
    /// single process would make); `(0, 1)` for one process.
    pub shard: (usize, usize),
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
            pinned: PinnedCap::new(4096, 1),
            pageable_when_full: false,
            stage_on_cpu: false,
            shard: (0, 1),
        }
    }
}

impl LoaderConfig {
    /// Whether batches pass through the staging pool.
    fn staged(&self) -> bool {
        self.device.is_cuda() || self.stage_on_cpu
    }
}

/// Says once per process that a loader staged its batches in pageable
/// memory because the pinned share was full (`why`).
fn note_pageable(why: &Error) {
    static NOTED: AtomicBool = AtomicBool::new(false);
    if !NOTED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "note: evaluation batches are staged in pageable memory (on a GPU, slower copies): {why}"
        );
    }
}

/// How a pass over images is fed: its loader threads, and the cap its
/// page-locked pool shares (the trainer's, for the kNN monitor: the pool
/// then takes what the trainer's leaves of the process's share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Loader threads.
    pub threads: usize,
    /// The cap of page-locked memory for batches.
    pub pinned: PinnedCap,
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

/// One view of N images, on the loader's device (evaluation).
#[derive(Debug)]
pub struct OneViewBatch {
    /// The views `[N, C, H, W]`, float32 (channels-last if configured).
    pub view: Tensor,
    /// The images' indices in the dataset.
    pub indices: Vec<usize>,
    /// Their labels `[N]` int64, if the dataset has labels.
    pub labels: Option<Tensor>,
}

/// A kind of batch: how many views of each image it holds.
pub trait Views: Sized {
    /// Views per image.
    const COUNT: usize;
    /// The batch from its views, labels and image indices.
    fn assemble(views: Vec<Tensor>, labels: Option<Tensor>, indices: Vec<usize>) -> Self;
}

impl Views for TwoViewBatch {
    const COUNT: usize = 2;
    fn assemble(views: Vec<Tensor>, labels: Option<Tensor>, indices: Vec<usize>) -> Self {
        let [view1, view2]: [Tensor; 2] = views.try_into().expect("two views");
        TwoViewBatch {
            view1,
            view2,
            indices,
            labels,
        }
    }
}

impl Views for OneViewBatch {
    const COUNT: usize = 1;
    fn assemble(views: Vec<Tensor>, labels: Option<Tensor>, indices: Vec<usize>) -> Self {
        let [view]: [Tensor; 1] = views.try_into().expect("one view");
        OneViewBatch {
            view,
            indices,
            labels,
        }
    }
}

/// Batches of augmented views of a dataset's images.
pub struct Loader {
    dataset: Arc<Dataset>,
    recipe: Arc<Recipe>,
    cfg: LoaderConfig,
    /// The images an epoch visits (all, or a subset).
    images: Vec<usize>,
    /// The staging pool, made for the first staged epoch (and remade if a
    /// later epoch needs larger slots).
    pool: Mutex<Option<Arc<StagingPool>>>,
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
        let (rank, world) = cfg.shard;
        if world == 0 || rank >= world || cfg.batch_size % world != 0 {
            return Err(Error::config(
                "batch_size",
                format!(
                    "{} does not split over {world} processes (rank {rank})",
                    cfg.batch_size
                ),
            ));
        }
        Ok(Loader {
            dataset,
            recipe: Arc::new(recipe),
            cfg,
            images,
            pool: Mutex::new(None),
        })
    }

    /// The staging pool's layout for batches of `views` views: the pool's
    /// own once made, else what this process's share of the cap has room
    /// for now (an error naming `pinned_memory_mib` if not even one batch
    /// fits).
    pub fn staging_plan(&self, views: usize) -> Result<PoolPlan> {
        let slot_len = self.slot_len(views);
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match pool.as_ref().filter(|p| p.slot_len() == slot_len) {
            Some(p) => Ok(p.plan()),
            None => self.plan_pool(slot_len),
        }
    }

    /// The largest pool of slots of `slot_len` floats that fits beside the
    /// page-locked memory this process holds now.
    fn plan_pool(&self, slot_len: usize) -> Result<PoolPlan> {
        PoolPlan::within(
            self.cfg.threads,
            self.cfg.prefetch,
            4 * slot_len,
            self.cfg.pinned,
            self.pinned_held()?,
        )
    }

    /// Page-locked bytes this process holds (0 on the CPU, where nothing
    /// is locked): the CUDA host allocator's own count, once the blocks it
    /// keeps cached have gone back to the driver.
    fn pinned_held(&self) -> Result<usize> {
        if !self.cfg.device.is_cuda() {
            return Ok(0);
        }
        release_cached_pinned(self.cfg.device)?;
        Ok(pinned_stats().map_or(0, |s| s.current as usize))
    }

    /// The cap of page-locked memory and how many processes of this machine share it.
    pub fn pinned_cap(&self) -> PinnedCap {
        self.cfg.pinned
    }

    /// Floats in one slot: a batch of `views` views of this rank's share of
    /// the global batch, and its labels.
    fn slot_len(&self, views: usize) -> usize {
        let n = self.cfg.batch_size.min(self.images.len()) / self.cfg.shard.1.max(1);
        self.batch_len(views, n)
    }

    /// Floats in one batch of `n` images (of the global batch: this rank's
    /// share) with `views` views each, and their labels.
    fn batch_len(&self, views: usize, n: usize) -> usize {
        let labels = if self.dataset.has_labels() { n } else { 0 };
        views * n * self.recipe.view_len() + labels
    }

    /// The staging pool for batches of `views` views: the one an earlier
    /// epoch made while its slots fit, else a new one, planned once the
    /// old one's block has gone back.
    fn staging_pool(&self, views: usize) -> Result<Arc<StagingPool>> {
        let slot_len = self.slot_len(views);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pool.as_ref().filter(|p| p.slot_len() == slot_len) {
            return Ok(p.clone());
        }
        *pool = None;
        let gpu = self.cfg.device.is_cuda().then_some(self.cfg.device);
        let made = match self.plan_pool(slot_len) {
            Ok(plan) => StagingPool::new(plan, slot_len, gpu)?,
            Err(full) if self.cfg.pageable_when_full => {
                note_pageable(&full);
                let plan = PoolPlan::unbounded(self.cfg.threads, self.cfg.prefetch, 4 * slot_len);
                StagingPool::new(plan, slot_len, None)?
            }
            Err(e) => return Err(e),
        };
        let made = Arc::new(made);
        *pool = Some(made.clone());
        Ok(made)
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

    /// The two-view batches of epoch `epoch`, in order, built ahead by the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch<TwoViewBatch> {
        self.epoch_from(epoch, 0)
    }

    /// Epoch `epoch` starting at batch `first` (to resume mid-epoch).
    pub fn epoch_from(&self, epoch: u64, first: usize) -> Epoch<TwoViewBatch> {
        self.start(epoch, first)
    }

    /// The one-view batches of epoch `epoch` (each image's first view, as in
    /// the two-view epoch): evaluation's.
    pub fn single_view_epoch(&self, epoch: u64) -> Epoch<OneViewBatch> {
        self.start(epoch, 0)
    }

    /// How batches of `views` views reach the device: the pinned staging
    /// pool (when staged) and the stream that copies them (on a GPU).
    fn transfer(&self, views: usize) -> Result<(Option<Arc<StagingPool>>, Option<CopyStream>)> {
        let pool = match self.cfg.staged() {
            true => Some(self.staging_pool(views)?),
            false => None,
        };
        let copies = match self.cfg.device.is_cuda() {
            true => Some(CopyStream::new(self.cfg.device)?),
            false => None,
        };
        Ok((pool, copies))
    }

    fn start<B: Views>(&self, epoch: u64, first: usize) -> Epoch<B> {
        let order = Arc::new(self.order(epoch));
        let n_batches = self.batches_per_epoch();
        let (pool, copies) = match self.transfer(B::COUNT) {
            Ok(both) => both,
            Err(e) => return Epoch::failed(e, self.recipe.clone()),
        };
        let threads = pool.as_ref().map_or(self.cfg.threads, |p| p.plan().workers);
        let workers = threads.min(n_batches.saturating_sub(first)).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.cfg.prefetch);
            receivers.push(rx);
            let (dataset, recipe, order, stop, pool) = (
                self.dataset.clone(),
                self.recipe.clone(),
                order.clone(),
                stop.clone(),
                pool.clone(),
            );
            let cfg = self.cfg;
            handles.push(std::thread::spawn(move || {
                // Staging slots' events are freed here: on the run's GPU.
                if let Err(e) = set_thread_device(cfg.device) {
                    let _ = tx.send(Err(e));
                    return;
                }
                let mut b = first + w;
                while b < n_batches && !stop.load(Ordering::Relaxed) {
                    let lease = match pool.as_ref().map(|p| p.take(w, &stop)) {
                        None => None,
                        Some(Ok(Some(lease))) => Some(lease),
                        Some(Ok(None)) => break, // Stopped while waiting for a slot.
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    };
                    let lo = b * cfg.batch_size;
                    let hi = (lo + cfg.batch_size).min(order.len());
                    let (rank, world) = cfg.shard;
                    let share = (hi - lo) / world;
                    let mine = &order[lo + rank * share..lo + (rank + 1) * share];
                    let batch = build(&dataset, &recipe, &cfg, epoch, mine, B::COUNT, lease);
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
            copies,
            recipe: self.recipe.clone(),
            channels_last: self.cfg.channels_last,
            waited: Duration::ZERO,
            stop,
            handles,
            failure: None,
            kind: PhantomData,
        }
    }

    /// Two views of image `index` as in epoch `epoch`, CHW floats each.
    pub fn views(&self, epoch: u64, index: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let len = self.recipe.view_len();
        let mut both = vec![0f32; 2 * len];
        let (a, b) = both.split_at_mut(len);
        views_of(
            &self.dataset,
            &self.recipe,
            self.cfg.seed,
            epoch,
            index,
            &mut [a, b],
            false,
        )?;
        let b = both.split_off(len);
        Ok((both, b))
    }
}

/// Writes the views of image `index` in epoch `epoch` into `outs`, in
/// order from one RNG (HWC when `hwc`, else CHW): the first view is the
/// same whether one or two are made.
fn views_of(
    dataset: &Dataset,
    recipe: &Recipe,
    seed: u64,
    epoch: u64,
    index: usize,
    outs: &mut [&mut [f32]],
    hwc: bool,
) -> Result<()> {
    let img = dataset.image(index)?;
    let mut rng = ChaCha8Rng::seed_from_u64(derive(seed, &[AUGMENT, epoch, index as u64]));
    for out in outs.iter_mut() {
        recipe.apply_as(&img, &mut rng, out, hwc)?;
    }
    Ok(())
}

/// A batch in host memory: one float32 buffer holding its views and, for
/// a labelled dataset, the labels; in a staging slot when staged.
struct HostBatch {
    buffer: Tensor,
    lease: Option<Lease>,
    indices: Vec<usize>,
    views: usize,
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

fn build(
    dataset: &Dataset,
    recipe: &Recipe,
    cfg: &LoaderConfig,
    epoch: u64,
    idx: &[usize],
    views: usize,
    lease: Option<Lease>,
) -> Result<HostBatch> {
    let len = recipe.view_len();
    let n = idx.len();
    let labelled = dataset.has_labels();
    let total = views * n * len + if labelled { n } else { 0 };
    let buffer = match &lease {
        Some(l) => l.buffer().narrow(0, 0, total as i64),
        None => Tensor::empty([total as i64], (Kind::Float, Device::Cpu)),
    };
    // SAFETY: a contiguous float32 buffer of `total` elements (a new tensor,
    // or the front of a leased slot) that only this thread touches until the
    // batch is sent.
    let data = unsafe { std::slice::from_raw_parts_mut(buffer.data_ptr() as *mut f32, total) };
    let (pixels, labels) = data.split_at_mut(views * n * len);
    let mut per_view: Vec<&mut [f32]> = pixels.chunks_exact_mut(n * len).collect();
    for (j, &i) in idx.iter().enumerate() {
        let mut outs: Vec<&mut [f32]> = per_view
            .iter_mut()
            .map(|v| &mut v[j * len..(j + 1) * len])
            .collect();
        views_of(
            dataset,
            recipe,
            cfg.seed,
            epoch,
            i,
            &mut outs,
            cfg.channels_last,
        )?;
    }
    for (slot, &i) in labels.iter_mut().zip(idx) {
        // Exact: class numbers are far below 2^24.
        *slot = dataset.label(i).unwrap_or(-1) as f32;
    }
    Ok(HostBatch {
        buffer,
        lease,
        indices: idx.to_vec(),
        views,
        labelled,
    })
}

/// The views and labels of a batch whose buffer is on its device.
fn split<B: Views>(buffer: &Tensor, host: HostBatch, recipe: &Recipe, channels_last: bool) -> B {
    let n = host.indices.len();
    let len = (n * recipe.view_len()) as i64;
    let (shape, perm) = view_layout(recipe, n, channels_last);
    let views = (0..host.views as i64)
        .map(|i| buffer.narrow(0, i * len, len).view(shape).permute(perm))
        .collect();
    let labels = host.labelled.then(|| {
        buffer
            .narrow(0, host.views as i64 * len, n as i64)
            .to_kind(Kind::Int64)
    });
    B::assemble(views, labels, host.indices)
}

/// One epoch's batches, in order. Dropping it stops the workers.
pub struct Epoch<B: Views = TwoViewBatch> {
    receivers: Vec<Receiver<Result<HostBatch>>>,
    next: usize,
    first: usize,
    n_batches: usize,
    /// The stream batches are copied to the GPU on (none on the CPU).
    copies: Option<CopyStream>,
    recipe: Arc<Recipe>,
    channels_last: bool,
    waited: Duration,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    /// An error found before any worker started (the staging pool).
    failure: Option<Error>,
    kind: PhantomData<B>,
}

impl<B: Views> Epoch<B> {
    /// An epoch that yields `error` and ends.
    fn failed(error: Error, recipe: Arc<Recipe>) -> Epoch<B> {
        Epoch {
            receivers: Vec::new(),
            next: 0,
            first: 0,
            n_batches: 1,
            copies: None,
            recipe,
            channels_last: false,
            waited: Duration::ZERO,
            stop: Arc::new(AtomicBool::new(true)),
            handles: Vec::new(),
            failure: Some(error),
            kind: PhantomData,
        }
    }

    /// Time spent so far waiting for the workers (a batch not ready when asked for).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The batch's buffer on the device. A staged batch is copied out of
    /// its slot, and the slot goes back to its worker; for a GPU the copy
    /// runs on the side stream without blocking ([`CopyStream::copy`]), and
    /// the slot carries the event its next writer waits for.
    fn to_device(&self, host: &mut HostBatch) -> Result<Tensor> {
        let Some(lease) = host.lease.take() else {
            return Ok(host.buffer.shallow_clone());
        };
        match &self.copies {
            Some(stream) => {
                let (on_device, copied) = stream.copy(&host.buffer)?;
                lease.release_after(copied);
                Ok(on_device)
            }
            None => Ok(host.buffer.copy()),
        }
    }
}

impl<B: Views> Iterator for Epoch<B> {
    type Item = Result<B>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failure.take() {
            self.next = self.n_batches;
            return Some(Err(e));
        }
        if self.next >= self.n_batches {
            return None;
        }
        let worker = (self.next - self.first) % self.receivers.len();
        self.next += 1;
        let asked = Instant::now();
        let received = self.receivers[worker].recv();
        self.waited += asked.elapsed();
        let mut host = match received {
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
        let buffer = match self.to_device(&mut host) {
            Ok(b) => b,
            Err(e) => {
                self.next = self.n_batches;
                return Some(Err(e));
            }
        };
        Some(Ok(split(&buffer, host, &self.recipe, self.channels_last)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.n_batches.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl<B: Views> Drop for Epoch<B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
