//! The pretraining loop: data → method → loss → SGD, with metrics every
//! step, checkpoints, exact resume, a progress bar and plots at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::Device;

use super::checkpoint::{self, Position};
use super::config::PretrainConfig;
use super::metrics::{tail_mean, MetricsWriter, StepMetrics};
use super::optim::Sgd;
use super::schedule::learning_rate;
use crate::data::{Dataset, Format, Loader, LoaderConfig, Normalize, OpenOptions, Recipe};
use crate::device::Compute;
use crate::error::{Error, Result};
use crate::eval::{extract, knn_accuracy};
use crate::io::atomic_write;
use crate::method::{self, shared::load_named, shared::named};
use crate::seed::derive;

/// How and where a run goes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Continue from `out/checkpoints/latest.safetensors`.
    pub resume: bool,
    /// Where the model runs.
    pub device: Device,
    /// CPU threads for libtorch (and, unless `loader_threads` is set, for loading).
    pub threads: usize,
    /// Show a progress bar (else a line every few steps when not on a terminal).
    pub progress: bool,
}

/// `summary.json`: the final figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The framework.
    pub method: String,
    /// Negatives per query.
    pub k: usize,
    /// EqCo's α, if on.
    pub alpha: Option<f64>,
    /// The learning rate after the linear scaling rule.
    pub lr_scaled: f64,
    /// Optimizer steps done.
    pub steps: u64,
    /// Epochs completed.
    pub epochs: u64,
    /// Images trained on per epoch.
    pub images: usize,
    /// The last step's loss.
    pub final_loss: f64,
    /// The last step's MI bound.
    pub final_mi_bound: f64,
    /// Mean MI bound over the last 10 % of steps.
    pub mi_bound_last10pct: f64,
    /// Mean ‖∂L/∂q‖ over the last 10 % of steps.
    pub grad_norm_q_last10pct: f64,
    /// Mean images/s over the run.
    pub img_per_s: f64,
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// The share of the training loop's time spent waiting for the loader
    /// (0 when batches were always ready).
    pub data_wait_share: f64,
    /// The precision used, and why (`bf16 (auto: CPU has avx512_bf16)`).
    pub precision: String,
    /// The memory format of images and convolution weights.
    pub memory_format: crate::device::MemoryFormat,
    /// The last checkpoint.
    pub checkpoint: PathBuf,
}

/// Seed stream of the image subset.
const SUBSET: u64 = 21;

/// Opens the configured dataset.
pub fn open_dataset(cfg: &PretrainConfig) -> Result<Dataset> {
    let path = cfg.data_path()?;
    let opts = OpenOptions {
        split: cfg.split,
        ..Default::default()
    };
    let format = match cfg.dataset.as_str() {
        "fashion-mnist" | "idx" => Some(Format::Idx),
        "cifar10" => Some(Format::Cifar10),
        "cifar100" => Some(Format::Cifar100),
        "stl10" => Some(Format::Stl10),
        "imagefolder" => Some(Format::ImageFolder),
        _ => None,
    };
    match format {
        Some(f) => {
            crate::data::formats::detect(&path)?; // Names a missing folder clearly.
            Dataset::open_as(&path, f, &opts)
        }
        None => Dataset::open(&path, &opts),
    }
}

/// The recipe `name` at the run's view size and channels (the images' own
/// unless configured), normalised with the dataset's statistics.
pub fn recipe_for(
    cfg: &PretrainConfig,
    dataset: &Dataset,
    name: crate::data::RecipeName,
) -> Result<Recipe> {
    let shape = dataset.image_shape();
    let channels = cfg.channels.unwrap_or_else(|| shape.map_or(3, |s| s.2));
    let size = cfg
        .image_size
        .unwrap_or_else(|| shape.map_or(224, |(w, h, _)| w.min(h)));
    Recipe::named(
        name,
        size,
        channels,
        Normalize::for_dataset(dataset, channels),
    )
}

/// The images a run trains on: all, or a seeded random subset of `max_images`.
pub fn training_images(cfg: &PretrainConfig, n: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    if let Some(m) = cfg.max_images.filter(|&m| m < n) {
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(derive(cfg.seed, &[SUBSET])));
        all.truncate(m);
        all.sort_unstable();
    }
    all
}

/// Runs (or resumes) a pretraining run; returns its summary.
pub fn pretrain(cfg: &PretrainConfig, opts: &TrainOptions) -> Result<Summary> {
    let start = Instant::now();
    let (compute, precision, warning) =
        Compute::resolve(cfg.precision, cfg.memory_format, opts.device);
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let out = &opts.out;
    crate::io::create_dir(out)?;
    let ckpt_dir = out.join("checkpoints");
    tch::set_num_threads(opts.threads as i32);

    let dataset = Arc::new(open_dataset(cfg)?);
    let recipe = recipe_for(cfg, &dataset, cfg.augment)?;
    let (size, channels) = (recipe.size(), recipe.channels);
    let images = training_images(cfg, dataset.len());
    let n_images = images.len();
    let loader = Loader::with_images(
        dataset.clone(),
        recipe,
        LoaderConfig {
            batch_size: cfg.batch_size,
            threads: cfg.loader_threads.unwrap_or(opts.threads),
            seed: cfg.seed,
            device: opts.device,
            channels_last: compute.channels_last,
            ..Default::default()
        },
        images,
    )?;
    let steps_per_epoch = loader.batches_per_epoch();
    let monitor = if cfg.knn_every > 0 {
        Some(KnnMonitor::new(
            cfg,
            &dataset,
            loader.recipe(),
            loader.images(),
        )?)
    } else {
        None
    };
    let total_steps = (cfg.epochs * steps_per_epoch).min(cfg.max_steps.unwrap_or(usize::MAX));

    let mut method = method::build(cfg, channels, dataset.classes.len(), compute)?;
    let mut sgd = Sgd::new(method.query(), cfg.momentum, cfg.weight_decay);
    let mut pos = Position {
        step: 0,
        epoch: 0,
        batch: 0,
    };
    if opts.resume {
        let latest = checkpoint::latest_path(&ckpt_dir);
        let (state, p) = checkpoint::load(&latest)?;
        let mut restore = || -> Result<()> {
            load_named("query.", method.query(), &state)?;
            method.load_state(&state)?;
            sgd.load_state(&state)
        };
        restore().map_err(|e| Error::Data {
            path: latest.clone(),
            message: format!("does not fit this configuration: {e}"),
        })?;
        pos = p;
        eprintln!(
            "pretrain: resuming {} at step {} (epoch {}, batch {})",
            out.display(),
            pos.step,
            pos.epoch,
            pos.batch
        );
    }
    atomic_write(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let mut metrics =
        MetricsWriter::open(&out.join("metrics.jsonl"), opts.resume.then_some(pos.step))?;

    let k = cfg.k();
    eprintln!(
        "pretrain: {:?} on {} images ({}×{}×{}), {} {}×{}, {}, N = {}, lr = {} × {}/256 = {:.4}, {} steps, {:?}",
        cfg.method,
        n_images,
        size,
        size,
        channels,
        cfg.backbone,
        cfg.width,
        match cfg.stem {
            crate::model::Stem::Small => "small stem",
            crate::model::Stem::Imagenet => "imagenet stem",
        },
        match (cfg.method, cfg.alpha) {
            (super::config::MethodName::Supervised, _) => "cross-entropy on the labels".to_string(),
            (_, None) => format!("K = {k}, InfoNCE"),
            (_, Some(a)) => format!("K = {k}, EqCo α = {a}"),
        },
        cfg.batch_size,
        cfg.lr,
        cfg.batch_size,
        cfg.scaled_lr(),
        total_steps,
        opts.device,
    );
    eprintln!(
        "precision: {precision}; memory format: {}",
        if compute.channels_last {
            "channels-last"
        } else {
            "contiguous (NCHW)"
        }
    );

    let bar = if opts.progress {
        ProgressBar::new(total_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {elapsed_precise} < {eta_precise}  {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(pos.step);
    let report_every = (total_steps / 20).max(1) as u64;

    let save = |method: &dyn method::Method, sgd: &Sgd, pos: Position| -> Result<PathBuf> {
        let mut tensors = named("query.", method.query());
        tensors.extend(method.state());
        tensors.extend(sgd.state());
        checkpoint::save(&ckpt_dir, pos, tensors)
    };

    let mut last_ckpt = checkpoint::latest_path(&ckpt_dir);
    // Throughput of this invocation's steps (a resumed run's earlier ones excluded).
    let (mut img_per_s_sum, mut steps_run) = (0.0, 0u64);
    // Time the training loop spent waiting for the loader.
    let mut data_wait = Duration::ZERO;
    let loop_start = Instant::now();
    let mut tick = Instant::now();
    'epochs: for epoch in pos.epoch..cfg.epochs as u64 {
        let first = if epoch == pos.epoch {
            pos.batch as usize
        } else {
            0
        };
        let mut batches = loader.epoch_from(epoch, first);
        for b in 0.. {
            let Some(batch) = batches.next() else {
                data_wait += batches.waited();
                break;
            };
            if pos.step as usize >= total_steps {
                data_wait += batches.waited();
                break 'epochs;
            }
            let batch = batch?;
            let lr = learning_rate(cfg, pos.step as usize, steps_per_epoch);
            let out = method.forward(&batch, pos.step)?;
            let loss = out.loss.double_value(&[]);
            if !loss.is_finite() {
                return Err(Error::Numerical(format!(
                    "the loss is {loss} at step {} (epoch {epoch}, lr {lr:.4}); the last checkpoint is {}; try a lower lr or a higher tau",
                    pos.step + 1,
                    last_ckpt.display()
                )));
            }
            sgd.zero_grad();
            out.loss.backward();
            sgd.step(lr);
            pos = Position {
                step: pos.step + 1,
                epoch,
                batch: (first + b + 1) as u64,
            };
            let epoch_done = first + b + 1 == steps_per_epoch;
            let knn_top1 = match &monitor {
                Some(mon) if epoch_done && (epoch + 1) % cfg.knn_every as u64 == 0 => {
                    Some(mon.top1(method.backbone(), compute)?)
                }
                _ => None,
            };
            let now = Instant::now();
            let m = StepMetrics {
                step: pos.step,
                epoch,
                loss,
                mi_bound: out.mi_bound,
                grad_norm_q: out.grad_norm_q,
                lr,
                img_per_s: cfg.batch_size as f64 / now.duration_since(tick).as_secs_f64(),
                k: k as u64,
                knn_top1,
            };
            tick = now;
            metrics.write(&m)?;
            bar.set_position(pos.step);
            bar.set_message(format!(
                "loss {:.3}  MI bound {:.3}  ‖∂L/∂q‖ {:.2}  lr {:.4}  {:.0} img/s",
                m.loss, m.mi_bound, m.grad_norm_q, m.lr, m.img_per_s
            ));
            if let Some(acc) = knn_top1 {
                let line = format!("epoch {epoch}: kNN top-1 {:.2} %", 100.0 * acc);
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
            if !opts.progress && (pos.step % report_every == 0 || pos.step as usize == total_steps)
            {
                eprintln!(
                    "step {}/{} epoch {epoch}: loss {:.4}  MI bound {:.4}  grad_norm_q {:.3}  lr {:.5}  {:.0} img/s",
                    pos.step, total_steps, m.loss, m.mi_bound, m.grad_norm_q, m.lr, m.img_per_s
                );
            }
            img_per_s_sum += m.img_per_s;
            steps_run += 1;
            if cfg.checkpoint_every > 0 && pos.step % cfg.checkpoint_every as u64 == 0 {
                last_ckpt = save(method.as_ref(), &sgd, pos)?;
            }
        }
        // The epoch is complete: continue with the next one.
        pos = Position {
            step: pos.step,
            epoch: epoch + 1,
            batch: 0,
        };
        last_ckpt = save(method.as_ref(), &sgd, pos)?;
    }
    if !checkpoint::step_path(&ckpt_dir, pos.step).is_file() {
        last_ckpt = save(method.as_ref(), &sgd, pos)?;
    }
    bar.finish_and_clear();
    let loop_seconds = loop_start.elapsed().as_secs_f64();

    let all = super::metrics::read(&out.join("metrics.jsonl"))?;
    super::plots::write(&out.join("plots"), &all)?;
    let last = all.last();
    let supervised = cfg.method == super::config::MethodName::Supervised;
    let summary = Summary {
        method: format!("{:?}", cfg.method).to_lowercase(),
        k,
        alpha: cfg.alpha.filter(|_| !supervised),
        lr_scaled: cfg.scaled_lr(),
        steps: pos.step,
        epochs: pos.epoch,
        images: n_images,
        final_loss: last.map_or(f64::NAN, |m| m.loss),
        final_mi_bound: last.map_or(f64::NAN, |m| m.mi_bound),
        mi_bound_last10pct: tail_mean(&all, |m| m.mi_bound),
        grad_norm_q_last10pct: tail_mean(&all, |m| m.grad_norm_q),
        img_per_s: if steps_run == 0 {
            0.0
        } else {
            img_per_s_sum / steps_run as f64
        },
        wall_seconds: start.elapsed().as_secs_f64(),
        data_wait_share: if loop_seconds > 0.0 {
            data_wait.as_secs_f64() / loop_seconds
        } else {
            0.0
        },
        precision: precision.clone(),
        memory_format: cfg.memory_format,
        checkpoint: last_ckpt,
    };
    let text = serde_json::to_string_pretty(&summary).expect("plain data");
    atomic_write(&out.join("summary.json"), text.as_bytes())?;
    Ok(summary)
}

/// The online kNN monitor: a fixed bank of training images and the test split.
struct KnnMonitor {
    train: Arc<Dataset>,
    test: Dataset,
    bank: Vec<usize>,
    recipe: Recipe,
    classes: i64,
    k: i64,
    tau: f64,
}

impl KnnMonitor {
    fn new(
        cfg: &PretrainConfig,
        train: &Arc<Dataset>,
        train_recipe: &Recipe,
        images: &[usize],
    ) -> Result<KnnMonitor> {
        let test_cfg = PretrainConfig {
            split: crate::data::Split::Test,
            ..cfg.clone()
        };
        let test = open_dataset(&test_cfg)?;
        if !train.has_labels() || !test.has_labels() {
            return Err(Error::config(
                "knn_every",
                "the kNN monitor needs labelled train and test splits; this dataset has none (set knn_every = 0)",
            ));
        }
        let recipe = Recipe::named(
            crate::data::RecipeName::Eval,
            train_recipe.size(),
            train_recipe.channels,
            train_recipe.normalize.clone(),
        )?;
        let step = images.len().div_ceil(cfg.knn_bank).max(1);
        Ok(KnnMonitor {
            train: train.clone(),
            test,
            bank: images.iter().copied().step_by(step).collect(),
            recipe,
            classes: train.classes.len() as i64,
            k: cfg.knn_k,
            tau: cfg.knn_tau,
        })
    }

    /// Top-1 kNN accuracy of the current backbone on the test split.
    fn top1(&self, backbone: &crate::model::ResNet, compute: Compute) -> Result<f64> {
        let (bank, bank_labels) = extract(
            backbone,
            &self.train,
            &self.recipe,
            &self.bank,
            256,
            compute,
        )?;
        let all: Vec<usize> = (0..self.test.len()).collect();
        let (test, test_labels) = extract(backbone, &self.test, &self.recipe, &all, 256, compute)?;
        Ok(knn_accuracy(
            &bank,
            &bank_labels,
            &test,
            &test_labels,
            self.classes,
            self.k,
            self.tau,
        )?
        .top1)
    }
}

/// Reads a run's resolved configuration (`<run>/config.toml`) with `sets`
/// applied; a missing file is an error naming it.
pub fn run_config(run: &Path, sets: &[String]) -> Result<PretrainConfig> {
    let path = run.join("config.toml");
    if !path.is_file() {
        return Err(Error::Data {
            path,
            message: "missing: is this a run folder written by `eqco pretrain`?".into(),
        });
    }
    PretrainConfig::load(Some(path.to_str().unwrap_or_default()), sets)
}
