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
use crate::train::PretrainConfig;

const TOY_MI_SCRIPT: &str = include_str!("../../scripts/bench_toy_mi.py");
const DATA_SCRIPT: &str = include_str!("../../scripts/bench_data.py");
const TRAIN_SCRIPT: &str = include_str!("../../scripts/bench_train.py");

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time per training step of one toy-MI run, eqco vs the same protocol in PyTorch.
    #[command(name = "toy-mi")]
    ToyMi(BenchToyMiArgs),
    /// Images/s of the mocov2 two-view pipeline, eqco's loader vs torchvision + DataLoader.
    Data(BenchDataArgs),
    /// Images/s of training steps for each method, eqco vs the same in PyTorch.
    Train(BenchTrainArgs),
}

/// Options of `eqco bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Methods to time.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "simo,mocov2,simclr,mocov1"
    )]
    pub methods: Vec<String>,
    /// Models: `resnet18-32` (small stem, 32×32, N = 256) and/or
    /// `resnet50-224` (ImageNet stem, 224×224, N = 64).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet18-32,resnet50-224"
    )]
    pub models: Vec<String>,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Override the batch size N of every model (a smoke test).
    #[arg(long)]
    pub batch: Option<usize>,
    /// CPU threads for both implementations [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N (both implementations).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precisions to time: fp32, and bf16 (CUDA autocast, GPU only) [default: fp32; fp32,bf16 on a GPU].
    #[arg(long, value_delimiter = ',')]
    pub precision: Option<Vec<String>>,
    /// The PyTorch side.
    #[command(flatten)]
    pub python: PythonArgs,
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
        BenchCommand::Train(args) => train(args),
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

/// The configuration `eqco bench train` times for a method and model spec:
/// `(config, image side, PyTorch script arguments)`.
fn bench_config(
    method: &str,
    model: &str,
    batch: Option<usize>,
) -> anyhow::Result<(PretrainConfig, u32, Vec<String>)> {
    let (backbone, stem, size, n) = match model {
        "resnet18-32" => ("resnet18", "small", 32, 256),
        "resnet50-224" => ("resnet50", "imagenet", 224, 64),
        other => {
            return Err(crate::Error::config(
                "--models",
                format!("'{other}' (resnet18-32 or resnet50-224)"),
            )
            .into())
        }
    };
    if !["simo", "mocov1", "mocov2", "simclr"].contains(&method) {
        return Err(crate::Error::config(
            "--methods",
            format!("'{method}' (simo, mocov1, mocov2, simclr)"),
        )
        .into());
    }
    let n = batch.unwrap_or(n);
    let groups = (n / 32).max(1);
    let mut sets = vec![
        format!("backbone={backbone}"),
        format!("stem={stem}"),
        format!("batch_size={n}"),
        "width=1.0".into(),
        "channels=3".into(),
        format!("image_size={size}"),
        "queue_size=4096".into(),
        format!("shuffle_bn_groups={groups}"),
    ];
    if method == "simo" {
        sets.push(format!("k_negatives={}", n - 1));
    }
    let cfg = PretrainConfig::load(Some(method), &sets)?;
    let mut script = vec![
        "--method".to_string(),
        method.to_string(),
        "--arch".into(),
        backbone.into(),
        "--size".into(),
        size.to_string(),
        "--batch".into(),
        n.to_string(),
        "--queue".into(),
        "4096".into(),
        "--groups".into(),
        groups.to_string(),
    ];
    if stem == "small" {
        script.push("--small-stem".into());
    }
    Ok((cfg, size, script))
}

/// Waits for a GPU's queued work (timing is otherwise of launches only).
fn sync(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Images (queries) per second of `steps` training steps on random images.
fn time_steps(
    cfg: &PretrainConfig,
    size: u32,
    device: tch::Device,
    bf16: bool,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<f64> {
    let mut method = crate::method::build(cfg, 3, 10, device)?;
    let mut sgd = crate::train::optim::Sgd::new(method.query(), cfg.momentum, cfg.weight_decay);
    let n = cfg.batch_size as i64;
    let s = size as i64;
    let batch = crate::data::TwoViewBatch {
        view1: tch::Tensor::randn([n, 3, s, s], (tch::Kind::Float, device)),
        view2: tch::Tensor::randn([n, 3, s, s], (tch::Kind::Float, device)),
        indices: tch::Tensor::arange(n, (tch::Kind::Int64, device)),
        labels: None,
    };
    let mut run = |step: u64| -> anyhow::Result<()> {
        let out = crate::device::autocast_bf16(bf16, device, || method.forward(&batch, step))?;
        sgd.zero_grad();
        out.loss.backward();
        sgd.step(0.03);
        Ok(())
    };
    for i in 0..warmup {
        run(i as u64)?;
    }
    sync(device);
    let start = Instant::now();
    for i in 0..steps {
        run((warmup + i) as u64)?;
    }
    sync(device);
    Ok(cfg.batch_size as f64 * steps as f64 / start.elapsed().as_secs_f64())
}

fn train(args: BenchTrainArgs) -> anyhow::Result<()> {
    positive("--steps", args.steps)?;
    let device = parse_device(&args.device)?;
    let threads = match args.threads {
        Some(t) => {
            positive("--threads", t)?;
            t
        }
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    tch::set_num_threads(threads as i32);
    println!(
        "bench train: {} warm-up + {} timed steps on random images, {threads} thread(s), {:?}",
        args.warmup, args.steps, device
    );
    println!(
        "  {:<14} {:<8} {:<5} {:>5}  {:>10}  {:>10}  {:>6}",
        "model", "method", "prec", "N", "eqco img/s", "PyTorch", "ratio"
    );
    let precisions = args.precision.clone().unwrap_or_else(|| {
        if device.is_cuda() {
            vec!["fp32".into(), "bf16".into()]
        } else {
            vec!["fp32".into()]
        }
    });
    for p in &precisions {
        match p.as_str() {
            "fp32" => {}
            "bf16" if device.is_cuda() => {}
            "bf16" => {
                return Err(crate::Error::config(
                    "--precision",
                    "bf16 (CUDA autocast) needs --device cuda",
                )
                .into())
            }
            other => {
                return Err(crate::Error::config(
                    "--precision",
                    format!("'{other}' (fp32 or bf16)"),
                )
                .into())
            }
        }
    }
    for model in &args.models {
        for method in &args.methods {
            for precision in &precisions {
                let bf16 = precision == "bf16";
                let (cfg, size, mut script) = bench_config(method, model, args.batch)?;
                let ours = time_steps(&cfg, size, device, bf16, args.warmup, args.steps)?;
                let theirs = if args.python.no_python {
                    None
                } else {
                    script.extend([
                        "--steps".to_string(),
                        args.steps.to_string(),
                        "--warmup".into(),
                        args.warmup.to_string(),
                        "--threads".into(),
                        threads.to_string(),
                        "--device".into(),
                        match device {
                            tch::Device::Cuda(i) => format!("cuda:{i}"),
                            _ => "cpu".into(),
                        },
                    ]);
                    if bf16 {
                        script.push("--bf16".into());
                    }
                    let v = args.python.run("bench_train.py", TRAIN_SCRIPT, &script)?;
                    Some(v["img_per_s"].as_f64().context("no img_per_s")?)
                };
                let (t, r) = match theirs {
                    Some(t) => (format!("{t:10.1}"), format!("{:6.2}", ours / t)),
                    None => (format!("{:>10}", "-"), format!("{:>6}", "-")),
                };
                println!(
                    "  {model:<14} {method:<8} {precision:<5} {:>5}  {ours:10.1}  {t}  {r}",
                    cfg.batch_size
                );
            }
        }
    }
    println!("  (ratio = eqco / PyTorch; > 1 means eqco is faster)");
    Ok(())
}
