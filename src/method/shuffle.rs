//! MoCo's shuffle BN, which SiMo can use too (`bn = shuffle`, Table 7):
//! keys computed on a batch shuffled across ranks, in sub-batches with
//! their own BN statistics, then un-shuffled back to their images.

use rand::seq::SliceRandom;
use tch::{Device, Tensor};

use super::config::MethodConfig;
use super::shared::{gather_rows, step_rng};
use crate::base::device::memory::upload;
use crate::base::error::Result;
use crate::dist::{BnMode, World};
use crate::model::Encoder;

/// Seed stream of shuffle BN's permutations.
pub const SHUFFLE: u64 = 13;

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

/// How a query encoder and its momentum twin normalise their batches:
/// with the global batch's statistics (`sync`), each device's (`local`),
/// or with shuffle BN's groups.
pub struct PairNorm {
    mode: BnMode,
    /// Shuffle BN's groups on this rank.
    groups: i64,
    seed: u64,
    world: World,
}

impl PairNorm {
    /// The normalisation `cfg` asks for, as one of `world`'s ranks, with
    /// permutations drawn from `seed`.
    pub fn new(cfg: &MethodConfig, seed: u64, world: &World) -> PairNorm {
        PairNorm {
            mode: cfg.bn(),
            groups: cfg.groups_per_rank(world.size),
            seed,
            world: world.clone(),
        }
    }

    /// The queries of this rank's images `v1`, with their graph: under
    /// shuffle BN in contiguous groups (as the reference's devices).
    pub fn queries(&self, query: &Encoder, v1: &Tensor) -> Tensor {
        match self.mode {
            BnMode::Shuffle => query.embed_grouped(v1, self.groups, true),
            BnMode::Sync | BnMode::Local => query.embed(v1, true),
        }
    }

    /// The keys of this rank's images `v2`, without a gradient: under
    /// shuffle BN from the batch permuted by `step`'s draw.
    pub fn keys(&self, key: &Encoder, v2: &Tensor, step: u64) -> Result<Tensor> {
        tch::no_grad(|| match self.mode {
            BnMode::Shuffle => {
                let mut rng = step_rng(self.seed, SHUFFLE, step);
                keys_with_shuffle_bn(key, v2, self.groups, &self.world, &mut rng)
            }
            BnMode::Sync | BnMode::Local => Ok(key.embed(v2, true)),
        })
    }
}
