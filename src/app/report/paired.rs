//! Paired comparisons over seeds: each EqCo run against the InfoNCE run of
//! the same configuration, K and seed, so that what the two share (the
//! seed's initial weights, augmentations and batches) cancels in the
//! difference, and the spread left is the spread of the effect.
//!
//! For n seeds with differences dᵢ = accᵢ(EqCo) − accᵢ(InfoNCE):
//! mean d̄ = Σdᵢ/n, standard deviation s = √(Σ(dᵢ − d̄)²/(n − 1)), and the
//! 95 % interval d̄ ± t₀.₉₇₅,ₙ₋₁ · s/√n (Student's t). The difference is
//! *resolved* when that interval excludes 0.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Per-seed differences of one metric between two configurations, with
/// their mean, spread and 95 % interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Which differences these are, e.g. "simo EqCo α=256 − InfoNCE at K = 16".
    pub label: String,
    /// The metric, e.g. "kNN top-1".
    pub metric: &'static str,
    /// The seeds present in both configurations, in order.
    pub seeds: Vec<u64>,
    /// The differences, in points (percentage points for accuracies), one per seed.
    pub diffs: Vec<f64>,
    /// Their mean d̄.
    pub mean: f64,
    /// Their sample standard deviation s (n − 1 in the denominator); NaN for one seed.
    pub sd: f64,
    /// Half the width of the 95 % t interval, t₀.₉₇₅,ₙ₋₁ · s/√n; NaN for one seed.
    pub half_width: f64,
}

impl Paired {
    /// Summarises the differences `diffs` of `seeds`.
    pub fn new(label: String, metric: &'static str, seeds: Vec<u64>, diffs: Vec<f64>) -> Paired {
        let n = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let (sd, half_width) = if diffs.len() < 2 {
            (f64::NAN, f64::NAN)
        } else {
            let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let sd = var.sqrt();
            (sd, t_975(diffs.len() - 1) * sd / n.sqrt())
        };
        Paired {
            label,
            metric,
            seeds,
            diffs,
            mean,
            sd,
            half_width,
        }
    }

    /// Whether the 95 % interval excludes 0 (never with one seed).
    pub fn resolved(&self) -> bool {
        self.half_width.is_finite() && self.mean.abs() > self.half_width
    }

    /// The 95 % interval (lower, upper).
    pub fn interval(&self) -> (f64, f64) {
        (self.mean - self.half_width, self.mean + self.half_width)
    }

    /// "simo: EqCo α=256 − InfoNCE at K = 16, kNN top-1: +d̄ ± half-width
    /// points (95 % interval, n seeds): resolved" (or "not resolved at this
    /// scale").
    pub fn verdict(&self) -> String {
        let n = self.diffs.len();
        let seeds = if n == 1 { "seed" } else { "seeds" };
        let verdict = if self.resolved() {
            "resolved"
        } else {
            "not resolved at this scale"
        };
        format!(
            "{}, {}: {:+.2} ± {:.2} points (95 % interval, {n} {seeds}): {verdict}",
            self.label, self.metric, self.mean, self.half_width
        )
    }
}

/// t₀.₉₇₅ of Student's t with `df` degrees of freedom (12.706 for 1, 2.776
/// for 4, → 1.960).
pub fn t_975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64)
        .map(|t| t.inverse_cdf(0.975))
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_are_the_tables() {
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (4, 2.776),
            (9, 2.262),
            (30, 2.042),
        ] {
            assert!((t_975(df) - t).abs() < 1e-3, "df {df}: {}", t_975(df));
        }
    }

    #[test]
    fn differences_computed_by_hand() {
        // d = 1, 2, 0, 3: mean 1.5, s² = (0.25 + 0.25 + 2.25 + 2.25)/3 = 5/3,
        // s = 1.29099, half width 3.18245 · 1.29099 / 2 = 2.05426.
        let p = Paired::new(
            "a − b".into(),
            "kNN top-1",
            vec![0, 1, 2, 3],
            vec![1.0, 2.0, 0.0, 3.0],
        );
        assert!((p.mean - 1.5).abs() < 1e-12);
        assert!((p.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((p.half_width - 2.05426).abs() < 1e-4, "{}", p.half_width);
        assert!(!p.resolved());
        assert_eq!(
            p.verdict(),
            "a − b, kNN top-1: +1.50 ± 2.05 points (95 % interval, 4 seeds): not resolved at this scale"
        );
        // d = 1.0, 1.2, 0.8, 1.1, 0.9: mean 1.0, s = 0.158114, half width
        // 2.776445 · 0.158114 / √5 = 0.196324: resolved.
        let p = Paired::new(
            "a − b".into(),
            "linear top-1",
            (0..5).collect(),
            vec![1.0, 1.2, 0.8, 1.1, 0.9],
        );
        assert!((p.half_width - 0.196324).abs() < 1e-5, "{}", p.half_width);
        assert!(p.resolved());
        assert!(
            p.verdict().ends_with("(95 % interval, 5 seeds): resolved"),
            "{}",
            p.verdict()
        );
        let (lo, hi) = p.interval();
        assert!(lo > 0.0 && hi < 1.2);
        // One seed: a difference, no interval, never resolved.
        let p = Paired::new("a − b".into(), "kNN top-1", vec![0], vec![-0.5]);
        assert!(p.sd.is_nan() && !p.resolved());
        assert!(p
            .verdict()
            .contains("-0.50 ± NaN points (95 % interval, 1 seed)"));
    }
}
