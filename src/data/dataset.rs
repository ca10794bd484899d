//! The common dataset type: images with optional labels, whatever the format.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::formats::Format;
use super::Image;
use crate::base::error::{Error, Result};

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training images.
    Train,
    /// The test images.
    Test,
    /// STL-10's 100k unlabeled images.
    Unlabeled,
}

/// CIFAR-100's two label sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Cifar100Labels {
    /// The 100 fine classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// How to open a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Which split.
    pub split: Split,
    /// CIFAR-100: fine or coarse labels.
    pub cifar100_labels: Cifar100Labels,
    /// Image folders and file lists: decode every image at open and skip
    /// (and count) those that fail, instead of failing when the loader
    /// meets them.
    pub skip_undecodable: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            split: Split::Train,
            cifar100_labels: Cifar100Labels::Fine,
            skip_undecodable: false,
        }
    }
}

/// Where the images are.
#[derive(Debug)]
pub(crate) enum Storage {
    /// All images decoded, same size: `n × height × width × channels` bytes.
    Dense {
        data: Vec<u8>,
        width: u32,
        height: u32,
        channels: u8,
    },
    /// One file per image, decoded when asked for (to RGB).
    Files { paths: Vec<PathBuf> },
}

/// Images with optional labels, read from one of the [`Format`]s.
#[derive(Debug)]
pub struct Dataset {
    /// The format it was read from.
    pub format: Format,
    /// The file or folder it was read from.
    pub source: PathBuf,
    /// The split.
    pub split: Split,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Files skipped as undecodable (image files with `skip_undecodable`), with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Files of an image folder that are not images by their extension
    /// (hidden files are not listed).
    pub ignored: Vec<PathBuf>,
    pub(crate) storage: Storage,
    pub(crate) labels: Option<Vec<u16>>,
}

impl Dataset {
    /// Builds an in-memory dataset from same-sized images `n × h × w × c`
    /// (HWC bytes) and optional labels; used by the formats and by tests.
    #[allow(clippy::too_many_arguments)]
    pub fn from_dense(
        format: Format,
        source: PathBuf,
        split: Split,
        classes: Vec<String>,
        data: Vec<u8>,
        (width, height, channels): (u32, u32, u8),
        labels: Option<Vec<u16>>,
    ) -> Dataset {
        Dataset {
            format,
            source,
            split,
            classes,
            skipped: Vec::new(),
            ignored: Vec::new(),
            storage: Storage::Dense {
                data,
                width,
                height,
                channels,
            },
            labels,
        }
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Dense {
                data,
                width,
                height,
                channels,
            } => data.len() / bytes_per_image(*width, *height, *channels).max(1),
            Storage::Files { paths } => paths.len(),
        }
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(width, height, channels)` when every image has the same size.
    pub fn image_shape(&self) -> Option<(u32, u32, u8)> {
        match &self.storage {
            Storage::Dense {
                width,
                height,
                channels,
                ..
            } => Some((*width, *height, *channels)),
            Storage::Files { .. } => None,
        }
    }

    /// Image `i` (decoded from its file for ImageFolder; the error names the file).
    pub fn image(&self, i: usize) -> Result<Image> {
        match &self.storage {
            Storage::Dense {
                data,
                width,
                height,
                channels,
            } => {
                let size = bytes_per_image(*width, *height, *channels);
                Ok(Image::new(
                    *width,
                    *height,
                    *channels,
                    data[i * size..(i + 1) * size].to_vec(),
                ))
            }
            Storage::Files { paths } => Image::open(&paths[i]),
        }
    }

    /// The label of image `i`, if the split has labels.
    pub fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[i] as i64)
    }

    /// Whether the split has labels.
    pub fn has_labels(&self) -> bool {
        self.labels.is_some()
    }

    /// The file of image `i`, for image folders and file lists.
    pub fn path(&self, i: usize) -> Option<&Path> {
        match &self.storage {
            Storage::Files { paths } => Some(&paths[i]),
            Storage::Dense { .. } => None,
        }
    }

    /// Images per class (empty without labels).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in self.labels.iter().flatten() {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Per-channel mean and standard deviation of the pixels in [0, 1], over
    /// at most `max_images` images spread over the set (in-memory formats);
    /// `None` for ImageFolder, whose images are decoded on demand.
    pub fn channel_stats(&self, max_images: usize) -> Option<(Vec<f64>, Vec<f64>)> {
        let Storage::Dense {
            data,
            width,
            height,
            channels,
        } = &self.storage
        else {
            return None;
        };
        let c = *channels as usize;
        let size = bytes_per_image(*width, *height, *channels);
        let n = self.len();
        let step = n.div_ceil(max_images.max(1)).max(1);
        let (mut sum, mut sq, mut count) = (vec![0f64; c], vec![0f64; c], 0usize);
        for i in (0..n).step_by(step) {
            for px in data[i * size..(i + 1) * size].chunks_exact(c) {
                for (ch, &v) in px.iter().enumerate() {
                    let v = v as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
            count += size / c;
        }
        let count = count.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| (s / count - m * m).max(1e-12).sqrt())
            .collect();
        Some((mean, std))
    }
}

/// Bytes of one `width × height × channels` image.
fn bytes_per_image(width: u32, height: u32, channels: u8) -> usize {
    width as usize * height as usize * channels as usize
}

/// A data error naming the file and what is wrong with it.
pub(crate) fn bad_file(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
