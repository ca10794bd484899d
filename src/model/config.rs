//! The encoder section of a run's configuration: the backbone and the
//! projection head, as flat keys.

use serde::{Deserialize, Serialize};

use super::{EncoderConfig, HeadKind, ResNetConfig, Stem};
use crate::base::error::{Error, Result};

/// The keys `backbone` … `embed_dim`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `resnet10`, `resnet18`, `resnet34` or `resnet50`.
    pub backbone: String,
    /// Width multiplier of every layer.
    pub width: f64,
    /// `imagenet` or `small`.
    pub stem: Stem,
    /// Zero-initialise each residual block's last BN γ.
    pub zero_init_residual: bool,
    /// `linear`, `mlp` or `mlp-bn`.
    pub head: HeadKind,
    /// Hidden width of MLP heads [default: the backbone's feature width].
    pub head_hidden: Option<i64>,
    /// Embedding width.
    pub embed_dim: i64,
}

impl Default for ModelConfig {
    /// A ResNet-18 with the small stem and an MLP head to 128 dimensions.
    fn default() -> Self {
        ModelConfig {
            backbone: "resnet18".into(),
            width: 1.0,
            stem: Stem::Small,
            zero_init_residual: false,
            head: HeadKind::Mlp,
            head_hidden: None,
            embed_dim: 128,
        }
    }
}

impl ModelConfig {
    /// Checks every key of the section (for 3-channel input; the
    /// backbone is built for the data's channels); the error names the key.
    pub fn validate(&self) -> Result<()> {
        self.encoder(3)?;
        if self.embed_dim < 1 {
            return Err(Error::config(
                "embed_dim",
                format!("{} (must be ≥ 1)", self.embed_dim),
            ));
        }
        if matches!(self.head_hidden, Some(h) if h < 1) {
            return Err(Error::config("head_hidden", "must be ≥ 1"));
        }
        Ok(())
    }

    /// The backbone's depth from `backbone` (`resnetNN`).
    pub fn depth(&self) -> Result<usize> {
        self.backbone
            .strip_prefix("resnet")
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                Error::config(
                    "backbone",
                    format!(
                        "'{}' (known: resnet10, resnet18, resnet34, resnet50)",
                        self.backbone
                    ),
                )
            })
    }

    /// The encoder, for `channels` input channels.
    pub fn encoder(&self, channels: u8) -> Result<EncoderConfig> {
        let resnet = ResNetConfig {
            depth: self.depth()?,
            width: self.width,
            stem: self.stem,
            in_channels: channels as i64,
            zero_init_residual: self.zero_init_residual,
        };
        resnet.validate()?;
        Ok(EncoderConfig {
            resnet,
            head: self.head,
            head_hidden: self.head_hidden.unwrap_or_else(|| resnet.feature_dim()),
            embed_dim: self.embed_dim,
        })
    }

    /// How the backbone is described to people: `resnet18 1×, small stem`.
    pub fn describe(&self) -> String {
        let stem = match self.stem {
            Stem::Small => "small stem",
            Stem::Imagenet => "imagenet stem",
        };
        format!("{} {}×, {stem}", self.backbone, self.width)
    }
}
