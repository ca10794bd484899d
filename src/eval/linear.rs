//! The linear probe: a linear classifier on the frozen backbone's pooled
//! features, trained with cross-entropy on the training split and scored
//! (top-1, top-5) on the test split, BN in inference mode throughout.
//!
//! Three modes:
//! - `logreg` (the default): a multinomial logistic regression on the
//!   standardised features of centre crops, extracted once, fitted to
//!   convergence with L-BFGS, its L2 strength chosen on held-out training
//!   images ([`super::logreg`]). It measures what the representation
//!   supports, deterministically, in seconds.
//! - `moco`: MoCo's `main_lincls` protocol. Each epoch draws new augmented
//!   views of the training images (crop 0.08–1 and flip, the `supervised`
//!   recipe) and passes them through the backbone; SGD with lr 30, momentum
//!   0.9, no weight decay, batch 256, lr ×0.1 at 60 % and 80 % of the epochs
//!   (MoCo: 100 epochs, steps at 60 and 80); the classifier starts at
//!   `W ~ N(0, 0.01²)`, `b = 0`.
//! - `fast`: the same classifier and optimizer on features extracted once
//!   from the centre-cropped training images (no augmentation), so each
//!   epoch costs a few matrix products instead of a pass through the
//!   backbone. Reports say which mode produced a number.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use super::frozen::Frozen;
use super::knn::Accuracy;
use super::logreg::{self, LogregReport};
use crate::base::device::float32;
use crate::base::error::{Error, Result};
use crate::base::seed::derive;
use crate::data::config::subset;
use crate::data::{Loader, LoaderConfig, RecipeName};
use crate::optim::Sgd;

/// How the classifier's training images reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LinearMode {
    /// Logistic regression fitted to convergence on features of
    /// un-augmented images, its regularisation chosen on held-out images.
    Logreg,
    /// Features of un-augmented images, extracted once; MoCo's SGD.
    Fast,
    /// MoCo's protocol: new augmented views through the backbone every epoch.
    Moco,
}

/// The probe's settings (MoCo's values by default, with 100 epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearSettings {
    /// `logreg`, `fast` or `moco`.
    pub mode: LinearMode,
    /// Epochs over the training images.
    pub epochs: usize,
    /// Learning rate (not scaled with the batch).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Images per batch.
    pub batch_size: usize,
    /// Epochs at which the rate is multiplied by 0.1 [default: 60 % and 80 % of `epochs`].
    pub milestones: Option<Vec<usize>>,
    /// Train on a random subset of this many training images.
    pub max_images: Option<usize>,
    /// Seed of the classifier's initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Data-loading threads (`moco` mode).
    pub threads: usize,
}

impl Default for LinearSettings {
    fn default() -> Self {
        LinearSettings {
            mode: LinearMode::Logreg,
            epochs: 100,
            lr: 30.0,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 256,
            milestones: None,
            max_images: None,
            seed: 0,
            threads: 1,
        }
    }
}

impl LinearSettings {
    /// The milestones in use.
    pub fn milestones(&self) -> Vec<usize> {
        self.milestones.clone().unwrap_or_else(|| {
            vec![
                (self.epochs as f64 * 0.6).round() as usize,
                (self.epochs as f64 * 0.8).round() as usize,
            ]
        })
    }

    /// The learning rate of `epoch` (0-based): the step schedule.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones().iter().filter(|&&m| epoch >= m).count();
        self.lr * 0.1f64.powi(passed as i32)
    }

    /// Checks the settings; errors name the flag's field.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::config("epochs", "0 (must be ≥ 1)"));
        }
        crate::optim::validate(self.lr, self.momentum, self.weight_decay)?;
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "0 (must be ≥ 1)"));
        }
        if self.max_images == Some(0) {
            return Err(Error::config("max_images", "0 (must be ≥ 1)"));
        }
        Ok(())
    }
}

/// One epoch of classifier training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearEpoch {
    /// 0-based.
    pub epoch: usize,
    /// The rate used.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Training top-1 accuracy (on the views trained on), in [0, 1].
    pub train_top1: f64,
}

/// `linear.json`: what a probe measured and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearReport {
    /// The checkpoint evaluated.
    pub checkpoint: std::path::PathBuf,
    /// Its optimizer steps.
    pub step: u64,
    /// The settings, mode included.
    pub settings: LinearSettings,
    /// Training images the classifier saw.
    pub train_images: usize,
    /// Test images scored.
    pub test_images: usize,
    /// Test top-1 accuracy, in [0, 1].
    pub top1: f64,
    /// Test top-5 accuracy, in [0, 1].
    pub top5: f64,
    /// Per-epoch training log (SGD modes).
    pub epochs: Vec<LinearEpoch>,
    /// The `logreg` mode's choice of λ and how its fits converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logreg: Option<LogregReport>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// A linear classifier `features → classes` (MoCo's initialisation: `W ~
/// N(0, 0.01²)`, `b = 0`) with its SGD.
pub struct Probe {
    fc: nn::Linear,
    sgd: Sgd,
    _vs: nn::VarStore,
}

impl Probe {
    /// A fresh classifier on `device`, initialised from `seed`.
    pub fn new(
        features: i64,
        classes: i64,
        settings: &LinearSettings,
        device: tch::Device,
    ) -> Probe {
        let vs = nn::VarStore::new(device);
        let fc = crate::base::seed::with_torch_seed(settings.seed, || {
            nn::linear(
                vs.root() / "fc",
                features,
                classes,
                nn::LinearConfig {
                    ws_init: nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.01,
                    },
                    bs_init: Some(nn::Init::Const(0.0)),
                    bias: true,
                },
            )
        });
        let sgd = Sgd::new(&vs, settings.momentum, settings.weight_decay);
        Probe { fc, sgd, _vs: vs }
    }

    /// One SGD step on features `[n, F]` with labels `[n]`; returns the
    /// summed loss and the top-1 hits of the batch.
    pub fn step(&mut self, feats: &Tensor, labels: &Tensor, lr: f64) -> Result<(f64, i64)> {
        let logits = self.fc.forward(feats);
        let loss = logits.cross_entropy_for_logits(labels);
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::Numerical(format!(
                "the linear probe's loss is {value} (lr {lr}); try a lower --lr"
            )));
        }
        self.sgd.zero_grad();
        loss.backward();
        self.sgd.step(lr);
        let n = feats.size()[0];
        Ok((value * n as f64, tch::no_grad(|| hits(&logits, labels)).0))
    }

    /// Top-1 and top-5 accuracy on features `[n, F]` with labels `[n]`.
    pub fn accuracy(&self, feats: &Tensor, labels: &Tensor) -> Accuracy {
        accuracy_of(|f| self.fc.forward(f), feats, labels)
    }

    /// Trains on fixed features `[n, F]` and labels `[n]` for the settings'
    /// epochs (shuffled each epoch, last batch kept): the fast mode.
    pub fn fit(
        &mut self,
        feats: &Tensor,
        labels: &Tensor,
        settings: &LinearSettings,
    ) -> Result<Vec<LinearEpoch>> {
        let n = feats.size()[0];
        let mut order: Vec<i64> = (0..n).collect();
        let mut log = Vec::with_capacity(settings.epochs);
        for epoch in 0..settings.epochs {
            let lr = settings.lr_at(epoch);
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive(
                settings.seed,
                &[LINEAR_SHUFFLE, epoch as u64],
            )));
            let perm = Tensor::from_slice(&order).to_device(feats.device());
            let mut sums = (0.0, 0);
            for idx in perm.split(settings.batch_size as i64, 0) {
                let (l, h) = self.step(
                    &feats.index_select(0, &idx),
                    &labels.index_select(0, &idx),
                    lr,
                )?;
                sums = (sums.0 + l, sums.1 + h);
            }
            log.push(LinearEpoch::new(epoch, lr, sums, n as usize));
        }
        Ok(log)
    }
}

impl LinearEpoch {
    fn new(epoch: usize, lr: f64, (loss, hits): (f64, i64), n: usize) -> LinearEpoch {
        LinearEpoch {
            epoch,
            lr,
            loss: loss / n.max(1) as f64,
            train_top1: hits as f64 / n.max(1) as f64,
        }
    }
}

/// Top-1 and top-5 hits of `logits` `[n, C]` against `labels` `[n]`.
fn hits(logits: &Tensor, labels: &Tensor) -> (i64, i64) {
    let c = logits.size()[1];
    let ranked = logits.topk(c.min(5), 1, true, true).1;
    let right = ranked.eq_tensor(&labels.unsqueeze(1));
    (
        right.select(1, 0).sum(Kind::Int64).int64_value(&[]),
        right.any_dim(1, false).sum(Kind::Int64).int64_value(&[]),
    )
}

/// Runs the probe of `settings` on `frozen`'s backbone.
pub fn evaluate_linear(frozen: &Frozen, settings: &LinearSettings) -> Result<LinearReport> {
    settings.validate()?;
    let start = Instant::now();
    let images = subset(
        frozen.train.len(),
        settings.max_images,
        derive(settings.seed, &[LINEAR_SUBSET]),
    );
    let (test_f, test_l) = frozen.test_features()?;
    let (acc, epochs, logreg) = match settings.mode {
        LinearMode::Logreg => {
            let (feats, labels) = frozen.train_features(&images, settings.max_images.is_none())?;
            let seed = derive(settings.seed, &[LINEAR_HELD_OUT]);
            let (clf, report) = logreg::fit_selected(&feats, &labels, frozen.classes(), seed)?;
            let acc = accuracy_of(|f| clf.logits(f), &test_f, &test_l);
            (acc, Vec::new(), Some(report))
        }
        LinearMode::Fast | LinearMode::Moco => {
            let dim = frozen
                .config
                .encoder(frozen.recipe(RecipeName::Eval)?.channels)?;
            let mut probe = Probe::new(
                dim.resnet.feature_dim(),
                frozen.classes(),
                settings,
                frozen.device,
            );
            let log = match settings.mode {
                LinearMode::Moco => train_moco(frozen, &mut probe, &images, settings)?,
                _ => {
                    let cache = settings.max_images.is_none();
                    let (feats, labels) = frozen.train_features(&images, cache)?;
                    probe.fit(&feats, &labels, settings)?
                }
            };
            (probe.accuracy(&test_f, &test_l), log, None)
        }
    };
    Ok(LinearReport {
        checkpoint: frozen.checkpoint.clone(),
        step: frozen.step,
        settings: LinearSettings {
            milestones: Some(settings.milestones()),
            ..settings.clone()
        },
        train_images: images.len(),
        test_images: test_f.size()[0] as usize,
        top1: acc.top1,
        top5: acc.top5,
        epochs,
        logreg,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// MoCo's protocol: every epoch new augmented views of `images` through
/// the backbone, one SGD step a batch.
fn train_moco(
    frozen: &Frozen,
    probe: &mut Probe,
    images: &[usize],
    settings: &LinearSettings,
) -> Result<Vec<LinearEpoch>> {
    let recipe = frozen.recipe(RecipeName::Supervised)?;
    let loader = Loader::with_images(
        frozen.train.clone(),
        recipe,
        LoaderConfig {
            batch_size: settings.batch_size.min(images.len()),
            threads: settings.threads.max(1),
            pinned: frozen.feed().pinned,
            pageable_when_full: true,
            seed: derive(settings.seed, &[LINEAR_AUGMENT]),
            drop_last: false,
            device: frozen.device,
            channels_last: frozen.compute.channels_last,
            ..Default::default()
        },
        images.to_vec(),
    )?;
    let mut log = Vec::with_capacity(settings.epochs);
    for epoch in 0..settings.epochs {
        let lr = settings.lr_at(epoch);
        let mut sums = (0.0, 0);
        for batch in loader.single_view_epoch(epoch as u64) {
            let batch = batch?;
            let labels = batch.labels.as_ref().ok_or_else(|| {
                Error::Internal("a labelled dataset gave a batch without labels".into())
            })?;
            let c = frozen.compute;
            let feats = float32(&tch::no_grad(|| {
                c.run(|| frozen.backbone().forward_t(&batch.view, false))
            }));
            let (l, h) = probe.step(&feats, labels, lr)?;
            sums = (sums.0 + l, sums.1 + h);
        }
        log.push(LinearEpoch::new(epoch, lr, sums, images.len()));
    }
    Ok(log)
}

/// Top-1 and top-5 accuracy of a classifier's `logits` on features `[n, F]`
/// with labels `[n]`, in chunks.
fn accuracy_of(logits: impl Fn(&Tensor) -> Tensor, feats: &Tensor, labels: &Tensor) -> Accuracy {
    let (mut top1, mut top5) = (0, 0);
    tch::no_grad(|| {
        for (f, l) in feats.split(4096, 0).iter().zip(labels.split(4096, 0)) {
            let (a, b) = hits(&logits(f), &l);
            top1 += a;
            top5 += b;
        }
    });
    let n = feats.size()[0].max(1) as f64;
    Accuracy {
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
    }
}

/// Seed streams of the probe.
const LINEAR_SUBSET: u64 = 31;
const LINEAR_SHUFFLE: u64 = 32;
const LINEAR_AUGMENT: u64 = 33;
const LINEAR_HELD_OUT: u64 = 34;

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian blobs in 8 dimensions, `n` points each.
    fn blobs(n: i64, seed: u64) -> (Tensor, Tensor) {
        let noise = crate::base::seed::with_torch_seed(seed, || {
            Tensor::randn([3 * n, 8], (Kind::Float, tch::Device::Cpu))
        });
        let centres = Tensor::from_slice(&[4.0f32, 0.0, -4.0])
            .view([3, 1])
            .repeat([1, 8]);
        let labels = Tensor::arange(3, (Kind::Int64, tch::Device::Cpu))
            .repeat_interleave_self_int(n, None, None);
        let x = centres.index_select(0, &labels) + noise;
        (x, labels)
    }

    fn settings() -> LinearSettings {
        LinearSettings {
            epochs: 10,
            lr: 0.1,
            batch_size: 32,
            ..Default::default()
        }
    }

    #[test]
    fn separable_features_are_classified() {
        let (x, y) = blobs(100, 1);
        let (tx, ty) = blobs(50, 2);
        let s = settings();
        let mut probe = Probe::new(8, 3, &s, tch::Device::Cpu);
        let before = probe.accuracy(&tx, &ty);
        let log = probe.fit(&x, &y, &s).unwrap();
        let after = probe.accuracy(&tx, &ty);
        assert!(after.top1 > 0.97, "{after:?}");
        assert!(
            before.top1 < 0.7,
            "the untrained probe is not already right: {before:?}"
        );
        assert!(log.last().unwrap().loss < log[0].loss);
        assert_eq!(after.top5, 1.0, "3 classes are all in the top 5");
    }

    #[test]
    fn shuffled_labels_are_not_learned() {
        let (x, y) = blobs(100, 1);
        let (tx, ty) = blobs(50, 2);
        let perm = crate::base::seed::with_torch_seed(3, || {
            Tensor::randperm(300, (Kind::Int64, tch::Device::Cpu))
        });
        let s = settings();
        let mut probe = Probe::new(8, 3, &s, tch::Device::Cpu);
        probe.fit(&x, &y.index_select(0, &perm), &s).unwrap();
        let acc = probe.accuracy(&tx, &ty);
        assert!(acc.top1 < 0.6, "{acc:?}");
    }

    #[test]
    fn step_schedule_and_a_diverging_lr() {
        let s = LinearSettings::default();
        assert_eq!(s.milestones(), vec![60, 80]);
        assert_eq!(s.lr_at(59), 30.0);
        assert!((s.lr_at(60) - 3.0).abs() < 1e-12 && (s.lr_at(99) - 0.3).abs() < 1e-12);
        let (x, y) = blobs(10, 1);
        let mut probe = Probe::new(8, 3, &s, tch::Device::Cpu);
        let err = probe
            .step(&(x * 1e30), &y, 1e30)
            .and_then(|_| probe.step(&blobs(10, 1).0, &y, 1.0));
        assert!(matches!(err, Err(Error::Numerical(_))), "{err:?}");
    }
}
