//! The supervised baseline: the same backbone trained with cross-entropy on
//! the labels through a linear classifier `fc` (torchvision's name), on the
//! first view of each image. Its checkpoints are read by evaluation and
//! export exactly like the contrastive ones, so every self-supervised number
//! can be shown beside it.
//!
//! Diagnostics, so that its metrics fill the same fields: `mi_bound` is
//! `ln C − L`, the Barber–Agakov lower bound on I(image; label) for C
//! balanced classes, and `grad_norm_q` is the mean `‖∂L_i/∂f_i‖ =
//! ‖Wᵀ(p_i − y_i)‖` with respect to each image's features `f_i`.

use std::collections::HashMap;

use tch::nn::{self, Module, ModuleT, VarStore};
use tch::{Kind, Tensor};

use super::{Forward, Method, StepOutput};
use crate::base::device::{float32, Compute};
use crate::base::error::{Error, Result};
use crate::data::TwoViewBatch;
use crate::model::{EncoderConfig, Norm, ResNet};

/// A backbone with a linear classifier, trained on labels.
pub struct Supervised {
    vs: VarStore,
    backbone: ResNet,
    fc: nn::Linear,
    classes: i64,
    compute: Compute,
}

impl Supervised {
    /// The backbone of `enc` (its head is not used) and `fc: features → classes`,
    /// with batch normalisation as `norm` says.
    pub fn new(
        enc: &EncoderConfig,
        classes: usize,
        compute: Compute,
        norm: &Norm,
    ) -> Result<Supervised> {
        if classes < 2 {
            return Err(Error::config(
                "method",
                format!("supervised training needs at least 2 classes; the dataset has {classes}"),
            ));
        }
        let vs = VarStore::new(compute.device);
        let backbone = ResNet::with_norm(&vs.root(), enc.resnet, norm)?;
        let fc = nn::linear(
            vs.root() / "fc",
            enc.resnet.feature_dim(),
            classes as i64,
            Default::default(),
        );
        compute.prepare(&vs);
        Ok(Supervised {
            vs,
            backbone,
            fc,
            classes: classes as i64,
            compute,
        })
    }
}

impl Method for Supervised {
    fn forward(&mut self, batch: &TwoViewBatch, _step: u64) -> Result<Forward> {
        let labels = batch.labels.as_ref().ok_or_else(|| {
            Error::config(
                "method",
                "supervised needs a labelled dataset; this one has no labels",
            )
        })?;
        let logits = float32(&self.compute.run(|| {
            let features = self
                .backbone
                .forward_t(&self.compute.layout(&batch.view1), true);
            self.fc.forward(&features)
        }));
        let loss = logits.cross_entropy_for_logits(labels);
        let grad_norm_q = tch::no_grad(|| {
            let residual =
                logits.softmax(-1, Kind::Float) - labels.one_hot(self.classes).to_kind(Kind::Float);
            let grad = residual.matmul(&self.fc.ws.to_kind(Kind::Float));
            grad.norm_scalaropt_dim(2, [1], false).mean(Kind::Float)
        });
        Ok(Forward::Loss(StepOutput {
            loss,
            mi_bound_offset: (self.classes as f64).ln(),
            grad_norm_q,
        }))
    }

    fn query(&self) -> &VarStore {
        &self.vs
    }

    fn backbone(&self) -> &ResNet {
        &self.backbone
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}
