//! Diagnostics cheap enough to log every step: the gradient with respect to
//! each query in closed form (Theorem 2) and its bound.
//!
//! The empirical MI bound (Eq. 4/6) is [`InfoNceOutput::mi_bound`].

use tch::Tensor;

use super::{InfoNceOutput, Negatives};

/// `∂L_i/∂q_i = (1/τ)(−(1 − p0)·k0 + Σ_{i≥1} p_i·ki)`, `[N, D]` (Theorem 2), for
/// the per-query loss `L_i` (not the batch mean), detached from the graph.
pub fn grad_q(out: &InfoNceOutput, k_pos: &Tensor, negatives: Negatives<'_>) -> Tensor {
    tch::no_grad(|| {
        let p = out.probabilities();
        let p0 = p.select(1, 0).unsqueeze(1);
        let p_neg = p
            .narrow(1, 1, out.k as i64)
            .to_kind(negatives.keys().kind());
        let neg = negatives.weighted_sum(&p_neg).to_kind(p.kind());
        (neg - (1.0 - p0) * k_pos.to_kind(p.kind())) / out.tau
    })
}

/// `‖∂L_i/∂q_i‖` per query, `[N]` (Theorem 2); its mean is `grad_norm_q` in metrics.
pub fn grad_norm_q(out: &InfoNceOutput, k_pos: &Tensor, negatives: Negatives<'_>) -> Tensor {
    grad_q(out, k_pos, negatives).norm_scalaropt_dim(2, [1], false)
}

/// The bound `(2/τ)(1 − p0)` on `‖∂L_i/∂q_i‖`, `[N]` (Theorem 2).
pub fn grad_norm_bound(out: &InfoNceOutput) -> Tensor {
    (1.0 - out.probabilities().select(1, 0)) * (2.0 / out.tau)
}
