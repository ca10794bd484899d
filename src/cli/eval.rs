//! `eqco eval knn`: weighted kNN accuracy of a checkpoint's frozen backbone.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CommonArgs;
use crate::data::{RecipeName, Split};
use crate::device::parse_device;
use crate::error::Error;
use crate::eval::{extract, knn_accuracy};
use crate::io::atomic_write;
use crate::method::{self, shared::load_named};
use crate::train::checkpoint;
use crate::train::trainer::{open_dataset, recipe_for, run_config};
use crate::train::PretrainConfig;

/// The `eqco eval` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Weighted kNN (cosine, votes exp(sim/τ)) on frozen features: the
    /// training split is the memory bank, the test split is scored.
    Knn(KnnArgs),
}

/// Options of `eqco eval knn`.
#[derive(Debug, Args)]
pub struct KnnArgs {
    /// A checkpoint written by `eqco pretrain` (its run folder's config.toml
    /// gives the model and the dataset).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Another dataset folder to evaluate on (format detected).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Neighbours.
    #[arg(long, default_value_t = 200)]
    pub k: i64,
    /// Temperature of the vote weights.
    #[arg(long, default_value_t = 0.1)]
    pub tau: f64,
    /// Use at most this many training images as the memory bank (evenly spaced).
    #[arg(long)]
    pub bank: Option<usize>,
    /// Common options (`--out` also writes knn.json there).
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs an eval subcommand.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Knn(args) => knn(args),
    }
}

fn knn(args: KnnArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.common.device)?;
    tch::set_num_threads(args.common.threads()? as i32);
    let run_dir = args
        .checkpoint
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    // The checkpoint sits in <run>/checkpoints/.
    let mut cfg = run_config(&run_dir, &[])?;
    if let Some(d) = &args.dataset {
        cfg.dataset = "auto".into();
        cfg.data_dir = Some(d.clone());
    }
    let (state, pos) = checkpoint::load(&args.checkpoint)?;
    let train = open_dataset(&PretrainConfig {
        split: Split::Train,
        ..cfg.clone()
    })?;
    let test = open_dataset(&PretrainConfig {
        split: Split::Test,
        ..cfg.clone()
    })?;
    if !train.has_labels() || !test.has_labels() {
        return Err(Error::config(
            "--dataset",
            "kNN evaluation needs labelled train and test splits",
        )
        .into());
    }
    let recipe = recipe_for(&cfg, &train, RecipeName::Eval)?;
    let method = method::build(&cfg, recipe.channels, device)?;
    load_named("query.", method.query(), &state).map_err(|e| Error::Data {
        path: args.checkpoint.clone(),
        message: format!("does not fit the run's configuration: {e}"),
    })?;
    let n = train.len();
    let step = args.bank.map_or(1, |b| n.div_ceil(b.max(1)).max(1));
    let bank: Vec<usize> = (0..n).step_by(step).collect();
    let (bank_f, bank_l) = extract(method.backbone(), &train, &recipe, &bank, 256, device)?;
    let all: Vec<usize> = (0..test.len()).collect();
    let (test_f, test_l) = extract(method.backbone(), &test, &recipe, &all, 256, device)?;
    let acc = knn_accuracy(
        &bank_f,
        &bank_l,
        &test_f,
        &test_l,
        train.classes.len() as i64,
        args.k,
        args.tau,
    )
    .map_err(super::as_flag)?;
    println!(
        "kNN (k = {}, τ = {}) of {} (step {}): top-1 {:.2} %, top-5 {:.2} % on {} test images, bank of {} training images",
        args.k,
        args.tau,
        args.checkpoint.display(),
        pos.step,
        100.0 * acc.top1,
        100.0 * acc.top5,
        test.len(),
        bank.len()
    );
    if let Some(out) = &args.common.out {
        let json = serde_json::json!({
            "checkpoint": args.checkpoint, "step": pos.step, "k": args.k, "tau": args.tau,
            "bank": bank.len(), "test": test.len(), "top1": acc.top1, "top5": acc.top5,
        });
        atomic_write(
            &out.join("knn.json"),
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
    }
    Ok(())
}
