//! What a run is, shared by every layer that trains, evaluates or reports
//! on one: its configuration (presets, `--set`, validation), its data, its
//! checkpoints, its metrics file and its folder.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod folder;
pub mod metrics;
pub mod tensorboard;

pub use config::{MethodName, PretrainConfig, Schedule, PRESETS};
pub use data::{open_dataset, recipe_for, training_images};
pub use folder::run_config;
