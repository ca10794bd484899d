//! `eqco bench data`: images per second of the mocov2 two-view pipeline,
//! eqco's loader against torchvision's transforms in a DataLoader, on the
//! same synthetic files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::{positive, PythonArgs};
use crate::data::{synthetic, Loader, LoaderConfig, Normalize, OpenOptions, Recipe, RecipeName};

const DATA_SCRIPT: &str = include_str!("../../../scripts/bench_data.py");

/// `eqco bench data`: images/s of the mocov2 two-view pipeline, eqco's loader vs torchvision + DataLoader.
#[derive(Debug, Args)]
pub struct DataBench {
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

impl DataBench {
    /// Runs the benchmark and prints its table.
    pub fn run(&self) -> anyhow::Result<()> {
        let args = self;
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
            let dataset = Arc::new(crate::data::formats::open(&dir, &OpenOptions::default())?);
            let recipe = Recipe::named(RecipeName::Mocov2, size, 3, Normalize::imagenet())?;
            for &threads in &args.threads {
                let cfg = LoaderConfig {
                    batch_size: batch,
                    threads,
                    ..Default::default()
                };
                let loader = Loader::new(dataset.clone(), recipe.clone(), cfg)?;
                let ours = loader_throughput(&loader, args.epochs)?;
                let theirs = if let Some(python) = args.python.python() {
                    let v = python.run(
                        "bench_data.py",
                        DATA_SCRIPT,
                        &script_args(format, &dir, size, threads, batch, args.epochs),
                    )?;
                    Some(v["img_per_s"].as_f64().context("no img_per_s")?)
                } else {
                    None
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
