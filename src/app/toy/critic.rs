//! The separable critic `f(x, y) = g(x)·h(y)` of the toy experiment.

use tch::nn::{self, Module};
use tch::Tensor;

/// Two MLPs `d → hidden → ReLU → embed`, one for x and one for y.
///
/// The paper gives one hidden layer of 256 units; the output width is ours
/// (32, the usual choice of the literature it follows, Poole et al. 2019).
#[derive(Debug)]
pub struct SeparableCritic {
    g: nn::Sequential,
    h: nn::Sequential,
}

fn mlp(p: nn::Path, dim: i64, hidden: i64, embed: i64) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(&p / "0", dim, hidden, Default::default()))
        .add_fn(|t| t.relu())
        .add(nn::linear(&p / "2", hidden, embed, Default::default()))
}

impl SeparableCritic {
    /// A critic with freshly initialised weights (PyTorch's `nn.Linear` init) under `p`.
    pub fn new(p: &nn::Path, dim: i64, hidden: i64, embed: i64) -> Self {
        SeparableCritic {
            g: mlp(p / "g", dim, hidden, embed),
            h: mlp(p / "h", dim, hidden, embed),
        }
    }

    /// All pairs' scores `f(x_i, y_j) = g(x_i)·h(y_j)`, `[B, B]`; positives on the diagonal.
    pub fn scores(&self, x: &Tensor, y: &Tensor) -> Tensor {
        self.g.forward(x).matmul(&self.h.forward(y).tr())
    }
}
