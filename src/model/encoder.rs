//! An encoder: ResNet backbone + projection head, giving L2-normalised embeddings.
//!
//! The forward pass runs in the encoder's [`Compute`] precision (bfloat16
//! autocast where chosen); the embeddings come out in float32 and are
//! normalised in float32, so the loss never sees bfloat16.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::head::{head, l2_normalize, HeadKind};
use super::norm::Norm;
use super::resnet::{ResNet, ResNetConfig};
use crate::base::device::{float32, Compute};
use crate::base::error::Result;

/// What an encoder is made of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// The backbone.
    pub resnet: ResNetConfig,
    /// The head.
    pub head: HeadKind,
    /// Hidden width of an MLP head (MoCo v2: the feature width).
    pub head_hidden: i64,
    /// Embedding width (128 in the paper).
    pub embed_dim: i64,
}

/// Backbone (`conv1`, `bn1`, `layer1`… at the root of its path) and head (`head.*`).
#[derive(Debug)]
pub struct Encoder {
    /// The ResNet up to its global pool.
    pub backbone: ResNet,
    head: nn::SequentialT,
    compute: Compute,
}

impl Encoder {
    /// A freshly initialised encoder under `p` that computes as `compute`
    /// (call [`Compute::prepare`] on its var store once it is built), with
    /// batch normalisation as `norm` says.
    pub fn new(
        p: &nn::Path,
        cfg: &EncoderConfig,
        compute: Compute,
        norm: &Norm,
    ) -> Result<Encoder> {
        let backbone = ResNet::with_norm(p, cfg.resnet, norm)?;
        let f = cfg.resnet.feature_dim();
        let head = head(
            &(p / "head"),
            cfg.head,
            f,
            cfg.head_hidden,
            cfg.embed_dim,
            norm,
        );
        Ok(Encoder {
            backbone,
            head,
            compute,
        })
    }

    /// L2-normalised float32 embeddings `[N, embed]` of images `[N, C, H, W]`.
    pub fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.project(x, train))
    }

    /// The head's float32 output `[N, embed]` of images `[N, C, H, W]`,
    /// before the L2 normalisation.
    pub fn project(&self, x: &Tensor, train: bool) -> Tensor {
        let z = self
            .compute
            .run(|| self.head_of_backbone(&self.compute.layout(x), train));
        float32(&z)
    }

    /// The head on the backbone's features of `x`, already in the layout,
    /// in the caller's precision.
    fn head_of_backbone(&self, x: &Tensor, train: bool) -> Tensor {
        self.head
            .forward_t(&self.backbone.forward_t(x, train), train)
    }

    /// Embeddings of `x` computed in `groups` equal sub-batches, each with its
    /// own BN statistics (shuffle BN emulated on one device; 1 = the whole
    /// batch), in one autocast region and one layout change for all groups.
    pub fn embed_grouped(&self, x: &Tensor, groups: i64, train: bool) -> Tensor {
        if groups <= 1 {
            return self.embed(x, train);
        }
        let z = self.compute.run(|| {
            let parts: Vec<Tensor> = self
                .compute
                .layout(x)
                .chunk(groups, 0)
                .iter()
                .map(|g| self.head_of_backbone(g, train))
                .collect();
            Tensor::cat(&parts, 0)
        });
        l2_normalize(&float32(&z))
    }
}
