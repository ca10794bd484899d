//! CIFAR-10 and CIFAR-100, binary versions.
//!
//! CIFAR-10: `data_batch_{1..5}.bin` and `test_batch.bin`, records of one
//! label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each a
//! row-major 32×32 plane); class names in `batches.meta.txt`.
//! CIFAR-100: `train.bin` and `test.bin`, records of a coarse label byte, a
//! fine label byte and the same 3072 pixel bytes; names in
//! `coarse_label_names.txt` and `fine_label_names.txt`.

use std::fs;
use std::path::Path;

use super::{check_labels, class_names};
use crate::base::error::{Error, Result};
use crate::data::dataset::bad_file;
use crate::data::{Cifar100Labels, Dataset, Format, Split};

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * 3;

/// CIFAR-10's class names, used when `batches.meta.txt` is absent.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Appends the records of `path` (each `label_bytes` labels then 3072 planar
/// pixels) as HWC pixels, and the label at `label_index` of each record.
fn read_records(
    path: &Path,
    label_bytes: usize,
    label_index: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(bad_file(
            path,
            format!(
                "{} bytes is not a whole number of {record}-byte records (truncated or not a CIFAR binary file)",
                bytes.len()
            ),
        ));
    }
    pixels.reserve(bytes.len() / record * PIXELS);
    for rec in bytes.chunks_exact(record) {
        labels.push(rec[label_index] as u16);
        let planes = &rec[label_bytes..];
        for p in 0..SIDE * SIDE {
            pixels.extend_from_slice(&[
                planes[p],
                planes[SIDE * SIDE + p],
                planes[2 * SIDE * SIDE + p],
            ]);
        }
    }
    Ok(())
}

fn dense(
    dir: &Path,
    format: Format,
    split: Split,
    classes: Vec<String>,
    pixels: Vec<u8>,
    labels: Vec<u16>,
) -> Dataset {
    Dataset::from_dense(
        format,
        dir.to_path_buf(),
        split,
        classes,
        pixels,
        (SIDE as u32, SIDE as u32, 3),
        Some(labels),
    )
}

fn no_unlabeled(format: &str) -> Error {
    Error::config(
        "split",
        format!("unlabeled ({format} has train and test splits)"),
    )
}

/// Opens CIFAR-10's train split (every `data_batch_N.bin` present, N = 1…5) or test split.
pub fn open_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let files: Vec<_> = match split {
        Split::Train => (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .filter(|p| p.is_file())
            .collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
        Split::Unlabeled => return Err(no_unlabeled("CIFAR-10")),
    };
    if files.is_empty() {
        return Err(bad_file(
            &dir.join("data_batch_1.bin"),
            "missing: no data_batch_N.bin in this folder",
        ));
    }
    let classes = class_names(&dir.join("batches.meta.txt"), &CIFAR10_CLASSES)?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        if !f.is_file() {
            return Err(bad_file(f, "missing"));
        }
        let before = labels.len();
        read_records(f, 1, 0, &mut pixels, &mut labels)?;
        check_labels(f, &labels[before..], classes.len())?;
    }
    Ok(dense(dir, Format::Cifar10, split, classes, pixels, labels))
}

/// Opens CIFAR-100's train or test split with fine or coarse labels.
pub fn open_cifar100(dir: &Path, split: Split, which: Cifar100Labels) -> Result<Dataset> {
    let file = match split {
        Split::Train => dir.join("train.bin"),
        Split::Test => dir.join("test.bin"),
        Split::Unlabeled => return Err(no_unlabeled("CIFAR-100")),
    };
    if !file.is_file() {
        return Err(bad_file(&file, "missing"));
    }
    let (names_file, label_index, n) = match which {
        Cifar100Labels::Coarse => ("coarse_label_names.txt", 0, 20),
        Cifar100Labels::Fine => ("fine_label_names.txt", 1, 100),
    };
    let numbered: Vec<String> = (0..n).map(|i| format!("class {i}")).collect();
    let numbered: Vec<&str> = numbered.iter().map(String::as_str).collect();
    let classes = class_names(&dir.join(names_file), &numbered)?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    read_records(&file, 2, label_index, &mut pixels, &mut labels)?;
    check_labels(&file, &labels, classes.len())?;
    Ok(dense(dir, Format::Cifar100, split, classes, pixels, labels))
}
