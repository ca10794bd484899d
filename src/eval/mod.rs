//! Evaluation of frozen encoders read from checkpoints: feature
//! extraction, the weighted kNN classifier (also the online monitor during
//! pretraining), the linear probe (logistic regression fitted to
//! convergence, or SGD as MoCo), and embeddings of a dataset for users.

pub mod embed;
pub mod features;
pub mod frozen;
pub mod knn;
pub mod linear;
pub mod logreg;

pub use features::extract;
pub use frozen::Frozen;
pub use knn::{evaluate_knn, knn_accuracy, Accuracy, KnnReport, KnnSettings};
pub use linear::{evaluate_linear, LinearMode, LinearReport, LinearSettings};
