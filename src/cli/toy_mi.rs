//! `eqco toy-mi`: the paper's Table 5 at its full protocol, or a quick version.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CommonArgs;
use crate::app::toy::{format_table, grid, run_all, write_outputs, ToyConfig};
use crate::base::device::parse_device;
use crate::base::io::create_dir;

/// Options of `eqco toy-mi`. Defaults are the paper's protocol.
#[derive(Debug, Args)]
pub struct ToyMiArgs {
    /// Training steps per run [default: 5000; --quick: 300].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Fresh batches the bound is averaged over [default: 1000; --quick: 50].
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// True mutual informations in nats [default: 2,4,6,8,10; --quick: 2,6].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NATS",
        allow_negative_numbers = true
    )]
    pub mi: Option<Vec<f64>>,
    /// Numbers of negatives K [default: 64,128,256,512; --quick: 16,64].
    #[arg(long, value_delimiter = ',')]
    pub k: Option<Vec<usize>>,
    /// EqCo's α, the number of negatives to mimic.
    #[arg(long, default_value_t = 512.0, allow_negative_numbers = true)]
    pub alpha: f64,
    /// A protocol small enough for a smoke test (seconds, not minutes).
    #[arg(long)]
    pub quick: bool,
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl ToyMiArgs {
    /// The configuration and grid these options ask for.
    pub fn resolve(&self) -> crate::Result<(ToyConfig, Vec<f64>, Vec<usize>)> {
        let q = self.quick;
        let cfg = ToyConfig {
            steps: self.steps.unwrap_or(if q { 300 } else { 5000 }),
            eval_batches: self.eval_batches.unwrap_or(if q { 50 } else { 1000 }),
            alpha: self.alpha,
            seed: self.common.seed.unwrap_or(0),
            ..ToyConfig::default()
        };
        cfg.validate().map_err(super::as_flag)?;
        let mis = self.mi.clone().unwrap_or_else(|| {
            if q {
                vec![2.0, 6.0]
            } else {
                vec![2.0, 4.0, 6.0, 8.0, 10.0]
            }
        });
        let ks = self.k.clone().unwrap_or_else(|| {
            if q {
                vec![16, 64]
            } else {
                vec![64, 128, 256, 512]
            }
        });
        if let Some(bad) = mis.iter().find(|m| !(m.is_finite() && **m >= 0.0)) {
            return Err(crate::Error::config(
                "--mi",
                format!("{bad} (must be ≥ 0 nats)"),
            ));
        }
        if ks.contains(&0) {
            return Err(crate::Error::config("--k", "0 (every K must be ≥ 1)"));
        }
        if mis.is_empty() || ks.is_empty() {
            return Err(crate::Error::config("--mi/--k", "empty list"));
        }
        Ok((cfg, mis, ks))
    }

    fn out_dir(&self) -> PathBuf {
        self.common
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/toy-mi"))
    }
}

/// Runs the grid in parallel with a progress bar, prints the table beside the
/// paper's and writes `table5.{csv,json,png}`.
pub fn run(args: ToyMiArgs) -> anyhow::Result<()> {
    let (cfg, mis, ks) = args.resolve()?;
    let device = parse_device(&args.common.device)?;
    let threads = args.common.threads()?;
    let out = args.out_dir();
    create_dir(&out)?;
    let specs = grid(&mis, &ks);
    eprintln!(
        "toy-mi: {} runs ({} MI × {} K × InfoNCE/EqCo α={}), {} steps + {} eval batches each, {} thread(s), {:?}",
        specs.len(),
        mis.len(),
        ks.len(),
        cfg.alpha,
        cfg.steps,
        cfg.eval_batches,
        threads,
        device
    );
    let bar = ProgressBar::new(specs.len() as u64).with_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} runs  {elapsed_precise} elapsed, ETA {eta}  {msg}",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let results = run_all(&cfg, &specs, threads, device, |r| {
        let done = format!(
            "{} MI={} K={} → {:.2}",
            r.spec.estimator.label(),
            r.spec.true_mi,
            r.spec.k,
            r.estimate
        );
        bar.inc(1);
        if bar.is_hidden() {
            // No terminal (a log file, CI): one line per finished run instead.
            eprintln!(
                "[{}/{}] {done} ({:.0} s)",
                bar.position(),
                specs.len(),
                start.elapsed().as_secs_f64()
            );
        } else {
            bar.set_message(format!("last: {done}"));
        }
    })?;
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    println!("{}", format_table(&results, cfg.alpha));
    write_outputs(&out, &cfg, &results, threads, wall)?;
    let (n, dir) = (results.len(), out.display());
    println!(
        "{n} runs in {wall:.1} s on {threads} thread(s); wrote {dir}/table5.csv, {dir}/table5.json, {dir}/table5.png"
    );
    Ok(())
}
