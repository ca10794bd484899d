//! `eqco data inspect`, `eqco bench data` and `eqco bench train` end to end.

mod common;

use common::{eqco, text};

#[test]
fn inspect_prints_a_summary_and_writes_the_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    common::write_cifar10(&data, 1, 20);
    let out_dir = tmp.path().join("out");
    let out = eqco(&[
        "data",
        "inspect",
        data.to_str().unwrap(),
        "--pairs",
        "4",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("CIFAR-10"), "{stdout}");
    assert!(stdout.contains("images    20"), "{stdout}");
    assert!(stdout.contains("32×32, 3 channel(s)"), "{stdout}");
    assert!(stdout.contains("truck"), "{stdout}");
    let grid = image::open(out_dir.join("views.png")).unwrap();
    // 4 rows of 96-pixel cells with 4-pixel gutters.
    assert_eq!(grid.height(), 4 * 100 + 4);
}

#[test]
fn inspect_the_real_fashion_mnist() {
    // The default dataset, installed by scripts/setup.sh.
    let tmp = tempfile::tempdir().unwrap();
    let out = eqco(&[
        "data",
        "inspect",
        "--split",
        "test",
        "--channels",
        "3",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("images    10000") && stdout.contains("Ankle boot"),
        "{stdout}"
    );
    assert!(stdout.contains("28×28, 3 channel(s)"), "{stdout}");
    assert!(tmp.path().join("views.png").is_file());
}

#[test]
fn inspect_errors_name_the_file_or_option() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let out = eqco(&["data", "inspect", missing.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error:") && err.contains("missing") && err.contains("no such file"),
        "{err}"
    );

    let data = tmp.path().join("cifar");
    common::write_cifar10(&data, 1, 4);
    let f = data.join("data_batch_1.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 7]).unwrap();
    let out = eqco(&[
        "data",
        "inspect",
        data.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("data_batch_1.bin") && err.contains("truncated"),
        "{err}"
    );

    std::fs::write(&f, &bytes).unwrap();
    let out = eqco(&[
        "data",
        "inspect",
        data.to_str().unwrap(),
        "--channels",
        "2",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--channels"), "{err}");
}

#[test]
fn bench_data_measures_our_loader() {
    let out = eqco(&[
        "bench",
        "data",
        "--images",
        "64",
        "--sizes",
        "32,96",
        "--threads",
        "1,2",
        "--epochs",
        "1",
        "--no-python",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 6 && w[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in rows {
        let rate: f64 = r[3].parse().unwrap();
        assert!(rate > 0.0, "{stdout}");
    }
}

#[test]
fn bench_train_times_every_method_precision_and_format() {
    let out = eqco(&[
        "bench",
        "train",
        "--models",
        "fmnist",
        "--batch",
        "8",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--precision",
        "fp32,bf16",
        "--no-python",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 6 && w[0] == "fmnist")
        .collect();
    assert_eq!(rows.len(), 4 * 4, "4 methods × 4 variants: {stdout}");
    for m in ["simo", "mocov2", "simclr", "mocov1"] {
        for (prec, format) in [
            ("fp32", "NCHW"),
            ("fp32", "channels-last"),
            ("bf16", "NCHW"),
            ("bf16", "channels-last"),
        ] {
            let row = rows
                .iter()
                .find(|r| r[0] == "fmnist" && r[1] == m && r[2] == prec && r[3] == format)
                .unwrap_or_else(|| panic!("{m} {prec} {format}: {stdout}"));
            assert_eq!(row[4], "8", "N");
            let rate: f64 = row[5].parse().unwrap();
            assert!(rate > 0.0, "{row:?}");
        }
    }
    for (flag, value) in [
        ("--models", "resnet99-7"),
        ("--precision", "fp16"),
        ("--memory-format", "nhwc"),
        ("--repeats", "0"),
    ] {
        let out = eqco(&["bench", "train", flag, value, "--no-python"]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(
            text(&out.stderr).contains(flag),
            "{flag}: {}",
            text(&out.stderr)
        );
    }
}
