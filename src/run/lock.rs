//! One run per folder: `run.lock` in the run folder, held (an advisory
//! `flock`) by the process that writes the folder for as long as it runs.
//! The file says who holds it (host, pid, start time, job), so that a
//! second start is refused naming the holder. The kernel releases the lock
//! when its process ends, however it ends: a lock left by a process that
//! is gone (a crash, SIGKILL, a requeued job) is taken over, and the new
//! holder says whose it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::base::error::{Error, Result};

/// The lock file's name in the run folder.
pub const LOCK_FILE: &str = "run.lock";

/// A held run-folder lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    /// The lock file.
    pub path: PathBuf,
    /// Who held it before, when this process took over a stale lock.
    pub took_over: Option<String>,
}

impl RunLock {
    /// Takes the lock of the run folder `out` (creating the folder); a
    /// folder whose lock is held by a running process is refused, naming it.
    pub fn acquire(out: &Path) -> Result<RunLock> {
        crate::base::io::create_dir(out)?;
        let path = out.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut before = String::new();
        let _ = file.read_to_string(&mut before);
        let before = before.trim().to_string();
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(Error::config(
                    "--out",
                    format!(
                        "{} is in use by another run ({}; lock file {}): wait for it to end, or choose another --out",
                        out.display(),
                        if before.is_empty() { "its holder is starting" } else { &before },
                        path.display()
                    ),
                ));
            }
            // A file system without locks (some network mounts): the
            // folder is used unguarded, and the user is told.
            eprintln!(
                "warning: {} cannot be locked ({err}): a second start into this folder would not be refused",
                path.display()
            );
        }
        let holder = describe_self();
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.rewind().map_err(|e| Error::io(&path, e))?;
        file.write_all(format!("{holder}\n").as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        Ok(RunLock {
            file,
            path,
            took_over: (!before.is_empty()).then_some(before),
        })
    }
}

impl Drop for RunLock {
    /// A clean release empties the file: the next start finds no holder
    /// to take over from.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// This process as the lock file names it: host, pid, start time and,
/// when a scheduler runs it, the job.
fn describe_self() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    let started = utc_now();
    let job = ["SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"]
        .iter()
        .find_map(|k| std::env::var(k).ok().map(|v| format!(", job {k}={v}")))
        .unwrap_or_default();
    format!(
        "pid {} on host {host}, started {started}{job}",
        std::process::id()
    )
}

/// The time now, as `2026-12-04 14:43:07 UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: gmtime_r writes only into the struct it is given.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&secs, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
