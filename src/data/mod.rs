//! Data: datasets in their file formats, contrastive augmentations, and a
//! two-view loader that feeds tch tensors.
//!
//! Data flows one way: a [`Dataset`] yields [`Image`]s, an augmentation
//! [`Recipe`] turns each into two views, and the [`Loader`] batches them
//! into tensors on the training device.

pub mod augment;
pub mod config;
pub mod dataset;
pub mod formats;
pub mod image;
pub mod loader;
pub mod staging;

pub mod preview;
pub mod synthetic;

pub use augment::{Normalize, Recipe, RecipeName};
pub use config::DataConfig;
pub use dataset::{Cifar100Labels, Dataset, OpenOptions, Split};
pub use formats::Format;
pub use image::Image;
pub use loader::{Feed, Loader, LoaderConfig, OneViewBatch, TwoViewBatch, Views};
pub use staging::PinnedCap;
