//! Optimisation: SGD with checkpointable momentum ([`sgd`]), the
//! learning-rate schedule ([`schedule`]), and the section of a run's
//! configuration that sets both, with the batch and the run's length.

pub mod schedule;
pub mod sgd;

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
pub use schedule::{learning_rate, Schedule};
pub use sgd::{validate, Sgd};

/// The keys `batch_size` … `max_steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Images (queries) per batch N.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Base learning rate at N = 256; the rate used is `lr × N / 256`.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Linear warm-up, in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// `cosine` or `step`.
    pub schedule: Schedule,
    /// Epochs at which a `step` schedule multiplies the rate by 0.1.
    pub lr_steps: Vec<usize>,
    /// Stop after this many optimizer steps; 0 writes the initialisation
    /// only (a step-0 checkpoint: the random-init baseline).
    pub max_steps: Option<usize>,
}

impl Default for OptimConfig {
    /// N = 256, one epoch, lr 0.03 with a cosine schedule and no warm-up.
    fn default() -> Self {
        OptimConfig {
            batch_size: 256,
            epochs: 1,
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_epochs: 0.0,
            schedule: Schedule::Cosine,
            lr_steps: Vec::new(),
            max_steps: None,
        }
    }
}

impl OptimConfig {
    /// Checks every key of the section; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let n = self.batch_size;
        if n < 2 {
            return Err(Error::config(
                "batch_size",
                format!("{n} (must be ≥ 2: the other images are the negatives)"),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::config("epochs", "0 (must be ≥ 1)"));
        }
        validate(self.lr, self.momentum, self.weight_decay)?;
        if !(self.warmup_epochs.is_finite()
            && self.warmup_epochs >= 0.0
            && self.warmup_epochs < self.epochs as f64)
        {
            return Err(Error::config(
                "warmup_epochs",
                format!(
                    "{} (must be in [0, epochs = {}))",
                    self.warmup_epochs, self.epochs
                ),
            ));
        }
        if self.schedule == Schedule::Step
            && self.lr_steps.iter().any(|&e| e == 0 || e >= self.epochs)
        {
            return Err(Error::config(
                "lr_steps",
                format!(
                    "{:?} (each must be an epoch in 1..{})",
                    self.lr_steps, self.epochs
                ),
            ));
        }
        Ok(())
    }

    /// The learning rate at full schedule: `lr × N / 256` (the linear scaling rule, Sec. 2.2).
    pub fn scaled_lr(&self) -> f64 {
        self.lr * self.batch_size as f64 / 256.0
    }

    /// The steps of a run of `steps_per_epoch` batches an epoch: all its
    /// epochs, or `max_steps` when fewer.
    pub fn total_steps(&self, steps_per_epoch: usize) -> usize {
        (self.epochs * steps_per_epoch).min(self.max_steps.unwrap_or(usize::MAX))
    }
}
