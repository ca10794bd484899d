//! Folders of images and lists of image files.
//!
//! A folder is read recursively, in sorted order, as torchvision's
//! `ImageFolder` does, with two layouts:
//! - **classes**: `root` holds only sub-folders (`root/<class>/…/<image>`,
//!   the ImageNet layout); they are the classes, sorted by name and
//!   labelled 0, 1, …;
//! - **unlabeled**: `root` holds images itself (a flat folder, or one with
//!   images beside sub-folders); every image under it, at any depth, is
//!   one image without a label.
//!
//! Hidden files and folders (`.DS_Store`, `.ipynb_checkpoints`, …) are
//! skipped; other files whose extension is not an image's are counted and
//! listed ([`Dataset::ignored`]). A file list names the images one per
//! line, each with an optional label after a tab.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::base::error::{Error, Result};
use crate::data::dataset::{bad_file, Storage};
use crate::data::{Dataset, Format, Image, Split};

/// File extensions read as images (case-insensitive): torchvision's.
pub const EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "pgm", "bmp", "tif", "tiff", "webp",
];

/// The image extension of `path`, lower-case, if it has one of [`EXTENSIONS`].
pub fn image_extension(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?;
    EXTENSIONS
        .iter()
        .copied()
        .find(|x| x.eq_ignore_ascii_case(ext))
}

/// Whether a file or folder is hidden (its name starts with a dot).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The visible entries of `dir`, sorted.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .filter(|p| p.as_ref().map_or(true, |p| !is_hidden(p)))
        .collect::<Result<_>>()?;
    entries.sort();
    Ok(entries)
}

/// What a walk of a folder found.
#[derive(Default)]
struct Found {
    images: Vec<PathBuf>,
    /// Visible files that are not images by their extension.
    ignored: Vec<PathBuf>,
}

impl Found {
    /// Adds every image (and ignored file) under `dir`, at any depth.
    fn walk(&mut self, dir: &Path) -> Result<()> {
        for path in sorted_entries(dir)? {
            if path.is_dir() {
                self.walk(&path)?;
            } else if image_extension(&path).is_some() {
                self.images.push(path);
            } else {
                self.ignored.push(path);
            }
        }
        Ok(())
    }
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

/// The class folders of `root`: its sub-folders when it holds no image
/// itself (none when it does: an unlabeled folder).
fn class_folders(root: &Path) -> Result<Vec<PathBuf>> {
    let entries = sorted_entries(root)?;
    if entries
        .iter()
        .any(|p| p.is_file() && image_extension(p).is_some())
    {
        return Ok(Vec::new());
    }
    Ok(entries.into_iter().filter(|p| p.is_dir()).collect())
}

/// Lists the images under `root` (see the module's layouts); with
/// `skip_undecodable`, decodes them all in parallel and leaves out (and
/// records) those that fail.
pub fn open(root: &Path, split: Split, skip_undecodable: bool) -> Result<Dataset> {
    if !root.is_dir() {
        return Err(bad_file(root, "no such folder"));
    }
    let classes = class_folders(root)?;
    let mut found = Found::default();
    let labels = match classes.is_empty() {
        true => {
            found.walk(root)?;
            None
        }
        false => Some(walk_classes(&classes, &mut found)?),
    };
    if found.images.is_empty() {
        return Err(bad_file(root, no_images(&found)));
    }
    let names = classes.iter().map(|c| file_name(c)).collect();
    let mut dataset = Dataset {
        format: Format::ImageFolder,
        source: root.to_path_buf(),
        split,
        classes: names,
        skipped: Vec::new(),
        ignored: found.ignored,
        storage: Storage::Files {
            paths: found.images,
        },
        labels,
    };
    if skip_undecodable {
        dataset.skip_undecodable()?;
    }
    Ok(dataset)
}

/// Walks each class folder into `found`; the labels of its images.
fn walk_classes(classes: &[PathBuf], found: &mut Found) -> Result<Vec<u16>> {
    if classes.len() > u16::MAX as usize {
        return Err(bad_file(
            &classes[0],
            format!("{} class folders (at most {})", classes.len(), u16::MAX),
        ));
    }
    let mut labels = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        let (before, ignored) = (found.images.len(), found.ignored.len());
        found.walk(class_dir)?;
        if found.images.len() == before {
            let inside = Found {
                images: Vec::new(),
                ignored: found.ignored[ignored..].to_vec(),
            };
            return Err(bad_file(
                class_dir,
                format!("class folder: {}", no_images(&inside)),
            ));
        }
        labels.resize(found.images.len(), label as u16);
    }
    Ok(labels)
}

/// Why a folder gave no image: what it holds instead, and what is read.
fn no_images(found: &Found) -> String {
    let read = format!("reads {}", EXTENSIONS.map(|e| format!(".{e}")).join(", "));
    match found.ignored.first() {
        None => format!("holds no image file ({read}; hidden files are skipped)"),
        Some(first) => format!(
            "holds no image file, only {} other file(s) such as {} ({read})",
            found.ignored.len(),
            first.display()
        ),
    }
}

/// The last component of `path`, as text.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Opens a file list: one image path a line (relative to the list's
/// folder unless absolute), optionally a tab and a label (a class name).
/// Either every line has a label or none has; empty lines and lines
/// starting with `#` are skipped.
pub fn open_list(list: &Path, split: Split, skip_undecodable: bool) -> Result<Dataset> {
    let text = fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let base = list.parent().unwrap_or(Path::new("."));
    let mut entries: Vec<(PathBuf, Option<String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, label) = match line.rsplit_once('\t') {
            Some((p, l)) => (p, Some(l.trim().to_string())),
            None => (line, None),
        };
        let path = base.join(path.trim());
        if !path.is_file() {
            return Err(bad_file(
                list,
                format!("line {}: {} is not a file", n + 1, path.display()),
            ));
        }
        if entries
            .first()
            .is_some_and(|(_, l)| l.is_some() != label.is_some())
        {
            return Err(bad_file(
                list,
                format!(
                    "line {}: either every line has a label (after a tab) or none has",
                    n + 1
                ),
            ));
        }
        entries.push((path, label));
    }
    if entries.is_empty() {
        return Err(bad_file(list, "lists no image"));
    }
    let (classes, labels) = list_labels(&entries);
    let mut dataset = Dataset {
        format: Format::FileList,
        source: list.to_path_buf(),
        split,
        classes,
        skipped: Vec::new(),
        ignored: Vec::new(),
        storage: Storage::Files {
            paths: entries.into_iter().map(|(p, _)| p).collect(),
        },
        labels,
    };
    if skip_undecodable {
        dataset.skip_undecodable()?;
    }
    Ok(dataset)
}

/// The sorted class names of a list's labels, and each entry's label.
fn list_labels(entries: &[(PathBuf, Option<String>)]) -> (Vec<String>, Option<Vec<u16>>) {
    if entries[0].1.is_none() {
        return (Vec::new(), None);
    }
    let mut classes: Vec<String> = entries.iter().filter_map(|(_, l)| l.clone()).collect();
    classes.sort();
    classes.dedup();
    let labels = entries
        .iter()
        .map(|(_, l)| {
            let l = l.as_deref().unwrap_or_default();
            classes.binary_search_by(|c| c.as_str().cmp(l)).unwrap_or(0) as u16
        })
        .collect();
    (classes, Some(labels))
}

impl Dataset {
    /// Decodes every image file in parallel and leaves out (recording in
    /// `skipped`, with why) those that fail; an error when none is left.
    fn skip_undecodable(&mut self) -> Result<()> {
        let Storage::Files { paths } = &mut self.storage else {
            return Ok(());
        };
        let errors: Vec<Option<String>> = paths
            .par_iter()
            .map(|p| Image::open(p).err().map(|e| e.to_string()))
            .collect();
        let mut keep = Vec::with_capacity(paths.len());
        for (p, err) in std::mem::take(paths).into_iter().zip(&errors) {
            match err {
                None => keep.push(p),
                Some(e) => self.skipped.push((p, e.clone())),
            }
        }
        if keep.is_empty() {
            return Err(bad_file(&self.source, "no image could be decoded"));
        }
        if let Some(labels) = &mut self.labels {
            let mut kept = errors.iter().map(Option::is_none);
            labels.retain(|_| kept.next().unwrap_or(false));
        }
        *paths = keep;
        Ok(())
    }
}
