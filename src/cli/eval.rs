//! `eqco eval knn` and `eqco eval linear`: accuracy of a checkpoint's frozen
//! backbone on the test split of its dataset (or of `--dataset`).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{as_flag, CommonArgs};
use crate::base::device::parse_device;
use crate::base::error::Error;
use crate::base::io::atomic_write;
use crate::eval::{
    evaluate_knn, evaluate_linear, Frozen, KnnReport, KnnSettings, LinearMode, LinearReport,
    LinearSettings,
};

/// The `eqco eval` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Weighted kNN (cosine, votes exp(sim/τ)) on frozen features: the
    /// training split is the memory bank, the test split is scored.
    Knn(KnnArgs),
    /// Linear probe: a linear classifier trained on frozen features (MoCo's
    /// protocol, or the fast mode on features extracted once).
    Linear(LinearArgs),
}

/// What both evaluations read.
#[derive(Debug, Args)]
pub struct Source {
    /// A checkpoint written by `eqco pretrain` (its run folder's config.toml
    /// gives the model and the dataset).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Another dataset folder to evaluate on (format detected).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
}

/// Options of `eqco eval knn`.
#[derive(Debug, Args)]
pub struct KnnArgs {
    /// The checkpoint and dataset.
    #[command(flatten)]
    pub source: Source,
    /// Neighbours.
    #[arg(long, default_value_t = 200)]
    pub k: i64,
    /// Temperature of the vote weights.
    #[arg(long, default_value_t = 0.1)]
    pub tau: f64,
    /// Use at most this many training images as the memory bank (evenly spaced).
    #[arg(long)]
    pub bank: Option<usize>,
    /// Common options (`--out DIR`: write knn.json there instead of into
    /// the checkpoint's run folder, `<run>/eval/`).
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options of `eqco eval linear`.
#[derive(Debug, Args)]
pub struct LinearArgs {
    /// The checkpoint and dataset.
    #[command(flatten)]
    pub source: Source,
    /// `logreg`: a logistic regression fitted to convergence (L-BFGS) on
    /// standardised features of centre-cropped images, its L2 strength
    /// chosen on held-out training images (the epoch, rate, momentum, decay,
    /// batch and milestone flags do not apply); `fast`: MoCo's SGD on
    /// those features extracted once; `moco`: augmented views through the
    /// backbone every epoch (MoCo's protocol).
    #[arg(long, value_enum, default_value = "logreg")]
    pub mode: LinearMode,
    /// Epochs (MoCo: 100).
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Learning rate (MoCo: 30).
    #[arg(long, default_value_t = 30.0)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay (MoCo: 0).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Epochs at which the rate drops ×0.1, comma-separated [default: 60 % and 80 % of --epochs].
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Train the classifier on a random subset of this many training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Common options (`--out DIR`: write linear.json there instead of into
    /// the checkpoint's run folder, `<run>/eval/`).
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs an eval subcommand.
pub fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Knn(args) => knn(args),
        EvalCommand::Linear(args) => linear(args),
    }
}

fn load(source: &Source, common: &CommonArgs) -> anyhow::Result<Frozen> {
    let device = parse_device(&common.device)?;
    let threads = common.threads()?;
    tch::set_num_threads(threads as i32);
    Ok(Frozen::load(
        &source.checkpoint,
        source.dataset.as_deref(),
        device,
        threads,
    )?)
}

/// Where an evaluation's `<name>.json` goes: into `--out` when given, else
/// into the checkpoint's run folder, `<run>/eval/`, where `eqco report <run>`
/// reads it. An evaluation on another `--dataset` without `--out` is written
/// as `<name>-<dataset folder>.json` there, so that it does not stand in for
/// the run's own.
pub fn eval_file(source: &Source, out: Option<&Path>, name: &str) -> PathBuf {
    let file = match &source.dataset {
        None => format!("{name}.json"),
        Some(_) if out.is_some() => format!("{name}.json"),
        Some(d) => {
            let folder = d
                .canonicalize()
                .unwrap_or_else(|_| d.clone())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dataset".into());
            format!("{name}-{folder}.json")
        }
    };
    match out {
        Some(dir) => dir.join(file),
        None => run_dir(&source.checkpoint).join("eval").join(file),
    }
}

/// The run folder of a checkpoint `<run>/checkpoints/<file>`.
fn run_dir(checkpoint: &Path) -> PathBuf {
    checkpoint
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Writes `value` as pretty JSON to `file` (atomically, its folder created).
fn write_json(file: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    atomic_write(file, text.as_bytes())?;
    println!("wrote {}", file.display());
    Ok(())
}

/// The one-line result of a kNN evaluation.
pub fn knn_line(r: &KnnReport) -> String {
    format!(
        "kNN (k = {}, τ = {}) of {} (step {}): top-1 {:.2} %, top-5 {:.2} % on {} test images, bank of {} training images",
        r.settings.k,
        r.settings.tau,
        r.checkpoint.display(),
        r.step,
        100.0 * r.top1,
        100.0 * r.top5,
        r.test,
        r.bank
    )
}

/// The one-line result of a linear probe, naming its mode.
pub fn linear_line(r: &LinearReport) -> String {
    let s = &r.settings;
    let how = match (&r.logreg, s.mode) {
        (Some(l), _) => format!(
            "logistic regression fitted to convergence: L-BFGS, λ = {:e} chosen on {} held-out training images, {} in {} iterations",
            l.lambda,
            l.held_out,
            if l.fit.converged { "converged" } else { "NOT converged" },
            l.fit.iterations
        ),
        (None, mode) => format!(
            "{}; {} epochs, lr {} ×0.1 at {:?}, batch {}",
            match mode {
                LinearMode::Moco => "MoCo protocol: augmented views every epoch",
                _ => "fast mode: features of centre crops extracted once",
            },
            s.epochs,
            s.lr,
            s.milestones(),
            s.batch_size
        ),
    };
    format!(
        "linear probe ({how}) of {} (step {}): top-1 {:.2} %, top-5 {:.2} % on {} test images, trained on {} images in {:.0} s",
        r.checkpoint.display(),
        r.step,
        100.0 * r.top1,
        100.0 * r.top5,
        r.test_images,
        r.train_images,
        r.seconds
    )
}

fn knn(args: KnnArgs) -> anyhow::Result<()> {
    if !(args.tau.is_finite() && args.tau > 0.0) {
        return Err(Error::config("--tau", format!("{} (must be > 0)", args.tau)).into());
    }
    if args.k < 1 {
        return Err(Error::config("--k", format!("{} (must be ≥ 1)", args.k)).into());
    }
    let frozen = load(&args.source, &args.common)?;
    let settings = KnnSettings {
        k: args.k,
        tau: args.tau,
        bank: args.bank,
    };
    let report = evaluate_knn(&frozen, settings).map_err(as_flag)?;
    println!("{}", knn_line(&report));
    let file = eval_file(&args.source, args.common.out.as_deref(), "knn");
    write_json(&file, &report)
}

fn linear(args: LinearArgs) -> anyhow::Result<()> {
    let settings = LinearSettings {
        mode: args.mode,
        epochs: args.epochs,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        batch_size: args.batch_size,
        milestones: args.milestones.clone(),
        max_images: args.max_images,
        seed: args.common.seed.unwrap_or(0),
        threads: args.common.threads()?,
    };
    settings.validate().map_err(as_flag)?;
    let frozen = load(&args.source, &args.common)?;
    let report = evaluate_linear(&frozen, &settings).map_err(as_flag)?;
    println!("{}", linear_line(&report));
    let file = eval_file(&args.source, args.common.out.as_deref(), "linear");
    write_json(&file, &report)
}
