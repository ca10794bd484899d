//! Host memory that a GPU copies from without making the CPU wait:
//! page-locked (pinned) buffers, uploads of small index tensors through
//! them, and events that tell when such a copy has finished.
//!
//! A copy to a GPU from ordinary (pageable) memory waits for the device to
//! finish its queued work first; from pinned memory it is queued like a
//! kernel. On the CPU every function here is a no-op or plain allocation.

use std::ffi::{c_int, c_void};

use tch::{Device, Kind, Tensor};

use crate::base::error::Result;
use crate::base::shim;

/// An uninitialised page-locked 1-D tensor of `len` elements of `kind`
/// (`Float` or `Int64`); an error on a machine without CUDA.
pub fn pinned_empty(len: usize, kind: Kind) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let int64 = c_int::from(kind == Kind::Int64);
    // SAFETY: the shim writes a new `at::Tensor*` to `out` on success.
    let err = unsafe { shim::eqco_pinned_empty(len as i64, int64, &mut out) };
    shim::check("pinned memory", err)?;
    // SAFETY: a fresh tensor owned by nobody else.
    Ok(unsafe { shim::tensor_from(out) })
}

/// Makes `device` the calling thread's current CUDA device (nothing on the
/// CPU). Every thread that touches CUDA objects calls it first: otherwise
/// device 0 is current there, and c10's switches to an object's device and
/// back create a context on GPU 0 in every process of the machine.
pub fn set_thread_device(device: Device) -> Result<()> {
    let Device::Cuda(i) = device else {
        return Ok(());
    };
    // SAFETY: a plain call; an error string or null comes back.
    let err = unsafe { shim::eqco_set_device(i as c_int) };
    shim::check("making the GPU current on this thread", err)
}

/// Whether `t` lives in page-locked memory.
pub fn is_pinned(t: &Tensor) -> bool {
    // SAFETY: reads a property of a live tensor.
    unsafe { shim::eqco_is_pinned(shim::ptr(t)) != 0 }
}

/// Page-locked memory held by the process, as the CUDA caching host
/// allocator counts it: every block at its rounded size (a power of two),
/// in use or cached for reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedStats {
    /// Bytes held now.
    pub current: u64,
    /// The most bytes held at once since the process started.
    pub peak: u64,
}

/// The CUDA host allocator's figures, or `None` where libtorch has no CUDA
/// (nothing is page-locked there).
pub fn pinned_stats() -> Option<PinnedStats> {
    if !tch::Cuda::is_available() {
        return None;
    }
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: the shim writes two integers, or returns an error string.
    let err = unsafe { shim::eqco_pinned_stats(&mut current, &mut peak) };
    shim::check("pinned memory statistics", err).ok()?;
    Some(PinnedStats {
        current: current.max(0) as u64,
        peak: peak.max(0) as u64,
    })
}

/// Hands the page-locked blocks that the CUDA host allocator keeps cached
/// (freed, but still locked for reuse) back to the driver, once `device`'s
/// work has finished. Nothing on the CPU.
pub fn release_cached_pinned(device: Device) -> Result<()> {
    let Device::Cuda(i) = device else {
        return Ok(());
    };
    // SAFETY: a plain call; an error string or null comes back.
    let err = unsafe { shim::eqco_pinned_release_cached(i as c_int) };
    shim::check("releasing cached pinned memory", err)
}

/// `values` as an int64 tensor on `device`. For a GPU they go through a
/// pinned buffer and a copy that does not block: index tensors drawn on the
/// host (negative subsets, shuffles) reach the device without a wait.
pub fn upload(values: &[i64], device: Device) -> Result<Tensor> {
    let host = Tensor::from_slice(values);
    if !device.is_cuda() {
        return Ok(host);
    }
    let mut pinned = pinned_empty(values.len(), Kind::Int64)?;
    pinned.copy_(&host);
    // libtorch's pinned allocator keeps the buffer until the copy is done.
    Ok(pinned.to_device_(device, Kind::Int64, true, false))
}

/// A CUDA event: it completes when the work queued on its stream before it
/// was recorded (an asynchronous copy, [`CopyStream::copy`]) has finished.
pub struct Event(*mut c_void);

// SAFETY: a c10::Event may be recorded on one thread and waited on in another.
unsafe impl Send for Event {}

impl Event {
    /// Whether the event has completed, without waiting.
    pub fn query(&self) -> Result<bool> {
        let mut done: c_int = 0;
        // SAFETY: a live event made by the shim.
        let err = unsafe { shim::eqco_event_query(self.0, &mut done) };
        shim::check("querying a CUDA event", err)?;
        Ok(done != 0)
    }

    /// Blocks the calling thread until the event has completed.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: a live event made by `record`.
        let err = unsafe { shim::eqco_event_synchronize(self.0) };
        shim::check("waiting for a CUDA event", err)
    }
}

/// A CUDA stream beside the compute stream, for copies of batches to the
/// device that overlap the compute queued before them.
pub struct CopyStream(*mut c_void);

// SAFETY: a c10::Stream is a plain handle to a stream that any thread may use.
unsafe impl Send for CopyStream {}
unsafe impl Sync for CopyStream {}

impl CopyStream {
    /// A stream of GPU `device` from c10's pool; an error on the CPU.
    pub fn new(device: Device) -> Result<CopyStream> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: the shim writes a new `c10::Stream*` on success.
        let err = unsafe { shim::eqco_copy_stream_new(cuda_index(device), &mut out) };
        shim::check("a CUDA stream for copies", err)?;
        Ok(CopyStream(out))
    }

    /// `host` (page-locked) copied to the stream's device without blocking:
    /// the copy runs on this stream, the compute stream waits for it before
    /// its later work reads the copy, and the copy's memory is not reused
    /// before the compute stream is done with it. Also returns the event
    /// after which `host` may be written again.
    pub fn copy(&self, host: &Tensor) -> Result<(Tensor, Event)> {
        let (mut out, mut copied): (*mut c_void, *mut c_void) =
            (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: a live tensor and stream; a new tensor and event come back.
        let err =
            unsafe { shim::eqco_copy_to_device(shim::ptr(host), self.0, &mut out, &mut copied) };
        shim::check("copying a batch to the GPU", err)?;
        // SAFETY: a fresh tensor owned by nobody else; a fresh event.
        Ok((unsafe { shim::tensor_from(out) }, Event(copied)))
    }
}

impl Drop for CopyStream {
    fn drop(&mut self) {
        // SAFETY: made by `new`, freed once.
        unsafe { shim::eqco_copy_stream_free(self.0) }
    }
}

fn cuda_index(device: Device) -> c_int {
    match device {
        Device::Cuda(i) => i as c_int,
        _ => 0,
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: made by `record`, freed once.
        unsafe { shim::eqco_event_free(self.0) }
    }
}
