//! The pretraining loop: data → method → loss → SGD, with metrics every
//! step, checkpoints, exact resume, a progress bar and plots at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{Device, Tensor};

use super::pending::{Pending, PendingStep};
use super::schedule::learning_rate;
use crate::data::{Dataset, Loader, LoaderConfig, Recipe};
use crate::device::Compute;
use crate::dist::World;
use crate::error::{Error, Result};
use crate::eval::{extract, knn_accuracy};
use crate::io::atomic_write;
use crate::method::{self, shared::load_named, shared::named};
use crate::optim::Sgd;
use crate::run::checkpoint::{self, Position};
use crate::run::metrics::{tail_mean, MetricsWriter, StepMetrics};
use crate::run::{open_dataset, recipe_for, training_images, MethodName, PretrainConfig};

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
    /// The processes of the job (a world of one unless launched with several).
    pub world: World,
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
    /// How many times the steps' figures were read from the device (once
    /// per `log_every` steps, and before each checkpoint).
    pub device_reads: u64,
    /// Processes of the job (data parallel when more than one).
    pub processes: usize,
    /// The share of the training loop's time spent in collectives
    /// (gradient all-reduce, gathers, synchronised BN; 0 for one process).
    pub comm_share: f64,
    /// The last checkpoint.
    pub checkpoint: PathBuf,
}

/// Gradients are averaged over ranks in flat buckets of at most this size.
const GRADIENT_BUCKET_BYTES: usize = 25 << 20;

/// Runs (or resumes) a pretraining run; returns its summary.
pub fn pretrain(cfg: &PretrainConfig, opts: &TrainOptions) -> Result<Summary> {
    let start = Instant::now();
    let (compute, precision, warning) =
        Compute::resolve(cfg.precision, cfg.memory_format, opts.device);
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    if opts.device.is_cuda() {
        // cuDNN times its algorithms for each new shape and keeps the
        // fastest; the choice can vary between runs, so results are not
        // bit-exact across runs on a GPU (they are not anyway).
        tch::Cuda::cudnn_set_benchmark(cfg.cudnn_benchmark);
    }
    let world = &opts.world;
    cfg.validate_world(world.size)?;
    // Rank 0 alone writes the run's files; every rank reads them.
    let main = world.is_main();
    let out = &opts.out;
    if main {
        crate::io::create_dir(out)?;
    }
    let ckpt_dir = out.join("checkpoints");
    tch::set_num_threads(opts.threads as i32);

    let dataset = Arc::new(open_dataset(cfg)?);
    let recipe = recipe_for(cfg, &dataset, cfg.augment)?;
    let (size, channels) = (recipe.size(), recipe.channels);
    let images = training_images(cfg, dataset.len());
    let n_images = images.len();
    let loader_threads = cfg.loader_threads.unwrap_or(opts.threads);
    let loader = Loader::with_images(
        dataset.clone(),
        recipe,
        LoaderConfig {
            batch_size: cfg.batch_size,
            threads: loader_threads,
            seed: cfg.seed,
            device: opts.device,
            channels_last: compute.channels_last,
            staging_mib: cfg.pinned_memory_mib,
            shard: (world.rank, world.size),
            ..Default::default()
        },
        images,
    )?;
    let steps_per_epoch = loader.batches_per_epoch();
    let monitor = if cfg.knn_every > 0 && main {
        Some(KnnMonitor::new(
            cfg,
            &dataset,
            loader.recipe(),
            loader.images(),
            loader_threads,
        )?)
    } else {
        None
    };
    let total_steps = (cfg.epochs * steps_per_epoch).min(cfg.max_steps.unwrap_or(usize::MAX));

    let mut method = method::build(cfg, channels, dataset.classes.len(), compute, world)?;
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
        if main {
            eprintln!(
                "pretrain: resuming {} at step {} (epoch {}, batch {})",
                out.display(),
                pos.step,
                pos.epoch,
                pos.batch
            );
        }
    }
    if let Some(group) = world.group() {
        // Every rank starts (and resumes) from rank 0's weights, buffers,
        // queue and optimizer state.
        let mut state: Vec<Tensor> = named("query.", method.query())
            .into_iter()
            .chain(method.state())
            .chain(sgd.state())
            .map(|(_, t)| t)
            .collect();
        state.retain(|t| t.dim() > 0);
        group.broadcast_all(&state, 0)?;
    }
    let metrics = if main {
        atomic_write(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        Some(super::events::open_metrics(
            cfg,
            out,
            opts.resume.then_some(pos.step),
            &loader,
        )?)
    } else {
        None
    };

    let k = cfg.k();
    let say = |line: String| {
        if main {
            eprintln!("{line}");
        }
    };
    say(format!(
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
            (MethodName::Supervised, _) => "cross-entropy on the labels".to_string(),
            (_, None) => format!("K = {k}, InfoNCE"),
            (_, Some(a)) => format!("K = {k}, EqCo α = {a}"),
        },
        cfg.batch_size,
        cfg.lr,
        cfg.batch_size,
        cfg.scaled_lr(),
        total_steps,
        opts.device,
    ));
    say(format!(
        "precision: {precision}; memory format: {}",
        if compute.channels_last {
            "channels-last"
        } else {
            "contiguous (NCHW)"
        }
    ));
    if opts.device.is_cuda() {
        say(format!(
            "pinned batch pool: {} (pinned_memory_mib = {}); figures read every {} steps",
            loader.staging_plan(2)?,
            cfg.pinned_memory_mib,
            cfg.log_every(opts.device)
        ));
    }
    if world.size > 1 {
        say(format!(
            "data parallel: {} processes, {} images each per step, BN {:?}",
            world.size,
            cfg.batch_size / world.size,
            cfg.bn()
        ));
    }

    // Rank 0 writes the checkpoint; every rank waits until it is written.
    let save = |method: &dyn method::Method, sgd: &Sgd, pos: Position| -> Result<PathBuf> {
        let path = if main {
            let mut tensors = named("query.", method.query());
            tensors.extend(method.state());
            tensors.extend(sgd.state());
            checkpoint::save(&ckpt_dir, pos, tensors)?
        } else {
            checkpoint::step_path(&ckpt_dir, pos.step)
        };
        world.barrier()?;
        Ok(path)
    };

    let mut record = Record::new(metrics, opts.progress && main, total_steps, pos.step);
    let mut pending = Pending::new(
        cfg.log_every(opts.device),
        cfg.batch_size,
        world.group().cloned(),
    );
    let mut last_ckpt = checkpoint::latest_path(&ckpt_dir);
    // The step of the newest checkpoint: the same on every rank (a look at
    // the file system would race with rank 0 writing it).
    let mut saved = opts.resume.then_some(pos.step);
    // Time the training loop spent waiting for the loader.
    let mut data_wait = Duration::ZERO;
    let loop_start = Instant::now();
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
            world.check()?;
            sgd.zero_grad();
            out.loss
                .f_backward()
                .map_err(|e| match (world.check(), world.group()) {
                    (Err(dist), _) => dist,
                    // Backward's collectives (gather, SyncBN) failed.
                    (Ok(()), Some(g)) => Error::Dist(format!("rank {}: backward: {e}", g.rank)),
                    (Ok(()), None) => Error::from(e),
                })?;
            if let Some(group) = world.group() {
                group.average(&sgd.gradients(), GRADIENT_BUCKET_BYTES)?;
            }
            sgd.step(lr);
            pos = Position {
                step: pos.step + 1,
                epoch,
                batch: (first + b + 1) as u64,
            };
            pending.push(PendingStep {
                step: pos.step,
                epoch,
                lr,
                k: k as u64,
                loss: out.loss.detach(),
                mi_bound_offset: out.mi_bound_offset,
                grad_norm_q: out.grad_norm_q,
                knn_top1: None,
                waited: data_wait + batches.waited(),
            });
            record.bar.set_position(pos.step);
            let epoch_done = first + b + 1 == steps_per_epoch;
            if cfg.knn_every > 0 && epoch_done && (epoch + 1) % cfg.knn_every as u64 == 0 {
                // Rank 0 runs the monitor; the others wait for it.
                if let Some(mon) = &monitor {
                    let acc = mon.top1(method.backbone(), compute)?;
                    if let Some(last) = pending.last_mut() {
                        last.knn_top1 = Some(acc);
                    }
                }
                world.barrier()?;
            }
            let checkpoint_due =
                cfg.checkpoint_every > 0 && pos.step % cfg.checkpoint_every as u64 == 0;
            // Read before a checkpoint, so that none is written after a NaN.
            if pending.is_due() || checkpoint_due {
                record.write(&mut pending, &last_ckpt)?;
            }
            if checkpoint_due {
                last_ckpt = save(method.as_ref(), &sgd, pos)?;
                saved = Some(pos.step);
            }
        }
        // The epoch is complete: continue with the next one.
        pos = Position {
            step: pos.step,
            epoch: epoch + 1,
            batch: 0,
        };
        record.write(&mut pending, &last_ckpt)?;
        last_ckpt = save(method.as_ref(), &sgd, pos)?;
        saved = Some(pos.step);
    }
    record.write(&mut pending, &last_ckpt)?;
    if saved != Some(pos.step) {
        last_ckpt = save(method.as_ref(), &sgd, pos)?;
    }
    record.bar.finish_and_clear();
    let loop_seconds = loop_start.elapsed().as_secs_f64();
    let (img_per_s_sum, steps_run) = (record.img_per_s_sum, record.steps);
    let comm_share = world.comm_seconds() / loop_seconds.max(1e-9);

    // Rank 0 has the whole record (a resumed run's earlier steps too); the
    // others, this invocation's steps.
    let all = if main {
        let all = crate::run::metrics::read(&out.join("metrics.jsonl"))?;
        super::plots::write(&out.join("plots"), &all)?;
        all
    } else {
        std::mem::take(&mut record.lines)
    };
    let last = all.last();
    let supervised = cfg.method == MethodName::Supervised;
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
        device_reads: pending.reads(),
        processes: world.size,
        comm_share,
        checkpoint: last_ckpt,
    };
    if main {
        let text = serde_json::to_string_pretty(&summary).expect("plain data");
        atomic_write(&out.join("summary.json"), text.as_bytes())?;
    }
    world.barrier()?;
    Ok(summary)
}

/// Where the steps' figures go once read: `metrics.jsonl`, the progress bar
/// (or a log line every 5 % of the run), and the run's throughput.
struct Record {
    /// `metrics.jsonl` (rank 0 only).
    metrics: Option<MetricsWriter>,
    /// The lines of the ranks that write no file.
    lines: Vec<StepMetrics>,
    bar: ProgressBar,
    progress: bool,
    total_steps: usize,
    report_every: u64,
    /// The sum of img/s over this invocation's steps, and their number.
    img_per_s_sum: f64,
    steps: u64,
}

impl Record {
    fn new(
        metrics: Option<MetricsWriter>,
        progress: bool,
        total_steps: usize,
        step: u64,
    ) -> Record {
        let bar = if progress {
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
        bar.set_position(step);
        Record {
            metrics,
            lines: Vec::new(),
            bar,
            progress,
            total_steps,
            report_every: (total_steps / 20).max(1) as u64,
            img_per_s_sum: 0.0,
            steps: 0,
        }
    }

    /// Reads the pending steps and records them; a non-finite loss ends the
    /// run with an error naming its step and the last checkpoint.
    fn write(&mut self, pending: &mut Pending, last_ckpt: &Path) -> Result<()> {
        let (lines, bad) = pending.read()?;
        for m in &lines {
            match &mut self.metrics {
                Some(file) => file.write(m)?,
                None => self.lines.push(m.clone()),
            }
            self.bar.set_message(format!(
                "loss {:.3}  MI bound {:.3}  ‖∂L/∂q‖ {:.2}  lr {:.4}  {:.0} img/s",
                m.loss, m.mi_bound, m.grad_norm_q, m.lr, m.img_per_s
            ));
            if let Some(acc) = m.knn_top1 {
                let line = format!("epoch {}: kNN top-1 {:.2} %", m.epoch, 100.0 * acc);
                if self.bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    self.bar.println(line);
                }
            }
            if !self.progress
                && self.metrics.is_some()
                && (m.step % self.report_every == 0 || m.step as usize == self.total_steps)
            {
                eprintln!(
                    "step {}/{} epoch {}: loss {:.4}  MI bound {:.4}  grad_norm_q {:.3}  lr {:.5}  {:.0} img/s",
                    m.step, self.total_steps, m.epoch, m.loss, m.mi_bound, m.grad_norm_q, m.lr, m.img_per_s
                );
            }
            self.img_per_s_sum += m.img_per_s;
            self.steps += 1;
        }
        match bad {
            None => Ok(()),
            Some(b) => Err(Error::Numerical(format!(
                "the loss is {} at step {} (epoch {}, lr {:.4}); the last checkpoint is {}; try a lower lr or a higher tau",
                b.loss,
                b.step,
                b.epoch,
                b.lr,
                last_ckpt.display()
            ))),
        }
    }
}

/// The online kNN monitor: a fixed bank of training images and the test split.
struct KnnMonitor {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    bank: Vec<usize>,
    recipe: Recipe,
    classes: i64,
    k: i64,
    tau: f64,
    threads: usize,
}

impl KnnMonitor {
    fn new(
        cfg: &PretrainConfig,
        train: &Arc<Dataset>,
        train_recipe: &Recipe,
        images: &[usize],
        threads: usize,
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
            test: Arc::new(test),
            bank: images.iter().copied().step_by(step).collect(),
            recipe,
            classes: train.classes.len() as i64,
            k: cfg.knn_k,
            tau: cfg.knn_tau,
            threads,
        })
    }

    /// Top-1 kNN accuracy of the current backbone on the test split.
    fn top1(&self, backbone: &crate::model::ResNet, compute: Compute) -> Result<f64> {
        let extract = |dataset, images: &[usize]| {
            extract(
                backbone,
                dataset,
                &self.recipe,
                images,
                compute,
                self.threads,
            )
        };
        let (bank, bank_labels) = extract(&self.train, &self.bank)?;
        let all: Vec<usize> = (0..self.test.len()).collect();
        let (test, test_labels) = extract(&self.test, &all)?;
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
