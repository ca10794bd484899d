//! Evaluation of frozen encoders: feature extraction and the weighted kNN
//! classifier (also the online monitor during pretraining).

pub mod features;
pub mod knn;

pub use features::extract;
pub use knn::{knn_accuracy, Accuracy};
