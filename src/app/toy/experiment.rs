//! The protocol of the paper's Table 5: train a critic with InfoNCE or EqCo on
//! correlated Gaussians, then estimate the MI lower bound on fresh batches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Device};

use super::{CorrelatedGaussians, SeparableCritic};
use crate::base::error::{Error, Result};
use crate::base::seed::splitmix64;
use crate::loss::{info_nce_from_similarities, split_diagonal, LossConfig};

/// The estimator a critic is trained and evaluated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Plain InfoNCE; bound `ln K − L`.
    InfoNce,
    /// InfoNCE with the EqCo margin `m = ln(α/K)` (τ = 1); bound `ln α − L`.
    EqCo,
}

impl Estimator {
    /// The name used in CSV and JSON files: `infonce` or `eqco`.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::InfoNce => "infonce",
            Estimator::EqCo => "eqco",
        }
    }

    /// The name shown to people: `InfoNCE` or `EqCo`.
    pub fn label(self) -> &'static str {
        match self {
            Estimator::InfoNce => "InfoNCE",
            Estimator::EqCo => "EqCo",
        }
    }
}

/// Settings shared by every run of the table (defaults: the paper's protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToyConfig {
    /// Dimension d of x and y (paper: 20).
    pub dim: usize,
    /// Hidden units of each critic MLP (paper: 256).
    pub hidden: usize,
    /// Output width of each critic MLP (not in the paper; 32).
    pub embed: usize,
    /// Adam's learning rate (paper: 5e-4).
    pub lr: f64,
    /// Training steps, each on a fresh batch (paper: 5000).
    pub steps: usize,
    /// Fresh batches the bound is averaged over after training (paper: 1000).
    pub eval_batches: usize,
    /// EqCo's α (paper: 512).
    pub alpha: f64,
    /// Base seed; each run derives its own from it, its true MI and its K.
    pub seed: u64,
}

impl Default for ToyConfig {
    fn default() -> Self {
        ToyConfig {
            dim: 20,
            hidden: 256,
            embed: 32,
            lr: 5e-4,
            steps: 5000,
            eval_batches: 1000,
            alpha: 512.0,
            seed: 0,
        }
    }
}

impl ToyConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("dim", self.dim),
            ("hidden", self.hidden),
            ("embed", self.embed),
            ("steps", self.steps),
            ("eval-batches", self.eval_batches),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, "0 (must be ≥ 1)"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", format!("{} (must be > 0)", self.lr)));
        }
        LossConfig::eqco(1.0, self.alpha).validate()
    }
}

/// One cell of the table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The loss the critic is trained and evaluated with.
    pub estimator: Estimator,
    /// The true mutual information, in nats.
    pub true_mi: f64,
    /// Negatives per query; a batch holds K + 1 pairs.
    pub k: usize,
}

impl RunSpec {
    /// The run's seed: InfoNCE and EqCo share it for the same (MI, K), so they
    /// start from the same critic and see the same batches.
    pub fn seed(&self, base: u64) -> u64 {
        let cell = ((self.true_mi * 1000.0).round() as u64) << 32 | self.k as u64;
        splitmix64(base ^ splitmix64(cell))
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The cell.
    #[serde(flatten)]
    pub spec: RunSpec,
    /// The bound averaged over the evaluation batches.
    pub estimate: f64,
    /// The standard deviation of the per-batch bounds.
    pub estimate_std: f64,
    /// The bound on the last training batch.
    pub final_train_bound: f64,
    /// Mean wall time of one training step, in milliseconds.
    pub ms_per_step: f64,
}

/// Every (estimator, MI, K) combination, InfoNCE first, then by MI and K.
pub fn grid(mis: &[f64], ks: &[usize]) -> Vec<RunSpec> {
    let mut specs = Vec::new();
    for estimator in [Estimator::InfoNce, Estimator::EqCo] {
        for &true_mi in mis {
            for &k in ks {
                specs.push(RunSpec {
                    estimator,
                    true_mi,
                    k,
                });
            }
        }
    }
    specs
}

/// Trains one critic for `cfg.steps` steps and evaluates its bound on
/// `cfg.eval_batches` fresh batches.
pub fn run(cfg: &ToyConfig, spec: RunSpec, device: Device) -> Result<RunResult> {
    cfg.validate()?;
    if spec.k == 0 {
        return Err(Error::config("k", "0 (must be ≥ 1)"));
    }
    let data = CorrelatedGaussians::with_mi(spec.true_mi, cfg.dim)?;
    let loss_cfg = match spec.estimator {
        Estimator::InfoNce => LossConfig::infonce(1.0),
        Estimator::EqCo => LossConfig::eqco(1.0, cfg.alpha),
    };
    let seed = spec.seed(cfg.seed);
    let vs = nn::VarStore::new(device);
    let critic = crate::base::seed::with_torch_seed(seed, || {
        SeparableCritic::new(
            &vs.root(),
            cfg.dim as i64,
            cfg.hidden as i64,
            cfg.embed as i64,
        )
    });
    let mut opt = nn::Adam::default().build(&vs, cfg.lr)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let batch = spec.k + 1;

    let bound = |x: &tch::Tensor, y: &tch::Tensor| -> Result<crate::loss::InfoNceOutput> {
        let (pos, neg) = split_diagonal(&critic.scores(x, y))?;
        info_nce_from_similarities(&pos, &neg, &loss_cfg)
    };

    let start = Instant::now();
    let mut final_train_bound = f64::NAN;
    for step in 0..cfg.steps {
        let (x, y) = data.sample(batch, &mut rng, device);
        let out = bound(&x, &y)?;
        opt.backward_step(&out.loss);
        if step % 500 == 0 || step + 1 == cfg.steps {
            final_train_bound = out.mi_bound();
            if !final_train_bound.is_finite() {
                return Err(Error::Numerical(format!(
                    "{} loss is {} at step {step} (true MI {}, K {})",
                    spec.estimator.label(),
                    out.loss.double_value(&[]),
                    spec.true_mi,
                    spec.k
                )));
            }
        }
    }
    let ms_per_step = start.elapsed().as_secs_f64() * 1e3 / cfg.steps as f64;

    let bounds = tch::no_grad(|| -> Result<Vec<f64>> {
        (0..cfg.eval_batches)
            .map(|_| {
                let (x, y) = data.sample(batch, &mut rng, device);
                Ok(bound(&x, &y)?.mi_bound())
            })
            .collect()
    })?;
    let n = bounds.len() as f64;
    let estimate = bounds.iter().sum::<f64>() / n;
    let var = bounds.iter().map(|b| (b - estimate).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(RunResult {
        spec,
        estimate,
        estimate_std: var.sqrt(),
        final_train_bound,
        ms_per_step,
    })
}

/// Runs `specs` on `threads` worker threads (each with its own single-threaded
/// libtorch), calling `on_done` as each finishes. Results keep `specs`' order
/// and do not depend on the thread count.
pub fn run_all(
    cfg: &ToyConfig,
    specs: &[RunSpec],
    threads: usize,
    device: Device,
    on_done: impl Fn(&RunResult) + Sync,
) -> Result<Vec<RunResult>> {
    cfg.validate()?;
    let workers = threads.clamp(1, specs.len().max(1));
    let intra_op = (threads / workers).max(1) as i32;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; specs.len()]);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                tch::set_num_threads(intra_op);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= specs.len() || first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    match run(cfg, specs[i], device) {
                        Ok(r) => {
                            on_done(&r);
                            results.lock().expect("results lock")[i] = Some(r);
                        }
                        Err(e) => {
                            first_error.lock().expect("error lock").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every run finished"))
        .collect())
}
