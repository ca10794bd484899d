//! `eqco embed` against PyTorch: torchvision's ResNet on the exported
//! weights, with torchvision's transforms set as the embeddings' sidecar
//! states, gives the same embeddings within 1e-4 (.npy, .safetensors and
//! .csv, read by numpy and safetensors in tests/python/check_embed.py); the
//! sidecars name each row; the head layer; bad input and atomic output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{eqco, rgb, text};

/// An ImageFolder with `train/` and `val/`, classes `cat` and `dog`, `n` PNG
/// images of 32×32 per class and split.
fn image_folder(root: &Path, n: usize) {
    for (s, split) in ["train", "val"].iter().enumerate() {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                rgb(1000 * s + 100 * c + 7 * i, 32, 32)
                    .save(dir.join(format!("{i:02}.png")))
                    .unwrap();
            }
        }
    }
}

/// A pretraining run on `data` into `out`: a width-1 ResNet-18 (small
/// stem, 3 channels, as torchvision builds it), fp32 and NCHW pinned,
/// plus `extra` keys.
fn pretrain(data: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<String> = vec![
        "pretrain".into(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        "2".into(),
    ];
    let sets = [
        "dataset=imagefolder".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "backbone=resnet18".into(),
        "width=1".into(),
        "stem=small".into(),
        "channels=3".into(),
        "image_size=32".into(),
        "batch_size=16".into(),
        "k_negatives=15".into(),
        "precision=fp32".into(),
        "memory_format=contiguous".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = eqco(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn checkpoint(run: &Path) -> PathBuf {
    run.join("checkpoints/latest.safetensors")
}

fn embed(ckpt: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    eqco(&args)
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

#[test]
fn embeddings_match_pytorch_on_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    image_folder(&data, 8);
    let run = tmp.path().join("run");
    pretrain(&data, &run, &["max_steps=2"]);
    let export = tmp.path().join("backbone.safetensors");
    let o = eqco(&[
        "export",
        "--checkpoint",
        checkpoint(&run).to_str().unwrap(),
        "--format",
        "safetensors",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    for ext in ["npy", "safetensors", "csv"] {
        let out = tmp.path().join(format!("emb/val.{ext}"));
        let o = embed(&checkpoint(&run), &out, &["--split", "test"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains("16 images"), "{}", text(&o.stdout));
        let (rows, info) = (
            tmp.path().join("emb/val.rows.csv"),
            tmp.path().join("emb/val.json"),
        );
        let o = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_embed.py"))
            .args([&export, &out, &info, &rows])
            .output()
            .expect("the venv's python runs (bash scripts/setup.sh installs torchvision)");
        assert!(
            o.status.success(),
            "{ext}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (r["rows"].as_u64(), r["dim"].as_u64()),
            (Some(16), Some(512))
        );
        assert!(r["max_abs"].as_f64().unwrap() > 1e-3, "not all zeros: {r}");
        eprintln!("{ext}: {r}");

        // The rows sidecar: each val image once, in order, with its label.
        let mut reader = csv::Reader::from_path(&rows).unwrap();
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 16);
        for (k, r) in records.iter().enumerate() {
            assert_eq!(&r[0], k.to_string());
            assert_eq!(&r[1], k.to_string());
            let class = if k < 8 { "cat" } else { "dog" };
            assert_eq!(
                &r[2],
                data.join("val")
                    .join(class)
                    .join(format!("{:02}.png", k % 8))
                    .to_str()
                    .unwrap()
            );
            assert_eq!((&r[3], &r[4]), (if k < 8 { "0" } else { "1" }, class));
        }
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("emb/val.json")).unwrap())
            .unwrap();
    assert_eq!(info["layer"], "backbone");
    assert_eq!(info["split"], "test");
    assert_eq!(info["step"], 2);
    assert_eq!(info["l2_normalized"], false);

    // The head, L2-normalised: 128 columns of unit rows.
    let out = tmp.path().join("head.npy");
    let o = embed(&checkpoint(&run), &out, &["--layer", "head", "--normalize"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let z = tch::Tensor::read_npy(&out).unwrap();
    assert_eq!(z.size(), vec![16, 128]);
    let norms = Vec::<f32>::try_from(z.norm_scalaropt_dim(2, [1], false)).unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
}

/// Names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_gets_clean_errors_and_leaves_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    image_folder(&data, 8);
    // Step-0 runs (the initialisation only): cheap, and real checkpoints.
    let run = tmp.path().join("run");
    pretrain(&data, &run, &["max_steps=0"]);
    let other = tmp.path().join("other");
    pretrain(&data, &other, &["max_steps=0", "backbone=resnet10"]);
    let supervised = tmp.path().join("supervised");
    pretrain(&data, &supervised, &["max_steps=0", "method=supervised"]);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let keep = out_dir.join("keep.npy");
    std::fs::write(&keep, b"keep me").unwrap();

    let fail = |o: &Output, code: i32, needles: &[&str]| {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert!(err.starts_with("error:"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{n} not in {err}");
        }
    };

    // A checkpoint of another model, copied into this run.
    let foreign = run.join("checkpoints/foreign.safetensors");
    std::fs::copy(checkpoint(&other), &foreign).unwrap();
    let o = embed(&foreign, &keep, &[]);
    fail(
        &o,
        1,
        &["foreign.safetensors", "does not fit", "config.toml"],
    );
    // A file that is no checkpoint (an export).
    let export = tmp.path().join("export.safetensors");
    assert!(eqco(&[
        "export",
        "--checkpoint",
        checkpoint(&run).to_str().unwrap(),
        "--out",
        export.to_str().unwrap()
    ])
    .status
    .success());
    fail(
        &embed(&export, &keep, &[]),
        1,
        &["export.safetensors", "not an eqco checkpoint"],
    );
    // No projection head in the supervised baseline.
    fail(
        &embed(&checkpoint(&supervised), &keep, &["--layer", "head"]),
        2,
        &["--layer", "supervised"],
    );
    // Unknown extension; a folder; a folder that cannot be made.
    fail(
        &embed(&checkpoint(&run), &out_dir.join("emb.txt"), &[]),
        2,
        &["--out", "emb.txt", ".npy"],
    );
    fail(
        &embed(&checkpoint(&run), &out_dir, &[]),
        2,
        &["--out", "is a folder"],
    );
    let blocked = keep.join("emb.npy");
    fail(&embed(&checkpoint(&run), &blocked, &[]), 1, &["keep.npy"]);
    // An image that fails to decode half-way through: nothing written.
    let broken = tmp.path().join("broken");
    image_folder(&broken, 8);
    std::fs::write(broken.join("train/dog/03.png"), b"not a png").unwrap();
    fail(
        &embed(
            &checkpoint(&run),
            &keep,
            &["--dataset", broken.to_str().unwrap(), "--batch-size", "4"],
        ),
        1,
        &["03.png"],
    );

    assert_eq!(
        std::fs::read(&keep).unwrap(),
        b"keep me",
        "the old file stays"
    );
    assert_eq!(
        names(&out_dir),
        vec!["keep.npy"],
        "no partial or temporary files"
    );

    // And the same call on good input replaces it whole, with its sidecars.
    let o = embed(&checkpoint(&run), &keep, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        names(&out_dir),
        vec!["keep.json", "keep.npy", "keep.rows.csv"]
    );
    assert_eq!(tch::Tensor::read_npy(&keep).unwrap().size(), vec![16, 512]);
}
