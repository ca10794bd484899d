//! One optimizer step, the unit the trainer repeats and `eqco bench train`
//! times: the method's forward pass, the objective (Eq. 1 with the margin),
//! backward, the gradients averaged over ranks, the finiteness guard and
//! SGD. The step's figures stay on the device until the trainer reads them.

use tch::Tensor;

use crate::base::error::{Error, Result};
use crate::data::TwoViewBatch;
use crate::dist::{Overlap, World};
use crate::loss::LossConfig;
use crate::method::{objective, Method};
use crate::model::state::named;
use crate::optim::Sgd;
use crate::run::checkpoint::{Checkpoint, QUERY};

/// Gradients are averaged over ranks in flat buckets of at most this size.
const GRADIENT_BUCKET_BYTES: usize = 25 << 20;

/// What one step leaves on the device: its figures and whether its
/// averaged gradients and updated parameters are finite.
#[derive(Debug)]
pub struct StepFigures {
    /// The mean loss, a detached scalar.
    pub loss: Tensor,
    /// `ln K + m/τ`: the MI bound is this minus the loss.
    pub mi_bound_offset: f64,
    /// The mean `‖∂L_i/∂q_i‖`, a scalar.
    pub grad_norm_q: Tensor,
    /// 1 when an averaged gradient was not finite, else 0.
    pub grad_nonfinite: Tensor,
    /// 1 when a parameter was not finite after the update, else 0.
    pub param_nonfinite: Tensor,
}

/// A method with its loss, its optimizer, and the ranks it averages over.
pub struct Step {
    method: Box<dyn Method>,
    loss: LossConfig,
    sgd: Sgd,
    world: World,
    /// With several processes and `grad_overlap`, the hooks that average
    /// the gradients during backward.
    overlap: Option<Overlap>,
    #[cfg(feature = "test-hooks")]
    inject: Option<u64>,
}

impl Step {
    /// SGD with `momentum` and `weight_decay` on `method`'s query encoder,
    /// the loss `loss`, as one of `world`'s ranks; with `overlap`, the
    /// gradients are all-reduced bucket by bucket during backward.
    pub fn new(
        method: Box<dyn Method>,
        loss: LossConfig,
        (momentum, weight_decay): (f64, f64),
        world: &World,
        overlap: bool,
    ) -> Result<Step> {
        let sgd = Sgd::new(method.query(), momentum, weight_decay);
        let overlap = match world.group() {
            Some(group) if overlap => Some(Overlap::new(group.clone(), sgd.parameters())?),
            _ => None,
        };
        Ok(Step {
            method,
            loss,
            sgd,
            world: world.clone(),
            overlap,
            #[cfg(feature = "test-hooks")]
            inject: hooks::injected_nonfinite_step()?,
        })
    }

    /// Step `step` (0-based) on `batch` at learning rate `lr`: forward, the
    /// objective, backward, gradients averaged over ranks, SGD.
    pub fn run(&mut self, batch: &TwoViewBatch, step: u64, lr: f64) -> Result<StepFigures> {
        let out = objective(self.method.forward(batch, step)?, &self.loss)?;
        self.world.check()?;
        self.sgd.zero_grad();
        if let Some(overlap) = &self.overlap {
            overlap.prepare()?;
        }
        out.loss.f_backward().map_err(|e| self.backward_error(e))?;
        self.average_gradients()?;
        #[cfg(feature = "test-hooks")]
        if self.inject == Some(step + 1) {
            hooks::make_a_gradient_infinite(&self.sgd);
        }
        let grad_nonfinite = self.sgd.nonfinite_gradients()?;
        self.sgd.step(lr);
        let param_nonfinite = self.sgd.nonfinite_parameters()?;
        Ok(StepFigures {
            loss: out.loss.detach(),
            mi_bound_offset: out.mi_bound_offset,
            grad_norm_q: out.grad_norm_q,
            grad_nonfinite,
            param_nonfinite,
        })
    }

    /// A failed backward: a peer's failure when there is one (backward's
    /// collectives, gather and SyncBN, failed), else libtorch's error.
    fn backward_error(&self, e: tch::TchError) -> Error {
        match (self.world.check(), self.world.group()) {
            (Err(dist), _) => dist,
            (Ok(()), Some(g)) => Error::Dist(format!("rank {}: backward: {e}", g.rank)),
            (Ok(()), None) => Error::from(e),
        }
    }

    /// The gradients averaged over ranks: most buckets were sent during
    /// backward when overlapping, else all of them now.
    fn average_gradients(&self) -> Result<()> {
        match (&self.overlap, self.world.group()) {
            (Some(overlap), _) => overlap.finish(),
            (None, Some(group)) => group.average(&self.sgd.gradients(), GRADIENT_BUCKET_BYTES),
            (None, None) => Ok(()),
        }
    }

    /// The method trained.
    pub fn method(&self) -> &dyn Method {
        self.method.as_ref()
    }

    /// The share of gradient buckets whose all-reduce began during backward
    /// (with overlap; `None` otherwise).
    pub fn overlapped_share(&self) -> Option<f64> {
        self.overlap.as_ref().and_then(Overlap::overlapped_share)
    }

    /// Everything a checkpoint holds of the model and optimizer: the query
    /// encoder (`query.*`), the method's state and SGD's momentum.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = named(QUERY, self.method.query());
        state.extend(self.method.state());
        state.extend(self.sgd.state());
        state
    }

    /// Restores [`Step::state`] from `ckpt`; a tensor missing, extra or of
    /// another shape is a data error naming the file and the tensor.
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let (method, sgd) = (&mut self.method, &mut self.sgd);
        let mut restore = || -> Result<()> {
            ckpt.restore(QUERY, method.query())?;
            method.load_state(&ckpt.state)?;
            sgd.load_state(&ckpt.state)?;
            // SGD's buffers may be absent (before the first step), not extra.
            let optim = sgd.parameters().iter().map(|(n, _)| format!("optim.{n}"));
            let expected: Vec<String> = named(QUERY, method.query())
                .into_iter()
                .chain(method.state())
                .map(|(n, _)| n)
                .chain(optim)
                .collect();
            ckpt.check_no_extra(expected.iter().map(String::as_str))
        };
        restore().map_err(|e| ckpt.mismatch("this configuration", e))
    }

    /// Every rank takes rank 0's weights, buffers, queue and optimizer state.
    pub fn broadcast_from_main(&self) -> Result<()> {
        let Some(group) = self.world.group() else {
            return Ok(());
        };
        let mut state: Vec<Tensor> = self.state().into_iter().map(|(_, t)| t).collect();
        state.retain(|t| t.dim() > 0);
        group.broadcast_all(&state, 0)
    }
}

/// Fault injection, compiled only with the `test-hooks` feature (the test
/// suite's build): `EQCO_TEST_INJECT_NONFINITE_GRAD=STEP` makes one
/// averaged gradient infinite at optimizer step `STEP` (counting from 1),
/// with the loss left finite, so that a test can show the gradient guard
/// stopping the run there.
#[cfg(feature = "test-hooks")]
pub mod hooks {
    use crate::base::error::{Error, Result};
    use crate::optim::Sgd;

    /// The variable that injects a non-finite gradient.
    pub const INJECT_NONFINITE_GRAD: &str = "EQCO_TEST_INJECT_NONFINITE_GRAD";

    /// The step of [`INJECT_NONFINITE_GRAD`], when it is set.
    pub(super) fn injected_nonfinite_step() -> Result<Option<u64>> {
        match std::env::var(INJECT_NONFINITE_GRAD) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(step) if step > 0 => Ok(Some(step)),
                _ => Err(Error::config(
                    INJECT_NONFINITE_GRAD,
                    format!("{v:?} (a test-only step number ≥ 1)"),
                )),
            },
            Err(e) => Err(Error::config(INJECT_NONFINITE_GRAD, e.to_string())),
        }
    }

    /// The first gradient's first slice made infinite.
    pub(super) fn make_a_gradient_infinite(sgd: &Sgd) {
        if let Some(g) = sgd.gradients().first() {
            tch::no_grad(|| {
                let _ = g.narrow(0, 0, 1).fill_(f64::INFINITY);
            });
        }
    }
}
