//! `eqco pretrain`: self-supervised pretraining from a preset or TOML file.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::CommonArgs;
use crate::device::parse_device;
use crate::dist::launch::{launch, Outcome};
use crate::dist::{Env, World};
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
    /// Start N data-parallel workers of this command on this machine (with
    /// `--device cuda`, worker i uses `cuda:i`; on the CPU each gets its
    /// share of the cores). `batch_size` stays the global N.
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
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
    let env = Env::from_env()?;
    let device = parse_device(&args.common.device)?;
    let backend = cfg.dist_backend.resolve(device)?;
    // The process that will write the run folder (this one, the launcher of
    // workers, or rank 0 of a job) refuses one that holds a run.
    if env.as_ref().is_none_or(|e| e.rank == 0) {
        check_out(&out, resume)?;
    }
    match (args.nproc_per_node, &env) {
        (Some(0), _) => return Err(Error::config("--nproc-per-node", "0 (must be ≥ 1)").into()),
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "--nproc-per-node",
                "the torchrun variables (RANK, WORLD_SIZE, …) are set: this process is already one worker of a job; leave --nproc-per-node out",
            )
            .into())
        }
        (Some(n), None) if n > 1 => {
            cfg.validate_world(n)?;
            if let tch::Device::Cuda(_) = device {
                let gpus = tch::Cuda::device_count() as usize;
                if n > gpus {
                    return Err(Error::config(
                        "--nproc-per-node",
                        format!("{n} workers, one per GPU, but this machine has {gpus} GPU(s)"),
                    )
                    .into());
                }
            }
            return launch_workers(n);
        }
        _ => {}
    }
    let world = match &env {
        None => World::single(),
        Some(env) => {
            cfg.validate_world(env.world_size)?;
            World::join(env, backend, Duration::from_secs_f64(cfg.dist_timeout))?
        }
    };
    let device = match (device, args.common.device.trim()) {
        // Worker i of a machine uses its i-th GPU.
        (tch::Device::Cuda(_), "cuda") if world.local_size > 1 => {
            let gpus = tch::Cuda::device_count() as usize;
            if world.local_rank >= gpus {
                return Err(Error::config(
                    "LOCAL_RANK",
                    format!("{} but this machine has {gpus} GPU(s)", world.local_rank),
                )
                .into());
            }
            tch::Device::Cuda(world.local_rank)
        }
        (d, _) => d,
    };
    let threads = match args.common.threads {
        Some(_) => args.common.threads()?,
        // Each worker of a machine gets its share of the cores.
        None => (args.common.threads()? / world.local_size).max(1),
    };
    let main = world.is_main();
    let opts = TrainOptions {
        out: out.clone(),
        resume,
        device,
        threads,
        progress: std::io::stderr().is_terminal(),
        world,
    };
    let s = pretrain(&cfg, &opts)?;
    if !main {
        return Ok(());
    }
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
    if s.processes > 1 {
        println!(
            "{} processes, {:.1} % of the time in collectives",
            s.processes,
            100.0 * s.comm_share
        );
    }
    println!(
        "wrote {0}/config.toml, {0}/metrics.jsonl, {0}/summary.json, {0}/plots/training.png, {1}",
        out.display(),
        s.checkpoint.display()
    );
    Ok(())
}

/// A new run may not overwrite a folder that holds one.
fn check_out(out: &Path, resume: bool) -> crate::Result<()> {
    if !resume && out.join("metrics.jsonl").exists() {
        return Err(Error::config(
            "--out",
            format!(
                "{} already holds a run; continue it with --resume {0}, or choose another --out",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// Runs this command line as `n` workers (without `--nproc-per-node`) and
/// reports how they ended.
fn launch_workers(n: usize) -> anyhow::Result<()> {
    let mut args: Vec<OsString> = Vec::new();
    let mut skip = false;
    for a in std::env::args_os().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc-per-node") => skip = true,
            Some(s) if s.starts_with("--nproc-per-node=") => {}
            _ => args.push(a),
        }
    }
    match launch(n, &args)? {
        Outcome::Success => Ok(()),
        Outcome::Failed(failures) => Err(Error::Workers(failures).into()),
        Outcome::Interrupted(signal) => {
            eprintln!("eqco: stopped all {n} workers after signal {signal}");
            std::process::exit(128 + signal);
        }
    }
}
