//! `eqco pretrain`: self-supervised pretraining from a preset or TOML file.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::CommonArgs;
use crate::device::parse_device;
use crate::dist::env::{worker_device, DeviceRequest};
use crate::dist::launch::{launch, Outcome};
use crate::dist::{self, Env, World};
use crate::error::Error;
use crate::run::checkpoint;
use crate::run::config::ResumeMode;
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
    /// `--resume auto` continues the run in `--out` when it has a
    /// checkpoint and starts it fresh otherwise (as the config key
    /// `resume = "auto"`, a torchrun restart or a requeued SLURM job do).
    #[arg(long, value_name = "RUN_DIR|auto")]
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
    let env = Env::from_env()?;
    let restarted = dist::env::restarted(|k| std::env::var(k).ok())?;
    let (cfg, out, resume, auto) = resolve_run(&args, &sets, restarted)?;
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let request = DeviceRequest::parse(&args.common.device);
    let device = parse_device(&args.common.device)?;
    let backend = cfg.dist_backend.resolve(device)?;
    // The process that will write the run folder (this one, the launcher of
    // workers, or rank 0 of a job) refuses one that holds a run, unless the
    // run resumes on its own.
    if !auto && env.as_ref().is_none_or(|e| e.rank == 0) {
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
            if device.is_cuda() {
                // Every worker's GPU exists (the last one's is the highest).
                worker_device(request, n - 1, n, tch::Cuda::device_count() as usize)?;
            }
            return launch_workers(n);
        }
        _ => {}
    }
    let (local_rank, local_size) = env
        .as_ref()
        .map_or((0, 1), |e| (e.local_rank, e.local_world_size));
    // This worker's GPU, chosen before the process group is made (NCCL is
    // bound to it).
    let device = if device.is_cuda() {
        worker_device(
            request,
            local_rank,
            local_size,
            tch::Cuda::device_count() as usize,
        )?
    } else {
        device
    };
    let world = match &env {
        None => World::single(),
        Some(env) => {
            cfg.validate_world(env.world_size)?;
            let timeouts = crate::dist::Timeouts {
                join: Duration::from_secs_f64(cfg.dist_join_timeout),
                collective: Duration::from_secs_f64(cfg.dist_timeout),
            };
            World::join(env, backend, timeouts, device)?
        }
    };
    let threads = match args.common.threads {
        Some(_) => args.common.threads()?,
        // Each worker of a machine gets its share of the CPUs it may use.
        None => {
            let allowed = dist::env::cpus_allowed().map_or_else(|| args.common.threads(), Ok)?;
            let online = dist::env::cpus_online().unwrap_or(allowed);
            dist::env::threads_per_worker(allowed, online, local_size)
        }
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
    let s = match pretrain(&cfg, &opts) {
        Ok(s) => s,
        Err(e) => {
            let mut err = anyhow::Error::from(e);
            let world = &opts.world;
            if world.size > 1 && !format!("{err:#}").contains(&format!("rank {}", world.rank)) {
                err = err.context(format!("rank {} of {}", world.rank, world.size));
            }
            // The other ranks end at once, and learn why.
            world.abandon(&format!("{err:#}"));
            return Err(err);
        }
    };
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
        let overlap = match s.grad_buckets_overlapped {
            Some(share) => format!(
                " (gradient all-reduce overlapped with backward: {:.0} % of the buckets began during it)",
                100.0 * share
            ),
            None => String::new(),
        };
        println!(
            "{} processes, {:.1} % of the time in collectives{overlap}",
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

/// The run's configuration, its folder, whether it continues from a
/// checkpoint, and whether it resumes on its own (`--resume auto`, the
/// `resume` key, or a restart: then it continues from the newest checkpoint
/// in `--out` when there is one, and starts fresh otherwise).
fn resolve_run(
    args: &PretrainArgs,
    sets: &[String],
    restarted: bool,
) -> crate::Result<(PretrainConfig, PathBuf, bool, bool)> {
    let auto_flag = args.resume.as_deref() == Some(Path::new("auto"));
    if let Some(run) = args.resume.as_ref().filter(|_| !auto_flag) {
        if args.config.is_some() {
            return Err(Error::config(
                "--resume",
                format!(
                    "{} continues with that run's config.toml: leave --config out (or use --resume auto with --config and --out)",
                    run.display()
                ),
            ));
        }
        return Ok((run_config(run, sets)?, run.clone(), true, false));
    }
    let cfg = PretrainConfig::load(args.config.as_deref(), sets)?;
    let out = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/pretrain"));
    let auto = auto_flag || restarted || cfg.resume == ResumeMode::Auto;
    if auto && checkpoint::latest_path(&out.join("checkpoints")).is_file() {
        return Ok((run_config(&out, sets)?, out, true, true));
    }
    Ok((cfg, out, false, auto))
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
