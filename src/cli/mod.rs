//! The `eqco` command line: argument definitions and dispatch.
//!
//! Every command that runs work takes the common options `--out`, `--seed`,
//! `--threads` and `--device`. Errors end in one `error:` line on stderr (plus
//! an optional hint) and exit code 2 for usage or configuration, 1 for a
//! failure of the work itself.

pub mod bench;
pub mod data;
pub mod embed;
pub mod eval;
pub mod export;
pub mod pretrain;
pub mod report;
pub mod sweep;
pub mod toy_mi;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Self-supervised contrastive learning with the EqCo equivalent rules.
#[derive(Debug, Parser)]
#[command(name = "eqco", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The toy mutual-information experiment (paper Table 5): InfoNCE vs EqCo
    /// bounds on correlated Gaussians of known MI, for several K.
    #[command(name = "toy-mi")]
    ToyMi(toy_mi::ToyMiArgs),
    /// Self-supervised pretraining (default: the fmnist-simo preset).
    Pretrain(pretrain::PretrainArgs),
    /// Evaluation of a checkpoint's frozen backbone.
    Eval {
        /// Which evaluation.
        #[command(subcommand)]
        which: eval::EvalCommand,
    },
    /// Embeddings of a dataset's images from a checkpoint's frozen encoder
    /// (.npy, .safetensors or .csv, with a sidecar naming each row).
    Embed(embed::EmbedArgs),
    /// A grid of pretraining runs (K, α, N, method) with their evaluations,
    /// one after another and resumable, then a report.
    Sweep(sweep::SweepArgs),
    /// A Markdown summary and plots of pretraining runs.
    Report(report::ReportArgs),
    /// Backbone weights for other frameworks (torchvision's ResNet names).
    Export(export::ExportArgs),
    /// Datasets: inspect a dataset and its augmentations.
    Data {
        /// Which data command.
        #[command(subcommand)]
        which: data::DataCommand,
    },
    /// Benchmarks that print figures and ratios against PyTorch.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: bench::BenchCommand,
    },
}

/// Options shared by every command that runs work.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Base random seed [default: 0, or the configuration's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU threads to use (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl CommonArgs {
    /// `--threads`, or every core of this machine.
    pub fn threads(&self) -> crate::Result<usize> {
        self.job().threads()
    }

    /// Where and how wide the job runs: `--device` and `--threads`.
    pub fn job(&self) -> crate::job::Request {
        crate::job::Request {
            device: self.device.clone(),
            threads: self.threads,
            nproc_per_node: None,
        }
    }
}

/// The whole program on `args` (the program's name first): parses them
/// (a usage error or `--help` prints and exits, as clap does), runs the
/// command, prints an error as one `error:` line, and returns the exit code
/// (0, 1, 2, or 75 for a run stopped at a checkpoint). The `eqco` binary
/// and the Python package's `eqco` command both are this.
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    crate::job::set_command_line(args.clone());
    let cli = Cli::parse_from(args);
    let Err(err) = run(cli) else {
        return 0;
    };
    let code = exit_code(&err);
    if code == crate::base::error::EXIT_STOPPED {
        // Every rank stopped alike: rank 0 says so.
        if !matches!(std::env::var("RANK").as_deref(), Ok(r) if r != "0") {
            eprintln!("pretrain: {err:#}");
        }
    } else {
        // A worker started by a launcher also tells it why it failed.
        crate::dist::env::record_error(&format!("{err:#}"));
        eprintln!("error: {err:#}");
    }
    code
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ToyMi(args) => toy_mi::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Report(args) => report::run(args),
        Command::Eval { which } => eval::run(which),
        Command::Embed(args) => embed::run(args),
        Command::Export(args) => export::run(args),
        Command::Data { which } => data::run(which),
        Command::Bench { which } => bench::run(which),
    }
}

/// A configuration error about `field` restated as one about the flag
/// `--field` (for commands whose settings are flags, not config keys).
pub fn as_flag(e: crate::Error) -> crate::Error {
    match e {
        crate::Error::Config { field, message } => {
            crate::Error::config(format!("--{}", field.replace('_', "-")), message)
        }
        other => other,
    }
}

/// The exit code for an error: 2 for usage or configuration, 75 for a
/// run stopped at a checkpoint by a signal, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.downcast_ref::<crate::Error>() {
        Some(e) if e.is_usage() => 2,
        Some(crate::Error::Stopped { .. }) => crate::base::error::EXIT_STOPPED,
        _ => 1,
    }
}
