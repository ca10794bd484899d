//! The distributed section of a run's configuration: the collective
//! backend, gradient overlap and how long a process waits for the others.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Backend, Timeouts};
use crate::base::error::{Error, Result};

/// The keys `dist_backend`, `grad_overlap`, `dist_timeout` and `dist_join_timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Collectives: `auto` (NCCL on GPUs, Gloo on the CPU), `gloo` or `nccl`.
    pub dist_backend: Backend,
    /// With several processes, all-reduce each bucket of gradients as soon
    /// as backward has accumulated them, overlapping communication with the
    /// rest of backward (as DDP); `false` averages them after backward.
    /// Both give the same sums; bit for bit at 2 processes (tested), in the
    /// last bits beyond, where the order of a ring all-reduce's additions
    /// depends on the buckets' layout.
    pub grad_overlap: bool,
    /// Seconds any wait on another process may take once every rank has
    /// joined (every collective and barrier) before the job ends with an error.
    pub dist_timeout: f64,
    /// Seconds to reach the rendezvous store and for every rank to join:
    /// a peer that never starts ends the job then, named.
    pub dist_join_timeout: f64,
}

impl Default for DistConfig {
    /// The device's backend, overlapped gradients, 30 minutes per wait and
    /// 5 to join.
    fn default() -> Self {
        DistConfig {
            dist_backend: Backend::Auto,
            grad_overlap: true,
            dist_timeout: 1800.0,
            dist_join_timeout: 300.0,
        }
    }
}

impl DistConfig {
    /// Checks every key of the section; the error names the key.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("dist_timeout", self.dist_timeout),
            ("dist_join_timeout", self.dist_join_timeout),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::config(
                    key,
                    format!("{value} (seconds, must be > 0)"),
                ));
            }
        }
        Ok(())
    }

    /// The waits as durations.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            join: Duration::from_secs_f64(self.dist_join_timeout),
            collective: Duration::from_secs_f64(self.dist_timeout),
        }
    }
}
