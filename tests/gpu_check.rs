//! `scripts/gpu-check.sh --device cpu`, the GPU acceptance run on the CPU
//! (Gloo for NCCL): every step ok, its summaries copied into `$OUT`, and
//! nothing written outside its folder; a folder holding files it did not
//! write is refused.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the script may run before the test kills it: a bound against a
/// hang, not a speed check (it takes about 3 minutes on a 2-core CPU).
const LIMIT: Duration = Duration::from_secs(900);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the script with `args` and `env`, its output into `log`, killed
/// with everything it started past [`LIMIT`].
fn gpu_check(args: &[&str], env: &[(&str, &Path)], log: &Path) -> ExitStatus {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/gpu-check.sh"))
        .args(["--bin", env!("CARGO_BIN_EXE_eqco")])
        .args(args)
        .env_remove("OUT")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("bash runs");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > LIMIT {
            // SAFETY: signals the script's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "gpu-check.sh ran past {LIMIT:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The repository's changed and untracked files, as git lists them (not
/// the ignored ones: builds and other runs may write there meanwhile).
fn git_status() -> String {
    let out = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=all"])
        .current_dir(root())
        .output()
        .unwrap();
    common::text(&out.stdout)
}

#[test]
fn the_gpu_check_passes_on_the_cpu_and_writes_only_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (scratch, export) = (tmp.path().join("tmpdir"), tmp.path().join("export"));
    std::fs::create_dir(&scratch).unwrap();

    // Someone else's folder is refused, and left as it was.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let log = tmp.path().join("refused.log");
    let status = gpu_check(
        &["--device", "cpu", "--out", foreign.to_str().unwrap()],
        &[],
        &log,
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("did not write"), "{said}");
    assert_eq!(common::names_in(&foreign), ["notes.txt"]);

    let before = git_status();
    let default_out = root().join("runs/gpu-check");
    let default_there = default_out.exists();
    let out = tmp.path().join("check");
    let log = tmp.path().join("check.log");
    let status = gpu_check(
        &["--device", "cpu", "--out", out.to_str().unwrap()],
        &[("OUT", &export), ("TMPDIR", &scratch)],
        &log,
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("gpu-check: every step ok"), "{said}");
    for step in [
        "sync BN in a group of one on gloo",
        "a failure in a group of one on gloo",
        "pinned memory under pinned_memory_mib",
    ] {
        assert!(said.contains(&format!("--- ok: {step}")), "{step}:\n{said}");
    }
    // Its log and the summaries came out through $OUT.
    let exported = common::names_in(&export);
    for name in [
        "gpu-check.log",
        "fmnist-simclr-overlap-summary.json",
        "knn-knn.json",
    ] {
        assert!(exported.iter().any(|n| n == name), "{name} in {exported:?}");
    }
    // Nothing else was written: not in the repository, not in TMPDIR.
    assert_eq!(git_status(), before, "the script wrote into the repository");
    assert_eq!(
        default_out.exists(),
        default_there,
        "it wrote into runs/gpu-check"
    );
    assert!(
        common::names_in(&scratch).is_empty(),
        "left in TMPDIR: {:?}",
        common::names_in(&scratch)
    );
    let secs = said.lines().find_map(|l| {
        l.strip_prefix("gpu-check: ")?
            .split_once(" s in all")
            .map(|(s, _)| s.to_string())
    });
    eprintln!("gpu-check.sh --device cpu: {} s", secs.unwrap_or_default());
}
