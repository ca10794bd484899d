//! MoCo v1/v2 (He et al.; Chen et al.): a momentum key encoder and a queue of
//! the K most recent keys as negatives. Shuffle BN is emulated on one device:
//! queries are embedded in `G` contiguous sub-batches and keys in `G`
//! sub-batches of a random permutation, each with its own BN statistics, and
//! the keys are un-shuffled back to their rows. If K < N, the queue holds K
//! random keys of the previous batch. v1 and v2 differ only in head, τ,
//! schedule and augmentation, which are configuration.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::shared::{finish, step_rng, MomentumPair};
use super::{Method, StepOutput};
use crate::data::TwoViewBatch;
use crate::device::memory::upload;
use crate::device::Compute;
use crate::error::{Error, Result};
use crate::loss::{info_nce, LossConfig, Negatives};
use crate::model::head::l2_normalize;
use crate::model::EncoderConfig;
use crate::run::config::PretrainConfig;

/// Seed streams.
const SHUFFLE: u64 = 13;
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

/// A permutation of `n` rows and its inverse, as int64 tensors on
/// `device` (drawn on the host, uploaded in one copy that does not block).
pub fn shuffle_indices(
    n: usize,
    rng: &mut impl rand::Rng,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let mut both: Vec<i64> = (0..n as i64).collect();
    both.shuffle(rng);
    both.resize(2 * n, 0);
    for pos in 0..n {
        let row = both[pos] as usize;
        both[n + row] = pos as i64;
    }
    let t = upload(&both, device)?;
    Ok((t.narrow(0, 0, n as i64), t.narrow(0, n as i64, n as i64)))
}

/// MoCo v1/v2.
pub struct Moco {
    pair: MomentumPair,
    queue: Queue,
    loss: LossConfig,
    groups: i64,
    ema_momentum: f64,
    seed: u64,
}

impl Moco {
    /// MoCo for encoders `enc` and the settings of `cfg`.
    pub fn new(enc: &EncoderConfig, cfg: &PretrainConfig, compute: Compute) -> Result<Moco> {
        Ok(Moco {
            pair: MomentumPair::new(enc, compute)?,
            queue: Queue::new(
                cfg.queue_size as i64,
                enc.embed_dim,
                cfg.seed,
                compute.device,
            ),
            loss: cfg.loss(),
            groups: cfg.shuffle_bn_groups,
            ema_momentum: cfg.ema_momentum,
            seed: cfg.seed,
        })
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }
}

impl Method for Moco {
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<StepOutput> {
        let (v1, v2) = (&batch.view1, &batch.view2);
        let q = self.pair.query.embed_grouped(v1, self.groups, true);
        self.pair.momentum_update(self.ema_momentum);
        let n = v2.size()[0] as usize;
        let (perm, inv) = shuffle_indices(n, &mut step_rng(self.seed, SHUFFLE, step), v2.device())?;
        let k = tch::no_grad(|| {
            self.pair
                .key
                .embed_grouped(&v2.index_select(0, &perm), self.groups, true)
                .index_select(0, &inv)
        });
        let queue = self.queue.keys.detach().copy();
        let negs = Negatives::Shared(&queue);
        let out = info_nce(&q, &k, negs, &self.loss)?;
        let result = finish(out, &k, negs);
        self.queue
            .push(&k, &mut step_rng(self.seed, ENQUEUE, step))?;
        Ok(result)
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
            .ok_or_else(|| Error::Internal("checkpoint has no queue.keys".into()))?;
        if keys.size() != self.queue.keys.size() {
            return Err(Error::Internal(format!(
                "checkpoint's queue is {:?}, the configuration's {:?}",
                keys.size(),
                self.queue.keys.size()
            )));
        }
        tch::no_grad(|| self.queue.keys.copy_(keys));
        self.queue.ptr = state
            .get("queue.ptr")
            .map(|t| t.int64_value(&[]))
            .ok_or_else(|| Error::Internal("checkpoint has no queue.ptr".into()))?;
        Ok(())
    }
}
