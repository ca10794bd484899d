//! Page-locked (pinned) host memory for batches bound for a GPU: a copy out
//! of it is a DMA transfer that the CPU does not wait for.

use std::ffi::c_void;

use tch::Tensor;

use crate::error::Result;
use crate::shim;

/// An uninitialised page-locked float32 tensor of `len` elements (an error
/// on a machine without CUDA).
pub fn empty(len: usize) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: the shim writes a new `at::Tensor*` to `out` on success.
    let err = unsafe { shim::eqco_pinned_empty(len as i64, &mut out) };
    shim::check("pinned memory", err)?;
    // SAFETY: a fresh tensor owned by nobody else.
    Ok(unsafe { shim::tensor_from(out) })
}

/// Whether `t` lives in page-locked memory.
pub fn is_pinned(t: &Tensor) -> bool {
    // SAFETY: reads a property of a live tensor.
    unsafe { shim::eqco_is_pinned(shim::ptr(t)) != 0 }
}
