//! SiMo (the paper's simplified MoCo v2): no queue. The momentum encoder
//! embeds view 2 of the whole batch; query i's positive is key i and its
//! negatives are one random K-subset of the other keys, shared by every row;
//! EqCo margin; one-directional loss (view 1 queries, view 2 keys).
//!
//! Across ranks each process holds a slice of the global batch: the keys
//! are all-gathered, and every rank takes the same K-subset of the global
//! batch for its rows. BN statistics are the global batch's (`bn = sync`,
//! the paper's), or, for the Table 7 ablation, MoCo's shuffle BN.

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use super::shared::{gather_rows, norm_for, step_rng, MomentumPair};
use super::shuffle::PairNorm;
use super::{Contrast, Forward, Method, MethodConfig, NegativeKeys, Shape};
use crate::base::device::memory::upload;
use crate::base::device::Compute;
use crate::base::error::Result;
use crate::data::TwoViewBatch;
use crate::dist::World;
use crate::loss::negatives;

/// Seed stream of the negative subsets.
const NEGATIVES: u64 = 11;

/// SiMo with K shared in-batch negatives.
pub struct Simo {
    pair: MomentumPair,
    norm: PairNorm,
    k: usize,
    ema_momentum: f64,
    seed: u64,
    world: World,
}

impl Simo {
    /// SiMo as `cfg` says for `shape`, one of `world`'s ranks.
    pub fn new(cfg: &MethodConfig, shape: &Shape, compute: Compute, world: &World) -> Result<Simo> {
        Ok(Simo {
            pair: MomentumPair::new(&shape.encoder, compute, &norm_for(cfg.bn(), world))?,
            norm: PairNorm::new(cfg, shape.seed, world),
            k: cfg.k(shape.batch_size),
            ema_momentum: cfg.ema_momentum,
            seed: shape.seed,
            world: world.clone(),
        })
    }

    /// Rows `[r·n, (r + 1)·n)` of SiMo's indices `[N, K]` for the global
    /// batch: one K-subset of the other keys, the same on every rank.
    fn negative_indices(&self, n_global: usize, step: u64, device: tch::Device) -> Result<Tensor> {
        let mut rng = step_rng(self.seed, NEGATIVES, step);
        let cols = negatives::shared_columns(n_global, self.k, &mut rng)?;
        let rows = self.world.local_rows(n_global);
        Ok(
            negatives::shared_subset_from_columns(&upload(&cols, device)?, n_global as i64).narrow(
                0,
                rows.start as i64,
                rows.len() as i64,
            ),
        )
    }
}

impl Method for Simo {
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<Forward> {
        let q = self.norm.queries(&self.pair.query, &batch.view1);
        // As the reference: update the key encoder, then compute the keys.
        self.pair.momentum_update(self.ema_momentum);
        let k = self.norm.keys(&self.pair.key, &batch.view2, step)?;
        let keys = gather_rows(&k, &self.world)?;
        let n_global = q.size()[0] as usize * self.world.size;
        let idx = self.negative_indices(n_global, step, q.device())?;
        Ok(Forward::Contrast(Contrast {
            q,
            k_pos: k,
            negatives: NegativeKeys::Indexed { keys, idx },
        }))
    }

    fn query(&self) -> &VarStore {
        &self.pair.query_vs
    }

    fn backbone(&self) -> &crate::model::ResNet {
        &self.pair.query.backbone
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.pair.key_state()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.pair.load_key_state(state)
    }
}
