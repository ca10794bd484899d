//! The `eqco` binary end to end: toy-mi's outputs, determinism across thread
//! counts, error messages and exit codes, and the benchmark.

mod common;

use std::path::Path;

use common::{eqco, text};

/// `(estimator, true_mi, k) -> estimate` from a table5.csv.
fn estimates(dir: &Path) -> Vec<(String, f64, usize, f64)> {
    let mut rdr = csv::Reader::from_path(dir.join("table5.csv")).unwrap();
    let headers = rdr.headers().unwrap().clone();
    assert_eq!(
        &headers.iter().take(4).collect::<Vec<_>>(),
        &["estimator", "true_mi", "k", "estimate"]
    );
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[0].to_string(),
                r[1].parse().unwrap(),
                r[2].parse().unwrap(),
                r[3].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn toy_mi_quick_writes_its_outputs_and_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("t1"), dir.path().join("t2"));
    let out = eqco(&[
        "toy-mi",
        "--quick",
        "--threads",
        "1",
        "--out",
        one.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("true MI") && stdout.contains("EqCo") && stdout.contains("ln(K+1)"),
        "{stdout}"
    );
    for f in ["table5.csv", "table5.json", "table5.png"] {
        assert!(one.join(f).is_file(), "{f} missing");
    }
    let a = estimates(&one);
    assert_eq!(a.len(), 8, "2 MI × 2 K × 2 estimators");

    let out = eqco(&[
        "toy-mi",
        "--quick",
        "--threads",
        "2",
        "--out",
        two.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(a, estimates(&two), "results must not depend on --threads");

    // Even this short a run shows the effect: at MI = 6 with K = 16 InfoNCE is
    // capped near ln 17 = 2.83, while EqCo (α = 512) estimates far more.
    let get = |est: &str, mi: f64, k: usize| {
        a.iter()
            .find(|r| r.0 == est && r.1 == mi && r.2 == k)
            .map(|r| r.3)
            .unwrap()
    };
    assert!(get("infonce", 6.0, 16) < 17f64.ln());
    assert!(get("eqco", 6.0, 16) > get("infonce", 6.0, 16) + 1.0);
}

#[test]
fn a_seed_changes_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = |seed: &str, sub: &str| {
        let d = dir.path().join(sub);
        let args = [
            "toy-mi",
            "--steps",
            "20",
            "--eval-batches",
            "2",
            "--mi",
            "4",
            "--k",
            "8",
            "--seed",
            seed,
            "--out",
            d.to_str().unwrap(),
        ];
        assert!(eqco(&args).status.success());
        estimates(&d)
    };
    assert_eq!(run("1", "a"), run("1", "b"));
    assert_ne!(run("1", "a"), run("2", "c"));
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let out = eqco(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.starts_with("error:"), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
}

#[test]
fn bad_options_are_usage_errors_that_name_the_option() {
    assert_usage_error(&["toy-mi", "--k", "0"], "--k");
    assert_usage_error(&["toy-mi", "--alpha", "-3"], "alpha");
    assert_usage_error(&["toy-mi", "--mi", "nan"], "--mi");
    assert_usage_error(&["toy-mi", "--mi", "-1"], "--mi");
    assert_usage_error(&["toy-mi", "--steps", "0"], "--steps");
    assert_usage_error(&["toy-mi", "--threads", "0"], "threads");
    assert_usage_error(&["toy-mi", "--device", "tpu"], "device");
    assert_usage_error(&["toy-mi", "--frobnicate"], "--frobnicate");
    if !tch::Cuda::is_available() {
        assert_usage_error(&["toy-mi", "--quick", "--device", "cuda"], "no CUDA GPU");
    }
}

#[test]
fn an_unwritable_output_is_a_failure_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"keep me").unwrap();
    let out_dir = file.join("sub");
    let out = eqco(&[
        "toy-mi",
        "--steps",
        "2",
        "--eval-batches",
        "1",
        "--mi",
        "2",
        "--k",
        "4",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error:") && err.contains("a-file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn bench_toy_mi_prints_both_timings_and_their_ratio() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let out = eqco(&[
        "bench",
        "toy-mi",
        "--k",
        "64",
        "--steps",
        "20",
        "--repeats",
        "1",
        "--python",
        python.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("ms/step") && stdout.contains("PyTorch"),
        "{stdout}"
    );
    let ratio: f64 = stdout
        .lines()
        .find(|l| l.contains("ratio"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {stdout}"));
    assert!(ratio.is_finite() && ratio > 0.0);
}
