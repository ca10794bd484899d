//! ImageFolder, the ImageNet layout: `root/<class>/…/*.{jpg,jpeg,png}`.
//!
//! As torchvision's `ImageFolder`: classes are the sub-folders of `root`,
//! sorted by name, labelled 0, 1, …; each class's files are found by a walk
//! of its folder, sorted, and every image is converted to RGB.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::base::error::{Error, Result};
use crate::data::dataset::{bad_file, Storage};
use crate::data::{Dataset, Format, Image, Split};

/// File extensions read as images (case-insensitive).
pub const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    entries.sort();
    Ok(entries)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The folder of a split: `root/train` for train and `root/val` (or
/// `root/test`) for test when `root` has them (the ImageNet layout), else
/// `root` itself.
pub fn split_dir(root: &Path, split: Split) -> PathBuf {
    let names: &[&str] = match split {
        Split::Train => &["train"],
        Split::Test => &["val", "test"],
        Split::Unlabeled => &["unlabeled"],
    };
    names
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| root.to_path_buf())
}

/// Lists the images under `root`; with `skip_undecodable`, decodes them all
/// in parallel and leaves out (and records) those that fail.
pub fn open(root: &Path, split: Split, skip_undecodable: bool) -> Result<Dataset> {
    let classes: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if classes.is_empty() {
        return Err(bad_file(
            root,
            "no class folders: expected root/<class>/<image>.{jpg,jpeg,png} (or an IDX, CIFAR or STL-10 folder)",
        ));
    }
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        let before = paths.len();
        walk(class_dir, &mut paths)?;
        if paths.len() == before {
            return Err(bad_file(
                class_dir,
                "class folder holds no .jpg, .jpeg or .png file",
            ));
        }
        labels.resize(paths.len(), label as u16);
    }
    let mut skipped = Vec::new();
    if skip_undecodable {
        let ok: Vec<Option<String>> = paths
            .par_iter()
            .map(|p| Image::open(p).err().map(|e| e.to_string()))
            .collect();
        let (mut kept_paths, mut kept_labels) = (Vec::new(), Vec::new());
        for ((p, l), err) in paths.into_iter().zip(labels).zip(ok) {
            match err {
                None => {
                    kept_paths.push(p);
                    kept_labels.push(l);
                }
                Some(e) => skipped.push((p, e)),
            }
        }
        if kept_paths.is_empty() {
            return Err(bad_file(root, "no image could be decoded"));
        }
        paths = kept_paths;
        labels = kept_labels;
    }
    let names = classes
        .iter()
        .map(|c| {
            c.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    Ok(Dataset {
        format: Format::ImageFolder,
        source: root.to_path_buf(),
        split,
        classes: names,
        skipped,
        storage: Storage::Files { paths },
        labels: Some(labels),
    })
}
