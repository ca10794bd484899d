//! `eqco pretrain`: self-supervised pretraining from a preset or TOML file.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::CommonArgs;
use crate::device::parse_device;
use crate::error::Error;
use crate::run::run_config;
use crate::run::PretrainConfig;
use crate::train::{pretrain, TrainOptions};

/// Options of `eqco pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// A preset name (fmnist-simo, fmnist-mocov2, fmnist-mocov1, fmnist-simclr,
    /// simo, mocov2, mocov1, simclr) or a TOML file [default: fmnist-simo].
    #[arg(long)]
    pub config: Option<String>,
    /// Override one key, e.g. `--set k_negatives=16 --set alpha=none`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Continue the run in this folder from its latest checkpoint (with its
    /// config.toml; `--set` may change keys such as max_steps or epochs).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Common options (`--seed` overrides the configuration's `seed`).
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `eqco pretrain`.
pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let mut sets = args.sets.clone();
    if let Some(seed) = args.common.seed {
        sets.push(format!("seed={seed}"));
    }
    let (cfg, out, resume) = match &args.resume {
        Some(run) => (run_config(run, &sets)?, run.clone(), true),
        None => {
            let cfg = PretrainConfig::load(args.config.as_deref(), &sets)?;
            let out = args
                .common
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/pretrain"));
            (cfg, out, false)
        }
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    if !resume && out.join("metrics.jsonl").exists() {
        return Err(Error::config(
            "--out",
            format!(
                "{} already holds a run; continue it with --resume {0}, or choose another --out",
                out.display()
            ),
        )
        .into());
    }
    let device = parse_device(&args.common.device)?;
    let opts = TrainOptions {
        out: out.clone(),
        resume,
        device,
        threads: args.common.threads()?,
        progress: std::io::stderr().is_terminal(),
    };
    let s = pretrain(&cfg, &opts)?;
    if s.steps == 0 {
        println!(
            "0 steps: wrote the initialisation only (the random-init baseline) to {}",
            s.checkpoint.display()
        );
        return Ok(());
    }
    println!(
        "{} steps ({} epochs) in {:.1} s: final loss {:.4}, MI bound {:.4} (mean of the last 10 %: {:.4}), {:.0} img/s, {:.1} % of the time waiting for data",
        s.steps, s.epochs, s.wall_seconds, s.final_loss, s.final_mi_bound, s.mi_bound_last10pct, s.img_per_s, 100.0 * s.data_wait_share
    );
    println!(
        "wrote {0}/config.toml, {0}/metrics.jsonl, {0}/summary.json, {0}/plots/training.png, {1}",
        out.display(),
        s.checkpoint.display()
    );
    Ok(())
}
