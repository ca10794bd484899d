//! An encoder: ResNet backbone + projection head, giving L2-normalised embeddings.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::head::{head, project, HeadKind};
use super::resnet::{ResNet, ResNetConfig};
use crate::error::Result;

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
}

impl Encoder {
    /// A freshly initialised encoder under `p`.
    pub fn new(p: &nn::Path, cfg: &EncoderConfig) -> Result<Encoder> {
        let backbone = ResNet::new(p, cfg.resnet)?;
        let f = cfg.resnet.feature_dim();
        let head = head(&(p / "head"), cfg.head, f, cfg.head_hidden, cfg.embed_dim);
        Ok(Encoder { backbone, head })
    }

    /// L2-normalised embeddings `[N, embed]` of images `[N, C, H, W]`.
    pub fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        project(&self.head, &self.backbone.forward_t(x, train), train)
    }

    /// Embeddings of `x` computed in `groups` equal sub-batches, each with its
    /// own BN statistics (shuffle BN emulated on one device; 1 = the whole batch).
    pub fn embed_grouped(&self, x: &Tensor, groups: i64, train: bool) -> Tensor {
        if groups <= 1 {
            return self.embed(x, train);
        }
        let parts: Vec<Tensor> = x
            .chunk(groups, 0)
            .iter()
            .map(|g| self.embed(g, train))
            .collect();
        Tensor::cat(&parts, 0)
    }
}
