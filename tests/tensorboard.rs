//! TensorBoard event files read back with TensorBoard's own reader (the
//! `tensorboard` package in the project's venv, tests/python/read_events.py):
//! every scalar series equals metrics.jsonl step for step (to float32), the
//! view grid and the configuration are there, and after a kill -9 and
//! `--resume` each step appears once.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::text;
use serde_json::Value;

/// A synthetic CIFAR-10 folder (192 train, 48 test images) in `dir`.
fn cifar(dir: &Path) -> PathBuf {
    let data = dir.join("cifar");
    if !data.exists() {
        eqco::data::synthetic::write_cifar10(&data, 192).unwrap();
    }
    data
}

/// `eqco pretrain` arguments for a small SiMo run on `data` into `out`:
/// fp32 and NCHW pinned, one thread, plus `extra` keys.
fn pretrain_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "pretrain".into(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    let sets = [
        "dataset=cifar10".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "batch_size=32".into(),
        "k_negatives=31".into(),
        "precision=fp32".into(),
        "memory_format=contiguous".into(),
        "loader_threads=1".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

/// Kills the child if the test fails before it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String]) -> Guard {
    Guard(
        Command::new(env!("CARGO_BIN_EXE_eqco"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the eqco binary starts"),
    )
}

/// Runs eqco to completion (at most `limit`), asserting success.
fn run(args: &[String], limit: Duration) {
    let mut g = spawn(args);
    let start = Instant::now();
    loop {
        if let Some(status) = g.0.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            g.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(status.success(), "{args:?}: {err}");
            return;
        }
        assert!(start.elapsed() < limit, "{args:?} took over {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What TensorBoard's reader makes of the run folder.
fn read_events(run: &Path) -> Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_events.py");
    let o = Command::new(&python)
        .arg(&script)
        .arg(run)
        .output()
        .expect("the venv's python runs (bash scripts/setup.sh installs tensorboard)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// metrics.jsonl as one series per TensorBoard tag: `(step, value)`.
fn metrics_series(run: &Path) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for m in eqco::run::metrics::read(&run.join("metrics.jsonl")).unwrap() {
        for (tag, v) in m.scalars() {
            series
                .entry(tag.to_string())
                .or_default()
                .push((m.step as i64, v));
        }
    }
    series
}

/// Every scalar series TensorBoard shows equals metrics.jsonl's, step for
/// step, to float32 (and no series is missing on either side).
fn assert_scalars_match(run: &Path, tb: &Value) {
    let want = metrics_series(run);
    let got = tb["scalars"].as_object().unwrap();
    let got_tags: Vec<&String> = got.keys().collect();
    let want_tags: Vec<&String> = want.keys().collect();
    let mut sorted = got_tags.clone();
    sorted.sort();
    assert_eq!(sorted, want_tags);
    for (tag, series) in &want {
        let points: Vec<(i64, f64)> = got[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        let steps: Vec<i64> = points.iter().map(|p| p.0).collect();
        let want_steps: Vec<i64> = series.iter().map(|p| p.0).collect();
        assert_eq!(steps, want_steps, "{tag}: steps");
        for ((step, v), (_, w)) in points.iter().zip(series) {
            assert_eq!(*v as f32, *w as f32, "{tag} at step {step}");
        }
    }
}

#[test]
fn event_files_hold_every_metric_the_views_and_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path());
    let out = tmp.path().join("run");
    let args = pretrain_args(
        &data,
        &out,
        &[
            "backbone=resnet10",
            "width=0.125",
            "image_size=16",
            "head_hidden=32",
            "embed_dim=16",
            "epochs=2",
            "knn_every=1",
        ],
    );
    run(&args, Duration::from_secs(120));
    let tb = read_events(&out);
    assert_scalars_match(&out, &tb);
    let series = metrics_series(&out);
    assert_eq!(series["train/loss"].len(), 12, "2 epochs of 6 steps");
    assert_eq!(
        series["eval/knn_top1"]
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        vec![6, 12],
        "the kNN monitor after each epoch"
    );
    for tag in ["train/data_wait_share", "train/img_per_s", "train/lr"] {
        assert!(series.contains_key(tag), "{tag}");
    }

    let views = tb["images"]["data/view_pairs"].as_array().unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["step"], 0);
    assert_eq!(views[0]["png"], true);
    assert!(views[0]["width"].as_u64().unwrap() > 96 && views[0]["height"].as_u64().unwrap() > 96);

    let config = tb["texts"]["config"].as_array().unwrap();
    assert_eq!(config.len(), 1);
    assert_eq!(config[0][0], 0);
    let shown: String = config[0][1]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_string() + "\n")
        .collect();
    assert_eq!(
        shown,
        std::fs::read_to_string(out.join("config.toml")).unwrap()
    );

    // tensorboard = false: no event file.
    let off = tmp.path().join("off");
    run(
        &pretrain_args(
            &data,
            &off,
            &[
                "backbone=resnet10",
                "width=0.125",
                "image_size=16",
                "max_steps=1",
                "tensorboard=false",
            ],
        ),
        Duration::from_secs(60),
    );
    let names: Vec<String> = std::fs::read_dir(&off)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "metrics.jsonl"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("tfevents")), "{names:?}");
}

/// Lines in a metrics file (0 while it does not exist).
fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn after_kill_9_and_resume_each_step_appears_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = cifar(tmp.path());
    let out = tmp.path().join("run");
    // 3 epochs of 6 steps of about 0.2 s each; checkpoints at epoch ends.
    let extra = ["backbone=resnet18", "width=0.25", "epochs=3"];
    let mut child = spawn(&pretrain_args(&data, &out, &extra));
    let metrics = out.join("metrics.jsonl");
    let start = Instant::now();
    // Kill 2 to 4 steps past the checkpoint of step 6: those steps are in
    // the event file, and the resumed run writes them again.
    loop {
        let n = lines(&metrics);
        if n >= 8 && (2..=4).contains(&(n % 6)) {
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    drop(child);
    let (_, pos) =
        eqco::run::checkpoint::load(&out.join("checkpoints/latest.safetensors")).unwrap();
    let saved = pos.step as i64;
    let before = read_events(&out);
    let files = before["files"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    let last_written = files[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(
        last_written > saved,
        "the interrupted run wrote steps after its checkpoint ({last_written} > {saved})"
    );

    let mut args = vec![
        "pretrain".to_string(),
        "--resume".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    args.extend(["--set".to_string(), "loader_threads=1".to_string()]);
    run(&args, Duration::from_secs(180));

    let tb = read_events(&out);
    let files = tb["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "one event file per invocation");
    let second = files[1]["events"].as_array().unwrap();
    assert_eq!(second[0][1], "file_version");
    assert_eq!(
        (second[1][0].as_i64(), second[1][1].as_str()),
        (Some(saved + 1), Some("session_log:1")),
        "a restart at the first step written again"
    );
    // Each step once, equal to metrics.jsonl (itself cut back at the resume).
    assert_scalars_match(&out, &tb);
    let steps: Vec<i64> = tb["scalars"]["train/loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1..=18).collect::<Vec<i64>>());
    // The view grid stays (step 0); the configuration is shown again from the restart.
    assert_eq!(tb["images"]["data/view_pairs"].as_array().unwrap().len(), 1);
    let config: Vec<i64> = tb["texts"]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0].as_i64().unwrap())
        .collect();
    assert_eq!(config, vec![0, saved + 1]);
}
