//! SiMo (the paper's simplified MoCo v2): no queue. The momentum encoder
//! embeds view 2 of the whole batch; query i's positive is key i and its
//! negatives are one random K-subset of the other keys, shared by every row;
//! EqCo margin; one-directional loss (view 1 queries, view 2 keys). BN
//! statistics are those of the whole batch (SyncBN on one device).

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use super::shared::{finish, step_rng, MomentumPair};
use super::{Method, StepOutput};
use crate::data::TwoViewBatch;
use crate::device::memory::upload;
use crate::device::Compute;
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
}

impl Simo {
    /// SiMo for encoders `enc` and the settings of `cfg`.
    pub fn new(enc: &EncoderConfig, cfg: &PretrainConfig, compute: Compute) -> Result<Simo> {
        Ok(Simo {
            pair: MomentumPair::new(enc, compute)?,
            loss: cfg.loss(),
            k: cfg.k(),
            ema_momentum: cfg.ema_momentum,
            seed: cfg.seed,
        })
    }
}

impl Method for Simo {
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<StepOutput> {
        let (v1, v2) = (&batch.view1, &batch.view2);
        let q = self.pair.query.embed(v1, true);
        // As the reference: update the key encoder, then compute the keys.
        self.pair.momentum_update(self.ema_momentum);
        let k = tch::no_grad(|| self.pair.key.embed(v2, true));
        let n = q.size()[0] as usize;
        let cols = negatives::shared_columns(n, self.k, &mut step_rng(self.seed, NEGATIVES, step))?;
        let idx = negatives::shared_subset_from_columns(&upload(&cols, q.device())?, n as i64);
        let negs = Negatives::Indexed {
            keys: &k,
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
