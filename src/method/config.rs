//! The method section of a run's configuration: the framework, its
//! negatives K, its momentum encoder and how it normalises batches.

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::dist::BnMode;

/// The frameworks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    /// MoCo v2 without queue: momentum keys of the batch, a shared K-subset of negatives.
    Simo,
    /// MoCo v1: momentum encoder, queue, shuffle BN, linear head.
    Mocov1,
    /// MoCo v2: MoCo v1 with an MLP head and aug+.
    Mocov2,
    /// SimCLR: one encoder, in-batch negatives, symmetric loss.
    Simclr,
    /// The supervised baseline: the backbone and a linear classifier trained
    /// with cross-entropy on the labels (view 1 only; no K, τ or α).
    Supervised,
}

impl MethodName {
    /// Whether the method has a momentum key encoder (MoCo's, SiMo's).
    pub fn has_key_encoder(self) -> bool {
        matches!(
            self,
            MethodName::Simo | MethodName::Mocov1 | MethodName::Mocov2
        )
    }
}

/// The keys `method`, `k_negatives`, `queue_size`, `shuffle_bn_groups`,
/// `ema_momentum` and `bn`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// The framework: `simo`, `mocov1`, `mocov2`, `simclr`, or the
    /// `supervised` baseline.
    pub method: MethodName,
    /// Negatives per query K (SiMo: ≤ N − 1, default N − 1; SimCLR: ≤ 2(N − 1),
    /// default 2(N − 1); MoCo: the queue, set `queue_size`).
    pub k_negatives: Option<usize>,
    /// MoCo's queue length (its K).
    pub queue_size: usize,
    /// MoCo's shuffle BN: sub-batches with their own BN statistics.
    pub shuffle_bn_groups: i64,
    /// Momentum m of the key encoder's moving average (0 = copy).
    pub ema_momentum: f64,
    /// Batch normalisation across devices: `sync` (statistics of the global
    /// batch), `shuffle` (MoCo's: keys from a batch shuffled across ranks
    /// and `shuffle_bn_groups` groups) or `local` [default: sync for SiMo,
    /// SimCLR and the supervised baseline, shuffle for MoCo].
    pub bn: Option<BnMode>,
}

impl Default for MethodConfig {
    /// SiMo with K the whole batch.
    fn default() -> Self {
        MethodConfig {
            method: MethodName::Simo,
            k_negatives: None,
            queue_size: 4096,
            shuffle_bn_groups: 1,
            ema_momentum: 0.999,
            bn: None,
        }
    }
}

impl MethodConfig {
    /// Checks the keys of the section that do not depend on the batch; the
    /// error names the key.
    pub fn validate(&self) -> Result<()> {
        if matches!(self.method, MethodName::Mocov1 | MethodName::Mocov2) {
            if self.queue_size == 0 {
                return Err(Error::config("queue_size", "0 (must be ≥ 1)"));
            }
            if let Some(k) = self.k_negatives.filter(|&k| k != self.queue_size) {
                return Err(Error::config(
                    "k_negatives",
                    format!(
                        "{k} differs from queue_size {}: MoCo's negatives are its queue, set queue_size instead",
                        self.queue_size
                    ),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.ema_momentum) {
            return Err(Error::config(
                "ema_momentum",
                format!("{} (must be in [0, 1])", self.ema_momentum),
            ));
        }
        if self.bn() == BnMode::Shuffle && !self.method.has_key_encoder() {
            return Err(Error::config(
                "bn",
                "shuffle needs a momentum key encoder (simo, mocov1, mocov2); use sync or local",
            ));
        }
        Ok(())
    }

    /// Checks K and shuffle BN's groups against the global batch `n`.
    pub fn validate_batch(&self, n: usize) -> Result<()> {
        let k = self.k(n);
        match self.method {
            MethodName::Simo if k == 0 || k > n - 1 => {
                return Err(Error::config(
                    "k_negatives",
                    format!("{k} (SiMo takes its negatives from the other keys of the batch: 1 to {} for batch_size {n})", n - 1),
                ))
            }
            MethodName::Simclr if k == 0 || k > 2 * (n - 1) => {
                return Err(Error::config(
                    "k_negatives",
                    format!("{k} (SimCLR has 2(N − 1) = {} in-batch negatives for batch_size {n})", 2 * (n - 1)),
                ))
            }
            _ => {}
        }
        if self.bn() == BnMode::Shuffle
            && (self.shuffle_bn_groups < 1 || self.shuffle_bn_groups as usize > n / 2)
        {
            return Err(Error::config(
                "shuffle_bn_groups",
                format!(
                    "{} (1 to {}: each group needs at least 2 images for BN)",
                    self.shuffle_bn_groups,
                    n / 2
                ),
            ));
        }
        Ok(())
    }

    /// Checks that the global batch `n` and shuffle BN's groups split over
    /// `world` processes; errors name the key.
    pub fn validate_world(&self, n: usize, world: usize) -> Result<()> {
        if n % world != 0 {
            return Err(Error::config(
                "batch_size",
                format!("{n} does not split over {world} processes (batch_size is the global N; it must be a multiple of the world size)"),
            ));
        }
        if n / world < 2 && self.bn() != BnMode::Sync {
            return Err(Error::config(
                "batch_size",
                format!("{n} over {world} processes leaves fewer than 2 images per process for BN"),
            ));
        }
        if self.bn() == BnMode::Shuffle && self.shuffle_bn_groups as usize % world != 0 {
            return Err(Error::config(
                "shuffle_bn_groups",
                format!(
                    "{} BN groups do not split over {world} processes (use a multiple of {world}: each process takes its share of the groups)",
                    self.shuffle_bn_groups
                ),
            ));
        }
        Ok(())
    }

    /// The number of negatives per query K for a global batch of `n`.
    pub fn k(&self, n: usize) -> usize {
        match self.method {
            MethodName::Simo => self.k_negatives.unwrap_or(n.saturating_sub(1)),
            MethodName::Simclr => self.k_negatives.unwrap_or(2 * n.saturating_sub(1)),
            MethodName::Mocov1 | MethodName::Mocov2 => self.queue_size,
            MethodName::Supervised => 0,
        }
    }

    /// The batch normalisation mode: `bn`, else the paper's for the method
    /// (shuffle BN for MoCo, synchronised BN for the others).
    pub fn bn(&self) -> BnMode {
        self.bn.unwrap_or(match self.method {
            MethodName::Mocov1 | MethodName::Mocov2 => BnMode::Shuffle,
            _ => BnMode::Sync,
        })
    }

    /// Shuffle BN's groups per process for `world` processes.
    pub fn groups_per_rank(&self, world: usize) -> i64 {
        (self.shuffle_bn_groups / world as i64).max(1)
    }
}
