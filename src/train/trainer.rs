//! The pretraining loop: data → step (method, loss, SGD) → figures, with
//! checkpoints, exact resume, the kNN monitor, a progress bar and plots at
//! the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::Device;

use super::knn::KnnMonitor;
use super::pending::{Pending, PendingStep};
use super::record::Record;
use super::step::Step;
use super::summary::Summary;
use crate::base::device::memory::pinned_stats;
use crate::base::device::Compute;
use crate::base::error::{Error, Result};
use crate::base::io::atomic_write;
use crate::base::signals;
use crate::data::{Dataset, Feed, Loader, LoaderConfig, PinnedCap, TwoViewBatch};
use crate::dist::World;
use crate::method::{self, MethodName, Shape};
use crate::optim::learning_rate;
use crate::run::checkpoint::{self, Position};
use crate::run::metrics::tail_mean;
use crate::run::PretrainConfig;

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

/// Runs (or resumes) a pretraining run; returns its summary. The loop reads
/// like moco's `main_moco.py`: set up, restore, then for every batch a step,
/// the figures logged, the monitor and the checkpoint when due. The world
/// must have been checked against the configuration
/// ([`PretrainConfig::validate_world`]).
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
    step: Step,
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
}

impl<'a> Trainer<'a> {
    /// The device, the run folder, the data, the monitor, the method and
    /// its optimizer, at step 0.
    fn setup(cfg: &'a PretrainConfig, opts: &'a TrainOptions) -> Result<Trainer<'a>> {
        let start = Instant::now();
        let (compute, precision) = prepare_device(cfg, opts);
        let main = opts.world.is_main();
        // Rank 0 alone writes the run's files; every rank reads them.
        if main {
            crate::base::io::create_dir(&opts.out)?;
        }
        tch::set_num_threads(opts.threads as i32);
        let (dataset, loader) = open_loader(cfg, opts, compute)?;
        if let Some((first, why)) = dataset.skipped.first().filter(|_| main) {
            eprintln!(
                "pretrain: left out {} undecodable image(s) (skip_undecodable), the first {}: {why}",
                dataset.skipped.len(),
                first.display()
            );
        }
        let steps_per_epoch = loader.batches_per_epoch();
        let monitor = match cfg.monitor.knn_every > 0 && main {
            true => Some(KnnMonitor::new(
                &cfg.monitor,
                &cfg.data,
                &dataset,
                loader.recipe(),
                loader.images(),
                Feed {
                    threads: cfg.data.loader_threads.unwrap_or(opts.threads),
                    pinned: loader.pinned_cap(),
                },
            )?),
            false => None,
        };
        let total_steps = cfg.optim.total_steps(steps_per_epoch);
        let step = build_step(
            cfg,
            &dataset,
            loader.recipe().channels,
            compute,
            &opts.world,
        )?;
        let ckpt_dir = checkpoint::dir_of(&opts.out);
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
            step,
            pos: Position {
                step: 0,
                epoch: 0,
                batch: 0,
            },
            record: Record::new(None, opts.progress && main, total_steps, 0),
            pending: Pending::new(
                cfg.monitor.log_every(opts.device),
                cfg.optim.batch_size,
                opts.world.group().cloned(),
            ),
            saved: None,
            data_wait: Duration::ZERO,
            loop_start: Instant::now(),
            comm_before_loop: 0.0,
        })
    }

    /// When resuming, the state of the latest checkpoint; then every rank
    /// takes rank 0's, and rank 0 opens the run's files.
    fn restore(&mut self) -> Result<()> {
        if self.opts.resume {
            self.load_latest()?;
        }
        self.step.broadcast_from_main()?;
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

    /// Loads the newest checkpoint that reads whole (`latest.safetensors`,
    /// else the newest `step-<step>` one) into the method and the optimizer.
    fn load_latest(&mut self) -> Result<()> {
        let (ckpt, passed) = checkpoint::newest_whole(&self.ckpt_dir)?;
        for (file, why) in passed.iter().filter(|_| self.main) {
            eprintln!("pretrain: passed over {}: {why}", file.display());
        }
        self.step.restore(&ckpt)?;
        let pos = ckpt.pos;
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
        let n = cfg.optim.batch_size;
        eprintln!(
            "pretrain: {:?} on {} images ({s}×{s}×{}), {}, {}, N = {n}, lr = {} × {n}/256 = {:.4}, {} steps, {:?}",
            cfg.method.method,
            self.loader.images().len(),
            recipe.channels,
            cfg.model.describe(),
            cfg.describe_loss(),
            cfg.optim.lr,
            cfg.optim.scaled_lr(),
            self.total_steps,
            opts.device,
            s = recipe.size(),
        );
        let format = match self.compute.channels_last {
            true => "channels-last",
            false => "contiguous (NCHW)",
        };
        eprintln!("precision: {}; memory format: {format}", self.precision);
        if opts.device.is_cuda() {
            eprintln!(
                "pinned batch pool: {} (pinned_memory_mib: {}); figures read every {} steps",
                self.loader.staging_plan(2)?,
                self.loader.pinned_cap(),
                cfg.monitor.log_every(opts.device)
            );
        }
        let world = &opts.world;
        if world.size > 1 {
            eprintln!(
                "data parallel: {} processes, {} images each per step, BN {:?}",
                world.size,
                n / world.size,
                cfg.method.bn()
            );
        }
        Ok(())
    }

    /// Every epoch from where the run stands, until `total_steps`; then the
    /// last figures and a final checkpoint.
    fn train(&mut self) -> Result<()> {
        self.comm_before_loop = self.opts.world.comm_seconds()?;
        self.loop_start = Instant::now();
        for epoch in self.pos.epoch..self.cfg.optim.epochs as u64 {
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
            self.stop_if_asked()?;
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
            let checkpoint_due = self.cfg.monitor.checkpoint_due(self.pos.step);
            // Read before a checkpoint, so that none is written after a NaN.
            if self.pending.is_due() || checkpoint_due {
                self.log()?;
            }
            if checkpoint_due {
                self.checkpoint()?;
            }
            self.stop_if_asked()?;
        }
        self.data_wait += batches.waited();
        Ok(true)
    }

    /// One optimizer step on `batch`, the `done`-th of `epoch`; its figures
    /// (with `waited`, the loop's wait for data so far) and whether its
    /// averaged gradients and updated parameters are finite wait in
    /// `pending` until read.
    fn step(
        &mut self,
        batch: &TwoViewBatch,
        epoch: u64,
        done: usize,
        waited: Duration,
    ) -> Result<()> {
        let lr = learning_rate(
            &self.cfg.optim,
            self.pos.step as usize,
            self.steps_per_epoch,
        );
        let figures = self.step.run(batch, self.pos.step, lr)?;
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
            loss: figures.loss,
            mi_bound_offset: figures.mi_bound_offset,
            grad_norm_q: figures.grad_norm_q,
            grad_nonfinite: figures.grad_nonfinite,
            param_nonfinite: figures.param_nonfinite,
            knn_top1: None,
            waited,
        });
        self.record.bar.set_position(self.pos.step);
        Ok(())
    }

    /// The steps' figures read and recorded (see [`Record::write`]).
    fn log(&mut self) -> Result<()> {
        self.record.write(&mut self.pending, &self.last_ckpt)
    }

    /// At the end of `epoch`, the kNN monitor when due: rank 0 runs it, the
    /// others wait for it.
    fn evaluate(&mut self, epoch: u64) -> Result<()> {
        if !self.cfg.monitor.knn_due(epoch) {
            return Ok(());
        }
        if let Some(mon) = &self.monitor {
            let acc = mon.top1(self.step.method().backbone(), self.compute)?;
            if let Some(last) = self.pending.last_mut() {
                last.knn_top1 = Some(acc);
            }
        }
        self.opts.world.barrier()
    }

    /// When the ranks agreed to stop (a stop signal): a checkpoint of
    /// where the run stands, unless one was just written, then
    /// [`Error::Stopped`].
    fn stop_if_asked(&mut self) -> Result<()> {
        if !self.pending.stop_agreed() {
            return Ok(());
        }
        if self.saved != Some(self.pos.step) {
            self.checkpoint()?;
        }
        self.record.bar.finish_and_clear();
        Err(Error::Stopped {
            signal: signals::requested()
                .map_or_else(|| "another rank's stop signal".into(), signals::name),
            step: self.pos.step,
            checkpoint: self.last_ckpt.clone(),
        })
    }

    /// Rank 0 writes a checkpoint of where the run stands and lets go of
    /// those retention does not keep; every rank waits until it is written.
    fn checkpoint(&mut self) -> Result<()> {
        let path = match self.main {
            true => {
                let path = checkpoint::save(&self.ckpt_dir, self.pos, self.step.state())?;
                let monitor = &self.cfg.monitor;
                checkpoint::prune(&self.ckpt_dir, |step, newer| monitor.keeps(step, newer))?;
                path
            }
            false => checkpoint::step_path(&self.ckpt_dir, self.pos.step),
        };
        self.opts.world.barrier()?;
        self.last_ckpt = path;
        self.saved = Some(self.pos.step);
        Ok(())
    }

    /// Plots and `summary.json` (rank 0), once every rank is done.
    fn finish(mut self) -> Result<Summary> {
        let world = &self.opts.world;
        let loop_seconds = self.loop_start.elapsed().as_secs_f64();
        let comm_share = (world.comm_seconds()? - self.comm_before_loop) / loop_seconds.max(1e-9);
        let out = &self.opts.out;
        // Rank 0 has the whole record (a resumed run's earlier steps too);
        // the others, this invocation's steps.
        let all = if self.main {
            let all = crate::run::metrics::read(&out.join("metrics.jsonl"))?;
            super::plots::write(&out.join("plots"), &all)?;
            all
        } else {
            std::mem::take(&mut self.record.lines)
        };
        let summary = self.summary(&all, loop_seconds, comm_share);
        if self.main {
            let text = serde_json::to_string_pretty(&summary).expect("plain data");
            atomic_write(&out.join("summary.json"), text.as_bytes())?;
        }
        world.barrier()?;
        Ok(summary)
    }

    /// The run's final figures from its metrics `all`.
    fn summary(
        &self,
        all: &[crate::run::metrics::StepMetrics],
        loop_seconds: f64,
        comm_share: f64,
    ) -> Summary {
        let cfg = self.cfg;
        let last = all.last();
        let supervised = cfg.method.method == MethodName::Supervised;
        let (img_per_s_sum, steps_run) = (self.record.img_per_s_sum, self.record.steps);
        Summary {
            method: format!("{:?}", cfg.method.method).to_lowercase(),
            k: cfg.k(),
            alpha: cfg.loss.alpha.filter(|_| !supervised),
            lr_scaled: cfg.optim.scaled_lr(),
            steps: self.pos.step,
            epochs: self.pos.epoch,
            images: self.loader.images().len(),
            final_loss: last.map_or(f64::NAN, |m| m.loss),
            final_mi_bound: last.map_or(f64::NAN, |m| m.mi_bound),
            mi_bound_last10pct: tail_mean(all, |m| m.mi_bound),
            grad_norm_q_last10pct: tail_mean(all, |m| m.grad_norm_q),
            img_per_s: match steps_run {
                0 => 0.0,
                n => img_per_s_sum / n as f64,
            },
            wall_seconds: self.start.elapsed().as_secs_f64(),
            data_wait_share: match loop_seconds > 0.0 {
                true => self.data_wait.as_secs_f64() / loop_seconds,
                false => 0.0,
            },
            precision: self.precision.clone(),
            memory_format: cfg.compute.memory_format,
            device_reads: self.pending.reads(),
            processes: self.opts.world.size,
            comm_share,
            grad_buckets_overlapped: self.step.overlapped_share(),
            pinned_peak_bytes: match self.opts.device.is_cuda() {
                true => pinned_stats().map(|s| s.peak),
                false => None,
            },
            checkpoint: self.last_ckpt.clone(),
        }
    }
}

/// How the run computes on its device, and the precision used and why;
/// rank 0 warns when the precision asked for is emulated.
fn prepare_device(cfg: &PretrainConfig, opts: &TrainOptions) -> (Compute, String) {
    let (compute, precision, warning) = cfg.compute.resolve(opts.device);
    // Every rank resolves the same precision; rank 0 alone says so.
    if let Some(w) = warning.filter(|_| opts.world.is_main()) {
        eprintln!("warning: {w}");
    }
    if opts.device.is_cuda() {
        // cuDNN times its algorithms for each new shape and keeps the
        // fastest; the choice can vary between runs, so results are not
        // bit-exact across runs on a GPU (they are not anyway).
        tch::Cuda::cudnn_set_benchmark(cfg.compute.cudnn_benchmark);
    }
    (compute, precision)
}

/// The dataset trained on and this rank's loader of its images.
fn open_loader(
    cfg: &PretrainConfig,
    opts: &TrainOptions,
    compute: Compute,
) -> Result<(Arc<Dataset>, Loader)> {
    let data = &cfg.data;
    let dataset = Arc::new(data.open(data.split)?);
    let recipe = data.recipe(&dataset, data.augment)?;
    let images = data.training_images(cfg.seed, dataset.len());
    let world = &opts.world;
    let loader = Loader::with_images(
        dataset.clone(),
        recipe,
        LoaderConfig {
            batch_size: cfg.optim.batch_size,
            threads: data.loader_threads.unwrap_or(opts.threads),
            seed: cfg.seed,
            device: opts.device,
            channels_last: compute.channels_last,
            pinned: PinnedCap::new(cfg.compute.pinned_memory_mib, world.local_size),
            shard: (world.rank, world.size),
            ..Default::default()
        },
        images,
    )?;
    Ok((dataset, loader))
}

/// The method `cfg` names for `channels`-channel images of `dataset`, with
/// its loss and optimizer, as one of `world`'s ranks.
fn build_step(
    cfg: &PretrainConfig,
    dataset: &Dataset,
    channels: u8,
    compute: Compute,
    world: &World,
) -> Result<Step> {
    let shape = Shape {
        encoder: cfg.encoder(channels)?,
        batch_size: cfg.optim.batch_size,
        classes: dataset.classes.len(),
        seed: cfg.seed,
    };
    let method = method::build(&cfg.method, &shape, compute, world)?;
    let sgd = (cfg.optim.momentum, cfg.optim.weight_decay);
    Step::new(method, cfg.loss, sgd, world, cfg.dist.grad_overlap)
}
