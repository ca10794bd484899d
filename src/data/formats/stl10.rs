//! STL-10, binary version: 96×96 RGB images.
//!
//! `{train,test,unlabeled}_X.bin` hold images of 3 × 96 × 96 bytes, each
//! channel a column-major plane (the byte at `c·96² + x·96 + y` is pixel
//! (x, y) of channel c); `{train,test}_y.bin` hold one label byte per image,
//! 1 to 10; `class_names.txt` the names. The unlabeled split has no labels.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{check_labels, class_names};
use crate::base::error::{Error, Result};
use crate::data::dataset::bad_file;
use crate::data::{Dataset, Format, Split};

const SIDE: usize = 96;
const BYTES: usize = SIDE * SIDE * 3;

/// STL-10's class names, used when `class_names.txt` is absent.
pub const STL10_CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// Reads the images of `path` as HWC pixels, one record at a time (the
/// unlabeled split is 2.8 GB).
fn read_images(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
    if len == 0 || len % BYTES != 0 {
        return Err(bad_file(
            path,
            format!(
                "{len} bytes is not a whole number of {BYTES}-byte 96×96×3 images (truncated?)"
            ),
        ));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = vec![0u8; len];
    let mut rec = vec![0u8; BYTES];
    for img in out.chunks_exact_mut(BYTES) {
        reader
            .read_exact(&mut rec)
            .map_err(|e| Error::io(path, e))?;
        for c in 0..3 {
            let plane = &rec[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
            for x in 0..SIDE {
                for y in 0..SIDE {
                    img[(y * SIDE + x) * 3 + c] = plane[x * SIDE + y];
                }
            }
        }
    }
    Ok(out)
}

/// Opens the train, test or unlabeled split of an STL-10 binary folder.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    let stem = match split {
        Split::Train => "train",
        Split::Test => "test",
        Split::Unlabeled => "unlabeled",
    };
    let x_path = dir.join(format!("{stem}_X.bin"));
    if !x_path.is_file() {
        return Err(bad_file(&x_path, "missing"));
    }
    let pixels = read_images(&x_path)?;
    let n = pixels.len() / BYTES;
    let classes = class_names(&dir.join("class_names.txt"), &STL10_CLASSES)?;
    let labels = if split == Split::Unlabeled {
        None
    } else {
        let y_path = dir.join(format!("{stem}_y.bin"));
        let raw = std::fs::read(&y_path).map_err(|e| Error::io(&y_path, e))?;
        if raw.len() != n {
            return Err(bad_file(
                &y_path,
                format!(
                    "{} labels for {n} images in {}",
                    raw.len(),
                    x_path.display()
                ),
            ));
        }
        if let Some((i, l)) = raw.iter().enumerate().find(|(_, &l)| l == 0) {
            return Err(bad_file(
                &y_path,
                format!("label {l} of record {i} is out of range (STL-10 labels are 1 to 10)"),
            ));
        }
        let labels: Vec<u16> = raw.iter().map(|&l| l as u16 - 1).collect();
        check_labels(&y_path, &labels, classes.len())?;
        Some(labels)
    };
    Ok(Dataset::from_dense(
        Format::Stl10,
        dir.to_path_buf(),
        split,
        classes,
        pixels,
        (SIDE as u32, SIDE as u32, 3),
        labels,
    ))
}
