//! The EqCo rule for the number of negatives (paper Eq. 5, Theorem 1).
//!
//! With `m = τ·ln(α/K)` we get `exp(m/τ) = α/K`, so InfoNCE with K negatives
//! and this margin equals InfoNCE whose negatives' exp-sum is rescaled to `α`
//! times their mean: training with K negatives then behaves like training with
//! α negatives (same mutual-information bound `ln α − L`, same gradient scale).

use serde::{Deserialize, Deserializer, Serialize};

use crate::base::error::{Error, Result};

/// `m = τ·ln(α/K)`: the EqCo margin (Eq. 5). Positive for `K < α`.
pub fn eqco_margin(tau: f64, alpha: f64, k: usize) -> f64 {
    tau * (alpha / k as f64).ln()
}

/// The loss's hyper-parameters: temperature and how the margin is chosen.
///
/// - `alpha` absent and `margin` absent: plain InfoNCE (m = 0).
/// - `alpha = Some(α)`: EqCo, `m = τ·ln(α/K)` for whatever K a batch has.
/// - `margin = Some(m)`: a fixed margin (Eq. 1), for experiments.
///
/// `alpha` and `margin` together are an error.
///
/// As the loss section of a run's configuration, its keys are `tau` and
/// `alpha` (`"none"` for plain InfoNCE); a fixed margin is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Temperature τ.
    pub tau: f64,
    /// EqCo's α; absent (or `"none"`) for plain InfoNCE.
    #[serde(
        deserialize_with = "alpha_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub alpha: Option<f64>,
    /// A fixed margin m; exclusive with `alpha`.
    #[serde(skip)]
    pub margin: Option<f64>,
}

impl Default for LossConfig {
    /// Plain InfoNCE at τ = 0.2.
    fn default() -> Self {
        LossConfig::infonce(0.2)
    }
}

/// `alpha` as a number, or `"none"` for plain InfoNCE.
fn alpha_or_none<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum A {
        Num(f64),
        Int(i64),
        Text(String),
    }
    match A::deserialize(d)? {
        A::Num(v) => Ok(Some(v)),
        A::Int(v) => Ok(Some(v as f64)),
        A::Text(s) if s.eq_ignore_ascii_case("none") => Ok(None),
        A::Text(s) => Err(serde::de::Error::custom(format!(
            "'{s}' is not a number or \"none\""
        ))),
    }
}

impl LossConfig {
    /// Plain InfoNCE at temperature `tau`.
    pub fn infonce(tau: f64) -> Self {
        LossConfig {
            tau,
            alpha: None,
            margin: None,
        }
    }

    /// EqCo at temperature `tau`, mimicking `alpha` negatives.
    pub fn eqco(tau: f64, alpha: f64) -> Self {
        LossConfig {
            tau,
            alpha: Some(alpha),
            margin: None,
        }
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(Error::config(
                "tau",
                format!("{} (must be a finite number > 0)", self.tau),
            ));
        }
        if let Some(alpha) = self.alpha {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(Error::config(
                    "alpha",
                    format!("{alpha} (must be a finite number > 0, or absent for plain InfoNCE)"),
                ));
            }
        }
        if let Some(margin) = self.margin {
            if !margin.is_finite() {
                return Err(Error::config(
                    "margin",
                    format!("{margin} (must be a finite number)"),
                ));
            }
            if self.alpha.is_some() {
                return Err(Error::config(
                    "margin",
                    "set together with `alpha`; EqCo derives the margin from alpha, so give one or the other",
                ));
            }
        }
        Ok(())
    }

    /// Whether the EqCo rule is on.
    pub fn is_eqco(&self) -> bool {
        self.alpha.is_some()
    }

    /// The margin m for a batch with `k` negatives per query (Eq. 5 under EqCo).
    pub fn margin_for(&self, k: usize) -> Result<f64> {
        self.validate()?;
        if k == 0 {
            return Err(Error::config(
                "k_negatives",
                "0 (a contrastive loss needs at least one negative)",
            ));
        }
        Ok(match (self.alpha, self.margin) {
            (Some(alpha), _) => eqco_margin(self.tau, alpha, k),
            (None, Some(m)) => m,
            (None, None) => 0.0,
        })
    }

    /// The empirical mutual-information lower bound `ln K + m/τ − L` (Eq. 4),
    /// which is `ln α − L` under EqCo (Eq. 6) and `ln K − L` for plain InfoNCE.
    ///
    /// We count the K negatives, not K + 1 with the positive: this is the
    /// paper's Eq. 4/6, and it makes EqCo with α = K identical to InfoNCE. The
    /// exact InfoNCE bound `ln(K+1) − L` is larger by `ln(1 + 1/K)` (0.016 nats
    /// at K = 64).
    pub fn mi_bound(&self, k: usize, mean_loss: f64) -> Result<f64> {
        let m = self.margin_for(k)?;
        Ok((k as f64).ln() + m / self.tau - mean_loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn margin_follows_the_rule() {
        let cfg = LossConfig::eqco(0.2, 256.0);
        let m = cfg.margin_for(16).unwrap();
        assert!((m - 0.2 * 16f64.ln()).abs() < 1e-12);
        assert!(m > 0.0, "K < alpha makes the positive harder");
        assert!(cfg.margin_for(1024).unwrap() < 0.0);
        assert_eq!(cfg.margin_for(256).unwrap(), 0.0);
        assert_eq!(LossConfig::infonce(0.2).margin_for(16).unwrap(), 0.0);
    }

    #[test]
    fn bound_is_ln_alpha_minus_loss_under_eqco() {
        let cfg = LossConfig::eqco(0.07, 512.0);
        for k in [16, 64, 4096] {
            let b = cfg.mi_bound(k, 1.5).unwrap();
            assert!((b - (512f64.ln() - 1.5)).abs() < 1e-9, "k={k}: {b}");
        }
        let plain = LossConfig::infonce(0.07).mi_bound(64, 1.0).unwrap();
        assert!((plain - (64f64.ln() - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn invalid_values_name_their_field() {
        assert_eq!(
            field_of(LossConfig::infonce(0.0).validate().unwrap_err()),
            "tau"
        );
        assert_eq!(
            field_of(LossConfig::infonce(f64::NAN).validate().unwrap_err()),
            "tau"
        );
        assert_eq!(
            field_of(LossConfig::eqco(0.2, -1.0).validate().unwrap_err()),
            "alpha"
        );
        assert_eq!(
            field_of(LossConfig::eqco(0.2, f64::INFINITY).validate().unwrap_err()),
            "alpha"
        );
        let both = LossConfig {
            tau: 0.2,
            alpha: Some(256.0),
            margin: Some(0.1),
        };
        assert_eq!(field_of(both.validate().unwrap_err()), "margin");
        let nan_margin = LossConfig {
            margin: Some(f64::NAN),
            ..LossConfig::infonce(0.2)
        };
        assert_eq!(field_of(nan_margin.validate().unwrap_err()), "margin");
        assert_eq!(
            field_of(LossConfig::eqco(0.2, 256.0).margin_for(0).unwrap_err()),
            "k_negatives"
        );
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let cfg: LossConfig = toml::from_str("tau = 0.2\nalpha = 256.0").unwrap();
        assert_eq!(cfg, LossConfig::eqco(0.2, 256.0));
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<LossConfig>(&text).unwrap(), cfg);
        let err = toml::from_str::<LossConfig>("tau = 0.2\nalpah = 3.0").unwrap_err();
        assert!(err.to_string().contains("alpah"), "{err}");
    }
}
