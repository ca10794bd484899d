//! Data parallelism on loopback: 2 Gloo workers train what one process
//! trains (step 1 to rounding, later steps within a noise floor the test
//! measures), a failing worker ends the job, runs resume at another world
//! size, and bad setups are refused. Every test bounds its processes
//! in time and leaves none behind.

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::equivalence::{
    assert_within_floor, bounds, gradients, latest, loss_drift, losses, tensor_drift, weights,
    FP32_FLOOR,
};
use common::text;
use procs::{children, env_of};

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

/// A tiny pretraining command on a CIFAR fixture under `dir` (the tests'
/// tiny run, with a short `dist_timeout`).
fn pretrain_args(dir: &Path, preset: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let sets: Vec<&str> = ["dist_timeout=60"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    common::tiny_pretrain(dir, 256, preset, out, &sets)
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

/// One data-parallel equivalence case: a preset and its settings, in one
/// precision and memory format.
struct Case {
    preset: &'static str,
    sets: &'static [&'static str],
    precision: &'static str,
    format: &'static str,
    steps: usize,
}

impl Case {
    fn name(&self) -> String {
        format!("{} {} {}", self.preset, self.precision, self.format)
    }

    /// Trains the case into `out` with `workers` processes of `threads`
    /// threads each, checkpointing after every step.
    fn train(&self, tmp: &Path, out: &Path, workers: usize, threads: usize) {
        self.train_with(tmp, out, workers, threads, &[]);
    }

    /// As [`Case::train`], with the settings `more` on top.
    fn train_with(&self, tmp: &Path, out: &Path, workers: usize, threads: usize, more: &[&str]) {
        let steps = format!("max_steps={}", self.steps);
        let precision = format!("precision={}", self.precision);
        let format = format!("memory_format={}", self.format);
        let mut sets = vec![
            steps.as_str(),
            "checkpoint_every=1",
            // Every step's checkpoint is compared: keep them all.
            "keep_checkpoints=0",
            "lr=0.01",
            "warmup_epochs=0",
            // The first step's momentum buffers are then its gradients.
            "weight_decay=0",
            &precision,
            &format,
        ];
        sets.extend(self.sets);
        sets.extend(more);
        let mut args = pretrain_args(tmp, self.preset, out, &sets);
        set_threads(&mut args, threads);
        if workers > 1 {
            args.extend(["--nproc-per-node".into(), workers.to_string()]);
        }
        ok(&eqco(&args));
    }
}

/// Sets `--threads` in arguments made by [`pretrain_args`].
fn set_threads(args: &mut [String], threads: usize) {
    let i = args.iter().position(|a| a == "--threads").unwrap();
    args[i + 1] = threads.to_string();
}

/// The smallest floors (relative) of one precision: below them, the
/// measured floor is taken to be this much (see [`bounds`]).
struct Least {
    loss: f64,
    gradients: f64,
    weights: f64,
}

/// fp32: a few float32 roundings (2⁻²⁴ ≈ 6e-8) amplified by a few steps;
/// 10× this is the 1e-5 for the first step.
const FP32: Least = Least {
    loss: FP32_FLOOR,
    gradients: FP32_FLOOR,
    weights: FP32_FLOOR,
};

/// bf16, from measurement (SiMo, 4 seeds, 2 steps, README): W = 2 vs W = 1
/// differs by up to 7.2e-4 in the first loss, 1.05e-2 in the first
/// gradients and 1.9e-4 in the weights, while one process at 1 vs 2 threads
/// can differ by as little as 0 (bf16 kernels round differently at another
/// batch size, not at another thread count). The floors are 2⁻¹² and 2⁻⁸
/// (bfloat16 has 8 bits of mantissa, unit roundoff 2⁻⁹), so that the
/// bounds (10×) sit 3–13× above what was measured.
const BF16: Least = Least {
    loss: 1.0 / 4096.0,
    gradients: 1.0 / 256.0,
    weights: 1.0 / 4096.0,
};

/// Trains `case` at W = 1 (1 and 2 threads) and W = 2, and checks that W = 2
/// trains what W = 1 trains: the first step's loss and gradients (from
/// identical weights), every step's loss and the final weights, each
/// within 10× (`FLOOR_MULTIPLE`) the 1-vs-2-thread floor, never below `least`.
fn check_equivalence(tmp: &Path, case: &Case, least: &Least) {
    let dir = |tag: &str| {
        let name = format!("{}-{}-{}-{tag}", case.preset, case.precision, case.format);
        tmp.join(name)
    };
    let (one, floor_run, two) = (dir("w1"), dir("w1-threads2"), dir("w2"));
    case.train(tmp, &one, 1, 1);
    case.train(tmp, &floor_run, 1, 2);
    case.train(tmp, &two, 2, 1);
    let (a, f, b) = (losses(&one), losses(&floor_run), losses(&two));
    assert_eq!(a.len(), case.steps, "{}", case.name());
    let what = case.name();
    let step1 = |run: &Path| gradients(&run.join("checkpoints/step-1.safetensors"));
    let (g1, gf, g2) = (step1(&one), step1(&floor_run), step1(&two));
    assert_within_floor(
        &format!("{what}: step 1 gradients"),
        &[tensor_drift(&g1, &g2)],
        &[tensor_drift(&g1, &gf)],
        least.gradients,
    );
    assert_within_floor(
        &format!("{what}: losses"),
        &loss_drift(&a, &b),
        &loss_drift(&a, &f),
        least.loss,
    );
    let wa = weights(&latest(&one));
    assert_within_floor(
        &format!("{what}: weights after step {}", case.steps),
        &[tensor_drift(&wa, &weights(&latest(&two)))],
        &[tensor_drift(&wa, &weights(&latest(&floor_run)))],
        least.weights,
    );
}

#[test]
fn two_workers_train_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    for (preset, sets) in METHODS {
        for format in ["channels_last", "contiguous"] {
            let case = Case {
                preset,
                sets,
                precision: "fp32",
                format,
                steps: 5,
            };
            check_equivalence(tmp.path(), &case, &FP32);
        }
    }
}

/// The three methods of the equivalence tests, with what each needs at N = 32.
const METHODS: [(&str, &[&str]); 3] = [
    ("fmnist-simo", &["k_negatives=31"]),
    ("fmnist-simclr", &["k_negatives=40"]),
    // Shuffle BN: one process emulates 2 devices with 2 groups; two
    // workers take one group each.
    (
        "fmnist-mocov2",
        &["queue_size=64", "k_negatives=64", "shuffle_bn_groups=2"],
    ),
];

/// A group of one process (`dist_one_rank_group`, how gpu-check.sh runs
/// NCCL on one GPU) trains what no group trains: SiMo's and SimCLR's sync BN
/// then goes through the group's SyncBN function and SimCLR's embeddings
/// through its gather, MoCo v2's figures and gradients through its
/// all-reduces. Every step's loss, the first step's gradients and the last
/// weights are compared with the run without a group, against the floor of
/// that run at 1 vs 2 threads.
#[test]
fn a_one_rank_group_trains_what_no_group_trains() {
    let tmp = tempfile::tempdir().unwrap();
    for (preset, sets) in METHODS {
        let case = Case {
            preset,
            sets,
            precision: "fp32",
            format: "channels_last",
            steps: 4,
        };
        let dir = |tag: &str| tmp.path().join(format!("{preset}-{tag}"));
        let (alone, floor_run, grouped) = (dir("alone"), dir("threads2"), dir("group"));
        case.train(tmp.path(), &alone, 1, 1);
        case.train(tmp.path(), &floor_run, 1, 2);
        case.train_with(tmp.path(), &grouped, 1, 1, &["dist_one_rank_group=true"]);
        let (a, f, g) = (losses(&alone), losses(&floor_run), losses(&grouped));
        assert_eq!(g.len(), case.steps, "{preset}");
        let step1 = |run: &Path| gradients(&run.join("checkpoints/step-1.safetensors"));
        let drift = loss_drift(&a, &g);
        eprintln!("{preset}: one-rank group vs none, loss drift per step {drift:?}");
        assert_within_floor(
            &format!("{preset}: step 1 gradients"),
            &[tensor_drift(&step1(&alone), &step1(&grouped))],
            &[tensor_drift(&step1(&alone), &step1(&floor_run))],
            FP32.gradients,
        );
        assert_within_floor(
            &format!("{preset}: losses"),
            &drift,
            &loss_drift(&a, &f),
            FP32.loss,
        );
        let wa = weights(&latest(&alone));
        assert_within_floor(
            &format!("{preset}: weights"),
            &[tensor_drift(&wa, &weights(&latest(&grouped)))],
            &[tensor_drift(&wa, &weights(&latest(&floor_run)))],
            FP32.weights,
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(grouped.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["processes"], 1, "{summary}");
    }
}

#[test]
fn two_workers_train_what_one_process_trains_in_bf16() {
    // Emulated bf16 is slow on CPUs without it: two tiny steps of SiMo.
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        preset: "fmnist-simo",
        sets: &["k_negatives=31"],
        precision: "bf16",
        format: "channels_last",
        steps: 2,
    };
    check_equivalence(tmp.path(), &case, &BF16);
}

#[test]
fn the_bound_follows_the_floors_running_maximum() {
    let b = bounds(&[0.0, 2e-6, 1e-6, 4e-5], 1e-6);
    let want = [1e-5, 2e-5, 2e-5, 4e-4];
    assert!(
        b.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-15),
        "{b:?}"
    );
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
        "precision=fp32",
        "memory_format=channels_last",
    ];
    let train = |out: &Path, threads: usize| {
        let mut args = pretrain_args(tmp.path(), "fmnist-simo", out, &sets);
        set_threads(&mut args, threads);
        ok(&eqco(&args));
        losses(out)
    };
    let reference = train(&tmp.path().join("full"), 1);
    let floor = loss_drift(&reference, &train(&tmp.path().join("full-threads2"), 2));
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
        ok(&eqco(&resume));
        let got = losses(&run);
        assert_eq!(got.len(), 6, "{run:?}");
        let what = format!("W = {first} then {then}");
        assert_within_floor(&what, &loss_drift(&reference, &got), &floor, FP32_FLOOR);
    }
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
    // The environment says which worker is rank 1.
    let rank1 = *workers
        .iter()
        .find(|&&p| env_of(p, "RANK").as_deref() == Some("1"))
        .unwrap();
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
fn overlapping_the_gradient_all_reduce_with_backward_changes_no_bit() {
    let tmp = tempfile::tempdir().unwrap();
    // Width 0.5: about 5 MB of gradients, so a 1 MiB first bucket and more.
    let methods: [(&str, &[&str]); 2] = [
        ("fmnist-simo", &["k_negatives=31"]),
        // Two views through one encoder, and a gather with a gradient.
        ("fmnist-simclr", &["k_negatives=40"]),
    ];
    for (preset, sets) in methods {
        let run = |overlap: bool| {
            let out = tmp.path().join(format!("{preset}-overlap-{overlap}"));
            let flag = format!("grad_overlap={overlap}");
            let mut all = vec![
                "max_steps=3",
                "width=0.5",
                "lr=0.1",
                "warmup_epochs=0",
                "checkpoint_every=0",
                "precision=fp32",
                "memory_format=channels_last",
                &flag,
            ];
            all.extend(sets);
            let mut args = pretrain_args(tmp.path(), preset, &out, &all);
            args.extend(["--nproc-per-node".into(), "2".into()]);
            let o = eqco(&args);
            ok(&o);
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                    .unwrap();
            (out, summary, text(&o.stdout))
        };
        let (off, off_summary, _) = run(false);
        let (on, on_summary, stdout) = run(true);
        assert!(off_summary.get("grad_buckets_overlapped").is_none());
        let share = on_summary["grad_buckets_overlapped"].as_f64().unwrap();
        assert!(share > 0.0, "{preset}: no bucket began during backward");
        assert!(stdout.contains("overlapped with backward"), "{stdout}");
        let loss = |run: &Path| {
            losses(run)
                .iter()
                .map(|m| m.loss.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(loss(&off), loss(&on), "{preset}: losses");
        let (a, _) = eqco::run::checkpoint::load(&latest(&off)).unwrap();
        let (b, _) = eqco::run::checkpoint::load(&latest(&on)).unwrap();
        let mut names: Vec<&String> = a.keys().collect();
        names.sort();
        assert_eq!(names.len(), b.len(), "{preset}");
        assert!(names.iter().any(|n| n.starts_with("optim.")));
        for name in names {
            // Bits, not values (-0 = +0 as a value).
            let bits = |t: &tch::Tensor| match t.kind() {
                tch::Kind::Float => t.view_dtype(tch::Kind::Int),
                _ => t.shallow_clone(),
            };
            let (x, y) = (bits(&a[name]), bits(&b[name]));
            assert!(
                x.size() == y.size() && x.equal(&y),
                "{preset}: {name} differs with the overlapped all-reduce"
            );
        }
    }
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
