//! Parts the frameworks share: a query encoder with its momentum twin,
//! per-step random streams, gathered rows and the batch normalisation of a
//! mode.

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::Tensor;

use crate::base::device::Compute;
use crate::base::error::Result;
use crate::base::seed::derive;
use crate::dist::{BnMode, World};
use crate::model::state::{load_named, named};
use crate::model::{Ema, Encoder, EncoderConfig, Norm};

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

/// The RNG of one step's sampling for one purpose.
pub fn step_rng(seed: u64, purpose: u64, step: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, &[purpose, step]))
}

/// The RNG of one row's sampling (`row` of the global batch) at one step
/// for one purpose: a rank that draws only its rows draws what one process does.
pub fn row_rng(seed: u64, purpose: u64, step: u64, row: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, &[purpose, step, row as u64]))
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
