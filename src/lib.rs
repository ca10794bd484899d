//! eqco: self-supervised contrastive learning of image encoders with the EqCo
//! equivalent rules (Zhu et al., "EqCo: Equivalent Rules for Self-supervised
//! Contrastive Learning"), on libtorch through tch.
//!
//! - [`loss`]: InfoNCE with a margin (Eq. 1), the EqCo rule `m = τ·ln(α/K)`
//!   (Eq. 5), negative selection, MI bound and gradient-norm diagnostics.
//! - [`data`]: datasets (IDX, CIFAR, STL-10, ImageFolder), augmentations and
//!   the two-view loader.
//! - [`toy`]: the mutual-information experiment on correlated Gaussians (Table 5).
//! - [`cli`]: the `eqco` command line.
//!
//! What tch does not wrap goes through a small C++ shim in `csrc/`.

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod io;
pub mod loss;
pub mod method;
pub mod model;
pub mod optim;
pub mod plot;
pub mod report;
pub mod run;
pub mod seed;
mod shim;
pub mod sweep;
pub mod toy;
pub mod train;

pub use error::{Error, Result};
