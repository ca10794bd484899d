//! Weighted k-nearest-neighbour classification on frozen features (the
//! monitor of InstDisc/MoCo): each of the k most cosine-similar training
//! features votes for its class with weight `exp(sim/τ)`; the prediction
//! ranks classes by their summed votes. Defaults: k = 200, τ = 0.1.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::frozen::Frozen;

use crate::base::error::{Error, Result};
use crate::model::head::l2_normalize;

/// Top-1 and top-5 accuracy, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// Fraction of queries whose best class is right.
    pub top1: f64,
    /// Fraction whose right class is among the best five.
    pub top5: f64,
}

/// The kNN protocol's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnSettings {
    /// Neighbours k.
    pub k: i64,
    /// Temperature τ of the vote weights.
    pub tau: f64,
    /// Use at most this many training images as the memory bank (evenly spaced).
    pub bank: Option<usize>,
}

impl Default for KnnSettings {
    fn default() -> Self {
        KnnSettings {
            k: 200,
            tau: 0.1,
            bank: None,
        }
    }
}

/// `knn.json`: what a kNN evaluation measured and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnnReport {
    /// The checkpoint evaluated.
    pub checkpoint: std::path::PathBuf,
    /// Its optimizer steps.
    pub step: u64,
    /// The settings.
    pub settings: KnnSettings,
    /// Training images in the memory bank.
    pub bank: usize,
    /// Test images scored.
    pub test: usize,
    /// Test top-1 accuracy, in [0, 1].
    pub top1: f64,
    /// Test top-5 accuracy, in [0, 1].
    pub top5: f64,
}

/// Weighted kNN of `frozen`'s test split over a bank of its training split,
/// on centre-cropped views (the features cached by an earlier evaluation
/// are reused).
pub fn evaluate_knn(frozen: &Frozen, settings: KnnSettings) -> Result<KnnReport> {
    let n = frozen.train.len();
    let stride = settings.bank.map_or(1, |b| n.div_ceil(b.max(1)).max(1));
    let bank: Vec<usize> = (0..n).step_by(stride).collect();
    let (bank_f, bank_l) = frozen.train_features(&bank, false)?;
    let (test_f, test_l) = frozen.test_features()?;
    let test = test_f.size()[0] as usize;
    let acc = knn_accuracy(
        &bank_f,
        &bank_l,
        &test_f,
        &test_l,
        frozen.classes(),
        settings.k,
        settings.tau,
    )?;
    Ok(KnnReport {
        checkpoint: frozen.checkpoint.clone(),
        step: frozen.step,
        settings,
        bank: bank.len(),
        test,
        top1: acc.top1,
        top5: acc.top5,
    })
}

/// Classifies `test` features `[n, F]` by weighted kNN over `train` features
/// `[m, F]` with labels `[m]` in `0..classes` (both L2-normalised here, so
/// similarities are cosines), and scores the predictions against
/// `test_labels` `[n]`.
pub fn knn_accuracy(
    train: &Tensor,
    train_labels: &Tensor,
    test: &Tensor,
    test_labels: &Tensor,
    classes: i64,
    k: i64,
    tau: f64,
) -> Result<Accuracy> {
    let m = train.size()[0];
    if m == 0 || test.size()[0] == 0 {
        return Err(Error::config("knn", "no training or test features"));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(Error::config("knn_tau", format!("{tau} (must be > 0)")));
    }
    let k = k.clamp(1, m);
    let (train, test) = (l2_normalize(train), l2_normalize(test));
    let (mut hit1, mut hit5) = (0i64, 0i64);
    for (feats, labels) in test.split(1024, 0).iter().zip(test_labels.split(1024, 0)) {
        let sims = feats.matmul(&train.tr());
        let (top_sims, top_idx) = sims.topk(k, 1, true, true);
        let votes_for = train_labels
            .index_select(0, &top_idx.flatten(0, -1))
            .view([-1, k]);
        let weights = (top_sims / tau).exp();
        let scores = Tensor::zeros([feats.size()[0], classes], (Kind::Float, feats.device()))
            .scatter_add(1, &votes_for, &weights);
        let ranked = scores.topk(classes.min(5), 1, true, true).1;
        let right = ranked.eq_tensor(&labels.unsqueeze(1));
        hit1 += right.select(1, 0).sum(Kind::Int64).int64_value(&[]);
        hit5 += right.any_dim(1, false).sum(Kind::Int64).int64_value(&[]);
    }
    let n = test.size()[0] as f64;
    Ok(Accuracy {
        top1: hit1 as f64 / n,
        top5: hit5 as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn unit(v: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        let t = Tensor::from_slice(&flat).view([v.len() as i64, 2]);
        &t / t.norm_scalaropt_dim(2, [1], true)
    }

    #[test]
    fn separable_classes_are_found() {
        let train = unit(&[[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]);
        let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let test = unit(&[[1.0, 0.0], [0.0, 1.0]]);
        let acc = knn_accuracy(
            &train,
            &labels,
            &test,
            &Tensor::from_slice(&[0i64, 1]),
            2,
            200,
            0.1,
        )
        .unwrap();
        assert_eq!(
            acc,
            Accuracy {
                top1: 1.0,
                top5: 1.0
            }
        );
        let wrong = knn_accuracy(
            &train,
            &labels,
            &test,
            &Tensor::from_slice(&[1i64, 0]),
            2,
            200,
            0.1,
        )
        .unwrap();
        assert_eq!(wrong.top1, 0.0);
        assert_eq!(wrong.top5, 1.0, "both of 2 classes are in the top 5");
        let _ = Device::Cpu;
    }

    #[test]
    fn votes_are_weighted_by_similarity() {
        // One close neighbour of class 0 outweighs two far ones of class 1
        // at τ = 0.1, but not with equal weights (τ large).
        let train = unit(&[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]);
        let labels = Tensor::from_slice(&[0i64, 1, 1]);
        let test = unit(&[[1.0, 0.2]]);
        let truth = Tensor::from_slice(&[0i64]);
        let sharp = knn_accuracy(&train, &labels, &test, &truth, 2, 3, 0.1).unwrap();
        assert_eq!(sharp.top1, 1.0);
        let flat = knn_accuracy(&train, &labels, &test, &truth, 2, 3, 1e6).unwrap();
        assert_eq!(flat.top1, 0.0, "2 votes beat 1 when the weights are equal");
        assert!(knn_accuracy(&train, &labels, &test, &truth, 2, 3, 0.0).is_err());
    }
}
