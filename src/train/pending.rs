//! Per-step figures still on the device, read in one transfer every
//! `log_every` steps: a training step queues its work and moves on, and the
//! CPU waits for the GPU once per window instead of several times a step.
//! A non-finite loss, averaged gradient or updated parameter is still
//! found, and named by its exact step, when the window is read: each step
//! leaves a flag for its gradients and one for its parameters on the device
//! beside its loss.

use std::time::{Duration, Instant};

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::base::error::Result;
use crate::dist::Group;

use crate::run::metrics::StepMetrics;

/// One step whose loss and gradient norm have not been read yet.
#[derive(Debug)]
pub struct PendingStep {
    /// Optimizer steps done, counting this one.
    pub step: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its learning rate.
    pub lr: f64,
    /// Negatives per query.
    pub k: u64,
    /// The mean loss, a scalar tensor (detached).
    pub loss: Tensor,
    /// `ln K + m/τ`: the MI bound is this minus the loss.
    pub mi_bound_offset: f64,
    /// The mean `‖∂L_i/∂q_i‖`, a scalar tensor.
    pub grad_norm_q: Tensor,
    /// 1 when a gradient (averaged over ranks) was not finite, else 0: a
    /// scalar tensor.
    pub grad_nonfinite: Tensor,
    /// 1 when a parameter was not finite after the update, else 0: a scalar
    /// tensor.
    pub param_nonfinite: Tensor,
    /// The kNN monitor's top-1, when it ran after this step.
    pub knn_top1: Option<f64>,
    /// The time the training loop has waited for the loader so far, this
    /// step included.
    pub waited: Duration,
}

/// What was found not finite at a step (the first of these, in this order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Diverged {
    /// The loss, with its value (NaN or infinite).
    Loss(f64),
    /// A gradient, averaged over ranks, with a finite loss.
    Gradient,
    /// A parameter after the update, with a finite loss and gradients.
    Parameter,
}

/// A step whose loss, gradient or updated parameters were not finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite {
    /// The step.
    pub step: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Its learning rate.
    pub lr: f64,
    /// What was not finite.
    pub what: Diverged,
}

/// The steps of the current window.
pub struct Pending {
    steps: Vec<PendingStep>,
    every: usize,
    images_per_step: usize,
    since: Instant,
    /// The loader wait up to the previous read.
    waited: Duration,
    reads: u64,
    /// Whether some rank asked to stop, as of the last read.
    stop: bool,
    /// The ranks whose figures are averaged with this one's.
    group: Option<Arc<Group>>,
}

impl Pending {
    /// A window of `every` steps (at least 1) of `images_per_step` images
    /// each (the global batch); with a `group`, each read averages the
    /// figures over its ranks (one all-reduce per window).
    pub fn new(every: usize, images_per_step: usize, group: Option<Arc<Group>>) -> Pending {
        Pending {
            steps: Vec::with_capacity(every.max(1)),
            every: every.max(1),
            images_per_step,
            since: Instant::now(),
            waited: Duration::ZERO,
            reads: 0,
            stop: false,
            group,
        }
    }

    /// Adds a step.
    pub fn push(&mut self, step: PendingStep) {
        self.steps.push(step);
    }

    /// The latest step, to attach a kNN result to.
    pub fn last_mut(&mut self) -> Option<&mut PendingStep> {
        self.steps.last_mut()
    }

    /// Whether the window is full and should be read.
    pub fn is_due(&self) -> bool {
        self.steps.len() >= self.every
    }

    /// Whether a rank had been asked to stop (a stop signal) at the last
    /// read: the same answer on every rank, after the same step.
    pub fn stop_agreed(&self) -> bool {
        self.stop
    }

    /// How many reads (device-to-host transfers) have been made.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Reads every pending step's loss, gradient norm and finiteness flags
    /// in one transfer (averaged over the group's ranks: the global batch's
    /// figures) and empties the window. Returns the metrics lines of the
    /// steps before the first with a non-finite loss, gradient or updated
    /// parameter, and that step if there is one (the steps after it are
    /// dropped). Images per second are the window's: its images over
    /// the wall time since the previous read, and so is the share of that
    /// time spent waiting for the loader.
    pub fn read(&mut self) -> Result<(Vec<StepMetrics>, Option<NonFinite>)> {
        let steps = std::mem::take(&mut self.steps);
        if steps.is_empty() {
            return Ok((Vec::new(), None));
        }
        let figures: Vec<Tensor> = steps
            .iter()
            .flat_map(|s| {
                [
                    &s.loss,
                    &s.grad_norm_q,
                    &s.grad_nonfinite,
                    &s.param_nonfinite,
                ]
            })
            .map(|t| t.detach().to_kind(Kind::Double))
            .collect();
        // Whether this rank was asked to stop travels with the figures, so
        // that the ranks agree on it without a collective of its own.
        let asked = f64::from(u8::from(crate::base::signals::requested().is_some()));
        let mut figures = Tensor::cat(
            &[
                Tensor::stack(&figures, 0),
                Tensor::from_slice(&[asked]).to_device(figures[0].device()),
            ],
            0,
        );
        if let Some(group) = &self.group {
            group.all_reduce_sum(&figures)?;
            figures /= group.size as f64;
        }
        let values = Vec::<f64>::try_from(figures.to_device(Device::Cpu))
            .expect("a 1-D float64 tensor converts");
        self.reads += 1;
        self.stop = values[values.len() - 1] > 0.0;
        let now = Instant::now();
        let seconds = now.duration_since(self.since).as_secs_f64();
        self.since = now;
        let img_per_s = (self.images_per_step * steps.len()) as f64 / seconds;
        let waited = steps.last().map_or(self.waited, |s| s.waited);
        let data_wait_share = waited.saturating_sub(self.waited).as_secs_f64() / seconds;
        self.waited = waited;
        let mut lines = Vec::with_capacity(steps.len());
        for (s, v) in steps.into_iter().zip(values.chunks_exact(4)) {
            let (loss, grad_norm_q) = (v[0], v[1]);
            let what = if !loss.is_finite() {
                Some(Diverged::Loss(loss))
            } else if v[2] != 0.0 {
                Some(Diverged::Gradient)
            } else if v[3] != 0.0 {
                Some(Diverged::Parameter)
            } else {
                None
            };
            if let Some(what) = what {
                let bad = NonFinite {
                    step: s.step,
                    epoch: s.epoch,
                    lr: s.lr,
                    what,
                };
                return Ok((lines, Some(bad)));
            }
            lines.push(StepMetrics {
                step: s.step,
                epoch: s.epoch,
                loss,
                mi_bound: s.mi_bound_offset - loss,
                grad_norm_q,
                lr: s.lr,
                img_per_s,
                k: s.k,
                knn_top1: s.knn_top1,
                data_wait_share: Some(data_wait_share),
            });
        }
        Ok((lines, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f32) -> PendingStep {
        flagged(step, loss, 0.0, 0.0)
    }

    fn flagged(step: u64, loss: f32, grad: f32, param: f32) -> PendingStep {
        PendingStep {
            step,
            epoch: 0,
            lr: 0.1,
            k: 16,
            loss: Tensor::from(loss),
            mi_bound_offset: 16f64.ln(),
            grad_norm_q: Tensor::from(2.5f32),
            grad_nonfinite: Tensor::from(grad),
            param_nonfinite: Tensor::from(param),
            knn_top1: None,
            waited: Duration::ZERO,
        }
    }

    #[test]
    fn a_window_is_read_once_when_full() {
        let mut p = Pending::new(3, 8, None);
        for s in 1..=2 {
            p.push(step(s, 1.5));
            assert!(!p.is_due());
        }
        p.push(step(3, 1.25));
        assert!(p.is_due());
        let (lines, bad) = p.read().unwrap();
        assert_eq!(p.reads(), 1, "one transfer for three steps");
        assert!(bad.is_none());
        assert_eq!(
            lines.iter().map(|m| m.step).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        // The same numbers as reading each scalar on its own.
        assert_eq!(lines[2].loss, Tensor::from(1.25f32).double_value(&[]));
        assert_eq!(lines[0].mi_bound, 16f64.ln() - 1.5);
        assert_eq!(lines[0].grad_norm_q, 2.5);
        assert!(lines.iter().all(|m| m.img_per_s > 0.0));
        assert!(lines.iter().all(|m| m.data_wait_share == Some(0.0)));
        assert!(!p.is_due() && p.read().unwrap().0.is_empty(), "emptied");
        assert_eq!(p.reads(), 1, "an empty window is not read");
    }

    #[test]
    fn the_data_wait_share_is_the_windows() {
        let mut p = Pending::new(1, 8, None);
        for (s, waited_ms) in [(1, 5), (2, 5), (3, 15)] {
            std::thread::sleep(Duration::from_millis(40));
            p.push(PendingStep {
                waited: Duration::from_millis(waited_ms),
                ..step(s, 1.0)
            });
            let share = p.read().unwrap().0[0].data_wait_share.unwrap();
            // 5, 0 and 10 ms of waiting in windows of at least 40 ms.
            let most = (waited_ms - [0, 5, 5][s as usize - 1]) as f64 / 40.0;
            assert!(
                share <= most && (share > 0.0) == (most > 0.0),
                "step {s}: {share}"
            );
        }
    }

    #[test]
    fn the_first_non_finite_loss_is_named_with_its_step() {
        let mut p = Pending::new(4, 8, None);
        p.push(step(5, 1.0));
        p.push(step(6, f32::NAN));
        p.push(step(7, f32::INFINITY));
        p.push(step(8, 1.0));
        let (lines, bad) = p.read().unwrap();
        assert_eq!(lines.len(), 1, "only the steps before it are written");
        let bad = bad.unwrap();
        assert_eq!(bad.step, 6);
        assert!(matches!(bad.what, Diverged::Loss(l) if l.is_nan()));
    }

    #[test]
    fn a_non_finite_gradient_or_parameter_with_a_finite_loss_is_named() {
        let mut p = Pending::new(4, 8, None);
        p.push(step(1, 1.0));
        p.push(flagged(2, 1.0, 1.0, 1.0));
        p.push(step(3, 1.0));
        let (lines, bad) = p.read().unwrap();
        assert_eq!(lines.len(), 1);
        let bad = bad.unwrap();
        assert_eq!((bad.step, bad.what), (2, Diverged::Gradient));
        p.push(flagged(4, 1.0, 0.0, 1.0));
        let (lines, bad) = p.read().unwrap();
        assert!(lines.is_empty());
        assert_eq!(bad.unwrap().what, Diverged::Parameter);
        // A non-finite loss is named first.
        p.push(flagged(5, f32::INFINITY, 1.0, 1.0));
        let bad = p.read().unwrap().1.unwrap();
        assert_eq!(bad.what, Diverged::Loss(f64::INFINITY));
    }
}
