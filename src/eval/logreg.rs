//! Multinomial logistic regression on frozen features, fitted to
//! convergence: the linear probe's `logreg` mode.
//!
//! Features `x_i ∈ R^F` are standardised with the fitting images' mean and
//! standard deviation; for weights `W: [C, F]` and bias `b: [C]` the
//! objective is
//!
//! ```text
//! J(W, b) = (1/n) Σ_i −ln softmax(W x_i + b)_{y_i} + (λ/2)‖W‖²
//! ```
//!
//! (the bias unpenalised), minimised over the whole batch in float64 with
//! L-BFGS (Nocedal & Wright, *Numerical Optimization*, Alg. 7.4 and 7.5:
//! the two-loop recursion over the last [`MEMORY`] pairs, a backtracking
//! line search with the Armijo condition). J is smooth and, for λ > 0,
//! strongly convex, so the fit converges to the one minimum whatever the
//! start. λ is chosen on a held-out part of the training split, never on
//! the test split, then the classifier is refitted on all of it.

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::base::error::{Error, Result};

/// Curvature pairs L-BFGS keeps.
pub const MEMORY: usize = 10;
/// Iterations before a fit gives up (and says it did not converge).
pub const MAX_ITERATIONS: usize = 1000;
/// A fit has converged when the gradient's largest entry is at most this.
pub const GRADIENT_TOLERANCE: f64 = 1e-5;
/// The regularisation strengths tried, strongest first.
pub const LAMBDAS: [f64; 6] = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6];
/// Training images held out to choose λ: this many at most, and at most a
/// sixth of the split.
pub const HELD_OUT: usize = 10_000;

/// How one fit ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// L-BFGS iterations.
    pub iterations: usize,
    /// Whether the gradient fell below [`GRADIENT_TOLERANCE`].
    pub converged: bool,
    /// The gradient's largest entry at the end.
    pub gradient: f64,
    /// J at the end.
    pub objective: f64,
}

/// One regularisation strength tried on the held-out images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// λ.
    pub lambda: f64,
    /// Top-1 accuracy on the held-out images, in [0, 1].
    pub held_out_top1: f64,
    /// How its fit on the rest ended.
    pub fit: FitReport,
}

/// What the `logreg` mode chose and how its fits converged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogregReport {
    /// The λ chosen: the best held-out top-1, the stronger on a tie.
    pub lambda: f64,
    /// Training images held out to choose it.
    pub held_out: usize,
    /// Every λ tried.
    pub candidates: Vec<Candidate>,
    /// The final fit on all the training images.
    pub fit: FitReport,
}

/// A fitted classifier with the standardisation it expects.
pub struct Classifier {
    mean: Tensor,
    std: Tensor,
    /// `[C, F]`.
    w: Tensor,
    /// `[C]`.
    b: Tensor,
}

impl Classifier {
    /// Logits `[n, C]` of raw features `[n, F]`.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        let z = (x.to_kind(Kind::Double) - &self.mean) / &self.std;
        z.matmul(&self.w.tr()) + &self.b
    }
}

/// Chooses λ on held-out training images (drawn from `seed`), then fits on
/// all of `x: [n, F]`, `y: [n]` with it.
pub fn fit_selected(
    x: &Tensor,
    y: &Tensor,
    classes: i64,
    seed: u64,
) -> Result<(Classifier, LogregReport)> {
    let n = x.size()[0] as usize;
    let held_out = HELD_OUT.min(n / 6);
    if held_out == 0 {
        return Err(Error::config(
            "max_images",
            format!("{n} training images are too few to hold some out for choosing λ (at least 6)"),
        ));
    }
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let index = Tensor::from_slice(&order).to_device(x.device());
    let val = index.narrow(0, 0, held_out as i64);
    let rest = index.narrow(0, held_out as i64, (n - held_out) as i64);
    let (xv, yv) = (x.index_select(0, &val), y.index_select(0, &val));
    let (xf, yf) = (x.index_select(0, &rest), y.index_select(0, &rest));
    let mut candidates = Vec::with_capacity(LAMBDAS.len());
    let mut fits: Vec<Classifier> = Vec::with_capacity(LAMBDAS.len());
    for lambda in LAMBDAS {
        // Warm start from the stronger λ's classifier: the path is smooth.
        let (clf, report) = fit(&xf, &yf, classes, lambda, fits.last())?;
        candidates.push(Candidate {
            lambda,
            held_out_top1: top1(&clf.logits(&xv), &yv),
            fit: report,
        });
        fits.push(clf);
    }
    let best = (1..candidates.len()).fold(0, |a, i| {
        match candidates[i].held_out_top1 > candidates[a].held_out_top1 {
            true => i,
            false => a,
        }
    });
    let lambda = candidates[best].lambda;
    let (clf, report) = fit(x, y, classes, lambda, Some(&fits[best]))?;
    Ok((
        clf,
        LogregReport {
            lambda,
            held_out,
            candidates,
            fit: report,
        },
    ))
}

/// Top-1 accuracy of `logits` `[n, C]` against `labels` `[n]`.
pub fn top1(logits: &Tensor, labels: &Tensor) -> f64 {
    let right = logits.argmax(1, false).eq_tensor(labels);
    right
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Fits J with strength `lambda` on `x: [n, F]`, `y: [n]`, from the
/// classifier `start` (the same logits, in this fit's standardisation) or
/// from zero.
pub fn fit(
    x: &Tensor,
    y: &Tensor,
    classes: i64,
    lambda: f64,
    start: Option<&Classifier>,
) -> Result<(Classifier, FitReport)> {
    let x = x.to_kind(Kind::Double);
    let mean = x.mean_dim(0, true, Kind::Double);
    // A constant feature is left as it is (divided by 1, not by 0).
    let std = x.std_dim(0, false, true);
    let std = std.where_self(&std.gt(1e-12), &std.ones_like());
    let z = (&x - &mean) / &std;
    let f = z.size()[1];
    let onehot = y.one_hot(classes).to_kind(Kind::Double);
    let precondition = Preconditioner::new(&z, lambda)?;
    let objective = Objective { z, onehot, lambda };
    let theta = match start {
        // x = z·std + mean, so start's logits ((x − m₀)/s₀)W₀ᵀ + b₀ are
        // z·(W₀ ∘ std/s₀)ᵀ + b₀ + ((mean − m₀)/s₀)W₀ᵀ.
        Some(c) => {
            let w = &c.w * (&std / &c.std);
            let b = &c.b
                + ((&mean - &c.mean) / &c.std)
                    .matmul(&c.w.tr())
                    .squeeze_dim(0);
            Tensor::cat(&[w.reshape([-1]), b], 0)
        }
        None => Tensor::zeros([classes * f + classes], (Kind::Double, x.device())),
    };
    let (theta, report) = lbfgs(&objective, &precondition, theta)?;
    let w = theta.narrow(0, 0, classes * f).reshape([classes, f]);
    let b = theta.narrow(0, classes * f, classes);
    Ok((Classifier { mean, std, w, b }, report))
}

/// J and its gradient for standardised features `z: [n, F]`, one-hot
/// labels `[n, C]` and strength λ, over `θ = [vec W, b]`.
struct Objective {
    z: Tensor,
    onehot: Tensor,
    lambda: f64,
}

impl Objective {
    /// `J(θ)` and `∇J(θ)`: with `P = softmax(Z Wᵀ + b)`,
    /// `∇_W = (P − Y)ᵀ Z / n + λW` and `∇_b = Σ_i (P − Y)_i / n`.
    fn value_and_gradient(&self, theta: &Tensor) -> (f64, Tensor) {
        let (n, f) = (self.z.size()[0], self.z.size()[1]);
        let c = self.onehot.size()[1];
        let w = theta.narrow(0, 0, c * f).reshape([c, f]);
        let b = theta.narrow(0, c * f, c);
        let logits = self.z.matmul(&w.tr()) + &b;
        let log_p = logits.log_softmax(1, Kind::Double);
        let nll = -(&log_p * &self.onehot).sum(Kind::Double) / n as f64;
        let penalty = 0.5 * self.lambda * w.square().sum(Kind::Double);
        let value = (nll + penalty).double_value(&[]);
        let residual = (log_p.exp() - &self.onehot) / n as f64;
        let grad_w = residual.tr().matmul(&self.z) + &w * self.lambda;
        let grad_b = residual.sum_dim_intlist(0, false, Kind::Double);
        (value, Tensor::cat(&[grad_w.reshape([-1]), grad_b], 0))
    }
}

/// An approximation of J's inverse Hessian that L-BFGS starts each
/// direction from (`H_0 = γP`): the softmax's curvature is at most ¼ per
/// class, so `∇²_W J ≲ ¼ Σ + λI` with `Σ = ZᵀZ / n` (the standardised
/// features' correlations, the main cause of slow convergence) and
/// `∇²_b J ≲ ¼`. `P` applies `(¼ Σ + εI)⁻¹` to each class's weights and 4
/// to the bias. It changes only how fast the fit converges, not where.
struct Preconditioner {
    /// `(¼ Σ + εI)⁻¹`, `[F, F]`, with ε = max(λ, 1e-6).
    inverse: Tensor,
}

impl Preconditioner {
    fn new(z: &Tensor, lambda: f64) -> Result<Preconditioner> {
        let (n, f) = (z.size()[0], z.size()[1]);
        let sigma = z.tr().matmul(z) / n as f64;
        let eye = Tensor::eye(f, (Kind::Double, z.device()));
        let inverse = Tensor::f_linalg_inv(&(sigma * 0.25 + eye * lambda.max(1e-6)))
            .map_err(|e| Error::Numerical(format!("the features' correlation matrix: {e}")))?;
        Ok(Preconditioner { inverse })
    }

    /// `P q` for a flat `q = [vec W, b]` of `classes` rows.
    fn apply(&self, q: &Tensor) -> Tensor {
        let f = self.inverse.size()[0];
        let c = q.size()[0] / (f + 1);
        let w = q.narrow(0, 0, c * f).reshape([c, f]).matmul(&self.inverse);
        let b = q.narrow(0, c * f, c) * 4.0;
        Tensor::cat(&[w.reshape([-1]), b], 0)
    }
}

/// The largest absolute entry of `t`.
fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// Minimises the objective from `theta` with L-BFGS (Alg. 7.5): each
/// direction from the two-loop recursion (Alg. 7.4), each step the first
/// of 1, ½, ¼, … that satisfies the Armijo condition.
fn lbfgs(
    objective: &Objective,
    precondition: &Preconditioner,
    mut theta: Tensor,
) -> Result<(Tensor, FitReport)> {
    let (mut value, mut grad) = objective.value_and_gradient(&theta);
    let mut history: VecDeque<(Tensor, Tensor, f64)> = VecDeque::with_capacity(MEMORY);
    let mut iterations = 0;
    while iterations < MAX_ITERATIONS && max_abs(&grad) > GRADIENT_TOLERANCE {
        iterations += 1;
        let direction = -two_loop(&grad, &history, precondition);
        let slope = grad.dot(&direction).double_value(&[]);
        if slope.is_nan() || slope >= 0.0 {
            // Not a descent direction (lost curvature): restart from the gradient.
            history.clear();
            continue;
        }
        let mut alpha = 1.0;
        let (next, next_value, next_grad) = loop {
            let candidate = &theta + &direction * alpha;
            let (v, g) = objective.value_and_gradient(&candidate);
            if v <= value + 1e-4 * alpha * slope || alpha < 1e-20 {
                break (candidate, v, g);
            }
            alpha *= 0.5;
        };
        if !next_value.is_finite() {
            return Err(Error::Numerical(format!(
                "the logistic regression's objective became {next_value} at iteration {iterations}"
            )));
        }
        let s = &next - &theta;
        let y = &next_grad - &grad;
        let sy = s.dot(&y).double_value(&[]);
        // Keep only pairs of positive curvature (J is convex: all of them
        // but those lost to rounding).
        if sy > 1e-12 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let stalled = (value - next_value).abs() <= 1e-15 * value.abs().max(1.0);
        (theta, value, grad) = (next, next_value, next_grad);
        if stalled {
            break;
        }
    }
    let gradient = max_abs(&grad);
    Ok((
        theta,
        FitReport {
            iterations,
            converged: gradient <= GRADIENT_TOLERANCE,
            gradient,
            objective: value,
        },
    ))
}

/// `H g` for the inverse-Hessian approximation of `history` (Alg. 7.4),
/// with `H_0 = γP`, `γ = sᵀy / yᵀPy` of the newest pair (`γ = 1` without one).
fn two_loop(
    grad: &Tensor,
    history: &VecDeque<(Tensor, Tensor, f64)>,
    precondition: &Preconditioner,
) -> Tensor {
    let mut q = grad.copy();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, rho) in history.iter().rev() {
        let a = rho * s.dot(&q).double_value(&[]);
        q -= y * a;
        alphas.push(a);
    }
    q = precondition.apply(&q);
    if let Some((s, y, _)) = history.back() {
        let py = precondition.apply(y);
        q *= s.dot(y).double_value(&[]) / y.dot(&py).double_value(&[]);
    }
    for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
        let b = rho * y.dot(&q).double_value(&[]);
        q += s * (a - b);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian blobs in 8 dimensions, `n` points each, overlapping.
    fn blobs(n: i64, seed: u64) -> (Tensor, Tensor) {
        let noise = crate::base::seed::with_torch_seed(seed, || {
            Tensor::randn([3 * n, 8], (Kind::Float, tch::Device::Cpu)) * 2.0
        });
        let centres = Tensor::from_slice(&[1.0f32, 0.0, -1.0])
            .view([3, 1])
            .repeat([1, 8]);
        let labels = Tensor::arange(3, (Kind::Int64, tch::Device::Cpu))
            .repeat_interleave_self_int(n, None, None);
        (centres.index_select(0, &labels) + noise, labels)
    }

    #[test]
    fn the_fit_reaches_the_minimum() {
        let (x, y) = blobs(200, 1);
        let (clf, report) = fit(&x, &y, 3, 1e-2, None).unwrap();
        assert!(report.converged, "{report:?}");
        // The gradient is zero at the minimum: J there is below J anywhere
        // near it (a step of 1e-3 along each axis of a few).
        let objective = Objective {
            z: (x.to_kind(Kind::Double) - &clf.mean) / &clf.std,
            onehot: y.one_hot(3).to_kind(Kind::Double),
            lambda: 1e-2,
        };
        let theta = Tensor::cat(&[clf.w.reshape([-1]), clf.b.shallow_clone()], 0);
        let (at, _) = objective.value_and_gradient(&theta);
        for i in [0, 5, 17, 26] {
            for d in [1e-3, -1e-3] {
                let moved = theta.copy();
                let _ = moved.get(i).g_add_scalar_(d);
                assert!(objective.value_and_gradient(&moved).0 > at);
            }
        }
        assert!((report.objective - at).abs() < 1e-12);
    }

    #[test]
    fn the_gradient_is_the_objectives_derivative() {
        let (x, y) = blobs(20, 2);
        let z = x.to_kind(Kind::Double);
        let objective = Objective {
            z,
            onehot: y.one_hot(3).to_kind(Kind::Double),
            lambda: 0.1,
        };
        let theta = crate::base::seed::with_torch_seed(3, || {
            Tensor::randn([3 * 8 + 3], (Kind::Double, tch::Device::Cpu))
        });
        let (_, grad) = objective.value_and_gradient(&theta);
        for i in [0, 9, 23, 25] {
            let h = 1e-6;
            let shifted = |d: f64| {
                let t = theta.copy();
                let _ = t.get(i).g_add_scalar_(d);
                objective.value_and_gradient(&t).0
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
            let analytic = grad.double_value(&[i]);
            assert!(
                (numeric - analytic).abs() < 1e-6,
                "{i}: {numeric} vs {analytic}"
            );
        }
    }

    #[test]
    fn lambda_is_chosen_on_held_out_images_and_the_choice_is_deterministic() {
        let (x, y) = blobs(300, 4);
        let (_, a) = fit_selected(&x, &y, 3, 7).unwrap();
        let (_, b) = fit_selected(&x, &y, 3, 7).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.candidates.len(), LAMBDAS.len());
        assert_eq!(a.held_out, 150);
        let best = a
            .candidates
            .iter()
            .map(|c| c.held_out_top1)
            .fold(0.0, f64::max);
        let chosen = a.candidates.iter().find(|c| c.lambda == a.lambda).unwrap();
        assert_eq!(chosen.held_out_top1, best);
        assert!(
            a.fit.converged && a.candidates.iter().all(|c| c.fit.converged),
            "{a:?}"
        );
    }
}
