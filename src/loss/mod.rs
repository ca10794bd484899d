//! Contrastive losses: InfoNCE with a margin (Eq. 1), the EqCo rule (Eq. 5),
//! negative selection, and the diagnostics of Eq. 4/6 and Theorem 2.
//!
//! Typical use, for L2-normalised queries `q: [N, D]`, positives `k: [N, D]`
//! and a queue `[K, D]`:
//!
//! ```no_run
//! # use eqco::loss::{info_nce, LossConfig, Negatives};
//! # let (q, k, queue) = (tch::Tensor::zeros([4, 8], tch::kind::FLOAT_CPU), tch::Tensor::zeros([4, 8], tch::kind::FLOAT_CPU), tch::Tensor::zeros([16, 8], tch::kind::FLOAT_CPU));
//! let cfg = LossConfig::eqco(0.2, 256.0); // m = τ·ln(α/K)
//! let out = info_nce(&q, &k, Negatives::Shared(&queue), &cfg)?;
//! out.loss.backward();
//! println!("MI bound {:.3}", out.mi_bound());
//! # Ok::<(), eqco::Error>(())
//! ```

pub mod diagnostics;
pub mod eqco;
pub mod infonce;
pub mod negatives;

pub use diagnostics::{grad_norm_bound, grad_norm_q, grad_q};
pub use eqco::{eqco_margin, LossConfig};
pub use infonce::{info_nce, info_nce_from_similarities, split_diagonal, InfoNceOutput, Negatives};
