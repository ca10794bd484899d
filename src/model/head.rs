//! Projection heads: linear (MoCo v1), MLP (MoCo v2, SimCLR), and MLP with BN
//! after each linear layer (SiMo).

use serde::{Deserialize, Serialize};
use tch::nn;

use super::norm::{batch_norm, Norm};
use tch::Tensor;

/// Which head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// `Linear(features → embed)`.
    Linear,
    /// `Linear(features → hidden) → ReLU → Linear(hidden → embed)`.
    Mlp,
    /// SiMo's: `Linear(features → hidden, no bias) → BN → ReLU →
    /// Linear(hidden → embed, no bias) → BN`, linear weights N(0, 0.01²).
    MlpBn,
}

fn linear(p: nn::Path, i: i64, o: i64, bias: bool, small_init: bool) -> nn::Linear {
    let mut cfg = nn::LinearConfig {
        bias,
        ..Default::default()
    };
    if small_init {
        cfg.ws_init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
    }
    nn::linear(p, i, o, cfg)
}

/// Builds a head under `p` (its layers are `p.0`, `p.1`, … as in a PyTorch
/// `nn.Sequential`); an `mlp-bn` head's BN as `norm` says.
pub fn head(
    p: &nn::Path,
    kind: HeadKind,
    features: i64,
    hidden: i64,
    embed: i64,
    norm: &Norm,
) -> nn::SequentialT {
    match kind {
        HeadKind::Linear => nn::seq_t().add(linear(p / "0", features, embed, true, false)),
        HeadKind::Mlp => nn::seq_t()
            .add(linear(p / "0", features, hidden, true, false))
            .add_fn(|x| x.relu())
            .add(linear(p / "2", hidden, embed, true, false)),
        HeadKind::MlpBn => nn::seq_t()
            .add(linear(p / "0", features, hidden, false, true))
            .add(batch_norm(p / "1", hidden, 1.0, 1, norm))
            .add_fn(|x| x.relu())
            .add(linear(p / "3", hidden, embed, false, true))
            .add(batch_norm(p / "4", embed, 1.0, 1, norm)),
    }
}

/// Each row of `t` `[N, D]` divided by its L2 norm (at least 1e-12).
pub fn l2_normalize(t: &Tensor) -> Tensor {
    t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}
