//! Pretraining end to end on fixtures: the loss falls, a resumed run
//! reproduces the uninterrupted one exactly, every method runs, and
//! impossible configurations are rejected naming the key.

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{checkpoint_steps, eqco};
use eqco::run::{metrics, PretrainConfig};
use eqco::train::{pretrain, TrainOptions};
use tch::Device;

/// A tiny configuration over an IDX fixture in `dir`.
fn tiny(dir: &Path, preset: &str, extra: &[&str]) -> PretrainConfig {
    let data = dir.join("cifar");
    if !data.exists() {
        eqco::data::synthetic::write_cifar10(&data, 192).unwrap();
    }
    let mut sets: Vec<String> = vec![
        "dataset=cifar10".into(),
        format!("data_dir=\"{}\"", data.display()),
    ];
    sets.extend(
        [
            "backbone=resnet10",
            "width=0.125",
            "batch_size=32",
            "k_negatives=31",
            "image_size=16",
            "head_hidden=32",
            "embed_dim=16",
            "checkpoint_every=4",
            "loader_threads=1",
            // What the tests assert must not depend on what `auto` picks
            // on the machine running them; cases override these.
            "precision=fp32",
            "memory_format=channels_last",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    sets.extend(extra.iter().map(|s| s.to_string()));
    PretrainConfig::load(Some(preset), &sets).unwrap()
}

/// In-process runs: `pretrain` sets libtorch's intra-op thread count, which
/// the test threads of this binary share, so every run here uses the same
/// count (1); tests that compare thread counts run the binary instead.
fn opts(out: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        resume,
        device: Device::Cpu,
        threads: 1,
        progress: false,
        world: eqco::dist::World::single(),
    }
}

#[test]
fn the_loss_falls_over_a_few_dozen_steps() {
    let tmp = tempfile::tempdir().unwrap();
    // Measured: the mean loss of the first 8 steps 5.05, of the last 8 3.69.
    let cfg = tiny(
        tmp.path(),
        "fmnist-simo",
        &[
            "epochs=8",
            "lr=1.0",
            "warmup_epochs=0",
            "alpha=none",
            "ema_momentum=0.9",
            "width=0.25",
        ],
    );
    let out = tmp.path().join("run");
    let s = pretrain(&cfg, &opts(&out, false)).unwrap();
    assert_eq!(s.steps, 48, "8 epochs of 6 batches of 32");
    assert_eq!(s.epochs, 8);
    let m = metrics::read(&out.join("metrics.jsonl")).unwrap();
    let mean = |r: &[metrics::StepMetrics]| r.iter().map(|m| m.loss).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&m[..8]), mean(&m[40..]));
    assert!(last < first - 0.2, "loss {first:.3} → {last:.3}");
    assert!(m
        .iter()
        .all(|x| x.mi_bound.is_finite() && x.grad_norm_q > 0.0 && x.img_per_s > 0.0));
    for f in [
        "config.toml",
        "summary.json",
        "plots/training.png",
        "checkpoints/latest.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
}

#[test]
fn resuming_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    // fp32 channels-last (tiny's pins) for every method; NCHW, and bf16
    // (autocast on the CPU, native or emulated) in both formats.
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "simo",
            "fmnist-simo",
            &["epochs=2", "knn_every=1", "knn_k=20", "precision=fp32"],
        ),
        (
            "mocov2",
            "fmnist-mocov2",
            &[
                "epochs=2",
                "k_negatives=64",
                "queue_size=64",
                "shuffle_bn_groups=2",
            ],
        ),
        ("simclr", "fmnist-simclr", &["epochs=2", "k_negatives=40"]),
        (
            "simo-nchw",
            "fmnist-simo",
            &["epochs=2", "memory_format=contiguous", "precision=fp32"],
        ),
        ("simo-bf16", "fmnist-simo", &["epochs=2", "precision=bf16"]),
        (
            "simo-bf16-nchw",
            "fmnist-simo",
            &["epochs=2", "precision=bf16", "memory_format=contiguous"],
        ),
    ];
    for (name, preset, extra) in cases {
        let cfg = tiny(tmp.path(), preset, extra);
        let full = tmp.path().join(format!("{name}-full"));
        pretrain(&cfg, &opts(&full, false)).unwrap();
        // Stop after 7 steps (mid-epoch, past the checkpoint at step 4 and
        // the epoch end at 6), as a crash or max_steps would, then resume.
        let part = tmp.path().join(format!("{name}-part"));
        let mut first = cfg.clone();
        first.optim.max_steps = Some(7);
        pretrain(&first, &opts(&part, false)).unwrap();
        pretrain(&cfg, &opts(&part, true)).unwrap();
        let a = metrics::read(&full.join("metrics.jsonl")).unwrap();
        let b = metrics::read(&part.join("metrics.jsonl")).unwrap();
        assert_eq!(a.len(), 12, "{name}");
        if name == "simo" {
            // The kNN monitor ran at the end of each epoch, and only there.
            let knn: Vec<_> = a
                .iter()
                .filter_map(|m| m.knn_top1.map(|v| (m.step, v)))
                .collect();
            assert_eq!(knn.iter().map(|p| p.0).collect::<Vec<_>>(), vec![6, 12]);
            assert!(knn.iter().all(|p| (0.0..=1.0).contains(&p.1)));
        }
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.step, x.loss, x.mi_bound, x.grad_norm_q, x.lr, x.knn_top1),
                (y.step, y.loss, y.mi_bound, y.grad_norm_q, y.lr, y.knn_top1),
                "{name} step {}",
                x.step
            );
        }
    }
    // The memory format changes how the arithmetic is ordered, not what it
    // computes; bf16 rounds, but trains the same function. Step 1 starts
    // from identical weights, so it is held to rounding (measured on an
    // Intel Xeon with AMX: 7e-8 for the format, 5.4e-4 for bf16); later
    // steps amplify the machine's rounding, so they are held only to the
    // same function (measured there: up to 7.7e-7 and 1.7e-2).
    let losses = |name: &str| -> Vec<f64> {
        metrics::read(&tmp.path().join(format!("{name}-full/metrics.jsonl")))
            .unwrap()
            .iter()
            .map(|m| m.loss)
            .collect()
    };
    let (simo, nchw, bf16) = (losses("simo"), losses("simo-nchw"), losses("simo-bf16"));
    let rel = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / x.abs())
            .collect()
    };
    let sci = common::equivalence::sci;
    for (what, drift, first, later) in [
        ("channels-last vs NCHW", rel(&simo, &nchw), 1e-5, 1e-2),
        ("bf16 vs fp32", rel(&simo, &bf16), 1.0 / 128.0, 0.1),
    ] {
        eprintln!("{what}, relative loss difference per step: {}", sci(&drift));
        assert!(drift[0] <= first, "{what}, step 1: {}", sci(&drift));
        assert!(drift.iter().all(|&d| d <= later), "{what}: {}", sci(&drift));
    }
    assert_ne!(simo, bf16, "bf16 really ran");
    // A checkpoint does not load into another model.
    let part = tmp.path().join("simo-part");
    let wider = tiny(tmp.path(), "fmnist-simo", &["epochs=3", "width=0.25"]);
    let e = pretrain(&wider, &opts(&part, true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latest.safetensors") && e.contains("does not fit"),
        "{e}"
    );
}

fn usage_error(args: &[&str], needle: &str) {
    let out = eqco(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.starts_with("error:") && err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
}

#[test]
fn impossible_configurations_name_the_key() {
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        [&["pretrain", "--print-config"][..], extra].concat()
    }
    usage_error(&with(&["--set", "k_negatives=256"]), "`k_negatives`");
    usage_error(
        &with(&["--config", "fmnist-simclr", "--set", "k_negatives=511"]),
        "`k_negatives`",
    );
    usage_error(
        &with(&["--config", "fmnist-mocov2", "--set", "k_negatives=16"]),
        "queue_size",
    );
    usage_error(&with(&["--set", "tau=0"]), "`tau`");
    usage_error(&with(&["--set", "tau=-0.2"]), "`tau`");
    usage_error(&with(&["--set", "alpha=0"]), "`alpha`");
    usage_error(
        &with(&["--config", "imagenet-simo"]),
        "unknown preset 'imagenet-simo'",
    );
    usage_error(&with(&["--set", "quue_size=4"]), "`quue_size`");
    usage_error(&with(&["--set", "batch_size=many"]), "batch_size");
    usage_error(&with(&["--set", "warmup_epochs=5"]), "`warmup_epochs`");
    usage_error(&with(&["--set", "method=byol"]), "method");
    usage_error(&with(&["--set", "noequals"]), "key=value");
    // And a good one prints the resolved TOML.
    let out = eqco(&with(&["--set", "alpha=none", "--set", "k_negatives=16"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("k_negatives = 16") && !text.contains("alpha"),
        "{text}"
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("idx");
    common::write_idx(&data, 64, 16, 16, false);
    let out = tmp.path().join("run");
    let args = [
        "pretrain",
        "--set",
        "dataset=idx",
        "--set",
        &format!("data_dir={}", data.display()),
        "--set",
        "backbone=resnet10",
        "--set",
        "width=0.125",
        "--set",
        "batch_size=16",
        "--set",
        "k_negatives=15",
        "--set",
        "checkpoint_every=1",
        "--set",
        "epochs=50",
        "--set",
        "lr=1e30",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = eqco(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the loss is") && err.contains("last checkpoint"),
        "{err}"
    );
    assert!(out.join("checkpoints/latest.safetensors").is_file());
    assert!(!metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .is_empty());
    // The run folder is not overwritten by a new run.
    let o = eqco(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn report_summarises_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for alpha in ["alpha=64", "alpha=none"] {
        let cfg = tiny(
            tmp.path(),
            "fmnist-simo",
            &["max_steps=3", "k_negatives=8", alpha],
        );
        let out = tmp.path().join(alpha);
        pretrain(&cfg, &opts(&out, false)).unwrap();
        dirs.push(out.to_str().unwrap().to_string());
    }
    let report = tmp.path().join("report");
    let mut args = vec!["report", "--out", report.to_str().unwrap()];
    args.extend(dirs.iter().map(String::as_str));
    let o = eqco(&args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("| 8 | 64 | 32 | 3 |") && stdout.contains("| 8 | none | 32 | 3 |"),
        "{stdout}"
    );
    assert!(report.join("report.png").is_file() && report.join("report.md").is_file());
    let o = eqco(&["report", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.toml"));
}

#[test]
fn eval_knn_scores_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(tmp.path(), "fmnist-simo", &["max_steps=2"]);
    let run = tmp.path().join("run");
    pretrain(&cfg, &opts(&run, false)).unwrap();
    let ckpt = run.join("checkpoints/latest.safetensors");
    let out = tmp.path().join("eval");
    let o = eqco(&[
        "eval",
        "knn",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--k",
        "10",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("knn.json")).unwrap()).unwrap();
    let top1 = json["top1"].as_f64().unwrap();
    let top5 = json["top5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && top5 >= top1, "{json}");
    assert_eq!(json["test"], 48, "the fixture's test split");
    // A checkpoint outside a run folder is an error naming config.toml.
    let stray = tmp.path().join("stray.safetensors");
    std::fs::copy(&ckpt, &stray).unwrap();
    let o = eqco(&["eval", "knn", "--checkpoint", stray.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.toml"));
}

#[test]
fn log_every_reads_the_device_once_per_window_with_the_same_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |log_every: usize| {
        let cfg = tiny(
            tmp.path(),
            "fmnist-simo",
            &[
                "epochs=2",
                "checkpoint_every=0",
                &format!("log_every={log_every}"),
            ],
        );
        let out = tmp.path().join(format!("every{log_every}"));
        let s = pretrain(&cfg, &opts(&out, false)).unwrap();
        (s, metrics::read(&out.join("metrics.jsonl")).unwrap())
    };
    let (each, a) = run(1);
    let (batched, b) = run(4);
    assert_eq!(each.device_reads, 12, "one read a step");
    // Steps 1–4, 5–6 (the epoch ends: its checkpoint), 7–10, 11–12.
    assert_eq!(batched.device_reads, 4);
    assert_eq!(a.len(), 12);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (
                x.step,
                x.epoch,
                x.loss,
                x.mi_bound,
                x.grad_norm_q,
                x.lr,
                x.k
            ),
            (
                y.step,
                y.epoch,
                y.loss,
                y.mi_bound,
                y.grad_norm_q,
                y.lr,
                y.k
            )
        );
        assert!(y.img_per_s > 0.0);
    }
}

#[test]
fn a_nan_is_named_by_its_step_within_log_every_and_no_checkpoint_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(
        tmp.path(),
        "fmnist-simo",
        &[
            "epochs=4",
            "checkpoint_every=0",
            "log_every=5",
            "lr=1e30",
            "warmup_epochs=0",
        ],
    );
    let out = tmp.path().join("run");
    let e = pretrain(&cfg, &opts(&out, false)).unwrap_err();
    assert!(matches!(e, eqco::Error::Numerical(_)), "{e}");
    let written = metrics::read(&out.join("metrics.jsonl")).unwrap();
    // The lines before the NaN are kept; the NaN's step is the next one.
    let bad = written.len() as u64 + 1;
    let text = e.to_string();
    assert!(text.contains(&format!("at step {bad} ")), "{text}");
    assert!(written.iter().all(|m| m.loss.is_finite()));
    for entry in std::fs::read_dir(out.join("checkpoints"))
        .into_iter()
        .flatten()
    {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.strip_suffix(".safetensors"))
        {
            let step: u64 = step.parse().unwrap();
            assert!(
                step < bad,
                "checkpoint {name} written after the NaN at step {bad}"
            );
        }
    }
}

/// Needs the fault-injection hook: `scripts/test.sh` builds with `--features test-hooks`.
#[cfg(feature = "test-hooks")]
#[test]
fn a_non_finite_gradient_with_a_finite_loss_ends_the_run_and_no_checkpoint_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &Path, inject: &str| {
        // 192 images of 32: 6 steps an epoch. Figures are read every 4
        // steps and before each checkpoint (every 3).
        let args = common::tiny_pretrain(
            tmp.path(),
            192,
            "fmnist-simo",
            out,
            &[
                "epochs=2",
                "k_negatives=31",
                "log_every=4",
                "checkpoint_every=3",
                "lr=0.1",
            ],
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_eqco"));
        cmd.args(&args)
            .env(eqco::train::step::hooks::INJECT_NONFINITE_GRAD, inject);
        procs::Job::start(cmd, "eqco pretrain").wait(Duration::from_secs(240))
    };
    // Step 5 is read with step 6, before step 6's checkpoint; step 6's
    // gradient is made infinite, its loss is finite.
    let out = tmp.path().join("run");
    let o = run(&out, "6");
    let err = common::text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a gradient (averaged over ranks) is not finite")
            && err.contains("at step 6 ")
            && err.contains("step-3.safetensors"),
        "{err}"
    );
    assert_eq!(checkpoint_steps(&out), vec![3], "none at or after step 6");
    let written = metrics::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        written.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(written.iter().all(|m| m.loss.is_finite()));
    // A bad value names the variable (a usage error).
    let o = run(&tmp.path().join("bad"), "soon");
    let err = common::text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("EQCO_TEST_INJECT_NONFINITE_GRAD"), "{err}");
}

#[test]
fn a_steps_figures_stay_on_the_device_as_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(
        tmp.path(),
        "fmnist-mocov2",
        &["k_negatives=64", "queue_size=64"],
    );
    let shape = eqco::method::Shape {
        encoder: cfg.encoder(3).unwrap(),
        batch_size: cfg.optim.batch_size,
        classes: 10,
        seed: cfg.seed,
    };
    let mut method = eqco::method::build(
        &cfg.method,
        &shape,
        eqco::base::device::Compute::plain(Device::Cpu),
        &eqco::dist::World::single(),
    )
    .unwrap();
    let (view1, view2) = eqco::base::seed::with_torch_seed(1, || {
        (
            tch::Tensor::randn([32, 3, 16, 16], tch::kind::FLOAT_CPU),
            tch::Tensor::randn([32, 3, 16, 16], tch::kind::FLOAT_CPU),
        )
    });
    let batch = eqco::data::TwoViewBatch {
        view1,
        view2,
        indices: (0..32).collect(),
        labels: None,
    };
    let out = eqco::method::objective(method.forward(&batch, 0).unwrap(), &cfg.loss).unwrap();
    for t in [&out.loss, &out.grad_norm_q] {
        assert_eq!(t.dim(), 0, "a scalar tensor");
        assert_eq!(t.kind(), tch::Kind::Float);
    }
    assert!(out.loss.requires_grad() && !out.grad_norm_q.requires_grad());
    assert_eq!(out.mi_bound_offset, 64f64.ln() + 0.0, "plain InfoNCE: ln K");
}
