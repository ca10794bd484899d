//! `eqco pretrain`: self-supervised pretraining from a preset or TOML file.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CommonArgs;
use crate::job::{self, Ended};
use crate::run::folder::StartRequest;
use crate::train::Summary;

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
    /// Leave out (and count) image files that fail to decode instead of
    /// stopping at the first one (the key `skip_undecodable`).
    #[arg(long)]
    pub skip_undecodable: bool,
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
    if args.skip_undecodable {
        sets.push("skip_undecodable=true".into());
    }
    let start = StartRequest {
        config: args.config.clone(),
        sets,
        out: args.common.out.clone(),
        resume: args.resume.clone(),
    };
    let run = job::resolve_run(&start)?;
    if args.print_config {
        print!("{}", run.config.to_toml());
        return Ok(());
    }
    let req = job::Request {
        nproc_per_node: args.nproc_per_node,
        ..args.common.job()
    };
    match job::pretrain(&run, &req)? {
        Ended::Trained {
            summary,
            main: true,
        } => report(&summary, &run.out),
        Ended::Trained { main: false, .. } | Ended::Launched => {}
    }
    Ok(())
}

/// What rank 0 says when the run is done.
fn report(s: &Summary, out: &Path) {
    if s.steps == 0 {
        println!(
            "0 steps: wrote the initialisation only (the random-init baseline) to {}",
            s.checkpoint.display()
        );
        return;
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
    print_next(out);
}

/// The commands that read the run in `out`, as the program was called.
fn print_next(out: &Path) {
    let arg0 = std::env::args().next().unwrap_or_default();
    let eqco = match arg0.contains('/') {
        true => arg0.as_str(),
        false => "eqco",
    };
    let o = out.display();
    let ckpt = crate::run::checkpoint::latest_path(&crate::run::checkpoint::dir_of(out));
    let c = ckpt.display();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    println!(
        "\nNext, on {o}:
  {eqco} eval linear --checkpoint {c}    # linear probe -> {o}/eval/linear.json
  {eqco} eval knn --checkpoint {c}       # kNN -> {o}/eval/knn.json
  {eqco} report {o}                       # Markdown table and plots (runs/report/)
  {eqco} export --checkpoint {c} --out {o}/backbone.safetensors
  {eqco} embed --checkpoint {c} --split test --out {o}/embeddings/test.npy
  tensorboard --logdir {} --host 127.0.0.1   # the curves, view pairs and config",
        parent.display()
    );
}
