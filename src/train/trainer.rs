//! The pretraining loop: data → method → loss → SGD, with metrics every
//! step, checkpoints, exact resume, a progress bar and plots at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::{Device, Tensor};

use super::pending::{Diverged, Pending, PendingStep};
use super::schedule::learning_rate;
use crate::data::{Dataset, Loader, LoaderConfig, Recipe, TwoViewBatch};
use crate::device::Compute;
use crate::dist::{Overlap, World};
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
    /// With `grad_overlap` and several processes, the share of gradient
    /// buckets whose all-reduce began during backward (this invocation's
    /// steps); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_buckets_overlapped: Option<f64>,
    /// The last checkpoint.
    pub checkpoint: PathBuf,
}

/// Gradients are averaged over ranks in flat buckets of at most this size.
const GRADIENT_BUCKET_BYTES: usize = 25 << 20;

/// For tests only: `EQCO_TEST_INJECT_NONFINITE_GRAD=STEP` makes one
/// averaged gradient infinite at optimizer step `STEP` (counting from 1),
/// with the loss left finite, so that the gradient guard can be shown to
/// stop the run there. Read once, when a run is set up.
pub const INJECT_NONFINITE_GRAD: &str = "EQCO_TEST_INJECT_NONFINITE_GRAD";

/// The step of [`INJECT_NONFINITE_GRAD`], when it is set.
fn injected_nonfinite_step() -> Result<Option<u64>> {
    match std::env::var(INJECT_NONFINITE_GRAD) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(step) if step > 0 => Ok(Some(step)),
            _ => Err(Error::config(
                INJECT_NONFINITE_GRAD,
                format!("{v:?} (a test-only step number ≥ 1)"),
            )),
        },
        Err(e) => Err(Error::config(INJECT_NONFINITE_GRAD, e.to_string())),
    }
}

/// Runs (or resumes) a pretraining run; returns its summary. The loop reads
/// like moco's `main_moco.py`: set up, restore, then for every batch a step,
/// the figures logged, the monitor and the checkpoint when due.
pub fn pretrain(cfg: &PretrainConfig, opts: &TrainOptions) -> Result<Summary> {
    let mut trainer = Trainer::setup(cfg, opts)?;
    trainer.restore()?;
    trainer.announce()?;
    trainer.train()?;
    trainer.finish()
}

/// One run in progress: what it trains, on what, and where it stands.
struct Trainer<'a> {
    cfg: &'a PretrainConfig,
    opts: &'a TrainOptions,
    /// When this invocation began.
    start: Instant,
    compute: Compute,
    /// The precision used, and why.
    precision: String,
    /// Whether this process writes the run's files (rank 0).
    main: bool,
    ckpt_dir: PathBuf,
    loader: Loader,
    monitor: Option<KnnMonitor>,
    steps_per_epoch: usize,
    total_steps: usize,
    n_images: usize,
    method: Box<dyn method::Method>,
    sgd: Sgd,
    pos: Position,
    record: Record,
    pending: Pending,
    last_ckpt: PathBuf,
    /// The step of the newest checkpoint: the same on every rank (a look at
    /// the file system would race with rank 0 writing it).
    saved: Option<u64>,
    /// Time the training loop spent waiting for the loader.
    data_wait: Duration,
    /// When the training loop began.
    loop_start: Instant,
    /// Seconds in collectives before the loop (set-up's broadcasts and
    /// barriers), left out of `comm_share`.
    comm_before_loop: f64,
    /// The step whose gradient a test makes infinite ([`INJECT_NONFINITE_GRAD`]).
    inject_nonfinite: Option<u64>,
    /// With several processes and `grad_overlap`, the hooks that average
    /// the gradients during backward.
    overlap: Option<Overlap>,
}

impl<'a> Trainer<'a> {
    /// The device, the run folder, the data, the monitor, the method and
    /// its optimizer, at step 0.
    fn setup(cfg: &'a PretrainConfig, opts: &'a TrainOptions) -> Result<Trainer<'a>> {
        let start = Instant::now();
        let (compute, precision, warning) =
            Compute::resolve(cfg.precision, cfg.memory_format, opts.device);
        // Every rank resolves the same precision; rank 0 alone says so.
        if let Some(w) = warning.filter(|_| opts.world.is_main()) {
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
        if main {
            crate::io::create_dir(&opts.out)?;
        }
        tch::set_num_threads(opts.threads as i32);

        let dataset = Arc::new(open_dataset(cfg)?);
        let recipe = recipe_for(cfg, &dataset, cfg.augment)?;
        let channels = recipe.channels;
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
                local_processes: world.local_size,
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
        let method = method::build(cfg, channels, dataset.classes.len(), compute, world)?;
        let sgd = Sgd::new(method.query(), cfg.momentum, cfg.weight_decay);
        let ckpt_dir = opts.out.join("checkpoints");
        let inject_nonfinite = injected_nonfinite_step()?;
        let overlap = match world.group() {
            Some(group) if cfg.grad_overlap => Some(Overlap::new(group.clone(), sgd.parameters())?),
            _ => None,
        };
        Ok(Trainer {
            cfg,
            opts,
            start,
            compute,
            precision,
            main,
            last_ckpt: checkpoint::latest_path(&ckpt_dir),
            ckpt_dir,
            loader,
            monitor,
            steps_per_epoch,
            total_steps,
            n_images,
            method,
            sgd,
            pos: Position {
                step: 0,
                epoch: 0,
                batch: 0,
            },
            record: Record::new(None, opts.progress && main, total_steps, 0),
            pending: Pending::new(
                cfg.log_every(opts.device),
                cfg.batch_size,
                world.group().cloned(),
            ),
            saved: None,
            data_wait: Duration::ZERO,
            loop_start: Instant::now(),
            comm_before_loop: 0.0,
            inject_nonfinite,
            overlap,
        })
    }

    /// When resuming, the state of the latest checkpoint; then every rank
    /// takes rank 0's, and rank 0 opens the run's files.
    fn restore(&mut self) -> Result<()> {
        if self.opts.resume {
            self.load_latest()?;
        }
        if let Some(group) = self.opts.world.group() {
            // Every rank starts (and resumes) from rank 0's weights, buffers,
            // queue and optimizer state.
            let mut state: Vec<Tensor> = named("query.", self.method.query())
                .into_iter()
                .chain(self.method.state())
                .chain(self.sgd.state())
                .map(|(_, t)| t)
                .collect();
            state.retain(|t| t.dim() > 0);
            group.broadcast_all(&state, 0)?;
        }
        if self.main {
            let out = &self.opts.out;
            atomic_write(&out.join("config.toml"), self.cfg.to_toml().as_bytes())?;
            // A resumed run keeps the lines of the steps it continues from;
            // a fresh start in a folder whose run never reached a checkpoint
            // (a restart) drops them.
            let path = out.join("metrics.jsonl");
            let keep = (self.opts.resume || path.is_file()).then_some(self.pos.step);
            let metrics = super::events::open_metrics(self.cfg, out, keep, &self.loader)?;
            self.record.metrics = Some(metrics);
        }
        self.record.bar.set_position(self.pos.step);
        Ok(())
    }

    /// Loads `latest.safetensors` into the method and the optimizer.
    fn load_latest(&mut self) -> Result<()> {
        let latest = checkpoint::latest_path(&self.ckpt_dir);
        let (state, pos) = checkpoint::load(&latest)?;
        let (method, sgd) = (&mut self.method, &mut self.sgd);
        let mut restore = || -> Result<()> {
            load_named("query.", method.query(), &state)?;
            method.load_state(&state)?;
            sgd.load_state(&state)
        };
        restore().map_err(|e| Error::Data {
            path: latest.clone(),
            message: format!("does not fit this configuration: {e}"),
        })?;
        self.pos = pos;
        self.saved = Some(pos.step);
        if self.main {
            eprintln!(
                "pretrain: resuming {} at step {} (epoch {}, batch {})",
                self.opts.out.display(),
                pos.step,
                pos.epoch,
                pos.batch
            );
        }
        Ok(())
    }

    /// Rank 0 says what the run trains, how, and on what.
    fn announce(&self) -> Result<()> {
        if !self.main {
            return Ok(());
        }
        let (cfg, opts) = (self.cfg, self.opts);
        let recipe = self.loader.recipe();
        eprintln!(
            "pretrain: {:?} on {} images ({}×{}×{}), {} {}×{}, {}, N = {}, lr = {} × {}/256 = {:.4}, {} steps, {:?}",
            cfg.method,
            self.n_images,
            recipe.size(),
            recipe.size(),
            recipe.channels,
            cfg.backbone,
            cfg.width,
            match cfg.stem {
                crate::model::Stem::Small => "small stem",
                crate::model::Stem::Imagenet => "imagenet stem",
            },
            match (cfg.method, cfg.alpha) {
                (MethodName::Supervised, _) => "cross-entropy on the labels".to_string(),
                (_, None) => format!("K = {}, InfoNCE", cfg.k()),
                (_, Some(a)) => format!("K = {}, EqCo α = {a}", cfg.k()),
            },
            cfg.batch_size,
            cfg.lr,
            cfg.batch_size,
            cfg.scaled_lr(),
            self.total_steps,
            opts.device,
        );
        eprintln!(
            "precision: {}; memory format: {}",
            self.precision,
            if self.compute.channels_last {
                "channels-last"
            } else {
                "contiguous (NCHW)"
            }
        );
        if opts.device.is_cuda() {
            eprintln!(
                "pinned batch pool: {} (pinned_memory_mib: {}); figures read every {} steps",
                self.loader.staging_plan(2)?,
                self.loader.pinned_cap(),
                cfg.log_every(opts.device)
            );
        }
        let world = &opts.world;
        if world.size > 1 {
            eprintln!(
                "data parallel: {} processes, {} images each per step, BN {:?}",
                world.size,
                cfg.batch_size / world.size,
                cfg.bn()
            );
        }
        Ok(())
    }

    /// Every epoch from where the run stands, until `total_steps`; then the
    /// last figures and a final checkpoint.
    fn train(&mut self) -> Result<()> {
        self.comm_before_loop = self.opts.world.comm_seconds()?;
        self.loop_start = Instant::now();
        for epoch in self.pos.epoch..self.cfg.epochs as u64 {
            if !self.epoch(epoch)? {
                break;
            }
            // The epoch is complete: continue with the next one.
            self.pos = Position {
                step: self.pos.step,
                epoch: epoch + 1,
                batch: 0,
            };
            self.log()?;
            self.checkpoint()?;
        }
        self.log()?;
        if self.saved != Some(self.pos.step) {
            self.checkpoint()?;
        }
        self.record.bar.finish_and_clear();
        Ok(())
    }

    /// The batches of `epoch` from where the run stands; false when the run
    /// reached `total_steps` before the epoch's end.
    fn epoch(&mut self, epoch: u64) -> Result<bool> {
        let first = if epoch == self.pos.epoch {
            self.pos.batch as usize
        } else {
            0
        };
        let mut batches = self.loader.epoch_from(epoch, first);
        let mut done = first;
        while let Some(batch) = batches.next() {
            if self.pos.step as usize >= self.total_steps {
                self.data_wait += batches.waited();
                return Ok(false);
            }
            done += 1;
            let waited = self.data_wait + batches.waited();
            self.step(&batch?, epoch, done, waited)?;
            if done == self.steps_per_epoch {
                self.evaluate(epoch)?;
            }
            let checkpoint_due = self.cfg.checkpoint_every > 0
                && self.pos.step % self.cfg.checkpoint_every as u64 == 0;
            // Read before a checkpoint, so that none is written after a NaN.
            if self.pending.is_due() || checkpoint_due {
                self.log()?;
            }
            if checkpoint_due {
                self.checkpoint()?;
            }
        }
        self.data_wait += batches.waited();
        Ok(true)
    }

    /// One optimizer step on `batch`, the `done`-th of `epoch`: forward,
    /// backward, gradients averaged over ranks, SGD; its figures (with
    /// `waited`, the loop's wait for data so far) and whether its averaged
    /// gradients and updated parameters are finite wait in `pending` until
    /// read.
    fn step(
        &mut self,
        batch: &TwoViewBatch,
        epoch: u64,
        done: usize,
        waited: Duration,
    ) -> Result<()> {
        let world = &self.opts.world;
        let lr = learning_rate(self.cfg, self.pos.step as usize, self.steps_per_epoch);
        let out = self.method.forward(batch, self.pos.step)?;
        world.check()?;
        self.sgd.zero_grad();
        if let Some(overlap) = &self.overlap {
            overlap.prepare()?;
        }
        out.loss
            .f_backward()
            .map_err(|e| match (world.check(), world.group()) {
                (Err(dist), _) => dist,
                // Backward's collectives (gather, SyncBN) failed.
                (Ok(()), Some(g)) => Error::Dist(format!("rank {}: backward: {e}", g.rank)),
                (Ok(()), None) => Error::from(e),
            })?;
        match (&self.overlap, world.group()) {
            // Most buckets were all-reduced during backward.
            (Some(overlap), _) => overlap.finish()?,
            (None, Some(group)) => group.average(&self.sgd.gradients(), GRADIENT_BUCKET_BYTES)?,
            (None, None) => {}
        }
        if self.inject_nonfinite == Some(self.pos.step + 1) {
            self.inject_nonfinite_gradient();
        }
        let grad_nonfinite = self.sgd.nonfinite_gradients()?;
        self.sgd.step(lr);
        let param_nonfinite = self.sgd.nonfinite_parameters()?;
        self.pos = Position {
            step: self.pos.step + 1,
            epoch,
            batch: done as u64,
        };
        self.pending.push(PendingStep {
            step: self.pos.step,
            epoch,
            lr,
            k: self.cfg.k() as u64,
            loss: out.loss.detach(),
            mi_bound_offset: out.mi_bound_offset,
            grad_norm_q: out.grad_norm_q,
            grad_nonfinite,
            param_nonfinite,
            knn_top1: None,
            waited,
        });
        self.record.bar.set_position(self.pos.step);
        Ok(())
    }

    /// For tests ([`INJECT_NONFINITE_GRAD`]): the first gradient's first
    /// slice made infinite.
    fn inject_nonfinite_gradient(&self) {
        if let Some(g) = self.sgd.gradients().first() {
            tch::no_grad(|| {
                let _ = g.narrow(0, 0, 1).fill_(f64::INFINITY);
            });
        }
    }

    /// The steps' figures read and recorded (see [`Record::write`]).
    fn log(&mut self) -> Result<()> {
        self.record.write(&mut self.pending, &self.last_ckpt)
    }

    /// At the end of `epoch`, the kNN monitor when due: rank 0 runs it, the
    /// others wait for it.
    fn evaluate(&mut self, epoch: u64) -> Result<()> {
        let every = self.cfg.knn_every as u64;
        if every == 0 || (epoch + 1) % every != 0 {
            return Ok(());
        }
        if let Some(mon) = &self.monitor {
            let acc = mon.top1(self.method.backbone(), self.compute)?;
            if let Some(last) = self.pending.last_mut() {
                last.knn_top1 = Some(acc);
            }
        }
        self.opts.world.barrier()
    }

    /// Rank 0 writes a checkpoint of where the run stands; every rank waits
    /// until it is written.
    fn checkpoint(&mut self) -> Result<()> {
        let path = if self.main {
            let mut tensors = named("query.", self.method.query());
            tensors.extend(self.method.state());
            tensors.extend(self.sgd.state());
            checkpoint::save(&self.ckpt_dir, self.pos, tensors)?
        } else {
            checkpoint::step_path(&self.ckpt_dir, self.pos.step)
        };
        self.opts.world.barrier()?;
        self.last_ckpt = path;
        self.saved = Some(self.pos.step);
        Ok(())
    }

    /// Plots and `summary.json` (rank 0), once every rank is done.
    fn finish(mut self) -> Result<Summary> {
        let (cfg, opts, world) = (self.cfg, self.opts, &self.opts.world);
        let loop_seconds = self.loop_start.elapsed().as_secs_f64();
        let (img_per_s_sum, steps_run) = (self.record.img_per_s_sum, self.record.steps);
        let comm_share = (world.comm_seconds()? - self.comm_before_loop) / loop_seconds.max(1e-9);
        let out = &opts.out;
        // Rank 0 has the whole record (a resumed run's earlier steps too);
        // the others, this invocation's steps.
        let all = if self.main {
            let all = crate::run::metrics::read(&out.join("metrics.jsonl"))?;
            super::plots::write(&out.join("plots"), &all)?;
            all
        } else {
            std::mem::take(&mut self.record.lines)
        };
        let last = all.last();
        let supervised = cfg.method == MethodName::Supervised;
        let summary = Summary {
            method: format!("{:?}", cfg.method).to_lowercase(),
            k: cfg.k(),
            alpha: cfg.alpha.filter(|_| !supervised),
            lr_scaled: cfg.scaled_lr(),
            steps: self.pos.step,
            epochs: self.pos.epoch,
            images: self.n_images,
            final_loss: last.map_or(f64::NAN, |m| m.loss),
            final_mi_bound: last.map_or(f64::NAN, |m| m.mi_bound),
            mi_bound_last10pct: tail_mean(&all, |m| m.mi_bound),
            grad_norm_q_last10pct: tail_mean(&all, |m| m.grad_norm_q),
            img_per_s: if steps_run == 0 {
                0.0
            } else {
                img_per_s_sum / steps_run as f64
            },
            wall_seconds: self.start.elapsed().as_secs_f64(),
            data_wait_share: if loop_seconds > 0.0 {
                self.data_wait.as_secs_f64() / loop_seconds
            } else {
                0.0
            },
            precision: self.precision.clone(),
            memory_format: cfg.memory_format,
            device_reads: self.pending.reads(),
            processes: world.size,
            comm_share,
            grad_buckets_overlapped: self.overlap.as_ref().and_then(Overlap::overlapped_share),
            checkpoint: self.last_ckpt.clone(),
        };
        if self.main {
            let text = serde_json::to_string_pretty(&summary).expect("plain data");
            atomic_write(&out.join("summary.json"), text.as_bytes())?;
        }
        world.barrier()?;
        Ok(summary)
    }
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

    /// Reads the pending steps and records them; a non-finite loss, averaged
    /// gradient or updated parameter ends the run with an error naming its
    /// step and the last checkpoint.
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
        let Some(b) = bad else {
            return Ok(());
        };
        let what = match b.what {
            Diverged::Loss(loss) => format!("the loss is {loss}"),
            Diverged::Gradient => {
                "a gradient (averaged over ranks) is not finite, with a finite loss,".to_string()
            }
            Diverged::Parameter => {
                "a parameter is not finite after the update, with a finite loss and gradients,"
                    .to_string()
            }
        };
        Err(Error::Numerical(format!(
            "{what} at step {} (epoch {}, lr {:.4}); the last checkpoint is {}; try a lower lr or a higher tau",
            b.step,
            b.epoch,
            b.lr,
            last_ckpt.display()
        )))
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
