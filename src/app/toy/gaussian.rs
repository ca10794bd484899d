//! The toy data: correlated Gaussians with a known mutual information.
//!
//! `x ~ N(0, I_d)`, `y = ρ·x + √(1 − ρ²)·ε` with `ε ~ N(0, I_d)`, so that
//! `I(x; y) = −(d/2)·ln(1 − ρ²)`.

use rand::Rng;
use rand_distr::StandardNormal;
use tch::{Device, Tensor};

use crate::base::error::{Error, Result};

/// The joint distribution of `(x, y)` for one true MI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrelatedGaussians {
    /// Dimension d of x and y.
    pub dim: usize,
    /// Per-coordinate correlation ρ ∈ [0, 1).
    pub rho: f64,
}

impl CorrelatedGaussians {
    /// The distribution whose mutual information is `mi` nats: `ρ = √(1 − e^{−2I/d})`.
    pub fn with_mi(mi: f64, dim: usize) -> Result<Self> {
        if !(mi.is_finite() && mi >= 0.0) {
            return Err(Error::config(
                "mi",
                format!("{mi} (must be a finite number ≥ 0)"),
            ));
        }
        if dim == 0 {
            return Err(Error::config("dim", "0 (must be ≥ 1)"));
        }
        let rho = (1.0 - (-2.0 * mi / dim as f64).exp()).sqrt();
        Ok(CorrelatedGaussians { dim, rho })
    }

    /// The true mutual information `−(d/2)·ln(1 − ρ²)` in nats.
    pub fn true_mi(&self) -> f64 {
        -(self.dim as f64) / 2.0 * (1.0 - self.rho * self.rho).ln()
    }

    /// `n` independent pairs: `(x, y)`, each `[n, d]` float32 on `device`.
    pub fn sample(&self, n: usize, rng: &mut impl Rng, device: Device) -> (Tensor, Tensor) {
        let len = n * self.dim;
        let noise_scale = (1.0 - self.rho * self.rho).sqrt() as f32;
        let rho = self.rho as f32;
        let x: Vec<f32> = (0..len).map(|_| rng.sample(StandardNormal)).collect();
        let y: Vec<f32> = x
            .iter()
            .map(|&xi| rho * xi + noise_scale * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let shape = [n as i64, self.dim as i64];
        let to = |v: &[f32]| Tensor::from_slice(v).view(shape).to_device(device);
        (to(&x), to(&y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rho_gives_the_requested_mi() {
        for mi in [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] {
            let g = CorrelatedGaussians::with_mi(mi, 20).unwrap();
            assert!((g.true_mi() - mi).abs() < 1e-9, "{mi}: {}", g.true_mi());
            assert!(g.rho < 1.0);
        }
    }

    #[test]
    fn samples_have_the_right_moments() {
        let g = CorrelatedGaussians::with_mi(6.0, 20).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (x, y) = g.sample(20_000, &mut rng, Device::Cpu);
        let var_y = y.var(true).double_value(&[]);
        let corr = (&x * &y).mean(tch::Kind::Float).double_value(&[]);
        assert!((var_y - 1.0).abs() < 0.02, "var(y) = {var_y}");
        assert!(
            (corr - g.rho).abs() < 0.02,
            "E[xy] = {corr}, rho = {}",
            g.rho
        );
    }
}
