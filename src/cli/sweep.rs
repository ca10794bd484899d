//! `eqco sweep`: a grid of pretraining runs with their evaluations, one
//! after another, then a report; run it again to continue where it stopped.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::CommonArgs;
use crate::app::sweep::{SweepConfig, SweepOptions};
use crate::run::config::MethodName;

/// Options of `eqco sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A sweep preset (fmnist-simo-k, fmnist-mocov2-k, fmnist-simo-alpha,
    /// fmnist-mocov2-alpha, fmnist-mocov2-n, fmnist-precision,
    /// fmnist-simo-k-long, fmnist-mocov2-k-long, fmnist-simo-k-paired,
    /// fmnist-simo-k16-more-seeds, fmnist-simo-k-small, fmnist-mocov2-k-paired,
    /// fmnist-simo-table6, fmnist-simo-table7, fmnist-simclr-alpha-paired) or
    /// a sweep .toml file.
    #[arg(long, default_value = "fmnist-simo-k")]
    pub config: String,
    /// Set a pretraining key for every run (repeatable), e.g. --set epochs=1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// List the runs and their folders, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Common options (`--out`: the sweep folder, default runs/sweep-<config>;
    /// `--seed` is set for every run).
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the sweep.
pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let mut sets = args.sets.clone();
    if let Some(seed) = args.common.seed {
        sets.push(format!("seed={seed}"));
    }
    let (cfg, resolved) = SweepConfig::load(&args.config, &sets)?;
    let plan = cfg.plan()?;
    let stem = PathBuf::from(&args.config)
        .file_stem()
        .map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
    let out = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/sweep-{stem}")));
    if args.dry_run {
        for run in &plan {
            let c = &run.config;
            let what = match (c.optim.max_steps, c.method.method) {
                (Some(0), _) => "random init: the initialisation, no training".to_string(),
                (_, MethodName::Supervised) => {
                    format!(
                        "supervised, N = {}, {} epochs",
                        c.optim.batch_size, c.optim.epochs
                    )
                }
                _ => format!(
                    "{}, K = {}, α = {}, N = {}, {} epochs",
                    format!("{:?}", c.method.method).to_lowercase(),
                    c.k(),
                    c.loss.alpha.map_or("none".into(), |a| a.to_string()),
                    c.optim.batch_size,
                    c.optim.epochs
                ),
            };
            println!("{}  ({what})", out.join(&run.name).display());
        }
        return Ok(());
    }
    let opts = SweepOptions {
        out: out.clone(),
        job: crate::job::Job::single(&args.common.job())?,
        progress: std::io::stderr().is_terminal(),
    };
    let md = crate::app::sweep::run(&cfg, &resolved, &opts)?;
    print!("{md}");
    println!("\nwrote {0}/report.md and its plots", out.display());
    Ok(())
}
