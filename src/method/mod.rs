//! The contrastive frameworks, each a small file on shared parts:
//! [`moco`] (v1 and v2), [`simclr`] and [`simo`], with MoCo's shuffle BN in
//! [`shuffle`]. A method's forward pass returns what the loss compares (the
//! queries, their positive keys and the negatives); [`objective`], one
//! function for every method, turns that into the loss and its diagnostics.
//! [`supervised`] trains the same backbone on the labels: the baseline
//! every self-supervised number is shown beside.

pub mod config;
pub mod moco;
pub mod shared;
pub mod shuffle;
pub mod simclr;
pub mod simo;
pub mod supervised;

use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::base::device::Compute;
use crate::base::error::Result;
use crate::data::TwoViewBatch;
use crate::dist::World;
use crate::loss::{grad_norm_q, info_nce, LossConfig, Negatives};
use crate::model::EncoderConfig;
pub use config::{MethodConfig, MethodName};

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

/// The negatives of a [`Contrast`], owned (a borrowed view is [`Negatives`]).
#[derive(Debug)]
pub enum NegativeKeys {
    /// `[K, D]`: the same K keys for every query (MoCo's queue).
    Shared(Tensor),
    /// K of the keys `[M, D]` for each query, chosen by `idx: [n, K]`.
    Indexed {
        /// The candidate keys `[M, D]`.
        keys: Tensor,
        /// Row i lists the keys query i is contrasted with.
        idx: Tensor,
    },
}

impl NegativeKeys {
    /// The negatives as the loss takes them.
    pub fn view(&self) -> Negatives<'_> {
        match self {
            NegativeKeys::Shared(keys) => Negatives::Shared(keys),
            NegativeKeys::Indexed { keys, idx } => Negatives::Indexed { keys, idx },
        }
    }
}

/// What InfoNCE compares for this rank's queries: `q: [n, D]` and their
/// positive keys `k_pos: [n, D]`, L2-normalised, and the negatives.
#[derive(Debug)]
pub struct Contrast {
    /// The queries (with their graph).
    pub q: Tensor,
    /// Each query's positive key.
    pub k_pos: Tensor,
    /// The keys each query is contrasted with.
    pub negatives: NegativeKeys,
}

/// What a method's forward pass gives [`objective`].
#[derive(Debug)]
pub enum Forward {
    /// Queries, positives and negatives, scored with InfoNCE and the margin.
    Contrast(Contrast),
    /// A loss the method computes itself (the supervised baseline's
    /// cross-entropy), with its diagnostics.
    Loss(StepOutput),
}

/// The loss of a forward pass and its diagnostics: InfoNCE with the margin
/// of `loss` (Eq. 1; EqCo's `m = τ·ln(α/K)`, Eq. 5), the MI bound's offset
/// (Eq. 4/6) and the mean closed-form `‖∂L_i/∂q_i‖` (Theorem 2).
pub fn objective(forward: Forward, loss: &LossConfig) -> Result<StepOutput> {
    let c = match forward {
        Forward::Loss(out) => return Ok(out),
        Forward::Contrast(c) => c,
    };
    let negatives = c.negatives.view();
    let out = info_nce(&c.q, &c.k_pos, negatives, loss)?;
    let grad_norm_q = grad_norm_q(&out, &c.k_pos.detach(), negatives).mean(tch::Kind::Float);
    Ok(StepOutput {
        mi_bound_offset: out.mi_bound_offset(),
        grad_norm_q,
        loss: out.loss,
    })
}

/// A contrastive framework: encoders, any queue, and the pairs it compares.
pub trait Method {
    /// The forward pass for a batch of views `view1`, `view2` `[n, C, H, W]`
    /// of the same n images; `step` seeds any sampling (shuffle BN,
    /// negative subsets), so a resumed run draws the same.
    fn forward(&mut self, batch: &TwoViewBatch, step: u64) -> Result<Forward>;

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

/// What a method is built for besides its section: the encoders, the
/// global batch N, the dataset's classes (the supervised baseline's) and
/// the seed of the initial weights and of every draw.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The encoders.
    pub encoder: EncoderConfig,
    /// The global batch N (it sets the default K).
    pub batch_size: usize,
    /// The dataset's classes.
    pub classes: usize,
    /// The run's seed.
    pub seed: u64,
}

/// Builds the framework `cfg` names for `shape`, computing as `compute`,
/// as one of `world`'s ranks (its batches are its slices of the global
/// batch), with weights initialised from the seed.
pub fn build(
    cfg: &MethodConfig,
    shape: &Shape,
    compute: Compute,
    world: &World,
) -> Result<Box<dyn Method>> {
    crate::base::seed::with_torch_seed(shape.seed, || {
        Ok(match cfg.method {
            MethodName::Simo => {
                Box::new(simo::Simo::new(cfg, shape, compute, world)?) as Box<dyn Method>
            }
            MethodName::Mocov1 | MethodName::Mocov2 => {
                Box::new(moco::Moco::new(cfg, shape, compute, world)?)
            }
            MethodName::Simclr => Box::new(simclr::SimClr::new(cfg, shape, compute, world)?),
            MethodName::Supervised => Box::new(supervised::Supervised::new(
                &shape.encoder,
                shape.classes,
                compute,
                &shared::norm_for(cfg.bn(), world),
            )?),
        })
    })
}
