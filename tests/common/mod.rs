//! Fixture writers: small datasets in each on-disk format, with known pixels.
#![allow(dead_code)]

pub mod equivalence;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

/// Runs the `eqco` binary with `args`.
pub fn eqco(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eqco"))
        .args(args)
        .output()
        .expect("the eqco binary runs")
}

/// `eqco pretrain` arguments for the tests' tiny runs: `preset` into `out`
/// at 1 thread, on a synthetic CIFAR-10 fixture of `images` images in
/// `dir/cifar` (written once), ResNet-10 at width 0.125 on 16-pixel views,
/// N = 32, one loader thread, fp32 channels-last (pinned: what `auto` picks
/// depends on the machine), then `extra` keys, which override these.
pub fn tiny_pretrain(
    dir: &Path,
    images: usize,
    preset: &str,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let data = dir.join("cifar");
    if !data.exists() {
        eqco::data::synthetic::write_cifar10(&data, images).unwrap();
    }
    let mut args: Vec<String> = ["pretrain", "--config", preset, "--out"]
        .map(String::from)
        .into();
    args.extend([out.display().to_string(), "--threads".into(), "1".into()]);
    let base = [
        "dataset=cifar10".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "backbone=resnet10".into(),
        "width=0.125".into(),
        "batch_size=32".into(),
        "image_size=16".into(),
        "head_hidden=32".into(),
        "embed_dim=16".into(),
        "loader_threads=1".into(),
        "precision=fp32".into(),
        "memory_format=channels_last".into(),
    ];
    for s in base.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// Bytes of a process's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The pixel value the fixtures store at image `i`, row `y`, column `x`, channel `c`.
pub fn pixel(i: usize, x: usize, y: usize, c: usize) -> u8 {
    ((i * 31 + x * 7 + y * 13 + c * 101) % 251) as u8
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An IDX folder with `n` train and `n / 2` test images of `h × w`, labels `i % 10`.
pub fn write_idx(dir: &Path, n: usize, h: usize, w: usize, gzip: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, count) in [("train", n), ("t10k", n / 2)] {
        let mut px = Vec::new();
        for i in 0..count {
            for y in 0..h {
                for x in 0..w {
                    px.push(pixel(i, x, y, 0));
                }
            }
        }
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        let images = idx_bytes(&[count as u32, h as u32, w as u32], &px);
        let labels = idx_bytes(&[count as u32], &labels);
        let (ext, images, labels) = if gzip {
            (".gz", gz(&images), gz(&labels))
        } else {
            ("", images, labels)
        };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), labels).unwrap();
    }
}

/// CIFAR planar pixels of image `i` (32×32×3, R plane, G plane, B plane).
fn cifar_planes(i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(3072);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                v.push(pixel(i, x, y, c));
            }
        }
    }
    v
}

/// CIFAR-10: `batches` train files of `per_batch` records and a test file; labels `i % 10`.
pub fn write_cifar10(dir: &Path, batches: usize, per_batch: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let file = |offset: usize| {
        let mut out = Vec::new();
        for i in offset..offset + per_batch {
            out.push((i % 10) as u8);
            out.extend(cifar_planes(i));
        }
        out
    };
    for b in 0..batches {
        std::fs::write(
            dir.join(format!("data_batch_{}.bin", b + 1)),
            file(b * per_batch),
        )
        .unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), file(1000)).unwrap();
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    std::fs::write(dir.join("batches.meta.txt"), names).unwrap();
}

/// CIFAR-100: `n` train records with coarse label `i % 20` and fine label `i % 100`.
pub fn write_cifar100(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        out.push((i % 20) as u8);
        out.push((i % 100) as u8);
        out.extend(cifar_planes(i));
    }
    std::fs::write(dir.join("train.bin"), &out).unwrap();
    std::fs::write(dir.join("test.bin"), &out).unwrap();
    let fine: String = (0..100).map(|i| format!("fine{i}\n")).collect();
    let coarse: String = (0..20).map(|i| format!("coarse{i}\n")).collect();
    std::fs::write(dir.join("fine_label_names.txt"), fine).unwrap();
    std::fs::write(dir.join("coarse_label_names.txt"), coarse).unwrap();
}

/// STL-10 column-major images: the byte at `c·96² + x·96 + y` is pixel (x, y) of channel c.
fn stl_image(i: usize) -> Vec<u8> {
    let mut v = vec![0u8; 96 * 96 * 3];
    for c in 0..3 {
        for x in 0..96 {
            for y in 0..96 {
                v[c * 96 * 96 + x * 96 + y] = pixel(i, x, y, c);
            }
        }
    }
    v
}

/// STL-10: `n` train images with labels `1 + i % 10`, and `n` unlabeled ones.
pub fn write_stl10(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let images: Vec<u8> = (0..n).flat_map(stl_image).collect();
    std::fs::write(dir.join("train_X.bin"), &images).unwrap();
    std::fs::write(dir.join("unlabeled_X.bin"), &images).unwrap();
    let labels: Vec<u8> = (0..n).map(|i| 1 + (i % 10) as u8).collect();
    std::fs::write(dir.join("train_y.bin"), labels).unwrap();
}

/// An RGB image `w × h` whose pixels follow [`pixel`] for image number `i`.
pub fn rgb(i: usize, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([0, 1, 2].map(|c| pixel(i, x as usize, y as usize, c)))
    })
}

/// ImageFolder: classes `b_cls` and `a_cls` (so sorting matters), PNG images,
/// one in a nested folder.
pub fn write_image_folder(root: &Path) {
    for (cls, n) in [("b_cls", 2), ("a_cls", 3)] {
        let d = root.join(cls);
        std::fs::create_dir_all(d.join("nested")).unwrap();
        for i in 0..n {
            let path = if i == 0 {
                d.join("nested/z0.png")
            } else {
                d.join(format!("img{i}.png"))
            };
            rgb(i + if cls == "a_cls" { 0 } else { 10 }, 40, 30)
                .save(&path)
                .unwrap();
        }
    }
}

/// Asserts that `out` exited 0, showing `what` and its output otherwise.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The names of the entries of `dir`.
pub fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The steps of the `step-<step>.safetensors` checkpoints of `run`, sorted.
pub fn checkpoint_steps(run: &Path) -> Vec<u64> {
    let dir = run.join("checkpoints");
    let mut steps: Vec<u64> = match dir.is_dir() {
        true => names_in(&dir),
        false => Vec::new(),
    }
    .iter()
    .filter_map(|name| {
        name.strip_prefix("step-")?
            .strip_suffix(".safetensors")?
            .parse()
            .ok()
    })
    .collect();
    steps.sort_unstable();
    steps
}
