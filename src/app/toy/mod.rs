//! The toy mutual-information experiment (paper Table 5, method page §8):
//! InfoNCE and EqCo bounds on correlated Gaussians of known MI, for several K.

pub mod critic;
pub mod experiment;
pub mod gaussian;
pub mod report;

pub use critic::SeparableCritic;
pub use experiment::{grid, run, run_all, Estimator, RunResult, RunSpec, ToyConfig};
pub use gaussian::CorrelatedGaussians;
pub use report::{format_table, paper_value, write_outputs, PAPER_KS, PAPER_TABLE5};
