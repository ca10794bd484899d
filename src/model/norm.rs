//! Batch normalisation whose training statistics come from this process's
//! batch or, synchronised, from the batch across every rank (SyncBN). The
//! variables are torchvision's (`weight`, `bias`, `running_mean`,
//! `running_var`); evaluation always uses the running statistics.

use std::sync::Arc;

use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::dist::Group;

/// Where batch normalisation takes its training statistics from.
#[derive(Clone, Default)]
pub enum Norm {
    /// This process's batch (in one process: the whole batch).
    #[default]
    Local,
    /// The batch of every rank of the group (SyncBN).
    Sync(Arc<Group>),
}

impl Norm {
    /// Synchronised over `group` when there is one, else local.
    pub fn sync_over(group: Option<&Arc<Group>>) -> Norm {
        group.map_or(Norm::Local, |g| Norm::Sync(g.clone()))
    }
}

/// A BatchNorm layer (1-D or 2-D).
#[derive(Debug)]
pub struct BatchNorm {
    inner: nn::BatchNorm,
    sync: Option<Arc<Group>>,
    momentum: f64,
    eps: f64,
}

/// BatchNorm over `c` channels under `p` with γ initialised to `gamma`
/// (1, or 0 for a zero-init residual), for `[N, C, H, W]` (`nd = 2`) or
/// `[N, C]` (`nd = 1`) inputs, with PyTorch's momentum 0.1 and ε 1e-5.
pub fn batch_norm(p: nn::Path, c: i64, gamma: f64, nd: usize, norm: &Norm) -> BatchNorm {
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(gamma),
        ..Default::default()
    };
    let inner = if nd == 1 {
        nn::batch_norm1d(p, c, cfg)
    } else {
        nn::batch_norm2d(p, c, cfg)
    };
    BatchNorm {
        inner,
        sync: match norm {
            Norm::Sync(g) => Some(g.clone()),
            _ => None,
        },
        momentum: cfg.momentum,
        eps: cfg.eps,
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match (&self.sync, train, &self.inner.ws, &self.inner.bs) {
            (Some(group), true, Some(w), Some(b)) => group
                .sync_batch_norm(
                    xs,
                    w,
                    b,
                    &self.inner.running_mean,
                    &self.inner.running_var,
                    self.momentum,
                    self.eps,
                )
                .unwrap_or_else(|e| {
                    // A forward pass cannot return an error: record it for
                    // the trainer, which checks after the step, and go on
                    // with NaNs (later collectives fail at once too).
                    group.fail(e);
                    xs.full_like(f64::NAN)
                }),
            _ => self.inner.forward_t(xs, train),
        }
    }
}
