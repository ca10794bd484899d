//! The compute section of a run's configuration: precision, memory format,
//! cuDNN's autotuner and the pinned-memory cap.

use serde::{Deserialize, Serialize};
use tch::Device;

use super::{Compute, MemoryFormat, Precision};
use crate::base::error::{Error, Result};

/// The keys `precision`, `memory_format`, `cudnn_benchmark` and `pinned_memory_mib`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// `auto` (bf16 where the hardware computes bfloat16 natively, else
    /// fp32), `fp32`, or `bf16` (autocast for the encoders' forward passes).
    pub precision: Precision,
    /// `channels_last` (NHWC images and convolution weights) or `contiguous` (NCHW).
    pub memory_format: MemoryFormat,
    /// On a GPU, let cuDNN time its convolution algorithms and keep the
    /// fastest (results then differ in the last bits between runs).
    pub cudnn_benchmark: bool,
    /// Cap of the pools of page-locked batch buffers the loaders fill for a
    /// GPU, in MiB, for the whole machine: its local workers
    /// (`LOCAL_WORLD_SIZE`) share it equally.
    pub pinned_memory_mib: usize,
}

impl Default for ComputeConfig {
    /// The hardware's fastest precision, channels-last, cuDNN's autotuner
    /// and 4 GiB of pinned memory.
    fn default() -> Self {
        ComputeConfig {
            precision: Precision::Auto,
            memory_format: MemoryFormat::ChannelsLast,
            cudnn_benchmark: true,
            pinned_memory_mib: 4096,
        }
    }
}

impl ComputeConfig {
    /// Checks every key of the section; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.pinned_memory_mib == 0 {
            return Err(Error::config("pinned_memory_mib", "0 (must be ≥ 1)"));
        }
        Ok(())
    }

    /// How to compute on `device`, the precision used and why, and a
    /// warning when the precision asked for is emulated (see [`Compute::resolve`]).
    pub fn resolve(&self, device: Device) -> (Compute, String, Option<String>) {
        Compute::resolve(self.precision, self.memory_format, device)
    }
}
