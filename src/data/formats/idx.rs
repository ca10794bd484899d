//! IDX files (MNIST, Fashion-MNIST), raw or gzip.
//!
//! Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of
//! dimensions, then each dimension as a big-endian u32; the data follow.
//! Images are `[n, rows, cols]` (magic 0x00000803), labels `[n]` (0x00000801).

use std::path::{Path, PathBuf};

use super::{check_labels, read_maybe_gz};
use crate::base::error::Result;
use crate::data::dataset::bad_file;
use crate::data::{Dataset, Format, Split};

/// Fashion-MNIST's class names.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where the Debian package `dataset-fashion-mnist` puts the files.
pub const FASHION_MNIST_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Parses an IDX buffer of unsigned bytes with `ndim` dimensions: `(dims, data)`.
pub fn parse(bytes: &[u8], ndim: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let header = 4 + 4 * ndim;
    if bytes.len() < 4 {
        return Err(bad_file(path, "truncated: shorter than an IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != ndim {
        return Err(bad_file(
            path,
            format!(
                "wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 000008{:02x}: unsigned bytes, {ndim} dimension(s))",
                bytes[0], bytes[1], bytes[2], bytes[3], ndim
            ),
        ));
    }
    if bytes.len() < header {
        return Err(bad_file(path, "truncated inside the IDX header"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    let got = bytes.len() - header;
    if got != expected {
        return Err(bad_file(
            path,
            format!(
                "{} data bytes but the header's dimensions {dims:?} need {expected}{}",
                got,
                if got < expected { " (truncated)" } else { "" }
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let raw = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if raw.is_file() {
        Ok(raw)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(bad_file(&raw, "missing (looked for it raw and as .gz)"))
    }
}

/// Opens the train (`train-*`) or test (`t10k-*`) split of an IDX folder.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
        Split::Unlabeled => {
            return Err(crate::Error::config(
                "split",
                "unlabeled (IDX datasets have train and test splits)",
            ))
        }
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (dims, pixels) = parse(&read_maybe_gz(&images_path)?, 3, &images_path)?;
    let (ldims, labels) = parse(&read_maybe_gz(&labels_path)?, 1, &labels_path)?;
    if ldims[0] != dims[0] {
        return Err(bad_file(
            &labels_path,
            format!(
                "{} labels for {} images in {}",
                ldims[0],
                dims[0],
                images_path.display()
            ),
        ));
    }
    let fashion = dir.to_string_lossy().to_lowercase().contains("fashion");
    let classes: Vec<String> = if fashion {
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    };
    let labels: Vec<u16> = labels.into_iter().map(u16::from).collect();
    check_labels(&labels_path, &labels, classes.len())?;
    Ok(Dataset::from_dense(
        Format::Idx,
        dir.to_path_buf(),
        split,
        classes,
        pixels,
        (dims[2] as u32, dims[1] as u32, 1),
        Some(labels),
    ))
}
