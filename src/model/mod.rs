//! Models: ResNet backbones, projection heads, encoders, the momentum
//! (EMA) key encoder, their configuration section and their variables as
//! named tensors.

pub mod config;
pub mod ema;
pub mod encoder;
pub mod export;
pub mod head;
pub mod norm;
pub mod resnet;
pub mod state;

pub use config::ModelConfig;
pub use ema::Ema;
pub use encoder::{Encoder, EncoderConfig};
pub use head::HeadKind;
pub use norm::Norm;
pub use resnet::{ResNet, ResNetConfig, Stem};
