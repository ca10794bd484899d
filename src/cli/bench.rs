//! `eqco bench …`: benchmarks that print figures and ratios against PyTorch.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::device::parse_device;
use crate::toy::{self, Estimator, RunSpec, ToyConfig};

/// The PyTorch side of `eqco bench toy-mi`, compiled in so the benchmark runs
/// from any folder. The same file is `scripts/bench_toy_mi.py` in the repo.
const TOY_MI_SCRIPT: &str = include_str!("../../scripts/bench_toy_mi.py");

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time per training step of one toy-MI run, eqco vs the same protocol in PyTorch.
    #[command(name = "toy-mi")]
    ToyMi(BenchToyMiArgs),
}

/// Options of `eqco bench toy-mi`.
#[derive(Debug, Args)]
pub struct BenchToyMiArgs {
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
    /// Python with torch for the PyTorch side [default: $VIRTUAL_ENV/bin/python, else .venv/bin/python, else python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch side.
    #[arg(long)]
    pub no_python: bool,
    /// cpu (PyTorch's side always runs on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs a benchmark.
pub fn run(which: BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::ToyMi(args) => toy_mi(args),
    }
}

fn default_python() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python"));
    let local = PathBuf::from(".venv/bin/python");
    venv.filter(|p| p.exists())
        .or_else(|| local.exists().then_some(local))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn toy_mi(args: BenchToyMiArgs) -> anyhow::Result<()> {
    if args.threads == 0 || args.steps == 0 || args.repeats == 0 || args.k == 0 {
        return Err(
            crate::Error::config("--threads/--steps/--repeats/--k", "0 (must be ≥ 1)").into(),
        );
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
    if args.no_python {
        return Ok(());
    }

    let python = args.python.clone().unwrap_or_else(default_python);
    let script = std::env::temp_dir().join(format!("eqco-bench-toy-mi-{}.py", std::process::id()));
    std::fs::write(&script, TOY_MI_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut theirs = f64::INFINITY;
    let mut torch_version = String::new();
    for _ in 0..args.repeats {
        let out = Command::new(&python)
            .arg(&script)
            .args(["--k", &args.k.to_string()])
            .args(["--steps", &args.steps.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .output()
            .with_context(|| {
                format!(
                    "running {} (set --python, or --no-python)",
                    python.display()
                )
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&script);
            anyhow::bail!(
                "the PyTorch script failed under {}: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("parsing the PyTorch script's output {line:?}"))?;
        theirs = theirs.min(v["ms_per_step"].as_f64().context("no ms_per_step")?);
        torch_version = v["torch"].as_str().unwrap_or("?").to_string();
    }
    let _ = std::fs::remove_file(&script);
    println!("  PyTorch {torch_version:<13} {theirs:8.3} ms/step");
    println!(
        "  ratio eqco / PyTorch  {:8.3}  (< 1 means eqco is faster)",
        ours / theirs
    );
    Ok(())
}
