//! SimCLR: both views through one encoder; each of the 2N embeddings is a
//! query whose positive is the other view of its image and whose negatives
//! are the other 2(N − 1) embeddings, or K of them drawn independently per
//! query when K < 2(N − 1). The loss averages over all 2N queries, so it is
//! symmetric in the two views.
//!
//! Across ranks, the embeddings of every rank are gathered with a gradient
//! (each rank's slice receives the gradients of every rank's loss), laid
//! out as in one process (all first views, then all second views), and each
//! rank scores its own 2N/W queries against them. BN statistics are the
//! global batch's (`bn = sync`).

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use super::shared::{norm_for, row_rng};
use super::{Contrast, Forward, Method, MethodConfig, NegativeKeys, Shape};
use crate::base::device::memory::upload;
use crate::base::device::Compute;
use crate::base::error::Result;
use crate::data::TwoViewBatch;
use crate::dist::World;
use crate::loss::negatives;
use crate::model::Encoder;

/// Seed stream of the negative samples.
const NEGATIVES: u64 = 12;

/// SimCLR with K in-batch negatives per query.
pub struct SimClr {
    vs: VarStore,
    encoder: Encoder,
    k: usize,
    seed: u64,
    world: World,
}

impl SimClr {
    /// SimCLR as `cfg` says for `shape`, one of `world`'s ranks.
    pub fn new(
        cfg: &MethodConfig,
        shape: &Shape,
        compute: Compute,
        world: &World,
    ) -> Result<SimClr> {
        let vs = VarStore::new(compute.device);
        let norm = norm_for(cfg.bn(), world);
        let encoder = Encoder::new(&vs.root(), &shape.encoder, compute, &norm)?;
        compute.prepare(&vs);
        Ok(SimClr {
            vs,
            encoder,
            k: cfg.k(shape.batch_size),
            seed: shape.seed,
            world: world.clone(),
        })
    }

    /// Every rank's embeddings `[2n, D]` (its first views, then its second
    /// views) gathered with a gradient and laid out as one process's
    /// `[2N, D]`: the first views of all ranks, then the second views.
    fn gather_embeddings(&self, z: &Tensor) -> Result<Tensor> {
        let Some(group) = self.world.group() else {
            return Ok(z.shallow_clone());
        };
        let (w, two_n, d) = (group.size as i64, z.size()[0], z.size()[1]);
        Ok(group
            .all_gather_with_grad(z)?
            .view([w, 2, two_n / 2, d])
            .transpose(0, 1)
            .reshape([w * two_n, d]))
    }

    /// This rank's queries' negatives among the 2N embeddings, indices
    /// `[m, K]` on the device of `both` (the queries, then their partners):
    /// every embedding but the query and its partner when K = 2(N − 1),
    /// built on the device with nothing drawn; else K of them drawn with
    /// the RNG of (step, query), so that any world size, and any thread
    /// count, draws the negatives one process draws.
    fn negative_indices(
        &self,
        queries: &[usize],
        both: &Tensor,
        n: usize,
        step: u64,
    ) -> Result<Tensor> {
        let m = queries.len() as i64;
        if self.k == 2 * (n - 1) {
            let (q, p) = (both.narrow(0, 0, m), both.narrow(0, m, m));
            let excluded = Tensor::stack(&[q.minimum(&p), q.maximum(&p)], 1);
            return Ok(negatives::all_but(&excluded, 2 * n as i64));
        }
        let seed = self.seed;
        let drawn = negatives::per_row_draws(
            queries,
            2 * n,
            self.k,
            |i| vec![i, (i + n) % (2 * n)],
            |i| row_rng(seed, NEGATIVES, step, i),
        )?;
        Ok(upload(&drawn, both.device())?.view([m, self.k as i64]))
    }
}

impl Method for SimClr {
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<Forward> {
        let (v1, v2) = (&batch.view1, &batch.view2);
        let local = self.encoder.embed(&Tensor::cat(&[v1, v2], 0), true);
        let z = self.gather_embeddings(&local)?;
        let n = z.size()[0] as usize / 2; // The global N.
                                          // This rank's queries: its rows of the first views and of the second.
        let rows = self.world.local_rows(n);
        let queries: Vec<usize> = rows.clone().chain(rows.map(|i| n + i)).collect();
        // The partner of embedding i is i ± N: (i + N) mod 2N.
        let partner = |i: usize| (i + n) % (2 * n);
        let as_i64 = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
        let both = upload(
            &[
                as_i64(&queries),
                as_i64(&queries.iter().map(|&i| partner(i)).collect::<Vec<_>>()),
            ]
            .concat(),
            z.device(),
        )?;
        let m = queries.len() as i64;
        let q = z.index_select(0, &both.narrow(0, 0, m));
        let k_pos = z.index_select(0, &both.narrow(0, m, m));
        let idx = self.negative_indices(&queries, &both, n, step)?;
        Ok(Forward::Contrast(Contrast {
            q,
            k_pos,
            negatives: NegativeKeys::Indexed { keys: z, idx },
        }))
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
