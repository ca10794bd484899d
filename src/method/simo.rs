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

use super::moco::{keys_with_shuffle_bn, SHUFFLE};
use super::shared::{finish, gather_rows, norm_for, step_rng, MomentumPair};
use super::{Method, StepOutput};
use crate::data::TwoViewBatch;
use crate::device::memory::upload;
use crate::device::Compute;
use crate::dist::{BnMode, World};
use crate::error::Result;
use crate::loss::{info_nce, negatives, LossConfig, Negatives};
use crate::model::EncoderConfig;
use crate::run::config::PretrainConfig;

/// Seed stream of the negative subsets.
const NEGATIVES: u64 = 11;

/// SiMo with K shared in-batch negatives.
pub struct Simo {
    pair: MomentumPair,
    loss: LossConfig,
    k: usize,
    ema_momentum: f64,
    seed: u64,
    bn: BnMode,
    /// Shuffle BN's groups on this rank.
    groups: i64,
    world: World,
}

impl Simo {
    /// SiMo for encoders `enc` and the settings of `cfg`, one of `world`'s ranks.
    pub fn new(
        enc: &EncoderConfig,
        cfg: &PretrainConfig,
        compute: Compute,
        world: &World,
    ) -> Result<Simo> {
        Ok(Simo {
            pair: MomentumPair::new(enc, compute, &norm_for(cfg.bn(), world))?,
            loss: cfg.loss(),
            k: cfg.k(),
            ema_momentum: cfg.ema_momentum,
            seed: cfg.seed,
            bn: cfg.bn(),
            groups: cfg.groups_per_rank(world.size),
            world: world.clone(),
        })
    }

    /// The keys of this rank's images `v2`: the momentum encoder with the
    /// global batch's BN statistics, or with shuffle BN.
    fn keys(&self, v2: &Tensor, step: u64) -> Result<Tensor> {
        tch::no_grad(|| match self.bn {
            BnMode::Shuffle => {
                let mut rng = step_rng(self.seed, SHUFFLE, step);
                keys_with_shuffle_bn(&self.pair.key, v2, self.groups, &self.world, &mut rng)
            }
            BnMode::Sync | BnMode::Local => Ok(self.pair.key.embed(v2, true)),
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
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<StepOutput> {
        let (v1, v2) = (&batch.view1, &batch.view2);
        let q = match self.bn {
            BnMode::Shuffle => self.pair.query.embed_grouped(v1, self.groups, true),
            BnMode::Sync | BnMode::Local => self.pair.query.embed(v1, true),
        };
        // As the reference: update the key encoder, then compute the keys.
        self.pair.momentum_update(self.ema_momentum);
        let k = self.keys(v2, step)?;
        let all_keys = gather_rows(&k, &self.world)?;
        let n_global = q.size()[0] as usize * self.world.size;
        let idx = self.negative_indices(n_global, step, q.device())?;
        let negs = Negatives::Indexed {
            keys: &all_keys,
            idx: &idx,
        };
        let out = info_nce(&q, &k, negs, &self.loss)?;
        Ok(finish(out, &k, negs))
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
