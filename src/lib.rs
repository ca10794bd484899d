//! eqco: self-supervised contrastive learning of image encoders with the EqCo
//! equivalent rules (Zhu et al., "EqCo: Equivalent Rules for Self-supervised
//! Contrastive Learning"), on libtorch through tch.
//!
//! The folders are the layers, and data flows one way: [`base`] ← [`loss`]
//! ← [`model`] ← [`method`] ← [`train`] ← [`job`] ← [`cli`]; [`data`] feeds
//! the trainer, [`run`] owns the run folder, [`dist`] the processes, [`eval`]
//! reads runs, and [`app`] sits on top.
//!
//! - [`base`]: the error type, atomic writes, derived seeds, the C++ shim,
//!   plots, devices and precision, stop signals.
//! - [`loss`]: InfoNCE with a margin (Eq. 1), the EqCo rule `m = τ·ln(α/K)`
//!   (Eq. 5), negative selection, MI bound and gradient-norm diagnostics.
//! - [`model`]: ResNet backbones, heads, encoders, batch norm, the EMA.
//! - [`optim`]: SGD with checkpointable momentum and the learning-rate schedule.
//! - [`method`]: SiMo, MoCo v1/v2, SimCLR and the supervised baseline;
//!   their forward passes and the one objective they share.
//! - [`data`]: datasets and their formats, augmentations, the two-view loader.
//! - [`dist`]: c10d process groups, the torchrun environment, the launcher.
//! - [`run`]: the run folder: configuration sections composed, checkpoints,
//!   the folder's lock, metrics, TensorBoard files.
//! - [`train`]: the optimizer step and the pretraining loop.
//! - [`eval`]: frozen features, kNN, the linear probe and embeddings.
//! - [`job`]: environment, device, workers, world and failures, for every command.
//! - [`app`]: sweeps, reports, benchmarks and the toy MI experiment (Table 5).
//! - [`cli`]: the `eqco` command line: parsing and dispatch.
//!
//! What tch does not wrap goes through a small C++ shim in `csrc/`.

#![warn(missing_docs)]

pub mod app;
pub mod base;
pub mod cli;
pub mod data;
pub mod dist;
pub mod eval;
pub mod job;
pub mod loss;
pub mod method;
pub mod model;
pub mod optim;
pub mod run;
pub mod train;

pub use base::error::{Error, Result};
