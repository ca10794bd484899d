//! InfoNCE with a margin (paper Eq. 1).
//!
//! For a query `q`, its positive key `k0` and negatives `k1..kK`, all
//! L2-normalised:
//!
//! ```text
//! L = −ln( exp((q·k0 − m)/τ) / ( exp((q·k0 − m)/τ) + Σ_i exp(q·ki/τ) ) )
//! ```
//!
//! i.e. cross-entropy with target 0 over the logits
//! `[(q·k0 − m)/τ, q·k1/τ, …, q·kK/τ]`, computed with a log-sum-exp. The margin
//! `m` comes from a [`LossConfig`]: 0 for plain InfoNCE, `τ·ln(α/K)` for EqCo.

use tch::{Kind, Tensor};

use super::LossConfig;
use crate::base::error::{Error, Result};

/// The negatives each query is contrasted with.
#[derive(Debug, Clone, Copy)]
pub enum Negatives<'a> {
    /// `[K, D]`: the same K keys for every query (a MoCo queue, a shared subset).
    Shared(&'a Tensor),
    /// `[N, K, D]`: K keys of its own for each query.
    PerQuery(&'a Tensor),
    /// K of the keys `[M, D]` for each query, chosen by indices `idx: [N, K]`
    /// (distinct within a row): in-batch negatives without copying keys.
    Indexed {
        /// The candidate keys `[M, D]`.
        keys: &'a Tensor,
        /// Row i lists the keys query i is contrasted with, `[N, K]` int64.
        idx: &'a Tensor,
    },
}

impl Negatives<'_> {
    /// The key tensor, `[K, D]`, `[N, K, D]` or `[M, D]`.
    pub fn keys(&self) -> &Tensor {
        match self {
            Negatives::Shared(keys)
            | Negatives::PerQuery(keys)
            | Negatives::Indexed { keys, .. } => keys,
        }
    }

    /// The similarities `q·ki`, `[N, K]`, for queries `q: [N, D]`.
    pub fn similarities(&self, q: &Tensor) -> Tensor {
        match self {
            Negatives::Shared(keys) => q.matmul(&keys.tr()),
            Negatives::PerQuery(keys) => keys.bmm(&q.unsqueeze(2)).squeeze_dim(2),
            Negatives::Indexed { keys, idx } => {
                super::negatives::gather_similarities(&q.matmul(&keys.tr()), idx)
            }
        }
    }

    /// `Σ_i w_i·ki` per query, `[N, D]`, for weights `w: [N, K]`.
    pub fn weighted_sum(&self, w: &Tensor) -> Tensor {
        match self {
            Negatives::Shared(keys) => w.matmul(keys),
            Negatives::PerQuery(keys) => w.unsqueeze(1).bmm(keys).squeeze_dim(1),
            Negatives::Indexed { keys, idx } => {
                let (n, m) = (idx.size()[0], keys.size()[0]);
                Tensor::zeros([n, m], (w.kind(), w.device()))
                    .scatter(1, idx, w)
                    .matmul(keys)
            }
        }
    }

    fn check(&self, n: i64, d: i64) -> Result<i64> {
        let (shape, ok) = match self {
            Negatives::Shared(keys) => {
                let s = keys.size();
                let ok = s.len() == 2 && s[1] == d;
                (s, ok)
            }
            Negatives::PerQuery(keys) => {
                let s = keys.size();
                let ok = s.len() == 3 && s[0] == n && s[2] == d;
                (s, ok)
            }
            Negatives::Indexed { keys, idx } => {
                let (s, i) = (keys.size(), idx.size());
                let ok = s.len() == 2
                    && s[1] == d
                    && i.len() == 2
                    && i[0] == n
                    && idx.kind() == Kind::Int64;
                (i, ok)
            }
        };
        if !ok {
            return Err(Error::Shape {
                context: "info_nce negatives",
                message: format!(
                    "got {shape:?}, expected [K, {d}] (shared), [{n}, K, {d}] (per query) or int64 indices [{n}, K] into keys [M, {d}]"
                ),
            });
        }
        Ok(match self {
            Negatives::Indexed { .. } => shape[1],
            _ => shape[shape.len() - 2],
        })
    }
}

/// The loss of a batch, with what the diagnostics need.
#[derive(Debug)]
pub struct InfoNceOutput {
    /// Per-query losses `L_i`, `[N]`, float32 (float64 for float64 inputs).
    pub per_query: Tensor,
    /// Their mean, a scalar: what the optimizer minimises.
    pub loss: Tensor,
    /// The logits `[(q·k0 − m)/τ, q·ki/τ]`, `[N, 1 + K]`, of the loss's kind.
    pub logits: Tensor,
    /// The number K of negatives per query.
    pub k: usize,
    /// The margin m that was applied.
    pub margin: f64,
    /// The temperature τ that was applied.
    pub tau: f64,
}

impl InfoNceOutput {
    /// The softmax probabilities `p_j` over the logits, `[N, 1 + K]`, detached.
    pub fn probabilities(&self) -> Tensor {
        self.logits.detach().softmax(1, self.logits.kind())
    }

    /// The batch's empirical MI lower bound `ln K + m/τ − L` (Eq. 4 and 6);
    /// reads the loss from the device.
    pub fn mi_bound(&self) -> f64 {
        self.mi_bound_offset() - self.loss.double_value(&[])
    }

    /// `ln K + m/τ`: the MI bound (Eq. 4 and 6) is this minus the mean loss
    /// (`ln α` under EqCo).
    pub fn mi_bound_offset(&self) -> f64 {
        (self.k as f64).ln() + self.margin / self.tau
    }
}

/// InfoNCE with margin (Eq. 1) over L2-normalised queries `q: [N, D]`, their
/// positive keys `k_pos: [N, D]` and `negatives`.
pub fn info_nce(
    q: &Tensor,
    k_pos: &Tensor,
    negatives: Negatives<'_>,
    cfg: &LossConfig,
) -> Result<InfoNceOutput> {
    let qs = q.size();
    if qs.len() != 2 || k_pos.size() != qs {
        return Err(Error::Shape {
            context: "info_nce",
            message: format!(
                "queries {qs:?} and positive keys {:?} must both be [N, D]",
                k_pos.size()
            ),
        });
    }
    negatives.check(qs[0], qs[1])?;
    let pos = (q * k_pos).sum_dim_intlist(1, false, None::<Kind>);
    info_nce_from_similarities(&pos, &negatives.similarities(q), cfg)
}

/// InfoNCE with margin (Eq. 1) from precomputed similarities: the positives'
/// `pos: [N]` and the negatives' `neg: [N, K]` (dot products, not yet over τ).
pub fn info_nce_from_similarities(
    pos: &Tensor,
    neg: &Tensor,
    cfg: &LossConfig,
) -> Result<InfoNceOutput> {
    let (ps, ns) = (pos.size(), neg.size());
    if ps.len() != 1 || ns.len() != 2 || ns[0] != ps[0] {
        return Err(Error::Shape {
            context: "info_nce_from_similarities",
            message: format!("positives {ps:?} must be [N] and negatives {ns:?} [N, K]"),
        });
    }
    let k = ns[1] as usize;
    let margin = cfg.margin_for(k)?;
    let tau = cfg.tau;
    // Half-precision similarities (autocast) are promoted: the loss is float32 or float64.
    let kind = if pos.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let pos_logit = ((pos.to_kind(kind) - margin) / tau).unsqueeze(1);
    let logits = Tensor::cat(&[pos_logit, neg.to_kind(kind) / tau], 1);
    let per_query = logits.logsumexp(1, false) - logits.select(1, 0);
    let loss = per_query.mean(kind);
    Ok(InfoNceOutput {
        per_query,
        loss,
        logits,
        k,
        margin,
        tau,
    })
}

/// Scores `[N, N]` whose diagonal holds the positives, split into the
/// positives `[N]` and the off-diagonal negatives `[N, N − 1]` (row order kept).
pub fn split_diagonal(scores: &Tensor) -> Result<(Tensor, Tensor)> {
    let s = scores.size();
    if s.len() != 2 || s[0] != s[1] || s[0] < 2 {
        return Err(Error::Shape {
            context: "split_diagonal",
            message: format!("scores {s:?} must be square [N, N] with N ≥ 2"),
        });
    }
    let n = s[0];
    let pos = scores.diagonal(0, 0, 1);
    // The N² entries without the first are N − 1 runs of [N off-diagonal, 1 diagonal].
    let neg = scores
        .flatten(0, 1)
        .narrow(0, 1, n * n - 1)
        .view([n - 1, n + 1])
        .narrow(1, 0, n)
        .reshape([n, n - 1]);
    Ok((pos, neg))
}
