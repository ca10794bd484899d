//! MoCo v1/v2 (He et al.; Chen et al.): a momentum key encoder and a queue of
//! the K most recent keys as negatives. If K < N, the queue holds K random
//! keys of the previous batch. v1 and v2 differ only in head, τ, schedule
//! and augmentation, which are configuration.
//!
//! Shuffle BN (`bn = shuffle`, the default): queries are embedded in
//! contiguous sub-batches and keys in sub-batches of a random permutation of
//! the global batch, each with its own BN statistics, and the keys are
//! un-shuffled back to their rows. The sub-batches are the ranks' slices,
//! each split into `shuffle_bn_groups / W` groups, so one process with G
//! groups emulates G devices. Every rank enqueues the keys of all ranks.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::shared::{finish, gather_rows, norm_for, step_rng, MomentumPair};
use super::{Method, StepOutput};
use crate::data::TwoViewBatch;
use crate::device::memory::upload;
use crate::device::Compute;
use crate::dist::{BnMode, World};
use crate::error::{Error, Result};
use crate::loss::{info_nce, LossConfig, Negatives};
use crate::model::head::l2_normalize;
use crate::model::{Encoder, EncoderConfig};
use crate::run::config::PretrainConfig;

/// Seed stream of shuffle BN's permutations (SiMo's too).
pub const SHUFFLE: u64 = 13;
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

/// The keys of this rank's images `v2` `[n, …]` with shuffle BN
/// (`_batch_shuffle_ddp` and `_batch_unshuffle_ddp` in the reference code):
/// the images of every rank are gathered and permuted by `rng` (the same
/// permutation on every rank), each rank embeds its slice of the shuffled
/// batch in `groups` sub-batches with their own BN statistics, and the keys
/// are gathered and un-shuffled back to their images. In one process the
/// groups alone emulate the devices; with W ranks and G/W groups each, the
/// groups are the same as one process's G.
pub fn keys_with_shuffle_bn(
    key: &Encoder,
    v2: &Tensor,
    groups: i64,
    world: &World,
    rng: &mut impl rand::Rng,
) -> Result<Tensor> {
    let n = v2.size()[0] as usize;
    let rows = world.local_rows(n * world.size);
    let (perm, inv) = shuffle_indices(n * world.size, rng, v2.device())?;
    let narrow = |t: &Tensor| t.narrow(0, rows.start as i64, n as i64);
    let all_images = gather_rows(v2, world)?;
    let mine = all_images.index_select(0, &narrow(&perm));
    let shuffled_keys = gather_rows(&key.embed_grouped(&mine, groups, true), world)?;
    Ok(shuffled_keys.index_select(0, &narrow(&inv)))
}

/// MoCo v1/v2.
pub struct Moco {
    pair: MomentumPair,
    queue: Queue,
    loss: LossConfig,
    bn: BnMode,
    /// Shuffle BN's groups on this rank.
    groups: i64,
    ema_momentum: f64,
    seed: u64,
    world: World,
}

impl Moco {
    /// MoCo for encoders `enc` and the settings of `cfg`, one of `world`'s ranks.
    pub fn new(
        enc: &EncoderConfig,
        cfg: &PretrainConfig,
        compute: Compute,
        world: &World,
    ) -> Result<Moco> {
        Ok(Moco {
            pair: MomentumPair::new(enc, compute, &norm_for(cfg.bn(), world))?,
            queue: Queue::new(
                cfg.queue_size as i64,
                enc.embed_dim,
                cfg.seed,
                compute.device,
            ),
            loss: cfg.loss(),
            bn: cfg.bn(),
            groups: cfg.groups_per_rank(world.size),
            ema_momentum: cfg.ema_momentum,
            seed: cfg.seed,
            world: world.clone(),
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
        let shuffle = self.bn == BnMode::Shuffle;
        let q = if shuffle {
            self.pair.query.embed_grouped(v1, self.groups, true)
        } else {
            self.pair.query.embed(v1, true)
        };
        self.pair.momentum_update(self.ema_momentum);
        let k = tch::no_grad(|| {
            if shuffle {
                let mut rng = step_rng(self.seed, SHUFFLE, step);
                keys_with_shuffle_bn(&self.pair.key, v2, self.groups, &self.world, &mut rng)
            } else {
                Ok(self.pair.key.embed(v2, true))
            }
        })?;
        let queue = self.queue.keys.detach().copy();
        let negs = Negatives::Shared(&queue);
        let out = info_nce(&q, &k, negs, &self.loss)?;
        let result = finish(out, &k, negs);
        // Every rank enqueues the keys of the whole global batch.
        let all_keys = gather_rows(&k, &self.world)?;
        self.queue
            .push(&all_keys, &mut step_rng(self.seed, ENQUEUE, step))?;
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
