//! `summary.json`: the final figures of a run.

use std::path::PathBuf;

use serde::Serialize;

/// `summary.json`: the final figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The framework.
    pub method: String,
    /// Negatives per query.
    pub k: usize,
    /// EqCo's α, if on.
    pub alpha: Option<f64>,
    /// The learning rate after the linear scaling rule.
    pub lr_scaled: f64,
    /// Optimizer steps done.
    pub steps: u64,
    /// Epochs completed.
    pub epochs: u64,
    /// Images trained on per epoch.
    pub images: usize,
    /// The last step's loss.
    pub final_loss: f64,
    /// The last step's MI bound.
    pub final_mi_bound: f64,
    /// Mean MI bound over the last 10 % of steps.
    pub mi_bound_last10pct: f64,
    /// Mean ‖∂L/∂q‖ over the last 10 % of steps.
    pub grad_norm_q_last10pct: f64,
    /// Mean images/s over the run.
    pub img_per_s: f64,
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// The share of the training loop's time spent waiting for the loader
    /// (0 when batches were always ready).
    pub data_wait_share: f64,
    /// The precision used, and why (`bf16 (auto: CPU has avx512_bf16)`).
    pub precision: String,
    /// The memory format of images and convolution weights.
    pub memory_format: crate::base::device::MemoryFormat,
    /// How many times the steps' figures were read from the device (once
    /// per `log_every` steps, and before each checkpoint).
    pub device_reads: u64,
    /// Processes of the job (data parallel when more than one).
    pub processes: usize,
    /// The share of the training loop's time spent in collectives
    /// (gradient all-reduce, gathers, synchronised BN; 0 for one process).
    pub comm_share: f64,
    /// With `grad_overlap` and several processes, the share of gradient
    /// buckets whose all-reduce began during backward (this invocation's
    /// steps); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_buckets_overlapped: Option<f64>,
    /// On a GPU, the most page-locked memory the process held at once, in
    /// bytes, as the CUDA host allocator counts it (each block at its size
    /// rounded up to a power of two, cached blocks included): what
    /// `pinned_memory_mib` bounds. Absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_peak_bytes: Option<u64>,
    /// The last checkpoint.
    pub checkpoint: PathBuf,
}
