//! The job layer: everything between a parsed command line and the work
//! itself. It reads the launcher's environment, picks the device, starts
//! workers (`--nproc-per-node`) or joins the world they make, validates
//! the world against the configuration once, gives each process its share
//! of the CPUs, and, when the work fails, tells the other ranks and names
//! this one. `eqco pretrain`, `eqco sweep` and the benchmarks share it.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;

use tch::Device;

use crate::base::device::memory::set_thread_device;
use crate::base::device::parse_device;
use crate::base::error::{Error, Result};
use crate::dist::env::{self as denv, worker_device, DeviceRequest, Launcher};
use crate::dist::launch::{launch, Outcome};
use crate::dist::{Env, World};
use crate::run::folder::{RunStart, StartRequest};
use crate::run::lock::RunLock;
use crate::run::PretrainConfig;
use crate::train::{Summary, TrainOptions};

/// Where and how wide a job runs: `--device`, `--threads` and
/// `--nproc-per-node`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CPU threads of this process [default: its share of the machine's].
    pub threads: Option<usize>,
    /// Start this many workers on this machine.
    pub nproc_per_node: Option<usize>,
}

impl Request {
    /// `--threads`, or every core of this machine.
    pub fn threads(&self) -> Result<usize> {
        match self.threads {
            Some(0) => Err(Error::config("threads", "0 (must be ≥ 1)")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

/// One process's part of a job: its device, the world it belongs to and
/// its CPU threads.
#[derive(Clone)]
pub struct Job {
    /// Where this process computes.
    pub device: Device,
    /// The job's processes (a world of one without a launcher).
    pub world: World,
    /// CPU threads for libtorch and the loaders.
    pub threads: usize,
}

impl Job {
    /// A job of one process (sweeps, benchmarks): `--device` and `--threads`.
    pub fn single(req: &Request) -> Result<Job> {
        let device = parse_device(&req.device)?;
        // This thread's CUDA objects belong to that GPU (see set_thread_device).
        set_thread_device(device)?;
        Ok(Job {
            device,
            world: World::single(),
            threads: req.threads()?,
        })
    }

    /// This process's part of the job `env` describes (a world of one
    /// when `None`): its GPU chosen by local rank, the world joined as
    /// `cfg` says (checked against it first), its share of the CPUs.
    pub fn join(req: &Request, cfg: &PretrainConfig, env: Option<&Env>) -> Result<Job> {
        let device = parse_device(&req.device)?;
        let backend = cfg.dist.dist_backend.resolve(device)?;
        let (local_rank, local_size) = env.map_or((0, 1), |e| (e.local_rank, e.local_world_size));
        // This worker's GPU, chosen before the process group is made (NCCL
        // is bound to it).
        let device = match device.is_cuda() {
            true => worker_device(
                DeviceRequest::parse(&req.device),
                (local_rank, local_size),
                tch::Cuda::device_count() as usize,
                Launcher::of(|k| std::env::var(k).ok()),
            )?,
            false => device,
        };
        // This thread's CUDA objects belong to that GPU (see set_thread_device).
        set_thread_device(device)?;
        let one_rank_group = cfg.dist.dist_one_rank_group;
        let join = |env: &Env| {
            World::join(
                env,
                backend,
                cfg.dist.timeouts(backend),
                device,
                one_rank_group,
            )
        };
        let world = match env {
            None if one_rank_group => join(&Env::alone()?)?,
            None => World::single(),
            Some(env) => {
                cfg.validate_world(env.world_size)?;
                join(env)?
            }
        };
        Ok(Job {
            device,
            threads: threads_of(req, local_size)?,
            world,
        })
    }

    /// How a run in `out` trains as this process of the job.
    pub fn train_options(&self, out: &Path, resume: bool, progress: bool) -> TrainOptions {
        TrainOptions {
            out: out.to_path_buf(),
            resume,
            device: self.device,
            threads: self.threads,
            progress,
            world: self.world.clone(),
        }
    }

    /// Runs `work`; when it fails, the other ranks end at once and learn
    /// why, and the error names this rank.
    pub fn run<T>(&self, work: impl FnOnce(&Job) -> Result<T>) -> anyhow::Result<T> {
        work(self).map_err(|e| {
            if matches!(e, Error::Stopped { .. }) {
                // Every rank stopped after the same step: nobody to tell.
                return anyhow::Error::from(e);
            }
            let mut err = anyhow::Error::from(e);
            let world = &self.world;
            if world.size > 1 && !format!("{err:#}").contains(&format!("rank {}", world.rank)) {
                err = err.context(format!("rank {} of {}", world.rank, world.size));
            }
            world.abandon(&format!("{err:#}"));
            err
        })
    }
}

/// `--threads`, else this worker's share of the CPUs it may use.
fn threads_of(req: &Request, local_size: usize) -> Result<usize> {
    if req.threads.is_some() {
        return req.threads();
    }
    let allowed = denv::cpus_allowed().map_or_else(|| req.threads(), Ok)?;
    let online = denv::cpus_online().unwrap_or(allowed);
    Ok(denv::threads_per_worker(allowed, online, local_size))
}

/// How a pretraining job ended in this process.
pub enum Ended {
    /// This process trained; the summary is complete on rank 0.
    Trained {
        /// The run's summary.
        summary: Box<Summary>,
        /// Whether this process is rank 0 (it writes and reports the run).
        main: bool,
    },
    /// This process launched workers, and they all succeeded.
    Launched,
}

/// The run `start` asks for, as the launcher's environment says: resolved
/// (a restart resumes on its own).
pub fn resolve_run(start: &StartRequest) -> Result<RunStart> {
    let restarted = denv::restarted(|k| std::env::var(k).ok())?;
    RunStart::resolve(start, restarted)
}

/// Pretraining as a job: this process launches `--nproc-per-node` workers
/// of the same command line, or is one process of a job (torchrun's, a
/// launcher's, or a world of one) and trains.
pub fn pretrain(run: &RunStart, req: &Request) -> anyhow::Result<Ended> {
    let env = Env::from_env()?;
    // Bad device or backend settings fail before anything is written.
    let device = parse_device(&req.device)?;
    run.config.dist.dist_backend.resolve(device)?;
    if let Some(n) = workers_to_launch(req, env.as_ref())? {
        // The launcher refuses a folder that holds a run before it starts
        // anything (rank 0 checks again, under the folder's lock).
        if !run.auto {
            run.check_out()?;
        }
        run.config.validate_world(n)?;
        if device.is_cuda() {
            // Every worker's GPU exists (the last one's is the highest).
            let visible = tch::Cuda::device_count() as usize;
            let request = DeviceRequest::parse(&req.device);
            worker_device(request, (n - 1, n), visible, Launcher::Eqco)?;
        }
        launch_workers(n)?;
        return Ok(Ended::Launched);
    }
    // From here on a stop signal ends the run at a checkpoint.
    crate::base::signals::catch_stop_signals(env.as_ref().is_none_or(|e| e.rank == 0));
    let job = Job::join(req, &run.config, env.as_ref())?;
    let opts = job.train_options(&run.out, run.resume, std::io::stderr().is_terminal());
    let summary = job.run(|job| {
        let _lock = own_folder(run, job)?;
        crate::train::pretrain(&run.config, &opts)
    })?;
    Ok(Ended::Trained {
        summary: Box::new(summary),
        main: job.world.is_main(),
    })
}

/// Rank 0 takes the run folder's lock before it writes anything, then
/// refuses a folder that holds a run (unless the run resumes on its own):
/// of two starts into one folder, exactly one runs.
fn own_folder(run: &RunStart, job: &Job) -> Result<Option<RunLock>> {
    if !job.world.is_main() {
        return Ok(None);
    }
    let lock = RunLock::acquire(&run.out)?;
    if let Some(before) = &lock.took_over {
        eprintln!(
            "pretrain: took over {} from {before}: that process has ended",
            lock.path.display()
        );
    }
    if !run.auto {
        run.check_out()?;
    }
    Ok(Some(lock))
}

/// The workers this process should start: `--nproc-per-node` above 1,
/// unless it is itself a worker of a job (an error).
fn workers_to_launch(req: &Request, env: Option<&Env>) -> Result<Option<usize>> {
    match (req.nproc_per_node, env) {
        (Some(0), _) => Err(Error::config("--nproc-per-node", "0 (must be ≥ 1)")),
        (Some(_), Some(_)) => Err(Error::config(
            "--nproc-per-node",
            "the torchrun variables (RANK, WORLD_SIZE, …) are set: this process is already one worker of a job; leave --nproc-per-node out",
        )),
        (Some(n), None) if n > 1 => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// The command line this process runs, when it is not the process's own
/// (the Python package's `eqco` command runs inside the interpreter).
static COMMAND_LINE: std::sync::OnceLock<Vec<OsString>> = std::sync::OnceLock::new();

/// Records the command line (the program's name first) that workers of
/// `--nproc-per-node` repeat; without it, the process's own arguments.
pub fn set_command_line(args: Vec<OsString>) {
    let _ = COMMAND_LINE.set(args);
}

/// Runs this command line as `n` workers (without `--nproc-per-node`) and
/// reports how they ended; a signal that stopped them ends this process
/// with `128 + signal`.
fn launch_workers(n: usize) -> anyhow::Result<()> {
    let mut args: Vec<OsString> = Vec::new();
    let mut skip = false;
    let line = COMMAND_LINE
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().collect());
    for a in line.into_iter().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc-per-node") => skip = true,
            Some(s) if s.starts_with("--nproc-per-node=") => {}
            _ => args.push(a),
        }
    }
    match launch(n, &args)? {
        Outcome::Success => Ok(()),
        Outcome::Failed(failures) => Err(Error::Workers(failures).into()),
        Outcome::Stopped(signal) => {
            let why =
                signal.map_or_else(|| "a stop signal".to_string(), crate::base::signals::name);
            eprintln!("eqco: all {n} workers stopped at a checkpoint after {why}; --resume auto continues the run");
            std::process::exit(crate::base::error::EXIT_STOPPED);
        }
        Outcome::Interrupted(signal) => {
            eprintln!("eqco: stopped all {n} workers after signal {signal}");
            std::process::exit(128 + signal);
        }
    }
}
