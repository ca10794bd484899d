//! The momentum (key) encoder: an exponential moving average of the query
//! encoder's parameters (MoCo's Eq. 2): `θ_k ← m·θ_k + (1 − m)·θ_q`.
//!
//! As in the reference code (facebookresearch/moco, and the paper's SiMo),
//! only the parameters are averaged; the key encoder's BN running statistics
//! come from its own forward passes in training mode. m = 0 copies.

use std::ffi::c_void;

use tch::nn::VarStore;
use tch::Tensor;

use crate::base::error::{Error, Result};
use crate::base::shim;

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

    /// `θ_k ← m·θ_k + (1 − m)·θ_q` for every parameter, as
    /// `θ_k + (1 − m)(θ_q − θ_k)` (`lerp_`) over all pairs in one
    /// multi-tensor call.
    pub fn update(&self, m: f64) {
        if self.pairs.is_empty() {
            return;
        }
        let keys: Vec<*const c_void> = self.pairs.iter().map(|(k, _)| shim::ptr(k)).collect();
        let queries: Vec<*const c_void> = self.pairs.iter().map(|(_, q)| shim::ptr(q)).collect();
        // SAFETY: pointers to live tensors of equal counts, used during the call only.
        let err =
            unsafe { shim::eqco_lerp(keys.as_ptr(), queries.as_ptr(), keys.len() as i64, 1.0 - m) };
        // Matched shapes were checked at construction; a failure is a bug.
        shim::check("the key encoder's moving average", err).expect("multi-tensor lerp failed");
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_multi_tensor_update_equals_lerp_per_parameter_bit_for_bit() {
        let query = VarStore::new(Device::Cpu);
        crate::base::seed::with_torch_seed(1, || {
            for (i, shape) in [vec![8, 4, 3, 3], vec![16], vec![5, 7]].iter().enumerate() {
                let _ = query.root().randn(&format!("w{i}"), shape, 0.0, 1.0);
            }
        });
        let mut key = VarStore::new(Device::Cpu);
        for (i, shape) in [vec![8, 4, 3, 3], vec![16], vec![5, 7]].iter().enumerate() {
            let _ = key.root().zeros(&format!("w{i}"), shape);
        }
        let ema = Ema::new(&mut key, &query).unwrap();
        // Move the query away from the key, so that the average does something.
        crate::base::seed::with_torch_seed(2, || {
            tch::no_grad(|| {
                for (_, q) in query.variables() {
                    let _ = q.shallow_clone().g_add_(&q.randn_like());
                }
            })
        });
        let expected: Vec<(String, Tensor)> = tch::no_grad(|| {
            let q = query.variables();
            let mut v: Vec<_> = key
                .variables()
                .into_iter()
                .map(|(n, k)| {
                    let out = k.copy();
                    let _ = out.shallow_clone().lerp_(&q[&n], 1.0 - 0.99);
                    (n, out)
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        });
        ema.update(0.99);
        let got = key.variables();
        for (n, e) in expected {
            assert!(got[&n].equal(&e), "{n}");
            assert_eq!(got[&n].kind(), Kind::Float);
        }
    }
}
