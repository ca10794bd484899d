//! The momentum (key) encoder: an exponential moving average of the query
//! encoder's parameters (MoCo's Eq. 2): `θ_k ← m·θ_k + (1 − m)·θ_q`.
//!
//! As in the reference code (facebookresearch/moco, and the paper's SiMo),
//! only the parameters are averaged; the key encoder's BN running statistics
//! come from its own forward passes in training mode. m = 0 copies.

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{Error, Result};

/// Matched (key, query) parameter pairs of two identically built var stores.
pub struct Ema {
    pairs: Vec<(Tensor, Tensor)>,
}

impl Ema {
    /// Pairs every trainable variable of `query` with the one of the same name
    /// in `key`; freezes `key` and copies `query` into it.
    pub fn new(key: &mut VarStore, query: &VarStore) -> Result<Ema> {
        key.copy(query)?;
        key.freeze();
        let kv = key.variables();
        let mut names: Vec<_> = query
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let pairs = names
            .into_iter()
            .map(|(name, q)| match kv.get(&name) {
                Some(k) => Ok((k.shallow_clone(), q)),
                None => Err(Error::Internal(format!(
                    "key encoder has no parameter {name}"
                ))),
            })
            .collect::<Result<_>>()?;
        Ok(Ema { pairs })
    }

    /// `θ_k ← m·θ_k + (1 − m)·θ_q` for every parameter.
    pub fn update(&self, m: f64) {
        tch::no_grad(|| {
            for (k, q) in &self.pairs {
                // k + (1 − m)(q − k) = m·k + (1 − m)·q, in one pass.
                let _ = k.shallow_clone().lerp_(q, 1.0 - m);
            }
        });
    }

    /// The number of averaged parameters.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
