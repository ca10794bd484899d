//! A checkpoint's frozen backbone with the labelled splits it is evaluated
//! on: what the kNN and linear protocols start from.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Tensor};

use super::features::extract;

use crate::base::device::memory::{set_thread_device, upload};
use crate::base::device::Compute;
use crate::base::error::{Error, Result};
use crate::data::{Dataset, Feed, PinnedCap, Recipe, RecipeName, Split};
use crate::model::ResNet;
use crate::run::{PretrainConfig, RunCheckpoint};

/// A pretrained (or randomly initialised, or supervised) backbone and the
/// train and test splits of its dataset.
pub struct Frozen {
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// Optimizer steps the checkpoint had done.
    pub step: u64,
    /// The run's configuration (dataset possibly replaced).
    pub config: PretrainConfig,
    /// The training split (memory bank, classifier training).
    pub train: Arc<Dataset>,
    /// The test split (scored).
    pub test: Arc<Dataset>,
    /// Where the backbone runs.
    pub device: Device,
    /// How it computes: the run's precision and memory format on `device`.
    pub compute: Compute,
    /// Threads that load and augment images.
    pub threads: usize,
    backbone: ResNet,
    /// Keeps the backbone's variables.
    _vs: tch::nn::VarStore,
    train_features: OnceCell<(Tensor, Tensor)>,
    test_features: OnceCell<(Tensor, Tensor)>,
}

impl Frozen {
    /// Loads `checkpoint` (in `<run>/checkpoints/`, whose `config.toml`
    /// gives the model and the dataset) on `device`, with `threads` loader
    /// threads; `dataset` replaces the run's dataset folder (format detected).
    pub fn load(
        checkpoint: &Path,
        dataset: Option<&Path>,
        device: Device,
        threads: usize,
    ) -> Result<Frozen> {
        // This thread's CUDA objects belong to that GPU (see set_thread_device).
        set_thread_device(device)?;
        let opened = RunCheckpoint::open(checkpoint, dataset)?;
        let config = &opened.config;
        let train = config.data.open(Split::Train)?;
        let test = config.data.open(Split::Test)?;
        if !train.has_labels() || !test.has_labels() {
            return Err(Error::config(
                "--dataset",
                format!(
                    "evaluation needs labelled train and test splits; {} has none",
                    train.source.display()
                ),
            ));
        }
        let channels = config.data.recipe(&train, RecipeName::Eval)?.channels;
        // Only the backbone: it sits at the root of the query encoder's
        // variables (`query.conv1.weight`, …) for every method.
        let vs = tch::nn::VarStore::new(device);
        let (compute, _, _) = opened.compute(device);
        let backbone = opened.backbone(&vs, channels, compute)?;
        let RunCheckpoint { checkpoint, config } = opened;
        Ok(Frozen {
            step: checkpoint.pos.step,
            checkpoint: checkpoint.file,
            config,
            train: Arc::new(train),
            test: Arc::new(test),
            device,
            threads: threads.max(1),
            compute,
            backbone,
            _vs: vs,
            train_features: OnceCell::new(),
            test_features: OnceCell::new(),
        })
    }

    /// The backbone (use it in inference mode: `forward_t(x, false)`).
    pub fn backbone(&self) -> &ResNet {
        &self.backbone
    }

    /// The recipe `name` at the run's view size and channels.
    pub fn recipe(&self, name: RecipeName) -> Result<Recipe> {
        self.config.data.recipe(&self.train, name)
    }

    /// Features and labels of images `indices` of the training split, on
    /// centre crops; taken from the cached features of the whole split when
    /// those were computed (or `cache` asks for them), else extracted.
    pub fn train_features(&self, indices: &[usize], cache: bool) -> Result<(Tensor, Tensor)> {
        if cache && self.train_features.get().is_none() {
            let all: Vec<usize> = (0..self.train.len()).collect();
            let f = self.extract_split(&self.train, &all)?;
            let _ = self.train_features.set(f);
        }
        match self.train_features.get() {
            Some((f, l)) => {
                let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
                let idx = upload(&idx, self.device)?;
                Ok((f.index_select(0, &idx), l.index_select(0, &idx)))
            }
            None => self.extract_split(&self.train, indices),
        }
    }

    /// Features and labels of the whole test split, on centre crops (cached).
    pub fn test_features(&self) -> Result<(Tensor, Tensor)> {
        if let Some((f, l)) = self.test_features.get() {
            return Ok((f.shallow_clone(), l.shallow_clone()));
        }
        let all: Vec<usize> = (0..self.test.len()).collect();
        let (f, l) = self.extract_split(&self.test, &all)?;
        let _ = self
            .test_features
            .set((f.shallow_clone(), l.shallow_clone()));
        Ok((f, l))
    }

    /// How its passes are fed: its loader threads, under the run's
    /// `pinned_memory_mib` for this one process.
    pub fn feed(&self) -> Feed {
        Feed {
            threads: self.threads,
            pinned: PinnedCap::new(self.config.compute.pinned_memory_mib, 1),
        }
    }

    fn extract_split(&self, dataset: &Arc<Dataset>, indices: &[usize]) -> Result<(Tensor, Tensor)> {
        let recipe = self.recipe(RecipeName::Eval)?;
        extract(
            self.backbone(),
            dataset,
            &recipe,
            indices,
            self.compute,
            self.feed(),
        )
    }

    /// Number of classes.
    pub fn classes(&self) -> i64 {
        self.train.classes.len() as i64
    }
}
