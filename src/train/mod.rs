//! Training: configuration and presets, learning-rate schedules, SGD,
//! metrics, checkpoints, plots and the pretraining loop.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod optim;
pub mod pending;
pub mod plots;
pub mod schedule;
pub mod trainer;

pub use config::{MethodName, PretrainConfig, Schedule, PRESETS};
pub use trainer::{pretrain, Summary, TrainOptions};
