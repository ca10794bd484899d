//! `eqco bench …`: benchmarks that print figures and ratios against PyTorch
//! (their work lives in [`crate::app::bench`]).

use clap::Subcommand;

use crate::app::bench::{data::DataBench, dist::DistBench, toy_mi::ToyMiBench, train::TrainBench};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time per training step of one toy-MI run, eqco vs the same protocol in PyTorch.
    #[command(name = "toy-mi")]
    ToyMi(ToyMiBench),
    /// Images/s of the mocov2 two-view pipeline, eqco's loader vs torchvision + DataLoader.
    Data(DataBench),
    /// Images/s of training steps for each method, precision and memory
    /// format, eqco vs the same in PyTorch and vs PyTorch's eager default.
    Train(TrainBench),
    /// Time per step of a preset with 1, 2, … data-parallel workers, and
    /// the share of a step spent in collectives.
    Dist(DistBench),
}

/// Runs a benchmark.
pub fn run(which: BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::ToyMi(b) => b.run(),
        BenchCommand::Data(b) => b.run(),
        BenchCommand::Train(b) => b.run(),
        BenchCommand::Dist(b) => b.run(),
    }
}
