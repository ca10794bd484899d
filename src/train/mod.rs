//! Training: one optimizer step ([`step`]), the loop that repeats it
//! ([`trainer`]), the steps' figures read in windows ([`pending`]) and
//! recorded ([`record`]), the kNN monitor ([`knn`]), where the figures go
//! ([`events`]), the final summary and plots.

pub mod events;
pub mod knn;
pub mod pending;
pub mod plots;
pub mod record;
pub mod step;
pub mod summary;
pub mod trainer;

pub use step::{Step, StepFigures};
pub use summary::Summary;
pub use trainer::{pretrain, TrainOptions};
