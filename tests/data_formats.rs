//! Each dataset format read from fixtures: exact pixels and labels, detection,
//! and errors that name the file and what is wrong.

mod common;

use std::path::Path;

use common::*;
use eqco::data::formats::{self, detect};
use eqco::data::{Cifar100Labels, Dataset, Format, OpenOptions, Split};

fn open(path: &Path, split: Split) -> eqco::Result<Dataset> {
    formats::open(
        path,
        &OpenOptions {
            split,
            ..Default::default()
        },
    )
}

fn err_of(r: eqco::Result<Dataset>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn idx_raw_and_gzip_give_exact_pixels_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    for gzip in [false, true] {
        let dir = tmp.path().join(format!("fashion-{gzip}"));
        write_idx(&dir, 12, 5, 4, gzip);
        assert_eq!(detect(&dir).unwrap(), Format::Idx);
        let ds = open(&dir, Split::Train).unwrap();
        assert_eq!(ds.len(), 12);
        assert_eq!(ds.image_shape(), Some((4, 5, 1)));
        assert_eq!(
            ds.classes[0], "T-shirt/top",
            "a folder named fashion-* gets Fashion-MNIST's names"
        );
        let img = ds.image(7).unwrap();
        for (x, y) in [(0, 0), (3, 4), (2, 1)] {
            assert_eq!(img.at(x, y, 0), pixel(7, x as usize, y as usize, 0));
        }
        assert_eq!(ds.label(7), Some(7));
        assert_eq!(ds.label(11), Some(1));
        let test = open(&dir, Split::Test).unwrap();
        assert_eq!(test.len(), 6);
    }
}

#[test]
fn idx_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    write_idx(&dir, 10, 4, 4, false);
    let images = dir.join("train-images-idx3-ubyte");
    let good = std::fs::read(&images).unwrap();

    std::fs::write(&images, &good[..good.len() - 3]).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("truncated"),
        "{e}"
    );

    let mut bad = good.clone();
    bad[2] = 0x0d;
    std::fs::write(&images, &bad).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(e.contains("wrong magic number"), "{e}");

    std::fs::write(&images, &good).unwrap();
    let labels = dir.join("train-labels-idx1-ubyte");
    let mut l = std::fs::read(&labels).unwrap();
    l.pop();
    l[7] = 9; // The header now says 9 labels.
    std::fs::write(&labels, &l).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("9 labels for 10 images"),
        "{e}"
    );

    std::fs::remove_file(&labels).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("missing"),
        "{e}"
    );

    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), b"\x1f\x8bnot gzip").unwrap();
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
    let e = err_of(open(&dir, Split::Test));
    assert!(
        e.contains("t10k-images-idx3-ubyte.gz") && e.contains("gzip"),
        "{e}"
    );
}

#[test]
fn cifar10_pixels_labels_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_cifar10(&dir, 2, 5);
    assert_eq!(detect(&dir).unwrap(), Format::Cifar10);
    let ds = open(&dir, Split::Train).unwrap();
    assert_eq!(ds.len(), 10);
    assert_eq!(ds.image_shape(), Some((32, 32, 3)));
    assert_eq!(ds.classes.len(), 10);
    assert_eq!(ds.classes[9], "truck");
    // Image 7 is the third record of data_batch_2.bin.
    let img = ds.image(7).unwrap();
    for (x, y, c) in [(0, 0, 0), (31, 0, 1), (5, 17, 2), (31, 31, 0)] {
        assert_eq!(
            img.at(x, y, c),
            pixel(7, x as usize, y as usize, c as usize),
            "({x},{y},{c})"
        );
    }
    assert_eq!(ds.label(7), Some(7));
    let test = open(&dir, Split::Test).unwrap();
    assert_eq!(test.len(), 5);
    assert_eq!(test.image(0).unwrap().at(1, 2, 1), pixel(1000, 1, 2, 1));

    // A record cut short, and a label out of range.
    let f = dir.join("data_batch_2.bin");
    let good = std::fs::read(&f).unwrap();
    std::fs::write(&f, &good[..good.len() - 100]).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(
        e.contains("data_batch_2.bin") && e.contains("3073-byte records"),
        "{e}"
    );
    let mut bad = good.clone();
    bad[3073] = 10;
    std::fs::write(&f, &bad).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(
        e.contains("data_batch_2.bin") && e.contains("label 10 of record 1"),
        "{e}"
    );
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    write_cifar100(&dir, 130);
    assert_eq!(detect(&dir).unwrap(), Format::Cifar100);
    let fine = open(&dir, Split::Train).unwrap();
    assert_eq!(fine.classes.len(), 100);
    assert_eq!(fine.label(123), Some(23));
    assert_eq!(fine.classes[23], "fine23");
    let coarse = formats::open(
        &dir,
        &OpenOptions {
            cifar100_labels: Cifar100Labels::Coarse,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(coarse.classes.len(), 20);
    assert_eq!(coarse.label(123), Some(3));
    assert_eq!(coarse.image(123).unwrap().at(9, 8, 2), pixel(123, 9, 8, 2));
}

#[test]
fn stl10_column_major_pixels_and_unlabeled_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stl10_binary");
    write_stl10(&dir, 3);
    assert_eq!(detect(&dir).unwrap(), Format::Stl10);
    let ds = open(&dir, Split::Train).unwrap();
    assert_eq!(ds.image_shape(), Some((96, 96, 3)));
    let img = ds.image(2).unwrap();
    for (x, y, c) in [(0, 0, 0), (95, 0, 1), (3, 70, 2), (60, 5, 0)] {
        assert_eq!(
            img.at(x, y, c),
            pixel(2, x as usize, y as usize, c as usize),
            "({x},{y},{c})"
        );
    }
    assert_eq!(ds.label(0), Some(0), "STL-10 labels 1..10 become 0..9");
    assert_eq!(ds.label(2), Some(2));
    assert_eq!(ds.classes[7], "monkey");
    let un = open(&dir, Split::Unlabeled).unwrap();
    assert_eq!(un.len(), 3);
    assert!(!un.has_labels() && un.label(0).is_none());

    std::fs::write(dir.join("train_y.bin"), [1u8, 0, 3]).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(
        e.contains("train_y.bin") && e.contains("label 0 of record 1"),
        "{e}"
    );
    std::fs::write(dir.join("train_y.bin"), [1u8, 2]).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(e.contains("2 labels for 3 images"), "{e}");
    let x = dir.join("train_X.bin");
    let bytes = std::fs::read(&x).unwrap();
    std::fs::write(&x, &bytes[..bytes.len() - 1]).unwrap();
    let e = err_of(open(&dir, Split::Train));
    assert!(e.contains("train_X.bin") && e.contains("truncated"), "{e}");
}

#[test]
fn image_folder_sorted_classes_nested_files_and_bad_images() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    write_image_folder(&root);
    assert_eq!(detect(&root).unwrap(), Format::ImageFolder);
    let ds = open(&root, Split::Train).unwrap();
    assert_eq!(ds.classes, vec!["a_cls", "b_cls"]);
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.class_counts(), vec![3, 2]);
    // Sorted by path: a_cls/img1, a_cls/img2, a_cls/nested/z0, then b_cls/...
    assert!(ds.path(2).unwrap().ends_with("a_cls/nested/z0.png"));
    let img = ds.image(0).unwrap();
    assert_eq!((img.width, img.height, img.channels), (40, 30, 3));
    assert_eq!(img.at(39, 29, 2), pixel(1, 39, 29, 2));
    assert_eq!(ds.label(4), Some(1));

    // An undecodable file: an error naming it when read, or skipped and counted.
    std::fs::write(root.join("a_cls/broken.jpg"), b"not a jpeg at all").unwrap();
    let ds = open(&root, Split::Train).unwrap();
    let broken = (0..ds.len())
        .find(|&i| ds.path(i).unwrap().ends_with("broken.jpg"))
        .unwrap();
    let e = ds.image(broken).unwrap_err().to_string();
    assert!(e.contains("broken.jpg") && e.contains("decode"), "{e}");
    let skipping = formats::open(
        &root,
        &OpenOptions {
            skip_undecodable: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(skipping.len(), 5);
    assert_eq!(skipping.skipped.len(), 1);
    assert!(skipping.skipped[0].0.ends_with("broken.jpg"));
}

#[test]
fn image_folder_layout_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err_of(open(&empty, Split::Train));
    assert!(
        e.contains("empty") && e.contains("holds no image file"),
        "{e}"
    );
    std::fs::create_dir_all(empty.join("cls/sub")).unwrap();
    std::fs::write(empty.join("cls/readme.txt"), b"x").unwrap();
    let e = err_of(open(&empty, Split::Train));
    assert!(
        e.contains("cls")
            && e.contains("class folder: holds no image file")
            && e.contains("readme.txt"),
        "{e}"
    );
    let e = err_of(open(&tmp.path().join("nowhere"), Split::Train));
    assert!(e.contains("nowhere") && e.contains("no such file"), "{e}");
}

#[test]
fn imagenet_layout_picks_the_split_folder() {
    let tmp = tempfile::tempdir().unwrap();
    write_image_folder(&tmp.path().join("train"));
    std::fs::create_dir_all(tmp.path().join("val/a_cls")).unwrap();
    rgb(0, 8, 8)
        .save(tmp.path().join("val/a_cls/v.png"))
        .unwrap();
    assert_eq!(open(tmp.path(), Split::Train).unwrap().len(), 5);
    assert_eq!(open(tmp.path(), Split::Test).unwrap().len(), 1);
}

#[test]
fn real_fashion_mnist_when_installed() {
    // CI installs the Debian package dataset-fashion-mnist (scripts/setup.sh).
    let dir = Path::new(eqco::data::formats::idx::FASHION_MNIST_DEFAULT_DIR);
    let train = open(dir, Split::Train).expect("Fashion-MNIST from dataset-fashion-mnist");
    let test = open(dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.image_shape(), Some((28, 28, 1)));
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(train.classes[9], "Ankle boot");
}
