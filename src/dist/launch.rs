//! `eqco pretrain --nproc-per-node N`: N workers of this same program on
//! this machine, with the torchrun variables set (`MASTER_ADDR` 127.0.0.1
//! and a free port) and the job's random identity (`EQCO_JOB_ID`), which
//! every worker checks against the store it joins. The launcher forwards
//! SIGTERM, SIGUSR1 and SIGINT (as SIGTERM) to the workers and gives them
//! 30 s to stop at a checkpoint; when one fails it stops the others and
//! reports which rank failed and why (each worker writes its error to
//! `EQCO_ERROR_FILE`, as torchrun's workers do to
//! `TORCHELASTIC_ERROR_FILE`); workers die with the launcher
//! (`PR_SET_PDEATHSIG`), so none is left behind.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::base::error::{Error, Result, WorkerFailure, EXIT_STOPPED};

pub use super::env::ERROR_FILE;

/// How long workers asked to stop (a signal the launcher forwards) get to
/// finish their step and write a checkpoint before they are killed
/// (SLURM's default grace is 30 s as well).
const GRACE: Duration = Duration::from_secs(30);

/// How long the other workers get to end when one failed, before they
/// are killed (a hung one never answers SIGTERM).
const FAILED_GRACE: Duration = Duration::from_secs(10);

/// Set by the Python package's `eqco` command to its interpreter
/// (`sys.executable`): workers are started as `<it> -m eqco …`.
pub const PYTHON_MODULE: &str = "EQCO_PYTHON_MODULE";

/// A signal the launcher received (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// How the launched job ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker exited 0.
    Success,
    /// Workers failed on their own (not stopped by the launcher), the likely
    /// cause first: one killed by a signal, else the lowest rank.
    Failed(Vec<WorkerFailure>),
    /// Every worker stopped at a checkpoint when asked to (exit code
    /// [`EXIT_STOPPED`]); the signal the launcher forwarded, if it got one.
    Stopped(Option<i32>),
    /// The launcher was interrupted (the signal it received, forwarded),
    /// and the workers did not all stop at a checkpoint.
    Interrupted(i32),
}

/// Starts `nproc` workers running this program with `args`, and waits.
pub fn launch(nproc: usize, args: &[OsString]) -> Result<Outcome> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the eqco executable", e))?;
    let port = free_port()?;
    // The job's identity: every worker checks the store it joins serves it.
    let job = format!("{:016x}", rand::random::<u64>());
    let errors = tempfile::tempdir().map_err(|e| Error::io("a temporary folder", e))?;
    for signal in crate::base::signals::STOP_SIGNALS {
        // SAFETY: installing a plain handler that stores an integer.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
    let mut workers: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let file = error_file(errors.path(), rank);
        match spawn(&exe, args, (rank, nproc), (&job, port), &file) {
            Ok(child) => workers.push(child),
            Err(e) => {
                stop(&mut workers, libc::SIGTERM, FAILED_GRACE);
                return Err(e);
            }
        }
    }
    let mut done: Vec<Option<ExitStatus>> = vec![None; nproc];
    loop {
        let signal = RECEIVED.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // SIGINT is forwarded as SIGTERM: Ctrl-C on a terminal also
            // reaches the workers directly, and a second SIGINT would end
            // them at once.
            let forward = match signal {
                libc::SIGINT => libc::SIGTERM,
                s => s,
            };
            let ended = stop(&mut workers, forward, GRACE);
            return Ok(match ended.iter().all(|s| s.code() == Some(EXIT_STOPPED)) {
                true => Outcome::Stopped(Some(signal)),
                false => Outcome::Interrupted(signal),
            });
        }
        poll(&mut workers, &mut done)?;
        if done.iter().flatten().any(|s| !s.success()) {
            return Ok(failed(&mut workers, &mut done, errors.path()));
        }
        if done.iter().all(Option::is_some) {
            return Ok(Outcome::Success);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Records in `done` the workers that have ended.
fn poll(workers: &mut [Child], done: &mut [Option<ExitStatus>]) -> Result<()> {
    for (rank, child) in workers.iter_mut().enumerate() {
        if done[rank].is_none() {
            done[rank] = child
                .try_wait()
                .map_err(|e| Error::Internal(format!("waiting for rank {rank}: {e}")))?;
        }
    }
    Ok(())
}

/// A worker ended badly: the others get a moment to end on their own
/// (all of [`GRACE`] when the workers are stopping at a checkpoint, which
/// they do after the same step), so that the report names every worker
/// that failed on its own; then the rest are stopped.
fn failed(workers: &mut [Child], done: &mut [Option<ExitStatus>], errors: &Path) -> Outcome {
    let stopping = |done: &[Option<ExitStatus>]| {
        done.iter()
            .flatten()
            .all(|s| s.success() || s.code() == Some(EXIT_STOPPED))
    };
    let wait = match stopping(done) {
        true => GRACE,
        false => Duration::from_millis(300),
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && done.iter().any(Option::is_none) {
        std::thread::sleep(Duration::from_millis(50));
        let _ = poll(workers, done);
    }
    if done
        .iter()
        .all(|s| s.is_some_and(|s| s.code() == Some(EXIT_STOPPED)))
    {
        return Outcome::Stopped(None);
    }
    stop(workers, libc::SIGTERM, FAILED_GRACE);
    let mut failures: Vec<WorkerFailure> = done
        .iter()
        .enumerate()
        .filter_map(|(rank, s)| s.filter(|s| !s.success()).map(|s| (rank, s)))
        .map(|(rank, status)| WorkerFailure {
            rank,
            code: status.code(),
            message: std::fs::read_to_string(error_file(errors, rank))
                .ok()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| describe(status)),
        })
        .collect();
    // A signal is the likely first cause; then the lowest rank.
    failures.sort_by_key(|f| (f.code.is_some(), f.rank));
    Outcome::Failed(failures)
}

fn error_file(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}.error"))
}

/// Starts worker `rank` of `nproc` of the job `job` on `port`, writing
/// its error to `error_file`.
fn spawn(
    exe: &Path,
    args: &[OsString],
    (rank, nproc): (usize, usize),
    (job, port): (&str, u16),
    error_file: &Path,
) -> Result<Child> {
    let mut cmd = match std::env::var_os(PYTHON_MODULE) {
        // The Python package's `eqco` command: `python -m eqco` (the
        // venv's interpreter, which /proc/self/exe would not name).
        Some(python) => {
            let mut cmd = Command::new(python);
            cmd.args(["-m", "eqco"]);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", nproc.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", nproc.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env(super::env::JOB_ID, job)
        .env(ERROR_FILE, error_file);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A worker dies with the launcher, whatever kills it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| Error::io(exe, e))
}

/// Sends `signal` to the workers still running, waits up to `grace`,
/// then kills what is left; how each worker ended.
fn stop(workers: &mut [Child], signal: i32, grace: Duration) -> Vec<ExitStatus> {
    for child in workers.iter_mut() {
        if let Ok(None) = child.try_wait() {
            // SAFETY: signalling a child process we own.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && workers.iter_mut().any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    workers
        .iter_mut()
        .filter_map(|child| {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            child.wait().ok()
        })
        .collect()
}

/// How a worker that left no error file ended.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(libc::SIGABRT)) => format!(
            "killed by signal {} (SIGABRT): it aborted, most likely NCCL's watchdog ending it after a collective timed out (dist_timeout) or failed; its stderr above has the watchdog's message",
            libc::SIGABRT
        ),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

/// A port the OS reports free on 127.0.0.1.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(|e| Error::io("a local TCP port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("a local TCP port", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn an_abort_is_read_as_the_nccl_watchdogs() {
        // Raw wait statuses: a signal in the low bits, an exit code above them.
        let aborted = describe(ExitStatus::from_raw(libc::SIGABRT));
        assert!(
            aborted.starts_with("killed by signal 6 (SIGABRT)")
                && aborted.contains("NCCL's watchdog")
                && aborted.contains("dist_timeout")
                && aborted.contains("stderr"),
            "{aborted}"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9"
        );
        assert_eq!(describe(ExitStatus::from_raw(2 << 8)), "exited with code 2");
    }
}
