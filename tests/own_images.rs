//! Users' own images as they hold them, through the real binary: a flat
//! folder and a nested folder of unlabeled images train and embed; a
//! folder of every format torchvision reads (written by Pillow: RGBA, 16-bit
//! grey and palette PNGs, CMYK JPEG, WebP, BMP, TIFF, PPM, PGM, extensions
//! in upper case) reads every image, `data inspect` counts them by
//! extension and lists what is not an image, and hidden files and folders
//! (`.ipynb_checkpoints`, `.DS_Store`) are ignored; a file list trains too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{eqco, rgb, text};

/// A tiny pretraining run of 2 steps on the images at `data` (16-pixel
/// views, ResNet-10 at width 1/8), into `out`.
fn pretrain(data: &Path, out: &Path, dataset: &str) -> Output {
    pretrain_with(data, out, dataset, &[])
}

/// [`pretrain`] with `extra` keys.
fn pretrain_with(data: &Path, out: &Path, dataset: &str, extra: &[&str]) -> Output {
    let data = format!("data_dir=\"{}\"", data.display());
    let dataset = format!("dataset={dataset}");
    let mut args = vec!["pretrain", "--out", out.to_str().unwrap(), "--threads", "1"];
    let ours = [
        dataset.as_str(),
        data.as_str(),
        "backbone=resnet10",
        "width=0.125",
        "batch_size=8",
        "k_negatives=7",
        "image_size=16",
        "head_hidden=32",
        "embed_dim=16",
        "max_steps=2",
        "warmup_epochs=0",
        "loader_threads=1",
        "precision=fp32",
        "knn_every=0",
        "tensorboard=false",
    ];
    for set in ours.iter().chain(extra) {
        args.extend(["--set", set]);
    }
    eqco(&args)
}

fn ok(out: &Output, what: &str) -> String {
    common::assert_ok(out, what);
    text(&out.stdout)
}

/// The rows `eqco embed` writes for `data` with the run's checkpoint.
fn embedded_rows(run: &Path, data: &Path) -> usize {
    let csv = run.join("emb.csv");
    let ckpt = run.join("checkpoints/latest.safetensors");
    let o = eqco(&[
        "embed",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--dataset",
        data.to_str().unwrap(),
        "--out",
        csv.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    ok(&o, "eqco embed");
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count();
    rows - 1 // the header
}

fn write_pngs(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, name) in names.iter().enumerate() {
        rgb(i, 20, 18).save(dir.join(name)).unwrap();
    }
}

#[test]
fn a_flat_and_a_nested_folder_of_unlabeled_images_train_and_embed() {
    let tmp = tempfile::tempdir().unwrap();
    let flat = tmp.path().join("flat");
    let names: Vec<String> = (0..12).map(|i| format!("photo{i:02}.png")).collect();
    write_pngs(&flat, &names.iter().map(String::as_str).collect::<Vec<_>>());
    let shown = ok(
        &eqco(&[
            "data",
            "inspect",
            flat.to_str().unwrap(),
            "--out",
            tmp.path().join("v").to_str().unwrap(),
        ]),
        "inspect flat",
    );
    assert!(
        shown.contains("images    12") && shown.contains("labels    none: unlabeled"),
        "{shown}"
    );
    let run = tmp.path().join("run-flat");
    ok(
        &pretrain(&flat, &run, "imagefolder"),
        "pretrain on a flat folder",
    );
    assert_eq!(embedded_rows(&run, &flat), 12);

    // Images at the top and in folders below: every one, still unlabeled.
    let nested = tmp.path().join("nested");
    write_pngs(&nested, &["top.png"]);
    write_pngs(&nested.join("2025/june"), &["a.png", "b.png", "c.png"]);
    write_pngs(&nested.join("2026"), &["d.png", "e.png", "f.png", "g.png"]);
    let run = tmp.path().join("run-nested");
    ok(
        &pretrain(&nested, &run, "auto"),
        "pretrain on a nested folder",
    );
    assert_eq!(embedded_rows(&run, &nested), 8);
    // Evaluation says that there are no labels.
    let ckpt = run.join("checkpoints/latest.safetensors");
    let o = eqco(&[
        "eval",
        "knn",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("labelled"), "{}", text(&o.stderr));
}

/// Writes with Pillow (the venv's) one class folder of every format and
/// mode, and hidden and non-image files beside them; returns the images
/// written per extension.
fn write_mixed(root: &Path) -> Vec<(String, usize)> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = r#"
import sys, os
import numpy as np
from PIL import Image
root = sys.argv[1]
def img(i, mode):
    rng = np.random.default_rng(i)
    rgb = Image.fromarray(rng.integers(0, 256, (18, 20, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray((rng.integers(0, 65536, (18, 20))).astype(np.uint16))
    return rgb.convert(mode) if mode != "P" else rgb.quantize(16)
jobs = [("a", "jpg", "RGB", "JPEG"), ("a", "JPG", "RGB", "JPEG"), ("a", "jpeg", "CMYK", "JPEG"),
        ("a", "png", "RGBA", "PNG"), ("b", "png", "I;16", "PNG"), ("b", "PNG", "P", "PNG"),
        ("b", "webp", "RGB", "WEBP"), ("b", "bmp", "RGB", "BMP"), ("a", "tif", "RGB", "TIFF"),
        ("b", "tiff", "RGB", "TIFF"), ("a", "ppm", "RGB", "PPM"), ("b", "pgm", "L", "PPM")]
for j, (cls, ext, mode, fmt) in enumerate(jobs):
    os.makedirs(f"{root}/{cls}", exist_ok=True)
    for i in range(3):
        img(10 * j + i, mode).save(f"{root}/{cls}/{mode.replace(';', '')}{j}_{i}.{ext}", fmt)
os.makedirs(f"{root}/.ipynb_checkpoints", exist_ok=True)
img(0, "RGB").save(f"{root}/.ipynb_checkpoints/hidden.png")
img(0, "RGB").save(f"{root}/a/.hidden.png")
open(f"{root}/a/.DS_Store", "wb").write(b"\0\1")
open(f"{root}/b/notes.txt", "w").write("not an image")
"#;
    let o = Command::new(&python)
        .args(["-c", script, root.to_str().unwrap()])
        .output()
        .expect("the venv's python runs (scripts/setup.sh)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    [
        ("jpg", 6),
        ("jpeg", 3),
        ("png", 9),
        ("webp", 3),
        ("bmp", 3),
        ("tif", 3),
        ("tiff", 3),
        ("ppm", 3),
        ("pgm", 3),
    ]
    .map(|(e, n)| (e.to_string(), n))
    .into()
}

#[test]
fn a_folder_of_every_format_reads_every_image_and_ignores_hidden_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mixed");
    let written = write_mixed(&root);
    let total: usize = written.iter().map(|(_, n)| n).sum();
    std::fs::write(root.join("b/broken.webp"), b"RIFF\0\0\0\0WEBPnot really").unwrap();
    let shown = ok(
        &eqco(&[
            "data",
            "inspect",
            root.to_str().unwrap(),
            "--out",
            tmp.path().join("v").to_str().unwrap(),
        ]),
        "inspect a mixed folder",
    );
    assert!(
        shown.contains(&format!("images    {}", total + 1)),
        "{shown}"
    );
    assert!(
        shown.contains("classes   2"),
        "the hidden folder is no class:\n{shown}"
    );
    for (ext, n) in &written {
        let n = n + usize::from(ext == "webp");
        assert!(
            shown.contains(&format!("{n} .{ext}")),
            "{n} .{ext}:\n{shown}"
        );
    }
    assert!(shown.contains("unreadable 1 file(s)"), "{shown}");
    assert!(
        shown.contains("broken.webp") && shown.contains("notes.txt"),
        "{shown}"
    );
    assert!(
        !shown.contains("hidden.png") && !shown.contains(".DS_Store"),
        "{shown}"
    );

    // Pretraining stops at the broken file, naming it; with
    // skip_undecodable it leaves it out and says so.
    let run = tmp.path().join("run");
    let o = pretrain(&root, &run, "imagefolder");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("broken.webp"),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_dir_all(&run).unwrap();
    let o = pretrain_with(&root, &run, "imagefolder", &["skip_undecodable=true"]);
    let err = text(&o.stderr);
    ok(&o, "pretrain with skip_undecodable");
    assert!(
        err.contains("left out 1 undecodable image(s)") && err.contains("broken.webp"),
        "{err}"
    );
    std::fs::remove_file(root.join("b/broken.webp")).unwrap();
    assert_eq!(embedded_rows(&run, &root), total, "every image decodes");
}

#[test]
fn a_file_list_names_images_from_several_roots() {
    let tmp = tempfile::tempdir().unwrap();
    write_pngs(&tmp.path().join("one"), &["a.png", "b.png", "c.png"]);
    write_pngs(
        &tmp.path().join("two/deep"),
        &["d.png", "e.png", "f.png", "g.png", "h.png"],
    );
    let entries: Vec<PathBuf> = [
        "one/a.png",
        "one/b.png",
        "one/c.png",
        "two/deep/d.png",
        "two/deep/e.png",
        "two/deep/f.png",
        "two/deep/g.png",
        "two/deep/h.png",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let list = tmp.path().join("images.txt");
    let lines: Vec<String> = entries.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, format!("# my images\n{}\n", lines.join("\n"))).unwrap();
    let run = tmp.path().join("run");
    ok(&pretrain(&list, &run, "auto"), "pretrain on a file list");
    assert_eq!(embedded_rows(&run, &list), 8);
    // Labels after a tab give classes; a line without one is refused, named.
    let labelled: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{l}\t{}", ["cat", "dog"][i % 2]))
        .collect();
    std::fs::write(&list, labelled.join("\n")).unwrap();
    let shown = ok(
        &eqco(&[
            "data",
            "inspect",
            list.to_str().unwrap(),
            "--out",
            tmp.path().join("v").to_str().unwrap(),
        ]),
        "inspect a labelled list",
    );
    assert!(
        shown.contains("classes   2") && shown.contains("4  cat"),
        "{shown}"
    );
    std::fs::write(&list, format!("{}\none/a.png\n", labelled.join("\n"))).unwrap();
    let o = eqco(&["data", "inspect", list.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("images.txt") && text(&o.stderr).contains("line 9"),
        "{}",
        text(&o.stderr)
    );
}
