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
    /// joined (every collective and barrier) before the job ends with an
    /// error; unset: PyTorch's defaults, 600 on NCCL and 1800 on Gloo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist_timeout: Option<f64>,
    /// Seconds to reach the rendezvous store and for every rank to join:
    /// a peer that never starts ends the job then, named.
    pub dist_join_timeout: f64,
    /// Build the process group, and synchronise BN over it, even for a
    /// single process: a group of one trains what no group trains, through
    /// the collective code (how `scripts/gpu-check.sh` runs NCCL on one GPU).
    pub dist_one_rank_group: bool,
}

impl Default for DistConfig {
    /// The device's backend, overlapped gradients, the backend's wait
    /// ([`DistConfig::timeouts`]) and 5 minutes to join.
    fn default() -> Self {
        DistConfig {
            dist_backend: Backend::Auto,
            grad_overlap: true,
            dist_timeout: None,
            dist_join_timeout: 300.0,
            dist_one_rank_group: false,
        }
    }
}

impl DistConfig {
    /// Checks every key of the section; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let set = [
            ("dist_timeout", self.dist_timeout),
            ("dist_join_timeout", Some(self.dist_join_timeout)),
        ];
        for (key, value) in set.into_iter().filter_map(|(k, v)| Some((k, v?))) {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::config(
                    key,
                    format!("{value} (seconds, must be > 0)"),
                ));
            }
        }
        Ok(())
    }

    /// The waits as durations on `backend` (resolved: Gloo or NCCL).
    /// Unset, a collective may wait as long as PyTorch lets it by default:
    /// 10 minutes on NCCL (whose watchdog then ends the process), 30 on Gloo.
    pub fn timeouts(&self, backend: Backend) -> Timeouts {
        let default = match backend {
            Backend::Nccl => NCCL_TIMEOUT,
            _ => GLOO_TIMEOUT,
        };
        Timeouts {
            join: Duration::from_secs_f64(self.dist_join_timeout),
            collective: self.dist_timeout.map_or(default, Duration::from_secs_f64),
        }
    }
}

/// PyTorch's default wait on NCCL (`default_pg_nccl_timeout`).
pub const NCCL_TIMEOUT: Duration = Duration::from_secs(600);

/// PyTorch's default wait on Gloo (`default_pg_timeout`).
pub const GLOO_TIMEOUT: Duration = Duration::from_secs(1800);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_defaults_to_pytorchs_per_backend() {
        let unset = DistConfig::default();
        assert_eq!(
            unset.timeouts(Backend::Nccl).collective,
            Duration::from_secs(600)
        );
        assert_eq!(
            unset.timeouts(Backend::Gloo).collective,
            Duration::from_secs(1800)
        );
        let set = DistConfig {
            dist_timeout: Some(5.0),
            ..DistConfig::default()
        };
        assert_eq!(
            set.timeouts(Backend::Nccl).collective,
            Duration::from_secs(5)
        );
        assert!(DistConfig {
            dist_timeout: Some(0.0),
            ..DistConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn validation_names_the_key_and_leaves_an_unset_wait_alone() {
        assert!(DistConfig::default().validate().is_ok());
        let named = |cfg: DistConfig| cfg.validate().unwrap_err().to_string();
        let timeout = named(DistConfig {
            dist_timeout: Some(f64::NAN),
            ..DistConfig::default()
        });
        assert!(timeout.contains("dist_timeout"), "{timeout}");
        let join = named(DistConfig {
            dist_join_timeout: -1.0,
            ..DistConfig::default()
        });
        assert!(join.contains("dist_join_timeout"), "{join}");
    }
}
