//! Training: learning-rate schedules, the steps' figures read in windows,
//! plots and the pretraining loop (on the run's configuration, data and
//! checkpoints from [`crate::run`]).

pub mod events;
pub mod pending;
pub mod plots;
pub mod schedule;
pub mod trainer;

pub use trainer::{pretrain, Summary, TrainOptions};
