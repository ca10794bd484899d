//! MoCo v1/v2 (He et al.; Chen et al.): a momentum key encoder and a queue of
//! the K most recent keys as negatives. If K < N, the queue holds K random
//! keys of the previous batch. v1 and v2 differ only in head, τ, schedule
//! and augmentation, which are configuration.
//!
//! Shuffle BN (`bn = shuffle`, the default; see [`super::shuffle`]):
//! queries are embedded in contiguous sub-batches and keys in sub-batches
//! of a random permutation of the global batch, each with its own BN
//! statistics, and the keys are un-shuffled back to their rows. The
//! sub-batches are the ranks' slices, each split into
//! `shuffle_bn_groups / W` groups, so one process with G groups emulates G
//! devices. Every rank enqueues the keys of all ranks.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::shared::{gather_rows, norm_for, step_rng, MomentumPair};
use super::shuffle::PairNorm;
use super::{Contrast, Forward, Method, MethodConfig, NegativeKeys, Shape};
use crate::base::device::memory::upload;
use crate::base::device::Compute;
use crate::base::error::{Error, Result};
use crate::data::TwoViewBatch;
use crate::dist::World;
use crate::model::head::l2_normalize;

/// Seed streams of the queue.
const QUEUE_INIT: u64 = 14;
const ENQUEUE: u64 = 15;

/// The queue of negative keys `[K, D]`, oldest overwritten first.
pub struct Queue {
    /// The keys, L2-normalised.
    pub keys: Tensor,
    /// Where the next key goes.
    pub ptr: i64,
}

impl Queue {
    /// K random unit vectors of width `dim` (as the reference's initial queue).
    pub fn new(k: i64, dim: i64, seed: u64, device: Device) -> Queue {
        let mut rng = step_rng(seed, QUEUE_INIT, 0);
        let data: Vec<f32> = (0..k * dim)
            .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
            .collect();
        let keys = l2_normalize(&Tensor::from_slice(&data).view([k, dim]));
        Queue {
            keys: keys.to_device(device),
            ptr: 0,
        }
    }

    /// Enqueues the batch's keys `[N, D]` over the oldest ones (wrapping
    /// around); if K < N, the queue becomes K of them chosen with `pick`.
    pub fn push(&mut self, keys: &Tensor, pick: &mut impl rand::Rng) -> Result<()> {
        let (k, n) = (self.keys.size()[0], keys.size()[0]);
        tch::no_grad(|| {
            if k < n {
                let mut rows: Vec<i64> = (0..n).collect();
                rows.shuffle(pick);
                rows.truncate(k as usize);
                let idx = upload(&rows, keys.device())?;
                self.keys.copy_(&keys.index_select(0, &idx));
                self.ptr = 0;
            } else {
                let idx = (Tensor::arange(n, (Kind::Int64, keys.device())) + self.ptr).remainder(k);
                let _ = self
                    .keys
                    .index_copy_(0, &idx, &keys.to_kind(self.keys.kind()));
                self.ptr = (self.ptr + n) % k;
            }
            Ok(())
        })
    }
}

/// MoCo v1/v2.
pub struct Moco {
    pair: MomentumPair,
    queue: Queue,
    norm: PairNorm,
    ema_momentum: f64,
    seed: u64,
    world: World,
}

impl Moco {
    /// MoCo as `cfg` says for `shape`, one of `world`'s ranks.
    pub fn new(cfg: &MethodConfig, shape: &Shape, compute: Compute, world: &World) -> Result<Moco> {
        Ok(Moco {
            pair: MomentumPair::new(&shape.encoder, compute, &norm_for(cfg.bn(), world))?,
            queue: Queue::new(
                cfg.queue_size as i64,
                shape.encoder.embed_dim,
                shape.seed,
                compute.device,
            ),
            norm: PairNorm::new(cfg, shape.seed, world),
            ema_momentum: cfg.ema_momentum,
            seed: shape.seed,
            world: world.clone(),
        })
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }
}

impl Method for Moco {
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<Forward> {
        let q = self.norm.queries(&self.pair.query, &batch.view1);
        self.pair.momentum_update(self.ema_momentum);
        let k = self.norm.keys(&self.pair.key, &batch.view2, step)?;
        // The negatives are the queue before this batch's keys go in.
        let queue = self.queue.keys.detach().copy();
        // Every rank enqueues the keys of the whole global batch.
        let all_keys = gather_rows(&k, &self.world)?;
        self.queue
            .push(&all_keys, &mut step_rng(self.seed, ENQUEUE, step))?;
        Ok(Forward::Contrast(Contrast {
            q,
            k_pos: k,
            negatives: NegativeKeys::Shared(queue),
        }))
    }

    fn query(&self) -> &VarStore {
        &self.pair.query_vs
    }

    fn backbone(&self) -> &crate::model::ResNet {
        &self.pair.query.backbone
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = self.pair.key_state();
        s.push(("queue.keys".into(), self.queue.keys.shallow_clone()));
        s.push(("queue.ptr".into(), Tensor::from(self.queue.ptr)));
        s
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.pair.load_key_state(state)?;
        let keys = state
            .get("queue.keys")
            .ok_or_else(|| Error::Mismatch("no tensor `queue.keys`".into()))?;
        if keys.size() != self.queue.keys.size() {
            return Err(Error::Mismatch(format!(
                "`queue.keys` is {:?}, the configuration's queue {:?}",
                keys.size(),
                self.queue.keys.size()
            )));
        }
        tch::no_grad(|| self.queue.keys.copy_(keys));
        self.queue.ptr = state
            .get("queue.ptr")
            .map(|t| t.int64_value(&[]))
            .ok_or_else(|| Error::Mismatch("no tensor `queue.ptr`".into()))?;
        Ok(())
    }
}
