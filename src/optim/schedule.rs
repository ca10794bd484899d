//! Learning-rate schedules, evaluated at every step: linear warm-up, then a
//! cosine or step schedule; the base rate follows the linear scaling rule
//! `lr × N / 256` (paper Sec. 2.2: it applies to the N queries, not to K).

use serde::{Deserialize, Serialize};

use super::OptimConfig;

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the base rate to 0.
    Cosine,
    /// ×0.1 at each epoch of `lr_steps`.
    Step,
}

/// The learning rate of optimizer step `step` (0-based) with
/// `steps_per_epoch` steps per epoch: linear warm-up to `lr × N / 256`, then
/// the schedule.
pub fn learning_rate(cfg: &OptimConfig, step: usize, steps_per_epoch: usize) -> f64 {
    let base = cfg.scaled_lr();
    let spe = steps_per_epoch.max(1) as f64;
    let warmup_steps = cfg.warmup_epochs * spe;
    let s = step as f64;
    if s < warmup_steps {
        return base * (s + 1.0) / warmup_steps;
    }
    match cfg.schedule {
        Schedule::Cosine => {
            let total = cfg.epochs as f64 * spe;
            let t = ((s - warmup_steps) / (total - warmup_steps).max(1.0)).min(1.0);
            base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step => {
            let epoch = step / steps_per_epoch.max(1);
            let passed = cfg.lr_steps.iter().filter(|&&e| epoch >= e).count();
            base * 0.1f64.powi(passed as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        let cfg = OptimConfig {
            lr: 0.03,
            batch_size: 512,
            epochs: 10,
            warmup_epochs: 2.0,
            schedule: Schedule::Cosine,
            ..Default::default()
        };
        let base = 0.06; // 0.03 × 512 / 256
        assert!((learning_rate(&cfg, 0, 100) - base / 200.0).abs() < 1e-12);
        assert!((learning_rate(&cfg, 199, 100) - base).abs() < 1e-12);
        assert!((learning_rate(&cfg, 200, 100) - base).abs() < 1e-12);
        assert!((learning_rate(&cfg, 600, 100) - base / 2.0).abs() < 1e-12);
        assert!(learning_rate(&cfg, 999, 100) < 1e-5 * base);
    }

    #[test]
    fn steps_multiply_by_a_tenth() {
        let cfg = OptimConfig {
            lr: 0.03,
            batch_size: 256,
            epochs: 200,
            warmup_epochs: 0.0,
            schedule: Schedule::Step,
            lr_steps: vec![120, 160],
            ..Default::default()
        };
        assert!((learning_rate(&cfg, 119 * 10 + 9, 10) - 0.03).abs() < 1e-12);
        assert!((learning_rate(&cfg, 1200, 10) - 0.003).abs() < 1e-12);
        assert!((learning_rate(&cfg, 1600, 10) - 0.0003).abs() < 1e-12);
    }
}
