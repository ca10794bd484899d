//! `eqco bench dist`: training steps of a preset with 1, 2, … data-parallel
//! workers on this machine (Gloo on the CPU, NCCL on GPUs), each a real
//! `eqco pretrain --nproc-per-node W` run: the time per step of the global
//! batch, the speed-up over one process, and the shares of a step spent in
//! collectives and waiting for data. Each world size above 1 runs twice:
//! gradients averaged after backward (`grad_overlap = false`) and
//! all-reduced bucket by bucket during backward (`grad_overlap = true`).

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::Args;

use super::positive;
use crate::run::metrics;

/// `eqco bench dist`: step time at several world sizes.
#[derive(Debug, Args)]
pub struct DistBench {
    /// World sizes to time (workers on this machine).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub nproc: Vec<usize>,
    /// The preset (or TOML file) to train.
    #[arg(long, default_value = "fmnist-simo")]
    pub config: String,
    /// Override a key of the preset, e.g. `--set batch_size=128`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Steps run first and not timed.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// cpu or cuda (one GPU per worker).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// One world size's figures.
struct Row {
    nproc: usize,
    /// `grad_overlap`, for more than one process.
    overlap: Option<bool>,
    step_ms: f64,
    img_per_s: f64,
    comm_share: f64,
    data_wait_share: f64,
}

impl DistBench {
    /// Runs the benchmark and prints its table.
    pub fn run(&self) -> anyhow::Result<()> {
        positive("--steps", self.steps)?;
        if let Some(&n) = self.nproc.iter().find(|&&n| n == 0) {
            positive("--nproc", n)?;
        }
        // The configuration is checked here, once, with errors naming its keys.
        let cfg = crate::run::PretrainConfig::load(Some(&self.config), &self.sets)?;
        for &n in &self.nproc {
            cfg.validate_world(n)?;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "bench dist: {} (N = {}, {:?}), {} timed steps after {} warm-up, {}, {cores} cores",
            self.config,
            cfg.optim.batch_size,
            cfg.method.method,
            self.steps,
            self.warmup,
            self.device
        );
        println!(
            "  {:>9}  {:>12}  {:>7}  {:>9}  {:>8}  {:>7}  {:>7}  {:>11}",
            "processes",
            "threads each",
            "overlap",
            "step ms",
            "img/s",
            "speed-up",
            "comm %",
            "data wait %"
        );
        let tmp = tempfile::tempdir().context("creating a temporary folder")?;
        let mut first: Option<f64> = None;
        let runs = self.nproc.iter().flat_map(|&n| {
            let overlaps: &[Option<bool>] = if n > 1 {
                &[Some(false), Some(true)]
            } else {
                &[None]
            };
            overlaps.iter().map(move |&o| (n, o))
        });
        for (n, overlap) in runs {
            let name = match overlap {
                Some(o) => format!("w{n}-overlap-{o}"),
                None => format!("w{n}"),
            };
            let row = self.time(n, overlap, cfg.optim.batch_size, &tmp.path().join(name))?;
            let base = *first.get_or_insert(row.step_ms);
            println!(
                "  {:>9}  {:>12}  {:>7}  {:>9.1}  {:>8.1}  {:>7.2}×  {:>7.1}  {:>11.1}",
                row.nproc,
                if self.device.starts_with("cuda") {
                    "1 GPU".to_string()
                } else {
                    (cores / n).max(1).to_string()
                },
                match row.overlap {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "-",
                },
                row.step_ms,
                row.img_per_s,
                base / row.step_ms,
                100.0 * row.comm_share,
                100.0 * row.data_wait_share
            );
        }
        println!("  (step ms: median wall time of a step of the global batch; comm %: rank 0's time in collectives, with overlap the wait after backward for the all-reduces still running; overlap: grad_overlap)");
        Ok(())
    }

    /// Trains `warmup + steps` steps of a global batch of `batch` images
    /// with `n` workers (and `grad_overlap = overlap` when set) into `out`.
    fn time(
        &self,
        n: usize,
        overlap: Option<bool>,
        batch: usize,
        out: &Path,
    ) -> anyhow::Result<Row> {
        let exe = std::env::current_exe().context("finding the eqco executable")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "pretrain",
            "--config",
            &self.config,
            "--device",
            &self.device,
        ])
        .arg("--out")
        .arg(out)
        .args(["--set", &format!("max_steps={}", self.warmup + self.steps)])
        .args([
            "--set",
            "knn_every=0",
            "--set",
            "checkpoint_every=0",
            "--set",
            "log_every=1",
        ]);
        if let Some(o) = overlap {
            cmd.args(["--set", &format!("grad_overlap={o}")]);
        }
        for s in &self.sets {
            cmd.args(["--set", s]);
        }
        if n > 1 {
            cmd.args(["--nproc-per-node", &n.to_string()]);
        }
        let result = cmd.output().context("running eqco pretrain")?;
        if !result.status.success() {
            anyhow::bail!(
                "eqco pretrain with {n} process(es) failed: {}",
                String::from_utf8_lossy(&result.stderr).trim()
            );
        }
        let lines = metrics::read(&out.join("metrics.jsonl"))?;
        let mut step_ms: Vec<f64> = lines
            .iter()
            .skip(self.warmup)
            .map(|m| 1e3 * batch as f64 / m.img_per_s)
            .collect();
        step_ms.sort_by(f64::total_cmp);
        let median = step_ms.get(step_ms.len() / 2).copied().unwrap_or(f64::NAN);
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("summary.json")).context("reading summary.json")?,
        )?;
        let share = |k: &str| summary[k].as_f64().unwrap_or(f64::NAN);
        Ok(Row {
            nproc: n,
            overlap,
            step_ms: median,
            img_per_s: 1e3 * batch as f64 / median,
            comm_share: share("comm_share"),
            data_wait_share: share("data_wait_share"),
        })
    }
}
