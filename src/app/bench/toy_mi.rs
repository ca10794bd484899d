//! `eqco bench toy-mi`: time per training step of one toy-MI run (Table 5's
//! protocol), eqco against the same protocol in PyTorch.

use anyhow::Context;
use clap::Args;

use super::{positive, PythonArgs};
use crate::app::toy::{self, Estimator, RunSpec, ToyConfig};
use crate::base::device::parse_device;

const TOY_MI_SCRIPT: &str = include_str!("../../../scripts/bench_toy_mi.py");

/// `eqco bench toy-mi`: one toy-MI training run (EqCo, true MI 6), eqco vs the same protocol in PyTorch.
#[derive(Debug, Args)]
pub struct ToyMiBench {
    /// Negatives per query (a batch holds K + 1 pairs).
    #[arg(long, default_value_t = 512)]
    pub k: usize,
    /// Training steps timed (all of them, in both implementations).
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Repetitions; the best of them is reported for each implementation.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// CPU threads for both implementations.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// cpu (PyTorch's side always runs on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The PyTorch side.
    #[command(flatten)]
    pub python: PythonArgs,
}

impl ToyMiBench {
    /// Runs the benchmark and prints its table.
    pub fn run(&self) -> anyhow::Result<()> {
        let args = self;
        for (name, v) in [
            ("--threads", args.threads),
            ("--steps", args.steps),
            ("--repeats", args.repeats),
            ("--k", args.k),
        ] {
            positive(name, v)?;
        }
        let device = parse_device(&args.device)?;
        tch::set_num_threads(args.threads as i32);
        let cfg = ToyConfig {
            steps: args.steps,
            eval_batches: 1,
            ..ToyConfig::default()
        };
        let spec = RunSpec {
            estimator: Estimator::EqCo,
            true_mi: 6.0,
            k: args.k,
        };
        println!(
            "bench toy-mi: one training run, K = {} (batch {}), {} steps, {} thread(s), best of {}",
            args.k,
            args.k + 1,
            args.steps,
            args.threads,
            args.repeats
        );
        let mut ours = f64::INFINITY;
        for _ in 0..args.repeats {
            ours = ours.min(toy::run(&cfg, spec, device)?.ms_per_step);
        }
        println!("  eqco                  {ours:8.3} ms/step");
        let Some(python) = args.python.python() else {
            return Ok(());
        };
        let mut theirs = f64::INFINITY;
        let mut torch_version = String::new();
        let script_args = [
            "--k".to_string(),
            args.k.to_string(),
            "--steps".into(),
            args.steps.to_string(),
            "--threads".into(),
            args.threads.to_string(),
        ];
        for _ in 0..args.repeats {
            let v = python.run("bench_toy_mi.py", TOY_MI_SCRIPT, &script_args)?;
            theirs = theirs.min(v["ms_per_step"].as_f64().context("no ms_per_step")?);
            torch_version = v["torch"].as_str().unwrap_or("?").to_string();
        }
        println!("  PyTorch {torch_version:<13} {theirs:8.3} ms/step");
        println!(
            "  ratio eqco / PyTorch  {:8.3}  (< 1 means eqco is faster)",
            ours / theirs
        );
        Ok(())
    }
}
