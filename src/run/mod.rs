//! The run folder and everything in it: the configuration composed of the
//! layers' sections ([`config`], with the monitor and output section in
//! [`monitor`]), checkpoints and how they are opened ([`checkpoint`]), the
//! metrics file ([`metrics`]), TensorBoard's event files ([`tensorboard`]),
//! the folder itself ([`folder`]) and its lock ([`lock`]).

pub mod checkpoint;
pub mod config;
pub mod folder;
pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod tensorboard;

pub use checkpoint::{Checkpoint, RunCheckpoint};
pub use config::{MethodName, PretrainConfig, PRESETS};
pub use folder::run_config;
