//! Data parallelism through the launchers users run: the real torchrun from
//! the venv (standalone, static and elastic with a restart), two hosts made
//! of network namespaces (ranks started by hand with `MASTER_ADDR` a host
//! name, and `torchrun --nnodes 2`), and a failing rank that ends the job
//! without a launcher. Every process is bounded in time and killed with
//! its process group when a test ends early; the namespaces are removed.

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::assert_ok as ok;
use common::equivalence::{
    assert_within_floor, latest, loss_drift, losses, rel, tensor_drift, weights, FP32_FLOOR,
};
use procs::{children, env_of, free_port, text, wait_all, Job, TwoHosts};

/// The longest any job here may take.
const LIMIT: Duration = Duration::from_secs(240);

fn eqco_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eqco"))
}

/// The venv's torchrun (scripts/setup.sh makes the venv).
fn torchrun() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (the venv with torch)",
        p.display()
    );
    p
}

/// `eqco pretrain` arguments (without the program) for a tiny fp32 NCHW run
/// on a CIFAR fixture under `dir` (precision and format pinned, so that
/// nothing compared depends on what `auto` picks on this machine).
fn pretrain_args(dir: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let ours = [
        "k_negatives=31",
        "memory_format=contiguous",
        "lr=0.01",
        "warmup_epochs=0",
        "dist_timeout=60",
    ];
    let sets: Vec<&str> = ours.into_iter().chain(extra.iter().copied()).collect();
    common::tiny_pretrain(dir, 256, "fmnist-simo", out, &sets)
}

/// One eqco process, waited for.
fn eqco(args: &[String]) -> Output {
    let mut cmd = Command::new(eqco_bin());
    cmd.args(args);
    Job::start(cmd, &format!("eqco {args:?}")).wait(LIMIT)
}

/// `torchrun <launch…> --no-python eqco <args…>`, started.
fn start_torchrun(launch: &[&str], args: &[String]) -> Job {
    let mut cmd = Command::new(torchrun());
    cmd.args(launch)
        .arg("--no-python")
        .arg(eqco_bin())
        .args(args)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE");
    Job::start(cmd, &format!("torchrun {launch:?}"))
}

/// W = 2 (`two`) trains what W = 1 (`one`) trains: every step's loss and
/// the final weights within 10× the floor that W = 1 at 1 and at 2 threads
/// (`floor`) measures, never below float32's (the test-suite's rule, in
/// `tests/common/equivalence.rs`).
fn same_training(one: &Path, floor: &Path, two: &Path, what: &str) {
    let (a, f, b) = (losses(one), losses(floor), losses(two));
    assert_within_floor(
        &format!("{what}: losses"),
        &loss_drift(&a, &b),
        &loss_drift(&a, &f),
        FP32_FLOOR,
    );
    let wa = weights(&latest(one));
    assert_within_floor(
        &format!("{what}: final weights"),
        &[tensor_drift(&wa, &weights(&latest(two)))],
        &[tensor_drift(&wa, &weights(&latest(floor)))],
        FP32_FLOOR,
    );
}

fn processes(run: &Path) -> u64 {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    s["processes"].as_u64().unwrap()
}

#[test]
fn torchrun_standalone_static_and_c10d_rendezvous_run_two_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let cases: [(&str, Vec<&str>); 3] = [
        ("standalone", vec!["--standalone", "--nproc-per-node", "2"]),
        (
            "static",
            vec![
                "--nnodes",
                "1",
                "--node-rank",
                "0",
                "--nproc-per-node",
                "2",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port,
            ],
        ),
        (
            "c10d",
            vec![
                "--nnodes",
                "1",
                "--nproc-per-node",
                "2",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                &endpoint,
                "--rdzv-id",
                "eqco-test",
            ],
        ),
    ];
    for (name, launch) in cases {
        let run = tmp.path().join(name);
        let start = Instant::now();
        let out =
            start_torchrun(&launch, &pretrain_args(tmp.path(), &run, &["max_steps=3"])).wait(LIMIT);
        ok(&out, name);
        let m = losses(&run);
        assert_eq!(
            m.iter().map(|m| m.step).collect::<Vec<_>>(),
            [1, 2, 3],
            "{name}: one metrics.jsonl, every step once"
        );
        assert_eq!(processes(&run), 2, "{name}");
        eprintln!(
            "torchrun {name}: 3 steps on 2 workers in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn torchruns_failure_summary_shows_eqcos_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("fails");
    let missing = tmp.path().join("no-such-data");
    let mut args = pretrain_args(tmp.path(), &run, &["max_steps=1"]);
    args.extend([
        "--set".into(),
        format!("data_dir=\"{}\"", missing.display()),
    ]);
    let out = start_torchrun(&["--standalone", "--nproc-per-node", "2"], &args).wait(LIMIT);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    // torchrun's summary names the failed rank and shows the message eqco
    // wrote to TORCHELASTIC_ERROR_FILE (not `<N/A>`).
    let summary = err
        .split("Root Cause")
        .nth(1)
        .unwrap_or_else(|| panic!("no torchrun failure summary:\n{err}"));
    assert!(
        summary.contains("no-such-data") && !summary.contains("<N/A>"),
        "{err}"
    );
}

/// Kills the worker of rank `rank` among `launcher`'s children once
/// `metrics` holds at least `lines` lines; returns the worker's id.
fn kill_rank_when(launcher: &mut Job, rank: &str, metrics: &Path, lines: usize) -> u32 {
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(metrics).map_or(0, |t| t.lines().count());
        if n >= lines {
            break;
        }
        assert!(!launcher.done(), "the job ended before step {lines}");
        assert!(
            start.elapsed() < LIMIT,
            "the job never reached step {lines}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker = children(launcher.id())
        .into_iter()
        .find(|&p| env_of(p, "RANK").as_deref() == Some(rank))
        .unwrap_or_else(|| panic!("no worker of rank {rank}"));
    // SAFETY: signalling a process this test started (through torchrun).
    unsafe {
        libc::kill(worker as i32, libc::SIGKILL);
    }
    worker
}

#[test]
fn an_elastic_restart_resumes_and_records_every_step_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["max_steps=16", "checkpoint_every=4"];
    // The uninterrupted run: the same two workers, through eqco's launcher.
    let whole = tmp.path().join("whole");
    let mut args = pretrain_args(tmp.path(), &whole, &sets);
    args.extend(["--nproc-per-node".into(), "2".into()]);
    ok(&eqco(&args), "the uninterrupted run");
    let reference = losses(&whole);

    let run = tmp.path().join("elastic");
    let mut job = start_torchrun(
        &[
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
        ],
        &pretrain_args(tmp.path(), &run, &sets),
    );
    // Past the checkpoint of step 4, before the next one.
    kill_rank_when(&mut job, "1", &run.join("metrics.jsonl"), 6);
    let out = job.wait(LIMIT);
    ok(&out, "torchrun --max-restarts 1 with rank 1 killed");
    let err = text(&out.stderr);
    assert!(err.contains("resuming"), "the restart resumed:\n{err}");
    let got = losses(&run);
    assert_eq!(
        got.iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=16).collect::<Vec<u64>>(),
        "every step exactly once"
    );
    for (x, y) in reference.iter().zip(&got) {
        assert!(
            rel(x.loss, y.loss) <= 1e-6,
            "step {}: {} uninterrupted vs {} restarted",
            x.step,
            x.loss,
            y.loss
        );
    }
}

#[test]
fn a_failing_rank_ends_the_job_without_a_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let args = pretrain_args(
        tmp.path(),
        &run,
        &["epochs=1000", "checkpoint_every=2", "dist_timeout=600"],
    );
    let port = free_port().to_string();
    // Two ranks as srun starts them without --kill-on-bad-exit: nothing
    // stops one when the other fails.
    let ranks: Vec<Job> = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(eqco_bin());
            cmd.args(&args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port);
            Job::start(cmd, &format!("rank {rank}"))
        })
        .collect();
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(start.elapsed() < LIMIT, "the job never trained");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Rank 0's checkpoint folder becomes unwritable: a file takes its
    // place (root writes through permission bits; not through this).
    let ckpt = run.join("checkpoints");
    std::fs::rename(&ckpt, run.join("checkpoints.moved")).unwrap();
    std::fs::write(&ckpt, b"not a folder").unwrap();
    let broken = Instant::now();
    let outs = wait_all(ranks, Duration::from_secs(60));
    let took = broken.elapsed();
    let needle = ckpt.display().to_string();
    for (rank, out) in outs.iter().enumerate() {
        let err = text(&out.stderr);
        assert!(!out.status.success(), "rank {rank} exited 0:\n{err}");
        let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            last.contains("rank 0") && last.contains(&needle),
            "rank {rank}'s error names rank 0 and {needle}:\n{err}"
        );
        eprintln!("rank {rank}: {last}");
    }
    assert!(took < Duration::from_secs(60), "took {took:?}");
    eprintln!(
        "both ranks ended {:.1} s after the folder broke",
        took.as_secs_f64()
    );
}

#[test]
fn two_hosts_train_what_one_process_trains() {
    let hosts = TwoHosts::new();
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["max_steps=4"];
    let one = tmp.path().join("w1");
    ok(&eqco(&pretrain_args(tmp.path(), &one, &sets)), "W = 1");
    // The noise floor: the same single process at 2 threads.
    let floor = tmp.path().join("w1-threads2");
    let mut args = pretrain_args(tmp.path(), &floor, &sets);
    let i = args.iter().position(|a| a == "--threads").unwrap();
    args[i + 1] = "2".into();
    ok(&eqco(&args), "W = 1 at 2 threads");
    let port = "29517";

    // One rank per host, started by hand, MASTER_ADDR a host name.
    let run = tmp.path().join("by-hand");
    let args = pretrain_args(tmp.path(), &run, &sets);
    let ranks: Vec<Job> = (0..2)
        .map(|rank| {
            let mut cmd = hosts.command(rank, &eqco_bin());
            cmd.args(&args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", "0")
                .env("LOCAL_WORLD_SIZE", "1")
                .env("MASTER_ADDR", "node0")
                .env("MASTER_PORT", port);
            Job::start(cmd, &format!("rank {rank} on node{rank}"))
        })
        .collect();
    for (rank, out) in wait_all(ranks, LIMIT).iter().enumerate() {
        ok(out, &format!("rank {rank} on node{rank}"));
    }
    same_training(&one, &floor, &run, "two hosts, ranks by hand");

    // The same through torchrun, one agent per host: the static
    // rendezvous and the c10d one.
    let static_launch: Vec<String> = ["--master-addr", "node0", "--master-port", port]
        .map(String::from)
        .to_vec();
    let c10d_launch: Vec<String> = [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "node0:29518",
        "--rdzv-id",
        "eqco-two-hosts",
    ]
    .map(String::from)
    .to_vec();
    for (name, launch) in [("static", static_launch), ("c10d", c10d_launch)] {
        let run = tmp.path().join(format!("torchrun-{name}"));
        let args = pretrain_args(tmp.path(), &run, &sets);
        let agents: Vec<Job> = (0..2)
            .map(|node| {
                let mut cmd = hosts.command(node, &torchrun());
                cmd.args(["--nnodes", "2", "--nproc-per-node", "1"]);
                if name == "static" {
                    cmd.args(["--node-rank", &node.to_string()]);
                } else {
                    // The namespaces share the machine's host name, which
                    // their /etc/hosts do not resolve: each agent says its own.
                    cmd.args(["--local-addr", &format!("node{node}")]);
                }
                cmd.args(&launch)
                    .arg("--no-python")
                    .arg(eqco_bin())
                    .args(&args);
                Job::start(cmd, &format!("torchrun ({name}) on node{node}"))
            })
            .collect();
        for (node, out) in wait_all(agents, LIMIT).iter().enumerate() {
            ok(out, &format!("torchrun ({name}) on node{node}"));
        }
        same_training(
            &one,
            &floor,
            &run,
            &format!("two hosts, torchrun --nnodes 2, {name} rendezvous"),
        );
    }
    drop(hosts);
}

#[test]
fn resume_auto_continues_a_run_or_starts_one_and_a_plain_rerun_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let with = |extra: &[&str], steps: &str| {
        let mut a = pretrain_args(
            tmp.path(),
            &run,
            &[&format!("max_steps={steps}"), "checkpoint_every=2"],
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Nothing there yet: auto starts fresh.
    ok(
        &eqco(&with(&["--resume", "auto"], "2")),
        "--resume auto, fresh",
    );
    assert_eq!(losses(&run).len(), 2);
    // A plain second run is refused, and the folder is left as it was.
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let out = eqco(&with(&[], "4"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("`--out`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
    // --resume auto, the key, and a requeued SLURM job continue it.
    ok(&eqco(&with(&["--resume", "auto"], "4")), "--resume auto");
    ok(
        &eqco(&with(&["--set", "resume=auto"], "6")),
        "resume = \"auto\"",
    );
    let mut cmd = Command::new(eqco_bin());
    cmd.args(with(&[], "8")).env("SLURM_RESTART_COUNT", "1");
    let out = Job::start(cmd, "a requeued job").wait(LIMIT);
    ok(&out, "SLURM_RESTART_COUNT=1");
    assert!(
        text(&out.stderr).contains("resuming"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        losses(&run).iter().map(|m| m.step).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>()
    );
    // The same 8 steps in one go.
    let whole = tmp.path().join("whole");
    ok(
        &eqco(&pretrain_args(
            tmp.path(),
            &whole,
            &["max_steps=8", "checkpoint_every=2"],
        )),
        "uninterrupted",
    );
    for (x, y) in losses(&whole).iter().zip(&losses(&run)) {
        assert_eq!(x.loss, y.loss, "step {}", x.step);
    }
}

#[test]
fn a_rank_that_cannot_join_ends_the_job_at_once_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // The timeout is long: the job must end long before it.
    let args = pretrain_args(tmp.path(), &run, &["max_steps=2", "dist_timeout=600"]);
    let port = free_port().to_string();
    let start = Instant::now();
    let ranks: Vec<Job> = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(eqco_bin());
            cmd.args(&args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port);
            if rank == 1 {
                // Gloo cannot bind to an interface that does not exist.
                cmd.env("GLOO_SOCKET_IFNAME", "nosuch0");
            }
            Job::start(cmd, &format!("rank {rank}"))
        })
        .collect();
    let outs = wait_all(ranks, Duration::from_secs(60));
    let took = start.elapsed();
    for (rank, out) in outs.iter().enumerate() {
        let err = text(&out.stderr);
        assert!(!out.status.success(), "rank {rank} exited 0:\n{err}");
        let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            last.contains("rank 1 could not join") && last.contains("nosuch0"),
            "rank {rank}'s error names rank 1 and the interface:\n{err}"
        );
        eprintln!("rank {rank}: {last}");
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!run.join("metrics.jsonl").exists(), "nothing trained");
}

#[test]
fn a_peer_that_never_starts_is_named_when_the_join_timeout_ends_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // The join timeout, not the collectives' (10 minutes), ends it.
    let sets = ["max_steps=2", "dist_timeout=600", "dist_join_timeout=3"];
    let args = pretrain_args(tmp.path(), &run, &sets);
    let mut cmd = Command::new(eqco_bin());
    cmd.args(&args)
        .env("RANK", "0")
        .env("WORLD_SIZE", "4")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string());
    let out = Job::start(cmd, "rank 0 of 4, alone").wait(Duration::from_secs(60));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rank(s) 1, 2, 3 did not join within 3 s"),
        "the error names the missing ranks:\n{err}"
    );
}
