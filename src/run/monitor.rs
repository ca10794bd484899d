//! The monitor and output section of a run's configuration: checkpoints,
//! the kNN monitor, how often figures are read, TensorBoard and resuming.

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};

/// Whether `eqco pretrain` continues a run it finds in `--out` (the `resume`
/// key, or `--resume auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeMode {
    /// A folder that holds a run is refused (continue it with `--resume DIR`).
    #[default]
    Never,
    /// Continue from the newest checkpoint in `--out` when there is one,
    /// else start fresh: what a restarted worker or a requeued job needs.
    Auto,
}

/// The keys `checkpoint_every`, `keep_checkpoints`, `keep_every`,
/// `knn_every`, `knn_k`, `knn_tau`, `knn_bank`, `log_every`, `tensorboard`
/// and `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Write a checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Keep the newest this many `step-<step>` checkpoints (0: every one);
    /// an older one is removed only once a newer one is complete.
    pub keep_checkpoints: usize,
    /// Also keep, for good, every checkpoint whose step is a multiple of
    /// this (0: none), e.g. the steps of an epoch to keep one an epoch.
    pub keep_every: usize,
    /// Run the kNN monitor every this many epochs (0: never); its top-1 goes
    /// into `metrics.jsonl` as `knn_top1` on the epoch's last line.
    pub knn_every: usize,
    /// Neighbours k of the kNN monitor.
    pub knn_k: i64,
    /// Temperature of the kNN monitor's vote weights.
    pub knn_tau: f64,
    /// Training images in the kNN monitor's memory bank (a fixed subset).
    pub knn_bank: usize,
    /// Read the steps' figures (loss, gradient norm) from the device every
    /// this many steps [default: 10 on a GPU, 1 on the CPU]; a NaN is found
    /// and named within this many steps.
    pub log_every: Option<usize>,
    /// Write TensorBoard event files into the run folder as training goes
    /// (every figure of `metrics.jsonl`, the view pairs, this configuration).
    pub tensorboard: bool,
    /// `never` or `auto`: continue from the newest checkpoint in `--out`
    /// when there is one (torchrun restarts and requeued SLURM jobs do so
    /// whatever this says).
    pub resume: ResumeMode,
}

impl Default for MonitorConfig {
    /// Checkpoints at epoch ends, no kNN monitor, TensorBoard on.
    fn default() -> Self {
        MonitorConfig {
            checkpoint_every: 0,
            keep_checkpoints: 3,
            keep_every: 0,
            knn_every: 0,
            knn_k: 200,
            knn_tau: 0.1,
            knn_bank: 10_000,
            log_every: None,
            tensorboard: true,
            resume: ResumeMode::Never,
        }
    }
}

impl MonitorConfig {
    /// Checks every key of the section; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.knn_k < 1 {
            return Err(Error::config(
                "knn_k",
                format!("{} (must be ≥ 1)", self.knn_k),
            ));
        }
        if !(self.knn_tau.is_finite() && self.knn_tau > 0.0) {
            return Err(Error::config(
                "knn_tau",
                format!("{} (must be > 0)", self.knn_tau),
            ));
        }
        if self.knn_every > 0 && self.knn_bank == 0 {
            return Err(Error::config(
                "knn_bank",
                "0 (must be ≥ 1 when knn_every is set)",
            ));
        }
        if self.log_every == Some(0) {
            return Err(Error::config("log_every", "0 (must be ≥ 1)"));
        }
        Ok(())
    }

    /// Steps between reads of the figures from `device`: `log_every`, else
    /// 10 on a GPU (so that steps do not wait for it) and 1 on the CPU.
    pub fn log_every(&self, device: tch::Device) -> usize {
        self.log_every
            .unwrap_or(if device.is_cuda() { 10 } else { 1 })
    }

    /// Whether the checkpoint of `step` is kept when the newest `newer`
    /// others are (retention: `keep_checkpoints` and `keep_every`).
    pub fn keeps(&self, step: u64, newer: usize) -> bool {
        self.keep_checkpoints == 0
            || newer < self.keep_checkpoints
            || (self.keep_every > 0 && step % self.keep_every as u64 == 0)
    }

    /// Whether a checkpoint is due after `step` steps (besides epoch ends).
    pub fn checkpoint_due(&self, step: u64) -> bool {
        self.checkpoint_every > 0 && step % self.checkpoint_every as u64 == 0
    }

    /// Whether the kNN monitor is due at the end of `epoch` (0-based).
    pub fn knn_due(&self, epoch: u64) -> bool {
        self.knn_every > 0 && (epoch + 1) % self.knn_every as u64 == 0
    }
}
