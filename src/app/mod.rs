//! Applications built on the library: they run jobs and read runs, and
//! nothing below imports them.
//!
//! - [`sweep`]: a grid of pretraining runs with their evaluations, then a report.
//! - [`report`]: a Markdown summary and plots of runs, paired comparisons by seed.
//! - [`bench`]: benchmarks printing ratios against PyTorch from the same call.
//! - [`toy`]: the mutual-information experiment on correlated Gaussians (Table 5).

pub mod bench;
pub mod report;
pub mod sweep;
pub mod toy;
