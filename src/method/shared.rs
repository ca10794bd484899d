//! Parts the frameworks share: a query encoder with its momentum twin, the
//! loss with its diagnostics, and per-step random streams.

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::Tensor;

use super::StepOutput;
use crate::device::Compute;
use crate::dist::{BnMode, World};
use crate::error::{Error, Result};
use crate::loss::{grad_norm_q, InfoNceOutput, Negatives};
use crate::model::{Ema, Encoder, EncoderConfig, Norm};
use crate::seed::derive;

/// A query encoder and its momentum (key) encoder.
pub struct MomentumPair {
    /// The query encoder's variables (trained).
    pub query_vs: VarStore,
    /// The query encoder.
    pub query: Encoder,
    /// The key encoder's variables (frozen, moving average of the query's).
    pub key_vs: VarStore,
    /// The key encoder.
    pub key: Encoder,
    ema: Ema,
}

impl MomentumPair {
    /// Two encoders of the same structure, the key one a copy of the query
    /// one, with batch normalisation as `norm` says.
    pub fn new(cfg: &EncoderConfig, compute: Compute, norm: &Norm) -> Result<MomentumPair> {
        let query_vs = VarStore::new(compute.device);
        let query = Encoder::new(&query_vs.root(), cfg, compute, norm)?;
        let mut key_vs = VarStore::new(compute.device);
        let key = Encoder::new(&key_vs.root(), cfg, compute, norm)?;
        compute.prepare(&query_vs);
        compute.prepare(&key_vs);
        let ema = Ema::new(&mut key_vs, &query_vs)?;
        Ok(MomentumPair {
            query_vs,
            query,
            key_vs,
            key,
            ema,
        })
    }

    /// `θ_k ← m·θ_k + (1 − m)·θ_q`.
    pub fn momentum_update(&self, m: f64) {
        self.ema.update(m);
    }

    /// The key encoder's variables, named `key.<name>`.
    pub fn key_state(&self) -> Vec<(String, Tensor)> {
        named("key.", &self.key_vs)
    }

    /// Restores the key encoder from `key.<name>` entries.
    pub fn load_key_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        load_named("key.", &self.key_vs, state)
    }
}

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

/// Copies `prefix<name>` entries of `state` into the variables of `vs`.
pub fn load_named(prefix: &str, vs: &VarStore, state: &HashMap<String, Tensor>) -> Result<()> {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let src = state
                .get(&format!("{prefix}{name}"))
                .ok_or_else(|| Error::Internal(format!("checkpoint has no {prefix}{name}")))?;
            if src.size() != var.size() {
                return Err(Error::Internal(format!(
                    "checkpoint's {prefix}{name} is {:?}, the model's {:?}",
                    src.size(),
                    var.size()
                )));
            }
            var.copy_(src);
        }
        Ok(())
    })
}

/// The RNG of one step's sampling for one purpose.
pub fn step_rng(seed: u64, purpose: u64, step: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, &[purpose, step]))
}

/// The step's output: the loss, its MI bound's offset and the mean
/// closed-form `‖∂L_i/∂q_i‖` for positives `k_pos` and the given negatives
/// (still on the device).
pub fn finish(out: InfoNceOutput, k_pos: &Tensor, negatives: Negatives<'_>) -> StepOutput {
    let grad_norm_q = grad_norm_q(&out, &k_pos.detach(), negatives).mean(tch::Kind::Float);
    StepOutput {
        mi_bound_offset: out.mi_bound_offset(),
        grad_norm_q,
        loss: out.loss,
    }
}

/// Every rank's rows of `t` stacked in rank order, without a gradient
/// (`t` itself in a world of one).
pub fn gather_rows(t: &Tensor, world: &World) -> Result<Tensor> {
    match world.group() {
        Some(g) => g.all_gather(t),
        None => Ok(t.shallow_clone()),
    }
}

/// The normalisation the encoders of a method use in `mode`: synchronised
/// over the group for `sync` (when there is more than one process), else local.
pub fn norm_for(mode: BnMode, world: &World) -> Norm {
    match mode {
        BnMode::Sync => Norm::sync_over(world.group()),
        BnMode::Shuffle | BnMode::Local => Norm::Local,
    }
}
