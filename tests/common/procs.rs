//! Processes for the multi-process tests: each started in its own process
//! group, waited for with a bound, and killed with everything it started
//! when the test ends early; two hosts made of network namespaces.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bytes of a process's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A started command and everything it starts (its own process group),
/// killed when dropped unless it was waited for.
pub struct Job {
    child: Option<Child>,
    what: String,
}

impl Job {
    /// Starts `cmd` in a new process group, its output piped.
    pub fn start(mut cmd: Command, what: &str) -> Job {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        Job {
            child: Some(child),
            what: what.to_string(),
        }
    }

    /// The process id (also its group's id).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has ended.
    pub fn done(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Waits for it, at most `limit`; past that, kills its group and panics
    /// with its output.
    pub fn wait(mut self, limit: Duration) -> Output {
        let start = Instant::now();
        while !self.done() {
            if start.elapsed() > limit {
                self.kill();
                let out = self.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "{} ran past {limit:?}:\n{}{}",
                    self.what,
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.take().unwrap().wait_with_output().unwrap()
    }

    /// SIGKILL to its whole process group.
    pub fn kill(&mut self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling the process group this test started.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
    }
}

/// Waits for every job, at most `limit` in all (killing every one of them
/// past it).
pub fn wait_all(jobs: Vec<Job>, limit: Duration) -> Vec<Output> {
    let start = Instant::now();
    let mut jobs = jobs;
    while !jobs.iter_mut().all(Job::done) {
        if start.elapsed() > limit {
            let mut err = String::new();
            for j in jobs.iter_mut() {
                j.kill();
            }
            for mut j in jobs {
                let out = j.child.take().unwrap().wait_with_output().unwrap();
                err.push_str(&format!("--- {}:\n{}", j.what, text(&out.stderr)));
            }
            panic!("ran past {limit:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    jobs.into_iter().map(|j| j.wait(limit)).collect()
}

/// The process ids of `parent`'s children (Linux /proc).
pub fn children(parent: u32) -> Vec<u32> {
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

/// The value of `key` in process `pid`'s environment.
pub fn env_of(pid: u32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    std::fs::read(format!("/proc/{pid}/environ"))
        .ok()?
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()).map(text))
}

/// A TCP port the OS reports free on this machine.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two hosts, `node0` and `node1`: network namespaces joined by a veth
/// pair, each with its own /etc/hosts naming both. Removed when dropped.
pub struct TwoHosts {
    /// The namespaces' names (node0's, node1's).
    pub names: [String; 2],
    /// Their addresses.
    pub addrs: [String; 2],
}

static PAIRS: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` does not run ({e}); install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            text(&out.stderr).trim()
        ))
    }
}

impl TwoHosts {
    /// Makes the pair (names unique to this process and call); panics
    /// saying so when namespaces cannot be made (they need root).
    pub fn new() -> TwoHosts {
        let n = PAIRS.fetch_add(1, Ordering::SeqCst);
        let id = std::process::id() % 100_000;
        let subnet = 100 + (id as usize * 4 + n) % 150;
        let hosts = TwoHosts {
            names: [format!("eqco{id}n{n}a"), format!("eqco{id}n{n}b")],
            addrs: [format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2")],
        };
        if let Err(e) = hosts.make(&format!("eq{id}n{n}")) {
            panic!(
                "two hosts as network namespaces could not be made (this test needs root and `ip netns add`): {e}"
            );
        }
        hosts
    }

    fn make(&self, veth: &str) -> Result<(), String> {
        let [a, b] = &self.names;
        let (va, vb) = (format!("{veth}a"), format!("{veth}b"));
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", a])?;
        ip(&["link", "set", &vb, "netns", b])?;
        // The namespaces share the machine's host name (one UTS
        // namespace); each resolves it to its own address, as a real host
        // resolves its own name (torchrun's c10d rendezvous looks it up).
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        for (ns, dev, addr) in [(a, &va, &self.addrs[0]), (b, &vb, &self.addrs[1])] {
            let hosts = format!(
                "127.0.0.1 localhost\n{} node0\n{} node1\n{addr} {machine}\n",
                self.addrs[0], self.addrs[1]
            );
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            let dir = Self::etc(ns);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(dir.join("hosts"), &hosts)
                .map_err(|e| format!("{}/hosts: {e}", dir.display()))?;
        }
        Ok(())
    }

    fn etc(ns: &str) -> PathBuf {
        Path::new("/etc/netns").join(ns)
    }

    /// `program args…` to run on host `i` (0: node0, 1: node1).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[i]]).arg(program);
        cmd
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in &self.names {
            // Deleting a namespace removes its end of the veth pair, and so the pair.
            let _ = ip(&["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(Self::etc(ns));
        }
    }
}
