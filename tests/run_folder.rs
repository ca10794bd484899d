//! What clusters do to runs, done for real to the binary: a stop signal
//! (SIGTERM to one process, to eqco's launcher of two workers, and to
//! torchrun) ends the run at a checkpoint of the step it stopped after,
//! with exit code 75, and `--resume auto` then logs each step exactly once
//! with the losses of an uninterrupted run; retention keeps exactly what
//! it should; a full file system (a small tmpfs) gives the OS's message
//! and leaves no debris; a truncated `latest` resumes from the step
//! before; of two starts into one folder exactly one runs, and a stale
//! lock is taken over. Every process is bounded in time and killed with
//! its process group if a test ends early.

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::equivalence::{losses, rel};
use common::{checkpoint_steps, names_in};
use procs::{text, Job};

/// The longest any job here may take.
const LIMIT: Duration = Duration::from_secs(240);

/// `eqco pretrain` arguments for a tiny fp32 run on a CIFAR fixture under
/// `dir` (256 images of 32: 8 steps an epoch).
fn args(dir: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let ours = [
        "k_negatives=31",
        "lr=0.01",
        "warmup_epochs=0",
        "tensorboard=false",
        "dist_timeout=60",
    ];
    let sets: Vec<&str> = ours.into_iter().chain(extra.iter().copied()).collect();
    common::tiny_pretrain(dir, 256, "fmnist-simo", out, &sets)
}

fn start(program: &Path, args: &[String]) -> Job {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("RANK").env_remove("WORLD_SIZE");
    Job::start(cmd, &format!("{} {args:?}", program.display()))
}

fn eqco_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eqco"))
}

fn run(args: &[String]) -> Output {
    start(&eqco_bin(), args).wait(LIMIT)
}

fn ok(out: &Output, what: &str) -> String {
    common::assert_ok(out, what);
    text(&out.stderr)
}

/// Sends `signal` to `target` once `run`'s metrics hold `lines` lines.
fn signal_when(job: &mut Job, target: u32, signal: i32, run: &Path, lines: usize) {
    let start = Instant::now();
    let metrics = run.join("metrics.jsonl");
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < lines {
        assert!(!job.done(), "the run ended before step {lines}");
        assert!(
            start.elapsed() < LIMIT,
            "the run never reached step {lines}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling a process this test started.
    unsafe {
        libc::kill(target as i32, signal);
    }
}

/// The run stopped with exit code 75 at a checkpoint of its last logged
/// step; returns that step.
fn stopped_at_a_checkpoint(out: &Output, run: &Path, what: &str) -> u64 {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{what}: {err}");
    let logged = losses(run);
    let last = logged.last().expect("steps were logged").step;
    assert_eq!(
        checkpoint_steps(run).last(),
        Some(&last),
        "{what}: a checkpoint at the step it stopped after\n{err}"
    );
    last
}

/// Resumed with `--resume auto`, `run` logs every step of `reference`
/// exactly once, with its losses.
fn resumes_like(resume: Output, run: &Path, reference: &Path, what: &str) {
    let err = ok(&resume, what);
    assert!(err.contains("resuming"), "{what}: {err}");
    let (want, got) = (losses(reference), losses(run));
    assert_eq!(
        got.iter().map(|m| m.step).collect::<Vec<_>>(),
        want.iter().map(|m| m.step).collect::<Vec<_>>(),
        "{what}: every step exactly once"
    );
    for (x, y) in want.iter().zip(&got) {
        assert!(
            rel(x.loss, y.loss) <= 1e-6,
            "{what}: step {}: {} uninterrupted vs {} stopped and resumed",
            x.step,
            x.loss,
            y.loss
        );
    }
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

#[test]
fn sigterm_stops_one_process_at_a_checkpoint_and_resume_continues_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["max_steps=40", "checkpoint_every=16"];
    let whole = tmp.path().join("whole");
    ok(
        &run(&args(tmp.path(), &whole, &sets)),
        "the uninterrupted run",
    );

    let out = tmp.path().join("stopped");
    let mut job = start(&eqco_bin(), &args(tmp.path(), &out, &sets));
    let pid = job.id();
    signal_when(&mut job, pid, libc::SIGTERM, &out, 5);
    let o = job.wait(LIMIT);
    let step = stopped_at_a_checkpoint(&o, &out, "SIGTERM");
    assert!(
        step < 16,
        "stopped at step {step}, before the next due checkpoint"
    );
    assert!(
        text(&o.stderr).contains(&format!("stopped by SIGTERM after step {step}")),
        "{}",
        text(&o.stderr)
    );
    let resume = with(args(tmp.path(), &out, &sets), &["--resume", "auto"]);
    resumes_like(run(&resume), &out, &whole, "one process");
}

#[test]
fn sigterm_to_the_launcher_stops_both_workers_after_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["max_steps=40", "checkpoint_every=16"];
    let two = ["--nproc-per-node", "2"];
    let whole = tmp.path().join("whole");
    ok(
        &run(&with(args(tmp.path(), &whole, &sets), &two)),
        "the uninterrupted run",
    );

    let out = tmp.path().join("stopped");
    let mut job = start(&eqco_bin(), &with(args(tmp.path(), &out, &sets), &two));
    let pid = job.id();
    signal_when(&mut job, pid, libc::SIGTERM, &out, 5);
    let o = job.wait(LIMIT);
    stopped_at_a_checkpoint(&o, &out, "SIGTERM to the launcher");
    assert!(
        text(&o.stderr).contains("all 2 workers stopped at a checkpoint"),
        "{}",
        text(&o.stderr)
    );
    let resume = with(
        args(tmp.path(), &out, &sets),
        &["--resume", "auto", "--nproc-per-node", "2"],
    );
    resumes_like(run(&resume), &out, &whole, "two workers");

    // SIGUSR1 to one worker alone (as `srun --signal` may deliver it):
    // the ranks agree, and both stop after the same step.
    let out = tmp.path().join("one-worker");
    let mut job = start(&eqco_bin(), &with(args(tmp.path(), &out, &sets), &two));
    let start = Instant::now();
    let worker = loop {
        let found = procs::children(job.id())
            .into_iter()
            .find(|&p| procs::env_of(p, "RANK").as_deref() == Some("1"));
        if let Some(w) = found {
            break w;
        }
        assert!(start.elapsed() < LIMIT, "no worker of rank 1");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal_when(&mut job, worker, libc::SIGUSR1, &out, 5);
    let o = job.wait(LIMIT);
    stopped_at_a_checkpoint(&o, &out, "SIGUSR1 to rank 1");
    let resume = with(
        args(tmp.path(), &out, &sets),
        &["--resume", "auto", "--nproc-per-node", "2"],
    );
    resumes_like(
        run(&resume),
        &out,
        &whole,
        "two workers after SIGUSR1 to rank 1",
    );
}

#[test]
fn sigterm_to_torchrun_stops_its_workers_at_a_checkpoint() {
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(
        torchrun.is_file(),
        "run scripts/setup.sh (the venv with torch)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["max_steps=40", "checkpoint_every=16"];
    let whole = tmp.path().join("whole");
    ok(
        &run(&with(
            args(tmp.path(), &whole, &sets),
            &["--nproc-per-node", "2"],
        )),
        "the uninterrupted run",
    );

    let out = tmp.path().join("stopped");
    let launch: Vec<String> = ["--standalone", "--nproc-per-node", "2", "--no-python"]
        .map(String::from)
        .into_iter()
        .chain([eqco_bin().display().to_string()])
        .chain(args(tmp.path(), &out, &sets))
        .collect();
    let mut job = start(&torchrun, &launch);
    let pid = job.id();
    signal_when(&mut job, pid, libc::SIGTERM, &out, 5);
    let o = job.wait(LIMIT);
    assert!(!o.status.success(), "torchrun reports the stop");
    let logged = losses(&out);
    let last = logged.last().unwrap().step;
    assert_eq!(
        checkpoint_steps(&out).last(),
        Some(&last),
        "{}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains("stopped by SIGTERM"),
        "{}",
        text(&o.stderr)
    );
    let resume = with(
        args(tmp.path(), &out, &sets),
        &["--resume", "auto", "--nproc-per-node", "2"],
    );
    resumes_like(run(&resume), &out, &whole, "torchrun's workers");
}

#[test]
fn retention_keeps_the_newest_and_every_kth_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // 5 epochs of 8 steps.
    let sets = [
        "epochs=5",
        "checkpoint_every=2",
        "keep_checkpoints=3",
        "keep_every=10",
        "log_every=4",
    ];
    ok(&run(&args(tmp.path(), &out, &sets)), "a run with retention");
    assert_eq!(checkpoint_steps(&out), vec![10, 20, 30, 36, 38, 40]);
    // The default keeps the newest 3.
    let out = tmp.path().join("default");
    ok(
        &run(&args(
            tmp.path(),
            &out,
            &["max_steps=24", "checkpoint_every=4"],
        )),
        "default retention",
    );
    assert_eq!(checkpoint_steps(&out), vec![16, 20, 24]);
}

#[test]
fn a_truncated_latest_resumes_from_the_checkpoint_before() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["max_steps=12", "checkpoint_every=4"];
    let whole = tmp.path().join("whole");
    ok(
        &run(&args(tmp.path(), &whole, &sets)),
        "the uninterrupted run",
    );
    let out = tmp.path().join("run");
    ok(
        &run(&args(
            tmp.path(),
            &out,
            &["max_steps=8", "checkpoint_every=4"],
        )),
        "8 steps",
    );
    // latest is step 8's file (a hard link): both are cut short.
    let latest = out.join("checkpoints/latest.safetensors");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&with(args(tmp.path(), &out, &sets), &["--resume", "auto"]));
    let err = text(&o.stderr);
    assert!(
        err.contains("passed over") && err.contains("latest.safetensors"),
        "{err}"
    );
    assert!(err.contains("at step 4"), "{err}");
    resumes_like(o, &out, &whole, "a truncated latest");
}

/// The first checkpoint of a run under a file-size limit of `limit` bytes
/// (below its size): the OS's message ("File too large"), the file named,
/// no temporary file left.
fn file_size_limit(dir: &Path, limit: u64) {
    use std::os::unix::process::CommandExt;
    let out = dir.join("limited");
    let mut cmd = Command::new(eqco_bin());
    cmd.args(args(dir, &out, &["max_steps=4", "checkpoint_every=4"]));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let o = Job::start(cmd, "eqco pretrain under a file-size limit").wait(LIMIT);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("step-4.safetensors")
            && err.contains("File too large")
            && !err.contains("Os {"),
        "{err}"
    );
    let left = names_in(&out.join("checkpoints"));
    assert!(left.is_empty(), "debris: {left:?}");
}

/// A small tmpfs mounted for a test (unmounted when dropped).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        o.status.success().then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_names_the_file_with_the_os_message_and_leaves_no_debris() {
    let tmp = tempfile::tempdir().unwrap();
    // A checkpoint's size, from a run on the ordinary disk.
    let probe = tmp.path().join("probe");
    ok(
        &run(&args(tmp.path(), &probe, &["max_steps=1"])),
        "the probe run",
    );
    let size = std::fs::metadata(probe.join("checkpoints/step-1.safetensors"))
        .unwrap()
        .len();
    // Room for one checkpoint (and the run's small files), not two.
    let disk = tmp.path().join("disk");
    let Some(_fs) = Tmpfs::mount(&disk, size + size / 2 + 256 * 1024) else {
        // No mount here (not root, or no CAP_SYS_ADMIN): a file-size limit
        // below one checkpoint's size is the same fault, told as EFBIG.
        return file_size_limit(tmp.path(), size / 2);
    };
    let out = disk.join("run");
    let o = run(&args(
        tmp.path(),
        &out,
        &["max_steps=8", "checkpoint_every=4", "keep_checkpoints=1"],
    ));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("step-8.safetensors")
            && err.contains("No space left on device")
            && !err.contains("Os {"),
        "{err}"
    );
    let left = names_in(&out.join("checkpoints"));
    assert!(
        left.iter().all(|n| !n.ends_with(".tmp")),
        "debris: {left:?}"
    );
    // The last good checkpoint still reads.
    let (_, pos) =
        eqco::run::checkpoint::load(&out.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(pos.step, 4);
}

#[test]
fn of_two_starts_into_one_folder_exactly_one_runs_and_a_stale_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let a = args(tmp.path(), &out, &["max_steps=16"]);
    // Write the fixture first, so that both start at once.
    ok(
        &run(&args(
            tmp.path(),
            &tmp.path().join("warm"),
            &["max_steps=1"],
        )),
        "the fixture",
    );
    let jobs = vec![start(&eqco_bin(), &a), start(&eqco_bin(), &a)];
    let outs = procs::wait_all(jobs, LIMIT);
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "{codes:?}"
    );
    let refused = outs.iter().find(|o| o.status.code() == Some(2)).unwrap();
    let err = text(&refused.stderr);
    assert!(
        (err.contains("in use by another run") && err.contains("pid"))
            || err.contains("already holds a run"),
        "{err}"
    );
    assert_eq!(losses(&out).len(), 16, "one run's steps, once each");

    // A lock left by a process that is gone (killed, or a requeued job).
    let stale = tmp.path().join("stale");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(
        stale.join("run.lock"),
        "pid 4194303 on host elsewhere, started 2026-01-01 00:00:00 UTC\n",
    )
    .unwrap();
    let err = ok(
        &run(&args(tmp.path(), &stale, &["max_steps=2"])),
        "a start over a stale lock",
    );
    assert!(
        err.contains("took over") && err.contains("pid 4194303"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(stale.join("run.lock")).unwrap(),
        "",
        "released at the end"
    );
}
