//! A var store's variables as named tensors, and back: what checkpoints
//! are made of. The names a checkpoint gives each part (`query.`, `key.`,
//! …) are the run folder's layout (`crate::run::checkpoint`).

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::base::error::{Error, Result};

/// Every variable of `vs`, sorted by name, prefixed.
pub fn named(prefix: &str, vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies the `prefix<name>` entries of `state` into the variables of
/// `vs`; a missing entry or one of another shape is an [`Error::Mismatch`]
/// naming the tensor.
pub fn load_named(prefix: &str, vs: &VarStore, state: &HashMap<String, Tensor>) -> Result<()> {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let key = format!("{prefix}{name}");
            let src = state
                .get(&key)
                .ok_or_else(|| Error::Mismatch(format!("no tensor `{key}`")))?;
            if src.size() != var.size() {
                return Err(Error::Mismatch(format!(
                    "`{key}` is {:?}, the model's {:?}",
                    src.size(),
                    var.size()
                )));
            }
            var.copy_(src);
        }
        Ok(())
    })
}
