//! Readers for the dataset formats, and format detection.
//!
//! Every reader checks magic numbers, sizes and label ranges, and names the
//! file and what is wrong with it when something does not fit.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod stl10;

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::dataset::bad_file;
use super::{Dataset, OpenOptions};
use crate::base::error::{Error, Result};

/// The file formats eqco reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// MNIST / Fashion-MNIST IDX files, raw or gzip.
    Idx,
    /// CIFAR-10, binary version.
    Cifar10,
    /// CIFAR-100, binary version.
    Cifar100,
    /// STL-10, binary version.
    Stl10,
    /// A folder of images: `root/<class>/…/<image>` (the ImageNet
    /// layout, labelled) or any folder of images, flat or nested (unlabeled).
    ImageFolder,
    /// A text file naming one image a line, with an optional label after a tab.
    FileList,
}

impl Format {
    /// The name shown to people.
    pub fn name(self) -> &'static str {
        match self {
            Format::Idx => "IDX (MNIST/Fashion-MNIST)",
            Format::Cifar10 => "CIFAR-10 (binary)",
            Format::Cifar100 => "CIFAR-100 (binary)",
            Format::Stl10 => "STL-10 (binary)",
            Format::ImageFolder => "image folder",
            Format::FileList => "file list",
        }
    }
}

/// Opens the dataset at `path`, detecting its format (see [`detect`]).
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset> {
    open_as(path, detect(path)?, opts)
}

/// Opens the dataset at `path` in the given format.
pub fn open_as(path: &Path, format: Format, opts: &OpenOptions) -> Result<Dataset> {
    match format {
        Format::Idx => idx::open(path, opts.split),
        Format::Cifar10 => cifar::open_cifar10(path, opts.split),
        Format::Cifar100 => cifar::open_cifar100(path, opts.split, opts.cifar100_labels),
        Format::Stl10 => stl10::open(path, opts.split),
        Format::ImageFolder => {
            let root = folder::split_dir(path, opts.split);
            folder::open(&root, opts.split, opts.skip_undecodable)
        }
        Format::FileList => folder::open_list(path, opts.split, opts.skip_undecodable),
    }
}

/// Guesses the format of the dataset at `path` from the files it holds:
/// IDX (`train-images-idx3-ubyte[.gz]`), CIFAR-10 (`data_batch_1.bin`),
/// CIFAR-100 (`train.bin` + `fine_label_names.txt`, or `train.bin`/`test.bin`
/// alone), STL-10 (`train_X.bin`, `unlabeled_X.bin`), else a folder of
/// images; a file is a file list.
pub fn detect(path: &Path) -> Result<Format> {
    if !path.exists() {
        if path == Path::new(idx::FASHION_MNIST_DEFAULT_DIR) {
            return Err(bad_file(
                path,
                "Fashion-MNIST is not installed; install the Debian package with \
                 `sudo apt-get install dataset-fashion-mnist` (or run scripts/setup.sh), or give a dataset path",
            ));
        }
        return Err(bad_file(path, "no such file or folder"));
    }
    if !path.is_dir() {
        return Ok(Format::FileList);
    }
    let has = |name: &str| path.join(name).is_file();
    let idx = ["train", "t10k"].iter().any(|p| {
        has(&format!("{p}-images-idx3-ubyte")) || has(&format!("{p}-images-idx3-ubyte.gz"))
    });
    Ok(if idx {
        Format::Idx
    } else if has("data_batch_1.bin") || has("test_batch.bin") {
        Format::Cifar10
    } else if has("train_X.bin") || has("test_X.bin") || has("unlabeled_X.bin") {
        Format::Stl10
    } else if has("train.bin") || has("test.bin") {
        Format::Cifar100
    } else {
        Format::ImageFolder
    })
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic number.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad_file(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Class names, one per non-empty line of `path`, or `default` when it is absent.
pub(crate) fn class_names(path: &Path, default: &[&str]) -> Result<Vec<String>> {
    if !path.exists() {
        return Ok(default.iter().map(|s| s.to_string()).collect());
    }
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Checks that every label is below the number of classes.
pub(crate) fn check_labels(path: &Path, labels: &[u16], n_classes: usize) -> Result<()> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= n_classes)
    {
        return Err(bad_file(
            path,
            format!("label {l} of record {i} is out of range (there are {n_classes} classes)"),
        ));
    }
    Ok(())
}
