//! The contrastive frameworks, each a small file on shared parts:
//! [`moco`] (v1 and v2), [`simclr`] and [`simo`]. Each takes the EqCo loss
//! configuration (α, or plain InfoNCE) and returns the loss of a batch of two
//! views together with its diagnostics. [`supervised`] trains the same
//! backbone on the labels: the baseline every self-supervised number is
//! shown beside.

pub mod moco;
pub mod shared;
pub mod simclr;
pub mod simo;
pub mod supervised;

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::data::TwoViewBatch;
use crate::device::Compute;
use crate::dist::World;
use crate::error::Result;
use crate::run::config::{MethodName, PretrainConfig};

/// The loss of one batch and what the metrics log about it. The figures
/// stay on the device as tensors: the trainer reads them every
/// `log_every` steps, so a step never waits for the GPU.
#[derive(Debug)]
pub struct StepOutput {
    /// The mean loss, a scalar, to backpropagate.
    pub loss: Tensor,
    /// `ln K + m/τ`: the empirical MI bound (Eq. 4/6) is this minus the
    /// loss; supervised: `ln C`, for the bound `ln C − L` between images and
    /// their labels (Barber–Agakov).
    pub mi_bound_offset: f64,
    /// The mean over queries of `‖∂L_i/∂q_i‖` (Theorem 2), a detached
    /// scalar; supervised: of the loss's gradient with respect to each
    /// image's features.
    pub grad_norm_q: Tensor,
}

/// A contrastive framework: encoders, any queue, and the loss.
pub trait Method {
    /// The loss for a batch of views `view1`, `view2` `[N, C, H, W]` of the
    /// same N images; `step` seeds any sampling (shuffle BN, negative
    /// subsets), so a resumed run draws the same.
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<StepOutput>;

    /// The query encoder's variables: what the optimizer trains, and what
    /// evaluation and export read.
    fn query(&self) -> &VarStore;

    /// The query encoder's backbone, for frozen features (kNN, linear probe).
    fn backbone(&self) -> &crate::model::ResNet;

    /// State besides the query encoder (key encoder, queue), for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores what [`Method::state`] returned.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// Builds the framework of `cfg` computing as `compute`, for
/// `channels`-channel images of `classes` classes (used by the supervised
/// baseline only), with weights initialised from `cfg.seed`, as one of
/// `world`'s ranks (its batches are its slices of the global batch).
pub fn build(
    cfg: &PretrainConfig,
    channels: u8,
    classes: usize,
    compute: Compute,
    world: &World,
) -> Result<Box<dyn Method>> {
    let enc = cfg.encoder(channels)?;
    crate::seed::with_torch_seed(cfg.seed, || {
        Ok(match cfg.method {
            MethodName::Simo => {
                Box::new(simo::Simo::new(&enc, cfg, compute, world)?) as Box<dyn Method>
            }
            MethodName::Mocov1 | MethodName::Mocov2 => {
                Box::new(moco::Moco::new(&enc, cfg, compute, world)?)
            }
            MethodName::Simclr => Box::new(simclr::SimClr::new(&enc, cfg, compute, world)?),
            MethodName::Supervised => Box::new(supervised::Supervised::new(
                &enc,
                classes,
                compute,
                &shared::norm_for(cfg.bn(), world),
            )?),
        })
    })
}
