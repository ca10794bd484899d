//! The newcomer's path: pretrain, then `eqco eval linear` and `eqco eval
//! knn` on the run's checkpoint without `--out`, then `eqco report RUN`:
//! the evaluations land in `RUN/eval/` and the report shows both accuracies.

mod common;

use std::path::Path;

use common::{eqco, text};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn evaluations_without_out_land_in_the_run_and_the_report_shows_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    eqco::data::synthetic::write_cifar10(&data, 192).unwrap();
    let run = tmp.path().join("run");
    let mut args: Vec<String> = vec![
        "pretrain".into(),
        "--out".into(),
        run.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    for s in [
        "dataset=cifar10".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "backbone=resnet10".into(),
        "width=0.125".into(),
        "image_size=16".into(),
        "batch_size=32".into(),
        "k_negatives=31".into(),
        "head_hidden=32".into(),
        "embed_dim=16".into(),
        "max_steps=3".into(),
        "precision=fp32".into(),
        "memory_format=contiguous".into(),
    ] {
        args.push("--set".into());
        args.push(s);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = eqco(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ckpt = run.join("checkpoints/latest.safetensors");
    let ckpt = ckpt.to_str().unwrap();

    let o = eqco(&[
        "eval",
        "linear",
        "--checkpoint",
        ckpt,
        "--mode",
        "fast",
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let linear = run.join("eval/linear.json");
    assert!(
        text(&o.stdout).contains(&format!("wrote {}", linear.display())),
        "{}",
        text(&o.stdout)
    );
    let o = eqco(&["eval", "knn", "--checkpoint", ckpt, "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let knn = run.join("eval/knn.json");
    assert!(
        text(&o.stdout).contains(&format!("wrote {}", knn.display())),
        "{}",
        text(&o.stdout)
    );

    // On another dataset without --out: beside them, under the dataset's name.
    let o = eqco(&[
        "eval",
        "knn",
        "--checkpoint",
        ckpt,
        "--threads",
        "1",
        "--dataset",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(run.join("eval/knn-cifar.json").is_file());

    let report = tmp.path().join("report");
    let o = eqco(&[
        "report",
        run.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let row = md
        .lines()
        .find(|l| l.starts_with(&format!("| `{}`", run.display())))
        .unwrap_or_else(|| panic!("no row for the run in {md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let (knn_cell, linear_cell) = (cells[cells.len() - 3], cells[cells.len() - 2]);
    let pct = |v: &serde_json::Value| format!("{:.2}", 100.0 * v["top1"].as_f64().unwrap());
    assert_eq!(knn_cell, pct(&json(&knn)), "{row}");
    assert_eq!(
        linear_cell,
        format!("{} (fast)", pct(&json(&linear))),
        "{row}"
    );
}
