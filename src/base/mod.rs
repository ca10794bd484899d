//! Base utilities every layer may use, and which use nothing above them:
//! the error type, atomic file writes, derived seeds, the C++ shim's Rust
//! side, PNG line plots, devices (precision, memory formats, pinned
//! memory), and stop signals.

pub mod device;
pub mod error;
pub mod io;
pub mod plot;
pub mod seed;
pub(crate) mod shim;
pub mod signals;
