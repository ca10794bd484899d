//! The rendezvous lets in only the job's own processes: a one-host job
//! listens on loopback only (read from the kernel's socket tables), and a
//! process of another job on the same `MASTER_PORT` is refused before it
//! writes anything, while the job it reached trains exactly as alone.

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::equivalence::losses;
use procs::{children, free_port, text, wait_all, Job};

/// The longest any job here may take.
const LIMIT: Duration = Duration::from_secs(240);

fn eqco_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eqco"))
}

/// `eqco pretrain` arguments for a tiny fp32 NCHW run on a CIFAR fixture
/// under `dir`, with `images` images.
fn pretrain_args(dir: &Path, images: usize, out: &Path, extra: &[&str]) -> Vec<String> {
    let ours = [
        "k_negatives=31",
        "memory_format=contiguous",
        "lr=0.01",
        "warmup_epochs=0",
        "dist_timeout=60",
    ];
    let sets: Vec<&str> = ours.into_iter().chain(extra.iter().copied()).collect();
    common::tiny_pretrain(dir, images, "fmnist-simo", out, &sets)
}

/// The socket inodes of process `pid`.
fn socket_inodes(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect()
}

/// Every listening TCP socket of this network namespace as `(local
/// address in the kernel's hex, inode)`, from /proc/net/tcp and tcp6.
fn listening() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" {
                out.push((f[1].to_string(), f[9].to_string()));
            }
        }
    }
    out
}

/// Whether a local address from /proc/net/tcp{,6} (hex, the address in
/// the kernel's byte order, then `:PORT`) is a loopback address: 127/8,
/// ::1, or 127/8 mapped into IPv6.
fn is_loopback(local: &str) -> bool {
    let addr = local.split(':').next().unwrap_or("");
    match addr.len() {
        // One little-endian u32: 127.x.y.z ends in 7F.
        8 => addr.ends_with("7F"),
        // Four little-endian u32 words.
        32 => {
            addr == "00000000000000000000000001000000"
                || (addr.starts_with("0000000000000000FFFF0000") && addr.ends_with("7F"))
        }
        _ => false,
    }
}

/// The launcher and the processes it started.
fn process_tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(all[i]));
        i += 1;
    }
    all
}

/// A one-host job (`--nproc-per-node 2`) listens only on loopback: the
/// store and Gloo's sockets of every process, read while it trains.
#[test]
fn a_one_host_job_listens_on_loopback_only() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut args = pretrain_args(tmp.path(), 256, &run, &["epochs=1000"]);
    args.extend(["--nproc-per-node".to_string(), "2".to_string()]);
    let mut cmd = Command::new(eqco_bin());
    cmd.args(&args);
    let mut job = Job::start(cmd, "eqco pretrain --nproc-per-node 2");
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 2 {
        assert!(start.elapsed() < LIMIT, "the job never trained");
        assert!(!job.done(), "the job ended before it trained");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let table = listening();
        for pid in process_tree(job.id()) {
            for inode in socket_inodes(pid) {
                for (local, _) in table.iter().filter(|(_, i)| *i == inode) {
                    seen.push((pid, local.clone()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    job.kill();
    let _ = job.wait(LIMIT);
    seen.sort();
    seen.dedup();
    assert!(
        !seen.is_empty(),
        "no listening socket found in the job's processes (the store must be one)"
    );
    let open: Vec<_> = seen.iter().filter(|(_, a)| !is_loopback(a)).collect();
    assert!(
        open.is_empty(),
        "listening beyond loopback (pid, address in /proc/net/tcp's hex): {open:?}"
    );
    eprintln!(
        "{} listening socket(s) seen, all on loopback: {seen:?}",
        seen.len()
    );
}

/// Two jobs on one `MASTER_PORT`: job A's rank 0 serves the store; a rank
/// of job B that reaches it is refused with exit 2, naming both jobs and
/// the address, and A, once its own rank 1 joins, trains exactly what it
/// trains alone.
#[test]
fn a_process_of_another_job_is_refused_and_the_job_trains_on_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    // Job A alone, through the launcher: the reference.
    let alone = tmp.path().join("alone");
    let mut args = pretrain_args(tmp.path(), 192, &alone, &["epochs=1"]);
    args.extend(["--nproc-per-node".to_string(), "2".to_string()]);
    let mut cmd = Command::new(eqco_bin());
    cmd.args(&args);
    let out = Job::start(cmd, "job A alone").wait(LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let port = free_port().to_string();
    let rank = |rank: usize, job: &str, out: &Path| {
        let mut cmd = Command::new(eqco_bin());
        cmd.args(pretrain_args(tmp.path(), 192, out, &["epochs=1"]))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env("EQCO_JOB_ID", job);
        Job::start(cmd, &format!("job {job} rank {rank}"))
    };
    let shared = tmp.path().join("shared");
    let a0 = rank(0, "A", &shared);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err() {
        assert!(start.elapsed() < LIMIT, "job A's store never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Job B's rank 1 reaches A's store: refused, a usage error.
    let b1 = rank(1, "B", &tmp.path().join("b")).wait(LIMIT);
    let err = text(&b1.stderr);
    assert_eq!(b1.status.code(), Some(2), "{err}");
    let needles = [
        "`eqco job A`".to_string(),
        "`eqco job B`".to_string(),
        format!("127.0.0.1:{port}"),
        "MASTER_PORT".to_string(),
    ];
    for needle in &needles {
        assert!(err.contains(needle.as_str()), "names {needle}:\n{err}");
    }
    eprintln!(
        "{}",
        err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("")
    );
    // A's own rank 1 joins; the job trains to its end, as alone.
    let a1 = rank(1, "A", &shared);
    for (i, out) in wait_all(vec![a0, a1], LIMIT).iter().enumerate() {
        assert!(
            out.status.success(),
            "job A rank {i}: {}",
            text(&out.stderr)
        );
    }
    let (a, b) = (losses(&alone), losses(&shared));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.mi_bound), (y.step, y.loss, y.mi_bound));
    }
}
