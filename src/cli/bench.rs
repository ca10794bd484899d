//! `eqco bench …`: benchmarks that print figures and ratios against PyTorch.
//!
//! The PyTorch side of each benchmark is a script in `scripts/`, compiled
//! into the binary so that a benchmark runs from any folder; it prints one
//! JSON line that is read back here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::data::{
    synthetic, Dataset, Loader, LoaderConfig, Normalize, OpenOptions, Recipe, RecipeName,
};
use crate::device::parse_device;
use crate::toy::{self, Estimator, RunSpec, ToyConfig};

const TOY_MI_SCRIPT: &str = include_str!("../../scripts/bench_toy_mi.py");
const DATA_SCRIPT: &str = include_str!("../../scripts/bench_data.py");

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time per training step of one toy-MI run, eqco vs the same protocol in PyTorch.
    #[command(name = "toy-mi")]
    ToyMi(BenchToyMiArgs),
    /// Images/s of the mocov2 two-view pipeline, eqco's loader vs torchvision + DataLoader.
    Data(BenchDataArgs),
}

/// Where the PyTorch side runs.
#[derive(Debug, Args)]
pub struct PythonArgs {
    /// Python with torch (and torchvision for `bench data`) [default: $VIRTUAL_ENV/bin/python, else .venv/bin/python, else python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch side.
    #[arg(long)]
    pub no_python: bool,
}

impl PythonArgs {
    fn interpreter(&self) -> PathBuf {
        self.python.clone().unwrap_or_else(|| {
            let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python"));
            let local = PathBuf::from(".venv/bin/python");
            venv.filter(|p| p.exists())
                .or_else(|| local.exists().then_some(local))
                .unwrap_or_else(|| PathBuf::from("python3"))
        })
    }

    /// Runs `script` (its text) with `args` and parses the JSON line it prints.
    fn run(&self, name: &str, script: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
        let python = self.interpreter();
        let dir = tempfile::tempdir().context("creating a temporary folder")?;
        let file = dir.path().join(name);
        std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
        let out = Command::new(&python)
            .arg(&file)
            .args(args)
            .output()
            .with_context(|| {
                format!(
                    "running {} (set --python, or --no-python)",
                    python.display()
                )
            })?;
        if !out.status.success() {
            anyhow::bail!(
                "scripts/{name} failed under {}: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(line.trim())
            .with_context(|| format!("parsing the output of scripts/{name}: {line:?}"))
    }
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
    /// cpu (PyTorch's side always runs on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The PyTorch side.
    #[command(flatten)]
    pub python: PythonArgs,
}

/// Options of `eqco bench data`.
#[derive(Debug, Args)]
pub struct BenchDataArgs {
    /// Synthetic images written for each size (CIFAR-10 binary at 32, 400×300 JPEGs at 224).
    #[arg(long, default_value_t = 1024)]
    pub images: usize,
    /// View sides to measure.
    #[arg(long, value_delimiter = ',', default_value = "32,224")]
    pub sizes: Vec<u32>,
    /// Thread counts to measure (loader workers; torchvision: DataLoader workers, 0 for 1).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Epochs per measurement; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// The PyTorch side.
    #[command(flatten)]
    pub python: PythonArgs,
}

/// Runs a benchmark.
pub fn run(which: BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::ToyMi(args) => toy_mi(args),
        BenchCommand::Data(args) => data(args),
    }
}

fn positive(name: &str, v: usize) -> crate::Result<()> {
    if v == 0 {
        return Err(crate::Error::config(name, "0 (must be ≥ 1)"));
    }
    Ok(())
}

fn toy_mi(args: BenchToyMiArgs) -> anyhow::Result<()> {
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
    if args.python.no_python {
        return Ok(());
    }
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
        let v = args
            .python
            .run("bench_toy_mi.py", TOY_MI_SCRIPT, &script_args)?;
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

/// Images per second over whole epochs of `loader`, the best of `epochs`.
fn loader_throughput(loader: &Loader, epochs: usize) -> anyhow::Result<f64> {
    let mut best = 0f64;
    for e in 0..epochs {
        let start = Instant::now();
        let mut n = 0;
        for batch in loader.epoch(e as u64) {
            n += batch?.view1.size()[0];
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn data(args: BenchDataArgs) -> anyhow::Result<()> {
    positive("--images", args.images)?;
    positive("--epochs", args.epochs)?;
    if let Some(&t) = args.threads.iter().find(|&&t| t == 0) {
        positive("--threads", t)?;
    }
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    println!(
        "bench data: mocov2 two-view pipeline, {} synthetic images per size, best of {} epoch(s)",
        args.images, args.epochs
    );
    println!(
        "  {:>5}  {:>7}  {:>7}  {:>14}  {:>14}  {:>6}",
        "size", "batch", "threads", "eqco img/s", "torchvision", "ratio"
    );
    for &size in &args.sizes {
        let (format, dir, batch): (&str, PathBuf, usize) = if size <= 64 {
            let dir = tmp.path().join(format!("cifar-{size}"));
            synthetic::write_cifar10(&dir, args.images)?;
            ("cifar10", dir, 256)
        } else {
            let dir = tmp.path().join(format!("folder-{size}"));
            synthetic::write_image_folder(&dir, args.images, 400, 300)?;
            ("folder", dir, 64)
        };
        let batch = batch.min(args.images);
        let dataset = Arc::new(Dataset::open(&dir, &OpenOptions::default())?);
        let recipe = Recipe::named(RecipeName::Mocov2, size, 3, Normalize::imagenet())?;
        for &threads in &args.threads {
            let cfg = LoaderConfig {
                batch_size: batch,
                threads,
                ..Default::default()
            };
            let loader = Loader::new(dataset.clone(), recipe.clone(), cfg)?;
            let ours = loader_throughput(&loader, args.epochs)?;
            let theirs = if args.python.no_python {
                None
            } else {
                let v = args.python.run(
                    "bench_data.py",
                    DATA_SCRIPT,
                    &script_args(format, &dir, size, threads, batch, args.epochs),
                )?;
                Some(v["img_per_s"].as_f64().context("no img_per_s")?)
            };
            let (t, r) = match theirs {
                Some(t) => (format!("{t:14.0}"), format!("{:6.2}", ours / t)),
                None => (format!("{:>14}", "-"), format!("{:>6}", "-")),
            };
            println!("  {size:>5}  {batch:>7}  {threads:>7}  {ours:14.0}  {t}  {r}");
        }
    }
    println!("  (ratio = eqco / torchvision; > 1 means eqco is faster)");
    Ok(())
}

fn script_args(
    format: &str,
    dir: &Path,
    size: u32,
    threads: usize,
    batch: usize,
    epochs: usize,
) -> Vec<String> {
    [
        ("--format", format.to_string()),
        ("--path", dir.display().to_string()),
        ("--size", size.to_string()),
        ("--threads", threads.to_string()),
        ("--batch", batch.to_string()),
        ("--epochs", epochs.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}
