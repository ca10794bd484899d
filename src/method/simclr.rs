//! SimCLR: both views through one encoder; each of the 2N embeddings is a
//! query whose positive is the other view of its image and whose negatives
//! are the other 2(N − 1) embeddings, or K of them drawn independently per
//! query when K < 2(N − 1). The loss averages over all 2N queries, so it is
//! symmetric in the two views.

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::shared::{finish, step_rng};
use super::{Method, StepOutput};
use crate::data::TwoViewBatch;
use crate::device::memory::upload;
use crate::device::Compute;
use crate::error::Result;
use crate::loss::{info_nce, negatives, LossConfig, Negatives};
use crate::model::{Encoder, EncoderConfig};
use crate::run::config::PretrainConfig;

/// Seed stream of the negative samples.
const NEGATIVES: u64 = 12;

/// SimCLR with K in-batch negatives per query.
pub struct SimClr {
    vs: VarStore,
    encoder: Encoder,
    loss: LossConfig,
    k: usize,
    seed: u64,
}

impl SimClr {
    /// SimCLR for encoder `enc` and the settings of `cfg`.
    pub fn new(enc: &EncoderConfig, cfg: &PretrainConfig, compute: Compute) -> Result<SimClr> {
        let vs = VarStore::new(compute.device);
        let encoder = Encoder::new(&vs.root(), enc, compute)?;
        compute.prepare(&vs);
        Ok(SimClr {
            vs,
            encoder,
            loss: cfg.loss(),
            k: cfg.k(),
            seed: cfg.seed,
        })
    }
}

impl Method for SimClr {
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<StepOutput> {
        let (v1, v2) = (&batch.view1, &batch.view2);
        let n = v1.size()[0] as usize;
        let z = self.encoder.embed(&Tensor::cat(&[v1, v2], 0), true);
        // The partner of embedding i is i ± N: (i + N) mod 2N.
        let partner = |i: usize| (i + n) % (2 * n);
        let rows = Tensor::arange(2 * n as i64, (Kind::Int64, z.device()));
        let k_pos = z.index_select(0, &((rows + n as i64).remainder(2 * n as i64)));
        let mut rng = step_rng(self.seed, NEGATIVES, step);
        let idx =
            negatives::per_query_draws(2 * n, 2 * n, self.k, |i| vec![i, partner(i)], &mut rng)?;
        let idx = upload(&idx, z.device())?.view([2 * n as i64, self.k as i64]);
        let negs = Negatives::Indexed {
            keys: &z,
            idx: &idx,
        };
        let out = info_nce(&z, &k_pos, negs, &self.loss)?;
        Ok(finish(out, &k_pos, negs))
    }

    fn query(&self) -> &VarStore {
        &self.vs
    }

    fn backbone(&self) -> &crate::model::ResNet {
        &self.encoder.backbone
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
