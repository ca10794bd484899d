//! Stop requests: SIGTERM, SIGINT and SIGUSR1 ask a run to stop at a
//! checkpoint instead of ending the process. SLURM sends SIGTERM (or the
//! signal of `--signal`) before it kills a preempted or timed-out job,
//! torchrun forwards SIGTERM to its workers, and Ctrl-C sends SIGINT. The
//! handler records the signal and says once on stderr that the run is
//! stopping; the training loop asks [`requested`] at each read of its
//! figures (where the ranks agree on it). A second SIGINT (Ctrl-C again)
//! ends the process at once, with code 130, as a shell expects.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The first stop signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// SIGINTs received.
static INTERRUPTS: AtomicI32 = AtomicI32::new(0);

/// Whether this process says on stderr that it is stopping.
static ANNOUNCE: AtomicBool = AtomicBool::new(false);

/// The signals that ask for a stop.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// What the first stop signal prints (a fixed string: the handler may only
/// make async-signal-safe calls, such as `write`).
const STOPPING: &[u8] =
    b"\neqco: stopping after this step, at a checkpoint (Ctrl-C again quits at once)\n";

extern "C" fn on_signal(signal: libc::c_int) {
    if signal == libc::SIGINT && INTERRUPTS.fetch_add(1, Ordering::SeqCst) > 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + libc::SIGINT) };
    }
    let first = RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    if first && ANNOUNCE.load(Ordering::SeqCst) {
        // SAFETY: write to stderr is async-signal-safe; a failure is ignored.
        unsafe {
            libc::write(2, STOPPING.as_ptr().cast(), STOPPING.len());
        }
    }
}

/// From now on, a stop signal is recorded instead of ending the process;
/// with `announce` (one process of a job: rank 0), the first one is also
/// told on stderr.
pub fn catch_stop_signals(announce: bool) {
    ANNOUNCE.store(announce, Ordering::SeqCst);
    for signal in STOP_SIGNALS {
        // SAFETY: the handler makes only async-signal-safe calls.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The stop signal received so far, if any.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A signal's name: `SIGTERM`, `SIGINT`, `SIGUSR1`, else `signal N`.
pub fn name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGKILL => "SIGKILL".into(),
        s => format!("signal {s}"),
    }
}

/// Runs `f` and then gives the stop signals back the actions they had
/// before it, forgetting any signal received: for a host that keeps the
/// process (the Python package), whose own SIGINT handler must return.
pub fn restored_after<T>(f: impl FnOnce() -> T) -> T {
    let mut before: Vec<libc::sigaction> = Vec::with_capacity(STOP_SIGNALS.len());
    for signal in STOP_SIGNALS {
        // SAFETY: reading the current action into a zeroed struct.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut old);
            before.push(old);
        }
    }
    let out = f();
    for (signal, old) in STOP_SIGNALS.iter().zip(&before) {
        // SAFETY: restoring an action read above.
        unsafe {
            libc::sigaction(*signal, old, std::ptr::null_mut());
        }
    }
    RECEIVED.store(0, Ordering::SeqCst);
    INTERRUPTS.store(0, Ordering::SeqCst);
    out
}
