//! Whether two runs trained the same function: their per-step losses and
//! final weights, compared against a noise floor that the test measures
//! itself (the same run at another thread count), never against one
//! machine's rounding.
//!
//! Why a floor: a few small-batch steps amplify rounding about 10× a step,
//! and how much rounding there is depends on the machine's kernels (with
//! AVX-512, fp32 channels-last convolutions are not batch-invariant). Two
//! runs of one process at 1 and 2 threads differ by exactly that much, so a
//! data-parallel run that is right differs from the single process by a
//! small multiple of it, while a wrong gradient or statistic differs by
//! orders of magnitude more.

use std::collections::HashMap;
use std::path::Path;

use eqco::run::metrics::{self, StepMetrics};
use tch::{Kind, Tensor};

/// How far above the measured floor a run may drift: the floor is one
/// draw of a chaotic amplification, so the bound leaves room for another
/// draw of the same size (measured: W = 2 vs W = 1 drifts 0–1.5× the
/// 1-vs-2-thread floor, see the README's *What the tests guarantee*).
pub const FLOOR_MULTIPLE: f64 = 10.0;

/// The smallest floor, relative: where the kernels are batch- and
/// thread-invariant (the measured floor is 0), what remains is the order
/// of a sum of float32 numbers, a few units of 2⁻²⁴ ≈ 6e-8, amplified by
/// a few steps.
pub const FP32_FLOOR: f64 = 1e-6;

/// The step figures of a run folder.
pub fn losses(run: &Path) -> Vec<StepMetrics> {
    metrics::read(&run.join("metrics.jsonl")).unwrap()
}

/// The query encoder's parameters in a checkpoint file (not BN's running
/// statistics: with shuffle BN one process's groups update them one after
/// another, and each device its own).
pub fn weights(checkpoint: &Path) -> HashMap<String, Tensor> {
    let (state, _) = eqco::run::checkpoint::load(checkpoint).unwrap();
    state
        .into_iter()
        .filter(|(k, _)| k.starts_with("query.") && !k.contains(".running_"))
        .collect()
}

/// The SGD momentum buffers of a checkpoint: after the first step with
/// `weight_decay = 0`, each is that step's (averaged) gradient.
pub fn gradients(checkpoint: &Path) -> HashMap<String, Tensor> {
    let (state, _) = eqco::run::checkpoint::load(checkpoint).unwrap();
    state
        .into_iter()
        .filter(|(k, _)| k.starts_with("optim."))
        .collect()
}

/// The latest checkpoint of a run folder.
pub fn latest(run: &Path) -> std::path::PathBuf {
    run.join("checkpoints/latest.safetensors")
}

/// |a − b| / max(|a|, |b|), 0 where both are 0.
pub fn rel(a: f64, b: f64) -> f64 {
    let scale = a.abs().max(b.abs());
    if scale == 0.0 {
        0.0
    } else {
        (a - b).abs() / scale
    }
}

/// Per-step relative loss differences of two runs of the same steps.
pub fn loss_drift(a: &[StepMetrics], b: &[StepMetrics]) -> Vec<f64> {
    assert_eq!(a.len(), b.len(), "the runs have as many steps");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.step, y.step);
            rel(x.loss, y.loss)
        })
        .collect()
}

/// ‖a − b‖ / ‖a‖ over every tensor of two same-named sets (one norm for
/// the whole model: near-zero biases make a tensor-by-tensor ratio
/// meaningless).
pub fn tensor_drift(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len(), "the same tensors");
    let (mut diff2, mut norm2) = (0.0, 0.0);
    for (name, ta) in a {
        let tb = b.get(name).unwrap_or_else(|| panic!("{name} in both"));
        let d = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double))
            .square()
            .sum(Kind::Double);
        diff2 += d.double_value(&[]);
        norm2 += ta
            .to_kind(Kind::Double)
            .square()
            .sum(Kind::Double)
            .double_value(&[]);
    }
    (diff2 / norm2).sqrt()
}

/// The bound at each step: [`FLOOR_MULTIPLE`] × the floor so far (its
/// running maximum: drift only grows), never below `least`.
pub fn bounds(floor: &[f64], least: f64) -> Vec<f64> {
    let mut seen: f64 = 0.0;
    floor
        .iter()
        .map(|&f| {
            seen = seen.max(f);
            FLOOR_MULTIPLE * seen.max(least)
        })
        .collect()
}

/// Asserts that `drift` stays within [`bounds`] of `floor` at every step,
/// and says by how much.
pub fn assert_within_floor(what: &str, drift: &[f64], floor: &[f64], least: f64) {
    let bound = bounds(floor, least);
    let (drift_s, floor_s) = (sci(drift), sci(floor));
    for (i, (d, b)) in drift.iter().zip(&bound).enumerate() {
        assert!(
            d <= b,
            "{what}, step {}: drift {d:.2e} is above the bound {b:.2e} \
             (drift per step {drift_s}, floor {floor_s})",
            i + 1
        );
    }
    eprintln!("{what}: drift per step {drift_s}, floor {floor_s}");
}

/// Numbers in scientific notation, for messages.
pub fn sci(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.1e}")).collect();
    format!("[{}]", parts.join(", "))
}
