//! Data parallelism on loopback: 2 Gloo workers train exactly what one
//! process trains, a failing worker ends the job, runs resume at another
//! world size, and bad setups are refused. Every test bounds its processes
//! in time and leaves none behind.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::text;
use eqco::run::metrics::{self, StepMetrics};

/// The longest any command here may take.
const LIMIT: Duration = Duration::from_secs(240);

/// Waits for every child, killing them all if any runs past [`LIMIT`].
fn wait_bounded(children: Vec<Child>, what: &str) -> Vec<Output> {
    let start = Instant::now();
    let mut running: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut outs: Vec<Option<Output>> = running.iter().map(|_| None).collect();
    while running.iter().any(Option::is_some) {
        for (slot, out) in running.iter_mut().zip(outs.iter_mut()) {
            if slot
                .as_mut()
                .is_some_and(|c| c.try_wait().unwrap().is_some())
            {
                *out = Some(slot.take().unwrap().wait_with_output().unwrap());
            }
        }
        if start.elapsed() > LIMIT {
            let mut err = String::new();
            for c in running.iter_mut().flatten() {
                let _ = c.kill();
            }
            for c in running.into_iter().flatten() {
                err.push_str(&text(&c.wait_with_output().unwrap().stderr));
            }
            panic!("{what} ran past {LIMIT:?}: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    outs.into_iter().map(Option::unwrap).collect()
}

/// Runs `eqco` with `args` (and `env`), killed after [`LIMIT`].
fn eqco_env(args: &[String], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eqco"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("the eqco binary runs");
    let mut outs = wait_bounded(vec![child], &format!("eqco {args:?}"));
    outs.pop().unwrap()
}

fn eqco(args: &[String]) -> Output {
    eqco_env(args, &[])
}

/// A tiny pretraining command on a CIFAR fixture under `dir`.
fn pretrain_args(dir: &Path, preset: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let data = dir.join("cifar");
    if !data.exists() {
        eqco::data::synthetic::write_cifar10(&data, 256).unwrap();
    }
    let mut args: Vec<String> = vec![
        "pretrain".into(),
        "--config".into(),
        preset.into(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    let sets = [
        "dataset=cifar10".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "backbone=resnet10".into(),
        "width=0.125".into(),
        "batch_size=32".into(),
        "image_size=16".into(),
        "head_hidden=32".into(),
        "embed_dim=16".into(),
        "loader_threads=1".into(),
        "dist_timeout=60".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\n{}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn losses(run: &Path) -> Vec<StepMetrics> {
    metrics::read(&run.join("metrics.jsonl")).unwrap()
}

/// The query encoder's parameters in a run's latest checkpoint (not BN's
/// running statistics: with shuffle BN, one process's groups update them
/// one after another, and each device its own).
fn weights(run: &Path) -> HashMap<String, tch::Tensor> {
    let (state, _) =
        eqco::run::checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    state
        .into_iter()
        .filter(|(k, _)| k.starts_with("query.") && !k.contains(".running_"))
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn two_workers_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        ("fmnist-simo", &["k_negatives=31"]),
        ("fmnist-simclr", &["k_negatives=40"]),
        // Shuffle BN: one process emulates 2 devices with 2 groups; two
        // workers take one group each.
        (
            "fmnist-mocov2",
            &["queue_size=64", "k_negatives=64", "shuffle_bn_groups=2"],
        ),
    ];
    for (preset, extra) in cases {
        let mut sets: Vec<&str> = vec![
            "max_steps=5",
            "checkpoint_every=5",
            "lr=0.01",
            "warmup_epochs=0",
        ];
        sets.extend(extra);
        let one = tmp.path().join(format!("{preset}-w1"));
        let two = tmp.path().join(format!("{preset}-w2"));
        ok(&eqco(&pretrain_args(tmp.path(), preset, &one, &sets)));
        let mut args = pretrain_args(tmp.path(), preset, &two, &sets);
        args.extend(["--nproc-per-node".into(), "2".into()]);
        ok(&eqco(&args));
        let (a, b) = (losses(&one), losses(&two));
        assert_eq!(a.len(), 5, "{preset}");
        assert_eq!(b.len(), 5, "{preset}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                close(x.loss, y.loss, 1e-4),
                "{preset} step {}: loss {} (1 process) vs {} (2)",
                x.step,
                x.loss,
                y.loss
            );
        }
        // The parameters: within 1e-4 of the whole model's norm, and no
        // single weight off by more than 1e-5 (near-zero biases make a
        // tensor-by-tensor relative test meaningless).
        let (wa, wb) = (weights(&one), weights(&two));
        assert_eq!(wa.len(), wb.len());
        let (mut diff2, mut norm2) = (0.0, 0.0);
        for (name, ta) in &wa {
            let tb = &wb[name];
            let d = ta - tb;
            diff2 += d.square().sum(tch::Kind::Double).double_value(&[]);
            norm2 += ta.square().sum(tch::Kind::Double).double_value(&[]);
            let worst = d.abs().max().double_value(&[]);
            assert!(worst <= 1e-5, "{preset} {name}: max |Δ| {worst}");
        }
        let rel = (diff2 / norm2).sqrt();
        assert!(rel <= 1e-4, "{preset}: ‖Δθ‖ / ‖θ‖ = {rel}");
        eprintln!(
            "{preset}: W = 1 and W = 2 agree: losses within {:.1e}, weights {rel:.1e}",
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x.loss - y.loss).abs() / x.loss)
                .fold(0.0, f64::max)
        );
    }
}

#[test]
fn a_run_resumes_at_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "max_steps=6",
        "checkpoint_every=3",
        "lr=0.01",
        "warmup_epochs=0",
        "k_negatives=31",
    ];
    let full = tmp.path().join("full");
    ok(&eqco(&pretrain_args(
        tmp.path(),
        "fmnist-simo",
        &full,
        &sets,
    )));
    let reference = losses(&full);
    assert_eq!(reference.len(), 6);
    for (first, then) in [(2, 1), (1, 2)] {
        let run = tmp.path().join(format!("w{first}-then-w{then}"));
        let mut args = pretrain_args(tmp.path(), "fmnist-simo", &run, &sets);
        args.extend(["--set".into(), "max_steps=3".into()]);
        if first > 1 {
            args.extend(["--nproc-per-node".into(), first.to_string()]);
        }
        ok(&eqco(&args));
        let mut resume: Vec<String> = vec![
            "pretrain".into(),
            "--resume".into(),
            run.display().to_string(),
            "--threads".into(),
            "1".into(),
            "--set".into(),
            "max_steps=6".into(),
        ];
        if then > 1 {
            resume.extend(["--nproc-per-node".into(), then.to_string()]);
        }
        let out = eqco(&resume);
        ok(&out);
        let got = losses(&run);
        assert_eq!(got.len(), 6, "{run:?}");
        for (x, y) in reference.iter().zip(&got) {
            assert!(
                close(x.loss, y.loss, 1e-4),
                "W = {first} then {then}, step {}: {} vs {}",
                x.step,
                x.loss,
                y.loss
            );
        }
    }
}

/// The process ids of `parent`'s children (Linux /proc).
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": the name may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Starts a long 2-worker run, waits until it trains, sends `signal` to
/// rank 1, and returns the launcher's output, how long it took to end after
/// the signal, and the workers' ids.
fn disturb_rank_1(tmp: &Path, signal: i32, timeout_s: u32) -> (Output, Duration, Vec<u32>) {
    let run = tmp.join(format!("signal-{signal}"));
    let mut args = pretrain_args(
        tmp,
        "fmnist-simo",
        &run,
        &[
            "epochs=1000",
            "k_negatives=31",
            &format!("dist_timeout={timeout_s}"),
        ],
    );
    args.extend(["--nproc-per-node".into(), "2".into()]);
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_eqco"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let metrics = run.join("metrics.jsonl");
    while !metrics.is_file() || std::fs::read_to_string(&metrics).unwrap().lines().count() < 2 {
        assert!(start.elapsed() < LIMIT, "the run never started training");
        std::thread::sleep(Duration::from_millis(100));
    }
    let workers = children(launcher.id());
    assert_eq!(workers.len(), 2, "two workers");
    // Worker ids in rank order: the environment says which is which.
    let rank_of = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"RANK=").map(text))
            .unwrap()
    };
    let rank1 = *workers.iter().find(|&&p| rank_of(p) == "1").unwrap();
    // SAFETY: signalling a process this test started (through the launcher).
    unsafe {
        libc::kill(rank1 as i32, signal);
    }
    let signalled = Instant::now();
    loop {
        if launcher.try_wait().unwrap().is_some() {
            break;
        }
        if signalled.elapsed() > LIMIT {
            let _ = launcher.kill();
            for &w in &workers {
                // SAFETY: cleaning up this test's processes.
                unsafe {
                    libc::kill(w as i32, libc::SIGKILL);
                }
            }
            panic!("the job did not end after rank 1 got signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = signalled.elapsed();
    (launcher.wait_with_output().unwrap(), took, workers)
}

#[test]
fn a_killed_worker_ends_the_job_naming_its_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, took, workers) = disturb_rank_1(tmp.path(), libc::SIGKILL, 60);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rank 1 failed: killed by signal 9"), "{err}");
    // Rank 0 noticed its peer was gone at once, not after the 60 s timeout.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(workers.iter().all(|&w| !alive(w)), "no worker left behind");
}

#[test]
fn a_hung_worker_ends_the_job_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    // SIGSTOP: rank 1 stops answering without closing its connections.
    let (out, took, workers) = disturb_rank_1(tmp.path(), libc::SIGSTOP, 5);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rank 0 failed") && err.contains("distributed"),
        "{err}"
    );
    // The 5 s timeout, then up to 10 s for the stopped worker to be killed.
    assert!(took < Duration::from_secs(40), "took {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(workers.iter().all(|&w| !alive(w)), "no worker left behind");
}

#[test]
fn bad_setups_are_refused_naming_the_variable_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("bad");
    let base = pretrain_args(
        tmp.path(),
        "fmnist-simo",
        &run,
        &["max_steps=1", "k_negatives=31"],
    );
    let held = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let torchrun = |rank: &str, world: &str, port: &str| -> Vec<(&'static str, String)> {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", world.to_string()),
            ("LOCAL_RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    type Case<'a> = (Vec<String>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (base.clone(), torchrun("0", "0", "29999"), "`WORLD_SIZE`"),
        (base.clone(), torchrun("2", "2", "29999"), "`RANK`"),
        (base.clone(), torchrun("0", "2", &port), "`MASTER_PORT`"),
        (with(&["--nproc-per-node", "3"]), vec![], "`batch_size`"),
        (
            with(&["--nproc-per-node", "0"]),
            vec![],
            "`--nproc-per-node`",
        ),
        (
            with(&["--nproc-per-node", "2", "--set", "dist_backend=nccl"]),
            vec![],
            "`dist_backend`",
        ),
        (
            with(&[
                "--nproc-per-node",
                "2",
                "--set",
                "bn=shuffle",
                "--set",
                "shuffle_bn_groups=3",
            ]),
            vec![],
            "`shuffle_bn_groups`",
        ),
        (
            with(&["--nproc-per-node", "2"]),
            torchrun("0", "2", "29999"),
            "`--nproc-per-node`",
        ),
    ];
    for (args, env, needle) in cases {
        let out = eqco_env(&args, &env);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{needle}: {err}");
        assert!(
            err.starts_with("error:") && err.contains(needle),
            "{needle}: {err}"
        );
    }
    drop(held);
    assert!(!run.join("metrics.jsonl").exists(), "nothing trained");
}

#[test]
fn two_workers_share_the_cpu_and_report_their_communication() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("summary");
    let mut args = pretrain_args(
        tmp.path(),
        "fmnist-simclr",
        &run,
        &["max_steps=2", "k_negatives=40"],
    );
    args.retain(|a| a != "--threads" && a != "1");
    args.extend(["--nproc-per-node".into(), "2".into()]);
    let out = eqco(&args);
    ok(&out);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["processes"], 2);
    let share = s["comm_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    assert!(
        text(&out.stdout).contains("2 processes"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_slurm_wrapper_maps_srun_tasks_onto_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("slurm");
    let args = pretrain_args(
        tmp.path(),
        "fmnist-simo",
        &run,
        &["max_steps=2", "k_negatives=31"],
    );
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm.sh");
    // Two tasks of one node, as srun starts them.
    let tasks: Vec<_> = (0..2)
        .map(|rank| {
            Command::new("bash")
                .arg(&script)
                .args(&args)
                .env("EQCO", env!("CARGO_BIN_EXE_eqco"))
                .env("SLURM_PROCID", rank.to_string())
                .env("SLURM_NTASKS", "2")
                .env("SLURM_LOCALID", rank.to_string())
                .env("SLURM_TASKS_PER_NODE", "2(x1)")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs = wait_bounded(tasks, "the SLURM tasks");
    for o in &outs {
        ok(o);
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["processes"], 2);
    assert_eq!(losses(&run).len(), 2);
    // Outside srun it says what is missing.
    let o = Command::new("bash")
        .arg(&script)
        .arg("--version")
        .env_remove("SLURM_PROCID")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("`SLURM_PROCID`"),
        "{}",
        text(&o.stderr)
    );
}
