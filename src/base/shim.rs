//! The C++ shim in `csrc/`: the few libtorch calls tch does not wrap
//! (autocast on the CPU and with a chosen type, pinned buffers and CUDA
//! events, multi-tensor SGD). Every function that can throw returns an
//! error message instead; [`check`] turns it into an [`Error`]. Safe
//! wrappers live next to their users (`device`, `data::pinned`,
//! `train::optim`); this module only declares the functions.

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::base::error::{Error, Result};

extern "C" {
    pub(crate) fn eqco_autocast_enter(
        cuda: c_int,
        bf16: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> *mut c_char;
    pub(crate) fn eqco_autocast_exit(
        cuda: c_int,
        prev_enabled: c_int,
        prev_dtype: c_int,
    ) -> *mut c_char;
    pub(crate) fn eqco_autocast_state(cuda: c_int) -> c_int;
    pub(crate) fn eqco_cuda_native_bf16(index: c_int) -> c_int;
    pub(crate) fn eqco_cpu_bf16_flags(out: *mut *mut c_char) -> *mut c_char;

    pub(crate) fn eqco_pinned_empty(numel: i64, int64: c_int, out: *mut *mut c_void)
        -> *mut c_char;
    pub(crate) fn eqco_is_pinned(t: *const c_void) -> c_int;
    pub(crate) fn eqco_pinned_stats(current: *mut i64, peak: *mut i64) -> *mut c_char;
    pub(crate) fn eqco_pinned_release_cached(index: c_int) -> *mut c_char;
    pub(crate) fn eqco_set_device(index: c_int) -> *mut c_char;
    pub(crate) fn eqco_event_synchronize(event: *mut c_void) -> *mut c_char;
    pub(crate) fn eqco_event_query(event: *const c_void, done: *mut c_int) -> *mut c_char;
    pub(crate) fn eqco_copy_stream_new(index: c_int, out: *mut *mut c_void) -> *mut c_char;
    pub(crate) fn eqco_copy_stream_free(stream: *mut c_void);
    pub(crate) fn eqco_copy_to_device(
        src: *const c_void,
        side: *const c_void,
        out: *mut *mut c_void,
        copied: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn eqco_event_free(event: *mut c_void);

    pub(crate) fn eqco_sgd_step(
        params: *const *const c_void,
        grads: *const *const c_void,
        buffers: *const *const c_void,
        n: i64,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        first: c_int,
    ) -> *mut c_char;
    pub(crate) fn eqco_zero(ts: *const *const c_void, n: i64) -> *mut c_char;
    pub(crate) fn eqco_nonfinite(
        ts: *const *const c_void,
        n: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn eqco_lerp(
        keys: *const *const c_void,
        queries: *const *const c_void,
        n: i64,
        weight: f64,
    ) -> *mut c_char;
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn eqco_group_new(
        nccl: c_int,
        host: *const c_char,
        port: c_int,
        rank: c_int,
        size: c_int,
        timeout_s: f64,
        join_timeout_s: f64,
        serve: c_int,
        listen_fd: c_int,
        identity: *const c_char,
        prefix: *const c_char,
        gloo_ifaces: *const c_char,
        gloo_addr: *const c_char,
        cuda_index: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn eqco_group_fail(g: *mut c_void, message: *const c_char, linger_s: f64);
    pub(crate) fn eqco_group_cause(g: *mut c_void, wait_s: f64, out: *mut *mut c_char);
    pub(crate) fn eqco_group_free(g: *mut c_void);
    pub(crate) fn eqco_group_comm_seconds(g: *mut c_void, out: *mut f64) -> *mut c_char;
    pub(crate) fn eqco_report_fatal_with(report: extern "C" fn(*const c_char));
    #[cfg(test)]
    pub(crate) fn eqco_terminate_from_thread(what: *const c_char);
    #[cfg(test)]
    pub(crate) fn eqco_group_record_failure(g: *mut c_void, message: *const c_char);
    pub(crate) fn eqco_all_reduce_sum(g: *mut c_void, t: *const c_void) -> *mut c_char;
    pub(crate) fn eqco_all_gather(
        g: *mut c_void,
        input: *const c_void,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn eqco_all_gather_with_grad(
        g: *mut c_void,
        input: *const c_void,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn eqco_broadcast(g: *mut c_void, t: *const c_void, root: c_int) -> *mut c_char;
    pub(crate) fn eqco_barrier(g: *mut c_void) -> *mut c_char;
    pub(crate) fn eqco_overlap_new(
        g: *mut c_void,
        params: *const *const c_void,
        names: *const *const c_char,
        bucket_of: *const i64,
        n: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn eqco_overlap_prepare(o: *mut c_void) -> *mut c_char;
    pub(crate) fn eqco_overlap_finish(o: *mut c_void, early: *mut i64) -> *mut c_char;
    pub(crate) fn eqco_overlap_ready_order(
        o: *mut c_void,
        out: *mut i64,
        cap: i64,
        n: *mut i64,
    ) -> *mut c_char;
    pub(crate) fn eqco_overlap_rebuild(o: *mut c_void, bucket_of: *const i64) -> *mut c_char;
    pub(crate) fn eqco_overlap_free(o: *mut c_void);
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn eqco_sync_batch_norm(
        g: *mut c_void,
        input: *const c_void,
        weight: *const c_void,
        bias: *const c_void,
        running_mean: *const c_void,
        running_var: *const c_void,
        momentum: f64,
        eps: f64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
}

/// `Ok` for a null message; else the message as an [`Error::Torch`] naming
/// `what`, with the C string freed.
pub(crate) fn check(what: &str, message: *mut c_char) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string from malloc (csrc/shim.h).
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated with malloc by the shim, freed once here.
    unsafe { libc::free(message.cast()) };
    Err(Error::Torch(tch::TchError::Torch(format!(
        "{what}: {text}"
    ))))
}

/// The `at::Tensor*` behind a tch tensor.
pub(crate) fn ptr(t: &tch::Tensor) -> *const c_void {
    t.as_ptr().cast()
}

/// A tch tensor that takes ownership of an `at::Tensor*` made by the shim.
///
/// # Safety
/// `p` must be a `new at::Tensor` not owned by anything else.
pub(crate) unsafe fn tensor_from(p: *mut c_void) -> tch::Tensor {
    tch::Tensor::from_ptr(p.cast())
}
