//! Data parallelism across processes, GPUs and machines on torch's own
//! distributed engine, c10d (through the shim in `csrc/dist.cpp`): a
//! TCPStore rendezvous, a Gloo (CPU) or NCCL (GPU) process group, and the
//! collectives training needs, two of which carry gradients (a gather for
//! SimCLR's negatives, synchronised BN).
//!
//! Processes find each other the way torchrun's workers do: from `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and
//! `MASTER_PORT` ([`Env`], with everything else a launcher says, in
//! [`env`]). A process started without them is a world of one
//! ([`World::single`]), which needs no group at all.
//!
//! A rank that fails tells the others through the store
//! ([`Group::abandon`]) and leaves the group, so that their pending
//! collectives fail at once and name it ([`Group::cause`]), with or
//! without a launcher that stops the job.

pub mod config;
pub mod env;
pub mod launch;
pub mod overlap;

pub use config::DistConfig;
pub use env::Env;
pub use overlap::Overlap;

use std::ffi::{c_int, c_void, CString};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::base::error::{Error, Result};
use crate::base::shim;

/// The collective backend (the `dist_backend` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NCCL for CUDA, Gloo for the CPU.
    Auto,
    /// Gloo: CPU tensors (and CUDA tensors through the host).
    Gloo,
    /// NCCL: CUDA tensors only.
    Nccl,
}

impl Backend {
    /// The backend for `device`: `auto` resolved; NCCL on the CPU is an
    /// error naming `dist_backend`.
    pub fn resolve(self, device: Device) -> Result<Backend> {
        match (self, device.is_cuda()) {
            (Backend::Auto, true) => Ok(Backend::Nccl),
            (Backend::Auto, false) => Ok(Backend::Gloo),
            (Backend::Nccl, false) => Err(Error::config(
                "dist_backend",
                "nccl runs on GPUs only; use gloo (or auto) with --device cpu",
            )),
            (b, _) => Ok(b),
        }
    }
}

/// How batch normalisation takes its statistics across devices (the `bn` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// Statistics of the global batch, forward and backward (SyncBN).
    Sync,
    /// MoCo's shuffle BN: keys computed on a batch shuffled across ranks
    /// (and across `shuffle_bn_groups` groups), with each group's statistics.
    Shuffle,
    /// Each device's own batch.
    Local,
}

/// A c10d process group (owned; left, its threads ended, when dropped).
pub struct Group {
    ptr: *mut c_void,
    /// This process's rank.
    pub rank: usize,
    /// Processes in the group.
    pub size: usize,
    /// A failure inside a layer's forward pass (synchronised BN), which
    /// cannot return an error there; the trainer takes it after the step.
    failure: Mutex<Option<String>>,
}

// SAFETY: c10d process groups may be used from any thread; eqco calls each
// from one thread at a time (the training loop).
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

/// How long a process waits for the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Reaching the rendezvous store and waiting for every rank to join
    /// (`dist_join_timeout`): a peer that never starts ends the job then.
    pub join: Duration,
    /// Every later wait: a collective, a barrier (`dist_timeout`).
    pub collective: Duration,
}

/// The socket the store listens on: loopback for a one-host job (its fd),
/// else none (-1: the store binds its port itself, checked free first).
fn store_socket(env: &Env) -> Result<c_int> {
    Ok(match (env.serves_store(), env.one_host()) {
        (true, true) => listen_on_loopback(env.master_port)?,
        (true, false) => {
            check_port_free(&env.master_addr, env.master_port)?;
            -1
        }
        (false, _) => -1,
    })
}

/// Where Gloo binds: `(interfaces, address)`, one of them set (neither for NCCL).
fn gloo_binding(env: &Env, backend: Backend) -> Result<(String, String)> {
    Ok(match backend {
        Backend::Nccl => (String::new(), String::new()),
        _ => match env.gloo_bind()? {
            env::GlooBind::Interfaces(i) => (i, String::new()),
            env::GlooBind::Address(a) => (String::new(), a.to_string()),
        },
    })
}

/// A failed join, explained: another job's store on this port (a
/// configuration error naming both jobs), or what this rank tried and for
/// how long.
fn join_error(env: &Env, e: Error, addr: &str, start: Instant, timeouts: Timeouts) -> Error {
    if let Some(theirs) = other_job(&e.to_string()) {
        return Error::config(
            "MASTER_PORT",
            format!(
                "the store at {}:{} serves another job ({}), not this one ({}); this process leaves it untouched: give each job its own MASTER_PORT",
                env.store_host(),
                env.master_port,
                describe_job(theirs),
                describe_job(&env.job)
            ),
        );
    }
    let bind = match &env.gloo_ifname {
        Some(i) => format!(", Gloo on interface(s) {i}"),
        None if !addr.is_empty() => format!(", Gloo on {addr}"),
        None => String::new(),
    };
    Error::Dist(format!(
        "rank {} could not join the group at {}:{} ({} the store{bind}); it failed after {:.1} s (dist_join_timeout = {:.0} s): {e}",
        env.rank,
        env.master_addr,
        env.master_port,
        if env.serves_store() { "serving" } else { "a client of" },
        start.elapsed().as_secs_f64(),
        timeouts.join.as_secs_f64()
    ))
}

impl Group {
    /// Joins the group of `env`: rank 0 serves the store at
    /// `MASTER_ADDR:MASTER_PORT` (or every rank joins torchrun's agent's),
    /// Gloo binds to this host's address ([`Env::gloo_bind`]), NCCL to
    /// `device`. Reaching the store and waiting for every rank is bounded
    /// by `timeouts.join`, every later wait by `timeouts.collective`.
    pub fn join(env: &Env, backend: Backend, timeouts: Timeouts, device: Device) -> Result<Group> {
        if backend == Backend::Nccl {
            env::check_nccl_error_handling(|k| std::env::var(k).ok())?;
        }
        let listen_fd = store_socket(env)?;
        let c = |what: &str, v: String| {
            CString::new(v).map_err(|_| Error::config(what, "contains a NUL byte"))
        };
        let host = c("MASTER_ADDR", env.store_host())?;
        let identity = c(env::JOB_ID, env.job.clone())?;
        let prefix = c("TORCHELASTIC_RUN_ID", env.store_prefix())?;
        let (ifaces, addr) = gloo_binding(env, backend)?;
        let ifaces = c("GLOO_SOCKET_IFNAME", ifaces)?;
        let addr = c("MASTER_ADDR", addr)?;
        let cuda_index = match device {
            Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let start = Instant::now();
        // SAFETY: plain values in, a new group pointer out on success.
        let err = unsafe {
            shim::eqco_group_new(
                c_int::from(backend == Backend::Nccl),
                host.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                timeouts.collective.as_secs_f64(),
                timeouts.join.as_secs_f64(),
                c_int::from(env.serves_store()),
                listen_fd,
                identity.as_ptr(),
                prefix.as_ptr(),
                ifaces.as_ptr(),
                addr.as_ptr(),
                cuda_index,
                &mut ptr,
            )
        };
        shim::check("joining the process group", err)
            .map_err(|e| join_error(env, e, addr.to_str().unwrap_or_default(), start, timeouts))?;
        report_fatal_errors(env.rank);
        Ok(Group {
            ptr,
            rank: env.rank,
            size: env.world_size,
            failure: Mutex::new(None),
        })
    }

    /// This rank failed with `message` (which names the rank): the other ranks learn it through the
    /// store (the first failure of the job is kept), this rank leaves the
    /// group, so that their collectives fail at once, and, when it serves
    /// the store, keeps it up until they have read it (at most `linger`).
    pub fn abandon(&self, message: &str, linger: Duration) {
        let m = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: a live group; the message is read during the call.
        unsafe { shim::eqco_group_fail(self.ptr, m.as_ptr(), linger.as_secs_f64()) }
    }

    /// The failure another rank recorded with [`Group::abandon`], if any (the
    /// store is asked for at most `wait`).
    pub fn cause(&self, wait: Duration) -> Option<String> {
        let mut out: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: a live group; a malloc'ed string or null comes back.
        unsafe { shim::eqco_group_cause(self.ptr, wait.as_secs_f64(), &mut out) };
        if out.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string from malloc, freed once here.
        let text = unsafe { std::ffi::CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        unsafe { libc::free(out.cast()) };
        Some(text)
    }

    /// Runs the collective `call` (the shim times it: [`Group::comm_seconds`])
    /// and names its failure.
    fn timed(&self, what: &str, call: impl FnOnce() -> *mut std::ffi::c_char) -> Result<()> {
        let err = call();
        shim::check(what, err).map_err(|e| self.failed(e))
    }

    /// The error of a failed collective: another rank's recorded failure
    /// when there is one (the likely cause), else what c10d said.
    fn failed(&self, e: Error) -> Error {
        match self.cause(CAUSE_WAIT) {
            Some(cause) => Error::Dist(format!(
                "rank {}: the job failed on {cause} (this rank's {e})",
                self.rank
            )),
            None => Error::Dist(format!("rank {}: {e}", self.rank)),
        }
    }

    /// Sums `t` over ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        // SAFETY: a live group and tensor, used during the call only.
        self.timed("all_reduce", || unsafe {
            shim::eqco_all_reduce_sum(self.ptr, shim::ptr(t))
        })
    }

    /// Every rank's `t` stacked along dimension 0 in rank order (no gradient).
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: as in `all_reduce_sum`; a new tensor comes back.
        self.timed("all_gather", || unsafe {
            shim::eqco_all_gather(self.ptr, shim::ptr(t), &mut out)
        })?;
        // SAFETY: a fresh tensor made by the shim.
        Ok(unsafe { shim::tensor_from(out) })
    }

    /// As [`Group::all_gather`], with a gradient: in backward, each rank's
    /// slice receives the sum over ranks of the gradient flowing into the
    /// gathered tensor (the cross terms a detached gather would drop).
    pub fn all_gather_with_grad(&self, t: &Tensor) -> Result<Tensor> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: as above; the group outlives the graph (the trainer holds it).
        self.timed("all_gather", || unsafe {
            shim::eqco_all_gather_with_grad(self.ptr, shim::ptr(t), &mut out)
        })?;
        // SAFETY: a fresh tensor made by the shim.
        Ok(unsafe { shim::tensor_from(out) })
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        // SAFETY: as in `all_reduce_sum`.
        self.timed("broadcast", || unsafe {
            shim::eqco_broadcast(self.ptr, shim::ptr(t), root as c_int)
        })
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        self.timed("barrier", || unsafe { shim::eqco_barrier(self.ptr) })
    }

    /// Synchronised batch normalisation of `x` in training mode (the
    /// statistics of the batch across ranks; updates the running statistics).
    #[allow(clippy::too_many_arguments)]
    pub fn sync_batch_norm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: live tensors, used during the call (and by the graph, which
        // holds its own references).
        self.timed("sync_batch_norm", || unsafe {
            shim::eqco_sync_batch_norm(
                self.ptr,
                shim::ptr(x),
                shim::ptr(weight),
                shim::ptr(bias),
                shim::ptr(running_mean),
                shim::ptr(running_var),
                momentum,
                eps,
                &mut out,
            )
        })?;
        // SAFETY: a fresh tensor made by the shim.
        Ok(unsafe { shim::tensor_from(out) })
    }

    /// Averages `tensors` (gradients) over ranks: all-reduce over flat
    /// buckets of at most `bucket_bytes`, then ÷ size.
    pub fn average(&self, tensors: &[Tensor], bucket_bytes: usize) -> Result<()> {
        let mut start = 0;
        while start < tensors.len() {
            let (mut end, mut bytes) = (start, 0);
            while end < tensors.len()
                && (end == start || bytes + 4 * tensors[end].numel() <= bucket_bytes)
            {
                bytes += 4 * tensors[end].numel();
                end += 1;
            }
            let part = &tensors[start..end];
            let flat = Tensor::cat(
                &part
                    .iter()
                    .map(|t| t.reshape(-1).to_kind(Kind::Float))
                    .collect::<Vec<_>>(),
                0,
            );
            self.all_reduce_sum(&flat)?;
            let flat = flat / self.size as f64;
            let mut offset = 0;
            for t in part {
                let n = t.numel() as i64;
                let mut dst = t.shallow_clone();
                tch::no_grad(|| dst.copy_(&flat.narrow(0, offset, n).view(t.size().as_slice())));
                offset += n;
            }
            start = end;
        }
        Ok(())
    }

    /// Every tensor of `tensors` set to rank `root`'s (parameters and
    /// buffers at start and at resume).
    pub fn broadcast_all(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        tch::no_grad(|| {
            for t in tensors {
                // Collectives want contiguous memory: go through a copy when
                // the tensor is channels-last.
                if t.is_contiguous() {
                    self.broadcast(t, root)?;
                } else {
                    let c = t.contiguous();
                    self.broadcast(&c, root)?;
                    t.shallow_clone().copy_(&c);
                }
            }
            Ok(())
        })
    }

    /// Seconds spent in collectives so far, those inside backward passes
    /// (SyncBN's, the gathers') included: on Gloo the wall clock around each,
    /// on NCCL how long each held up the compute stream, measured with CUDA
    /// events (`Work::wait` there returns before the collective has run).
    /// Waits for the collectives still running on the device.
    pub fn comm_seconds(&self) -> Result<f64> {
        let mut seconds = 0.0;
        // SAFETY: a live group; a number comes back.
        let err = unsafe { shim::eqco_group_comm_seconds(self.ptr, &mut seconds) };
        shim::check("reading the time spent in collectives", err)?;
        Ok(seconds)
    }

    /// Records a failure that a forward pass could not return.
    pub fn fail(&self, error: Error) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(error.to_string());
        }
    }

    /// The failure recorded by [`Group::fail`], if any, as an error.
    pub fn check(&self) -> Result<()> {
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(message) => Err(Error::Dist(message)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank, self.size)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: made by `join`, freed once.
        unsafe { shim::eqco_group_free(self.ptr) }
    }
}

/// The rank that [`report_fatal`] names (set when a group is joined).
static FATAL_RANK: AtomicUsize = AtomicUsize::new(0);

/// Makes a C++ exception that ends the process from one of c10d's threads
/// the rank's error, named like any other (on stderr and in the launcher's
/// error file, `EQCO_ERROR_FILE` or torchrun's `TORCHELASTIC_ERROR_FILE`),
/// before the process aborts. That is how a NCCL collective that timed out
/// ends: NCCL's watchdog (`TORCH_NCCL_ASYNC_ERROR_HANDLING`, on by default in
/// torch 2.11) rethrows it on its own thread, which ends in std::terminate.
pub fn report_fatal_errors(rank: usize) {
    FATAL_RANK.store(rank, Ordering::SeqCst);
    // SAFETY: installs a plain function that lives as long as the program.
    unsafe { shim::eqco_report_fatal_with(report_fatal) }
}

extern "C" fn report_fatal(what: *const std::ffi::c_char) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: a NUL-terminated string the shim keeps alive during the call.
        let what = unsafe { std::ffi::CStr::from_ptr(what) }.to_string_lossy();
        let message = fatal_message(FATAL_RANK.load(Ordering::SeqCst), &what);
        eprintln!("error: {message}");
        env::record_error(&message);
    });
}

/// The error of rank `rank` ended by the C++ exception `what` on a c10d
/// thread, with what it most likely means when NCCL's watchdog threw it.
pub fn fatal_message(rank: usize, what: &str) -> String {
    let what = what.trim();
    let watchdog = ["watchdog", "nccl", "timed out", "timeout"]
        .iter()
        .any(|w| what.to_ascii_lowercase().contains(w));
    let hint = if watchdog {
        " (NCCL's watchdog ended the process: a collective timed out after dist_timeout or failed, most often because another rank died, hung or took another path; the first failing rank's error is the cause)"
    } else {
        ""
    };
    format!("rank {rank}: the process was ended by a C++ exception on one of c10d's threads: {what}{hint}")
}

/// How long a failing rank that serves the store keeps it up for the
/// others to read why the job ends.
pub const LINGER: Duration = Duration::from_secs(5);

/// How long a rank whose collective failed asks the store for the cause.
const CAUSE_WAIT: Duration = Duration::from_secs(2);

/// An error naming `MASTER_PORT` when another program holds it on this machine.
/// The identity in an `EQCO_OTHER_JOB[…]` error of the shim (the store
/// serves another job), if that is the error.
fn other_job(message: &str) -> Option<&str> {
    let rest = message.split_once("EQCO_OTHER_JOB[")?.1;
    Some(rest.rsplit_once(']')?.0)
}

/// A job's identity as a message names it.
fn describe_job(identity: &str) -> String {
    match identity.is_empty() {
        true => "a job its launcher left unnamed".to_string(),
        false => format!("`{identity}`"),
    }
}

/// A listening socket on 127.0.0.1:`port` for the store to take over;
/// a port in use is an error naming `MASTER_PORT`.
fn listen_on_loopback(port: u16) -> Result<c_int> {
    use std::os::fd::IntoRawFd;
    match TcpListener::bind((env::LOOPBACK, port)) {
        Ok(listener) => Ok(listener.into_raw_fd()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::config(
            "MASTER_PORT",
            format!(
                "{port} is already in use on {}; choose another port",
                env::LOOPBACK
            ),
        )),
        Err(e) => Err(Error::io(format!("{}:{port}", env::LOOPBACK), e)),
    }
}

fn check_port_free(addr: &str, port: u16) -> Result<()> {
    match TcpListener::bind((addr, port)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::config(
            "MASTER_PORT",
            format!("{port} is already in use on {addr}; choose another port"),
        )),
        // Free (or not an address of this machine: the store reports that).
        _ => Ok(()),
    }
}

/// The processes of a job, from this one's point of view.
#[derive(Debug, Clone)]
pub struct World {
    /// This process's rank.
    pub rank: usize,
    /// Processes in the job.
    pub size: usize,
    /// This process among those of its machine.
    pub local_rank: usize,
    /// Processes on this machine.
    pub local_size: usize,
    /// The process group (none for a world of one).
    pub group: Option<Arc<Group>>,
}

impl World {
    /// One process, no group.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            group: None,
        }
    }

    /// Joins the job described by `env` (no group when it has one process,
    /// unless `one_rank_group`), computing on `device`.
    pub fn join(
        env: &Env,
        backend: Backend,
        timeouts: Timeouts,
        device: Device,
        one_rank_group: bool,
    ) -> Result<World> {
        let group = if env.world_size > 1 || one_rank_group {
            Some(Arc::new(Group::join(env, backend, timeouts, device)?))
        } else {
            None
        };
        Ok(World {
            rank: env.rank,
            size: env.world_size,
            local_rank: env.local_rank,
            local_size: env.local_world_size,
            group,
        })
    }

    /// Whether this process writes the run's files (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The group when there is more than one process (or a group of one
    /// was asked for: `dist_one_rank_group`).
    pub fn group(&self) -> Option<&Arc<Group>> {
        self.group.as_ref()
    }

    /// Waits for every rank (nothing to wait for alone).
    pub fn barrier(&self) -> Result<()> {
        self.group.as_ref().map_or(Ok(()), |g| g.barrier())
    }

    /// A failure recorded inside a forward pass, as an error.
    pub fn check(&self) -> Result<()> {
        self.group.as_ref().map_or(Ok(()), |g| g.check())
    }

    /// This rank failed with `message`: the job ends ([`Group::abandon`],
    /// giving the other ranks up to [`LINGER`] to learn why).
    pub fn abandon(&self, message: &str) {
        if let Some(g) = &self.group {
            g.abandon(message, LINGER);
        }
    }

    /// Seconds spent in collectives so far ([`Group::comm_seconds`]; none alone).
    pub fn comm_seconds(&self) -> Result<f64> {
        self.group.as_ref().map_or(Ok(0.0), |g| g.comm_seconds())
    }

    /// The rows `[rank·n, (rank + 1)·n)` of a global batch of `global` rows.
    pub fn local_rows(&self, global: usize) -> std::ops::Range<usize> {
        let n = global / self.size;
        self.rank * n..(self.rank + 1) * n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_needs_a_gpu() {
        assert_eq!(Backend::Auto.resolve(Device::Cpu).unwrap(), Backend::Gloo);
        assert_eq!(
            Backend::Auto.resolve(Device::Cuda(0)).unwrap(),
            Backend::Nccl
        );
        let e = Backend::Nccl.resolve(Device::Cpu).unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("`dist_backend`"),
            "{e}"
        );
    }

    /// The child of [`a_watchdogs_exception_becomes_the_ranks_error`] (run
    /// by it alone, hence ignored): a thread throws the way NCCL's watchdog
    /// does, and the process aborts.
    #[test]
    #[ignore = "the child process of a_watchdogs_exception_becomes_the_ranks_error"]
    fn fatal_child() {
        let what = std::env::var("EQCO_TEST_FATAL").expect("run by its parent test");
        report_fatal_errors(3);
        let what = CString::new(what).unwrap();
        // SAFETY: a live C string; the call does not return.
        unsafe { shim::eqco_terminate_from_thread(what.as_ptr()) };
        unreachable!("std::terminate returned");
    }

    #[test]
    fn a_watchdogs_exception_becomes_the_ranks_error() {
        use std::os::unix::process::ExitStatusExt;
        let tmp = tempfile::tempdir().unwrap();
        let (plain, json) = (tmp.path().join("plain"), tmp.path().join("json"));
        let what = "[PG ID 0 PG GUID 0 Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE, NumelIn=9, NumelOut=9, Timeout(ms)=1000) ran for 1007 milliseconds before timing out.";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "dist::tests::fatal_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EQCO_TEST_FATAL", what)
            .env(env::ERROR_FILE, &plain)
            .env(env::TORCHELASTIC_ERROR_FILE, &json)
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
        let written = std::fs::read_to_string(&plain).unwrap();
        assert!(written.starts_with("rank 3: "), "{written}");
        assert!(
            written.contains(what) && written.contains("dist_timeout"),
            "{written}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["message"]["message"], written.as_str());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("error: {written}")), "{stderr}");
        // Another exception is named without the watchdog's reading.
        let m = fatal_message(1, "bad_alloc");
        assert!(
            m.starts_with("rank 1: ") && m.contains("bad_alloc") && !m.contains("NCCL"),
            "{m}"
        );
    }

    /// A loopback port that was free a moment ago.
    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Ranks `0..size` of a one-host Gloo job on 127.0.0.1:`port`, joined
    /// in threads of this process.
    fn join_in_threads(size: usize, port: u16, collective: Duration) -> Vec<Group> {
        let timeouts = Timeouts {
            join: Duration::from_secs(30),
            collective,
        };
        let joins: Vec<_> = (0..size)
            .map(|rank| {
                std::thread::spawn(move || {
                    let vars = [
                        ("RANK", rank.to_string()),
                        ("WORLD_SIZE", size.to_string()),
                        ("MASTER_ADDR", "127.0.0.1".to_string()),
                        ("MASTER_PORT", port.to_string()),
                        (env::JOB_ID, format!("watcher-test-{port}")),
                    ];
                    let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
                    let env = Env::from_lookup(get).unwrap().unwrap();
                    Group::join(&env, Backend::Gloo, timeouts, Device::Cpu).unwrap()
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().unwrap()).collect()
    }

    /// Under NCCL a surviving rank's collective does not fail by itself, so a
    /// failure recorded in the store must end its wait: here rank 0 records
    /// one and stays in the group (its communicators untouched), and rank 1,
    /// waiting at a barrier with a 60 s timeout, is released by its watcher
    /// within seconds, naming rank 0's error.
    #[test]
    fn a_failure_in_the_store_aborts_the_waiting_ranks() {
        let mut groups = join_in_threads(2, free_port(), Duration::from_secs(60));
        let one = Arc::new(groups.pop().unwrap());
        let zero = groups.pop().unwrap();
        let waiting = {
            let one = one.clone();
            std::thread::spawn(move || one.barrier())
        };
        std::thread::sleep(Duration::from_millis(300));
        let message =
            CString::new("rank 0: writing a checkpoint: No space left on device").unwrap();
        let recorded = Instant::now();
        // SAFETY: a live group and C string.
        unsafe { shim::eqco_group_record_failure(zero.ptr, message.as_ptr()) };
        let result = waiting.join().unwrap();
        let took = recorded.elapsed();
        let e = result.expect_err("the barrier cannot succeed without rank 0");
        assert!(
            e.to_string().contains("rank 1") && e.to_string().contains("No space left on device"),
            "{e}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
        eprintln!(
            "rank 1 was released {:.2} s after the failure was recorded",
            took.as_secs_f64()
        );
        drop(one);
        drop(zero);
    }

    /// SyncBN's statistics and the gathers go to a communicator of their
    /// own: while rank 1 waits at a barrier on the gradients' communicator
    /// (rank 0 not there yet), both ranks still complete a gather. On one
    /// communicator rank 0's gather would be matched with rank 1's barrier,
    /// and the gather would hang until the timeout.
    #[test]
    fn gathers_do_not_queue_behind_the_gradients_communicator() {
        let mut groups = join_in_threads(2, free_port(), Duration::from_secs(20));
        let one = Arc::new(groups.pop().unwrap());
        let zero = groups.pop().unwrap();
        let at_barrier = {
            let one = one.clone();
            std::thread::spawn(move || one.barrier())
        };
        std::thread::sleep(Duration::from_millis(300));
        let gathering = {
            let one = one.clone();
            std::thread::spawn(move || one.all_gather(&Tensor::from_slice(&[1.0f32, 2.0])))
        };
        let start = Instant::now();
        let ours = zero
            .all_gather(&Tensor::from_slice(&[3.0f32, 4.0]))
            .unwrap();
        let theirs = gathering.join().unwrap().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        let want = Tensor::from_slice(&[3.0f32, 4.0, 1.0, 2.0]);
        assert!(
            ours.equal(&want) && theirs.equal(&want),
            "{ours:?} {theirs:?}"
        );
        assert!(!at_barrier.is_finished(), "the barrier waits for rank 0");
        zero.barrier().unwrap();
        at_barrier.join().unwrap().unwrap();
    }

    #[test]
    fn a_port_in_use_is_named() {
        let held = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let e = check_port_free("127.0.0.1", port).unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("`MASTER_PORT`"),
            "{e}"
        );
        drop(held);
        check_port_free("127.0.0.1", port).unwrap();
    }
}
