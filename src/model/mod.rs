//! Models: ResNet backbones, projection heads, encoders and the momentum
//! (EMA) key encoder.

pub mod ema;
pub mod encoder;
pub mod export;
pub mod head;
pub mod norm;
pub mod resnet;

pub use ema::Ema;
pub use encoder::{Encoder, EncoderConfig};
pub use head::HeadKind;
pub use norm::Norm;
pub use resnet::{ResNet, ResNetConfig, Stem};
