//! ResNets (He et al.) as small builder functions over `nn::Path`, with
//! torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`, …), so that weights export under the same names.
//!
//! Options: depth (10, 18, 34: basic blocks; 50: bottlenecks), a width
//! multiplier on every layer (×2, ×4 as in the paper's wide ResNets; < 1 for
//! tiny models that train on a CPU), the ImageNet stem (7×7/2 conv + max-pool)
//! or the small-image stem (3×3/1 conv, no pool), and zero-initialised last
//! BN γ of each residual block.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ConvConfig, ModuleT};
use tch::Tensor;

use super::norm::{batch_norm, BatchNorm, Norm};
use crate::base::error::{Error, Result};

/// The first layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 convolution, BN, ReLU, 3×3 stride-2 max-pool (224-pixel images).
    Imagenet,
    /// 3×3 stride-1 convolution, BN, ReLU, no pool (32-pixel images).
    Small,
}

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// 10, 18, 34 or 50.
    pub depth: usize,
    /// Multiplier on every layer's channels (1 = the standard widths 64…512).
    pub width: f64,
    /// The stem.
    pub stem: Stem,
    /// Input channels (1 for grayscale kept as is, else 3).
    pub in_channels: i64,
    /// Zero-initialise the last BN γ of each residual block.
    pub zero_init_residual: bool,
}

impl ResNetConfig {
    /// Blocks per stage and whether they are bottlenecks.
    fn layout(&self) -> Result<([usize; 4], bool)> {
        Ok(match self.depth {
            10 => ([1, 1, 1, 1], false),
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            d => {
                return Err(Error::config(
                    "backbone",
                    format!("resnet{d} (known: resnet10, resnet18, resnet34, resnet50)"),
                ))
            }
        })
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        self.layout()?;
        if !(self.width.is_finite() && self.width > 0.0 && (64.0 * self.width).round() >= 1.0) {
            return Err(Error::config(
                "width",
                format!("{} (must be > 0, e.g. 0.25, 1, 2, 4)", self.width),
            ));
        }
        if self.in_channels != 1 && self.in_channels != 3 {
            return Err(Error::config(
                "channels",
                format!("{} (must be 1 or 3)", self.in_channels),
            ));
        }
        Ok(())
    }

    fn planes(&self, base: i64) -> i64 {
        ((base as f64 * self.width).round() as i64).max(1)
    }

    /// The width of the pooled features: 512·w (basic blocks) or 2048·w (bottlenecks).
    pub fn feature_dim(&self) -> i64 {
        let bottleneck = self.depth == 50;
        self.planes(512) * if bottleneck { 4 } else { 1 }
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// BatchNorm2d with PyTorch's initialisation (γ = 1, or 0 for a zero-init
/// residual), local or synchronised as `norm` says.
fn bn(p: nn::Path, c: i64, gamma: f64, norm: &Norm) -> BatchNorm {
    batch_norm(p, c, gamma, 2, norm)
}

fn downsample(p: nn::Path, cin: i64, cout: i64, stride: i64, norm: &Norm) -> nn::SequentialT {
    if stride != 1 || cin != cout {
        nn::seq_t()
            .add(conv(&p / "0", cin, cout, 1, stride))
            .add(bn(&p / "1", cout, 1.0, norm))
    } else {
        nn::seq_t()
    }
}

fn basic_block(
    p: nn::Path,
    cin: i64,
    planes: i64,
    stride: i64,
    zero_gamma: bool,
    norm: &Norm,
) -> impl ModuleT {
    let conv1 = conv(&p / "conv1", cin, planes, 3, stride);
    let bn1 = bn(&p / "bn1", planes, 1.0, norm);
    let conv2 = conv(&p / "conv2", planes, planes, 3, 1);
    let bn2 = bn(&p / "bn2", planes, if zero_gamma { 0.0 } else { 1.0 }, norm);
    let down = downsample(&p / "downsample", cin, planes, stride, norm);
    nn::func_t(move |x, train| {
        let y = x
            .apply(&conv1)
            .apply_t(&bn1, train)
            .relu_()
            .apply(&conv2)
            .apply_t(&bn2, train);
        (x.apply_t(&down, train) + y).relu_()
    })
}

fn bottleneck(
    p: nn::Path,
    cin: i64,
    planes: i64,
    stride: i64,
    zero_gamma: bool,
    norm: &Norm,
) -> impl ModuleT {
    let out = 4 * planes;
    let conv1 = conv(&p / "conv1", cin, planes, 1, 1);
    let bn1 = bn(&p / "bn1", planes, 1.0, norm);
    let conv2 = conv(&p / "conv2", planes, planes, 3, stride);
    let bn2 = bn(&p / "bn2", planes, 1.0, norm);
    let conv3 = conv(&p / "conv3", planes, out, 1, 1);
    let bn3 = bn(&p / "bn3", out, if zero_gamma { 0.0 } else { 1.0 }, norm);
    let down = downsample(&p / "downsample", cin, out, stride, norm);
    nn::func_t(move |x, train| {
        let y = x
            .apply(&conv1)
            .apply_t(&bn1, train)
            .relu_()
            .apply(&conv2)
            .apply_t(&bn2, train)
            .relu_()
            .apply(&conv3)
            .apply_t(&bn3, train);
        (x.apply_t(&down, train) + y).relu_()
    })
}

/// A ResNet up to the global average pool: images `[N, C, H, W]` → features
/// `[N, feature_dim]`.
#[derive(Debug)]
pub struct ResNet {
    body: nn::SequentialT,
    /// The configuration it was built from.
    pub config: ResNetConfig,
}

impl ResNet {
    /// Builds the network under `p` with fresh weights (torchvision's init)
    /// and batch normalisation on the local batch.
    pub fn new(p: &nn::Path, config: ResNetConfig) -> Result<ResNet> {
        Self::with_norm(p, config, &Norm::Local)
    }

    /// As [`ResNet::new`], with batch normalisation as `norm` says.
    pub fn with_norm(p: &nn::Path, config: ResNetConfig, norm: &Norm) -> Result<ResNet> {
        config.validate()?;
        let (blocks, is_bottleneck) = config.layout()?;
        let stem_width = config.planes(64);
        let mut body = nn::seq_t();
        body = match config.stem {
            Stem::Imagenet => body
                .add(conv(p / "conv1", config.in_channels, stem_width, 7, 2))
                .add(bn(p / "bn1", stem_width, 1.0, norm))
                .add_fn(|x| {
                    x.shallow_clone()
                        .relu_()
                        .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
                }),
            Stem::Small => body
                .add(conv(p / "conv1", config.in_channels, stem_width, 3, 1))
                .add(bn(p / "bn1", stem_width, 1.0, norm))
                .add_fn(|x| x.shallow_clone().relu_()),
        };
        let mut cin = stem_width;
        for (stage, &n) in blocks.iter().enumerate() {
            let planes = config.planes(64 << stage);
            let layer = p / format!("layer{}", stage + 1);
            for b in 0..n {
                let stride = if b == 0 && stage > 0 { 2 } else { 1 };
                let bp = &layer / b.to_string();
                let z = config.zero_init_residual;
                if is_bottleneck {
                    body = body.add(bottleneck(bp, cin, planes, stride, z, norm));
                    cin = 4 * planes;
                } else {
                    body = body.add(basic_block(bp, cin, planes, stride, z, norm));
                    cin = planes;
                }
            }
        }
        body = body.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        Ok(ResNet { body, config })
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.body.forward_t(xs, train)
    }
}
