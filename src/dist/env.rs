//! Everything a launcher tells a worker through the environment, read in
//! one place: torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
//! `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RUN_ID`,
//! `TORCHELASTIC_RESTART_COUNT`, `TORCHELASTIC_ERROR_FILE`), SLURM's
//! (`SLURM_TASKS_PER_NODE`, `SLURM_NODEID`, `SLURM_RESTART_COUNT`), Gloo's
//! `GLOO_SOCKET_IFNAME`, and the rules that follow from them: which address
//! Gloo binds, which GPU a worker takes, how many threads it runs.
//!
//! Every reader takes a lookup function, so the rules are tested without
//! touching the process's environment.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};

use tch::Device;

use crate::base::error::{Error, Result};

/// The variable a worker of `eqco pretrain --nproc-per-node` writes its
/// final error to (plain text).
pub const ERROR_FILE: &str = "EQCO_ERROR_FILE";

/// The variable torchrun names its worker's error file with (JSON).
pub const TORCHELASTIC_ERROR_FILE: &str = "TORCHELASTIC_ERROR_FILE";

/// The launcher variables of a process that is one of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `RANK`: this process, 0 ≤ rank < world size.
    pub rank: usize,
    /// `WORLD_SIZE`: processes in the job.
    pub world_size: usize,
    /// `LOCAL_RANK`: this process among those of its machine (its GPU).
    pub local_rank: usize,
    /// `LOCAL_WORLD_SIZE` (else this node's count in SLURM's
    /// `SLURM_TASKS_PER_NODE`, else `WORLD_SIZE`): processes on this machine.
    pub local_world_size: usize,
    /// `MASTER_ADDR`: where the rendezvous store is served.
    pub master_addr: String,
    /// `MASTER_PORT`: its port.
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent serves the
    /// store on `MASTER_PORT`, and every rank, rank 0 included, joins it as a
    /// client.
    pub agent_store: bool,
    /// `TORCHELASTIC_RUN_ID` (empty without torchrun).
    pub run_id: String,
    /// `TORCHELASTIC_RESTART_COUNT` (0 without torchrun).
    pub restart_count: u64,
    /// `GLOO_SOCKET_IFNAME`: the interfaces Gloo binds to (comma-separated),
    /// when set.
    pub gloo_ifname: Option<String>,
    /// The job this process belongs to, as its launcher names it (see
    /// [`job_identity`]); every rank checks the store serves this job.
    pub job: String,
}

/// The loopback address a one-host job's store and Gloo listen on.
pub const LOOPBACK: &str = "127.0.0.1";

/// The variable in which eqco's launcher (or a user) names a job.
pub const JOB_ID: &str = "EQCO_JOB_ID";

/// The job a process belongs to, as its launcher names it:
/// `EQCO_JOB_ID` (eqco's launcher sets a random token), torchrun's
/// `TORCHELASTIC_RUN_ID`, SLURM's `SLURM_JOB_ID` and `SLURM_STEP_ID`, or
/// empty when nothing names it.
pub fn job_identity(get: impl Fn(&str) -> Option<String>) -> String {
    let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    if let Some(id) = set(JOB_ID) {
        return format!("eqco job {}", id.trim());
    }
    if let Some(id) = set("TORCHELASTIC_RUN_ID") {
        return format!("torchrun run {}", id.trim());
    }
    match (set("SLURM_JOB_ID"), set("SLURM_STEP_ID")) {
        (Some(job), Some(step)) => format!("SLURM job {} step {}", job.trim(), step.trim()),
        (Some(job), None) => format!("SLURM job {}", job.trim()),
        _ => String::new(),
    }
}

/// Reads a whole number ≥ 0 from `name`, an error naming it otherwise.
fn whole(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>> {
    match get(name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::config(name, format!("'{raw}' is not a whole number ≥ 0"))),
    }
}

impl Env {
    /// The launcher variables, when `RANK` or `WORLD_SIZE` is set; errors
    /// name the variable that is missing or wrong.
    pub fn from_env() -> Result<Option<Env>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Env::from_env`], reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        if get("RANK").is_none() && get("WORLD_SIZE").is_none() {
            return Ok(None);
        }
        let number = |name: &str| -> Result<usize> {
            whole(&get, name)?.ok_or_else(|| {
                Error::config(
                    name,
                    "not set (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT go together, as torchrun sets them)",
                )
            })
        };
        let world_size = number("WORLD_SIZE")?;
        if world_size < 1 {
            return Err(Error::config("WORLD_SIZE", "0 (must be ≥ 1)"));
        }
        let rank = number("RANK")?;
        if rank >= world_size {
            return Err(Error::config(
                "RANK",
                format!("{rank} (must be below WORLD_SIZE = {world_size})"),
            ));
        }
        let local_rank = whole(&get, "LOCAL_RANK")?.unwrap_or(rank);
        let local_world_size = match whole(&get, "LOCAL_WORLD_SIZE")? {
            Some(n) => n.max(1),
            None => match get("SLURM_TASKS_PER_NODE") {
                Some(spec) => {
                    let node = whole(&get, "SLURM_NODEID")?.unwrap_or(0);
                    slurm_tasks_on_node(&spec, node)?
                }
                None => world_size,
            },
        };
        if local_rank >= local_world_size {
            return Err(Error::config(
                "LOCAL_RANK",
                format!(
                    "{local_rank} (must be below the {local_world_size} processes of this machine)"
                ),
            ));
        }
        let master_addr = get("MASTER_ADDR")
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                Error::config("MASTER_ADDR", "not set (the address of rank 0's machine)")
            })?;
        let port = number("MASTER_PORT")?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| Error::config("MASTER_PORT", format!("{port} (must be 1 to 65535)")))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(Some(Env {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr: master_addr.trim().to_string(),
            master_port,
            agent_store,
            run_id: get("TORCHELASTIC_RUN_ID").unwrap_or_default(),
            restart_count: whole(&get, "TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64,
            gloo_ifname: get("GLOO_SOCKET_IFNAME").filter(|v| !v.trim().is_empty()),
            job: job_identity(&get),
        }))
    }

    /// Whether this process serves the rendezvous store: rank 0, unless
    /// torchrun's agent already does.
    pub fn serves_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// A job of this one process, for a group of one
    /// (`dist_one_rank_group` without a launcher): the store on a loopback
    /// port the OS picks.
    pub fn alone() -> Result<Env> {
        let port = std::net::TcpListener::bind((LOOPBACK, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| {
                Error::Dist(format!(
                    "finding a free loopback port for a group of one: {e}"
                ))
            })?
            .port();
        Ok(Env {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: LOOPBACK.to_string(),
            master_port: port,
            agent_store: false,
            run_id: String::new(),
            restart_count: 0,
            gloo_ifname: None,
            job: format!("eqco process {}", std::process::id()),
        })
    }

    /// Whether every process of the job runs on this machine
    /// (`LOCAL_WORLD_SIZE == WORLD_SIZE`): then the store and Gloo listen
    /// on loopback only, and every rank reaches the store there.
    pub fn one_host(&self) -> bool {
        self.local_world_size == self.world_size
    }

    /// Where this process reaches the store: loopback when the whole job
    /// runs on this machine and eqco serves the store itself, else
    /// `MASTER_ADDR` (torchrun's agent binds its store as torchrun decides).
    pub fn store_host(&self) -> String {
        match self.one_host() && !self.agent_store {
            true => LOOPBACK.to_string(),
            false => self.master_addr.clone(),
        }
    }

    /// The prefix of this attempt's keys in the store: torchrun's agent
    /// keeps its store across restarts, so each attempt has its own keys.
    pub fn store_prefix(&self) -> String {
        format!("eqco/{}/{}/", self.run_id, self.restart_count)
    }

    /// Where Gloo binds on this host: the interfaces of `GLOO_SOCKET_IFNAME`
    /// when set, else this host's own address on the route to `MASTER_ADDR`.
    /// A job on one machine binds to loopback.
    pub fn gloo_bind(&self) -> Result<GlooBind> {
        match &self.gloo_ifname {
            Some(ifaces) => Ok(GlooBind::Interfaces(ifaces.trim().to_string())),
            None if self.one_host() => Ok(GlooBind::Address(IpAddr::from([127, 0, 0, 1]))),
            None => route_address(&self.master_addr, self.master_port).map(GlooBind::Address),
        }
    }
}

/// What Gloo binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlooBind {
    /// Network interfaces by name, comma-separated (`GLOO_SOCKET_IFNAME`).
    Interfaces(String),
    /// An address of this host.
    Address(IpAddr),
}

/// This host's address on the route to `host`: the local address of a UDP
/// socket `connect()`ed to it (nothing is sent). On the master's own host
/// that is the address the master is reached at, loopback included.
pub fn route_address(host: &str, port: u16) -> Result<IpAddr> {
    let fail = |what: String| {
        Error::Dist(format!(
            "cannot find this host's address on the route to MASTER_ADDR={host}: {what} (set GLOO_SOCKET_IFNAME to the interface to use)"
        ))
    };
    let target = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("the name does not resolve ({e})")))?
        .next()
        .ok_or_else(|| fail("the name resolves to no address".into()))?;
    let any: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).map_err(|e| fail(format!("a UDP socket: {e}")))?;
    socket
        .connect(target)
        .map_err(|e| fail(format!("no route to {target} ({e})")))?;
    socket
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| fail(format!("the socket's address: {e}")))
}

/// How many tasks SLURM runs on node `node` (`SLURM_NODEID`), from
/// `SLURM_TASKS_PER_NODE`: counts in node order, `c(xn)` for n nodes of c
/// tasks each, e.g. `8(x2),7` for 8, 8 and 7.
pub fn slurm_tasks_on_node(spec: &str, node: usize) -> Result<usize> {
    let bad = |why: String| Error::config("SLURM_TASKS_PER_NODE", format!("'{spec}': {why}"));
    let mut first = 0;
    for part in spec.trim().split(',') {
        let part = part.trim();
        let (count, repeat) = match part.split_once('(') {
            Some((c, rest)) => {
                let n = rest
                    .strip_prefix('x')
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|r| r.trim().parse::<usize>().ok())
                    .ok_or_else(|| bad(format!("'{part}' is not of the form c(xn)")))?;
                (c, n)
            }
            None => (part, 1),
        };
        let count: usize = count
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{part}' does not start with a task count")))?;
        if node < first + repeat {
            return Ok(count.max(1));
        }
        first += repeat;
    }
    Err(bad(format!(
        "it lists {first} node(s), but SLURM_NODEID is {node}"
    )))
}

/// Checks that NCCL's own handling of failed and timed-out collectives is
/// on (`TORCH_NCCL_ASYNC_ERROR_HANDLING`, or its old name
/// `NCCL_ASYNC_ERROR_HANDLING`; torch 2.11's default is 3): with 0 its
/// watchdog only logs a collective that timed out, and a rank whose peer
/// hung would wait forever. An error naming the variable otherwise.
pub fn check_nccl_error_handling(get: impl Fn(&str) -> Option<String>) -> Result<()> {
    for name in [
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "NCCL_ASYNC_ERROR_HANDLING",
    ] {
        let Some(raw) = get(name) else { continue };
        return match raw.trim().parse::<u32>() {
            Ok(1..=3) => Ok(()),
            Ok(0) => Err(Error::config(
                name,
                "0 turns off NCCL's handling of timed-out collectives, so a hung peer would hang the job; unset it (torch's default, 3) or set 1 to 3",
            )),
            _ => Err(Error::config(name, format!("'{raw}' (must be 1, 2 or 3)"))),
        };
    }
    Ok(())
}

/// Whether this run is a restart of an earlier attempt: torchrun's
/// (`TORCHELASTIC_RESTART_COUNT` > 0) or a requeued SLURM job's
/// (`SLURM_RESTART_COUNT` > 0). Such a run resumes on its own.
pub fn restarted(get: impl Fn(&str) -> Option<String>) -> Result<bool> {
    for name in ["TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"] {
        if whole(&get, name)?.unwrap_or(0) > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What `--device` asks of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// `cpu`.
    Cpu,
    /// `cuda`: a GPU chosen by the worker's local rank.
    AnyGpu,
    /// `cuda:N`: that GPU.
    Gpu(usize),
}

impl DeviceRequest {
    /// The request a (valid) `--device` value makes.
    pub fn parse(spec: &str) -> DeviceRequest {
        let spec = spec.trim().to_ascii_lowercase();
        match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => DeviceRequest::Gpu(n),
            _ if spec == "cuda" => DeviceRequest::AnyGpu,
            _ => DeviceRequest::Cpu,
        }
    }
}

/// What started the workers of a machine: it decides whether one visible
/// GPU is each worker's own (SLURM binds a GPU to each task) or one GPU
/// they would all share, and names itself in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `eqco pretrain --nproc-per-node N`.
    Eqco,
    /// torchrun (`TORCHELASTIC_RUN_ID`).
    Torchrun,
    /// srun's tasks (`SLURM_PROCID`, through `scripts/slurm.sh`).
    Slurm,
    /// Launcher variables set some other way.
    Other,
}

impl Launcher {
    /// The launcher of this process, from its variables.
    pub fn of(get: impl Fn(&str) -> Option<String>) -> Launcher {
        if get("TORCHELASTIC_RUN_ID").is_some() {
            Launcher::Torchrun
        } else if get(JOB_ID).is_some() {
            Launcher::Eqco
        } else if get("SLURM_PROCID").is_some() {
            Launcher::Slurm
        } else {
            Launcher::Other
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Eqco => "eqco --nproc-per-node",
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "srun",
            Launcher::Other => "the launcher",
        }
    }
}

/// The device of worker `local_rank` of `local_world_size` on a machine
/// where `visible` GPUs are visible to it, its workers started by `launcher`:
/// - `cuda` with at least `local_world_size` GPUs → `cuda:LOCAL_RANK`;
/// - `cuda` with one GPU visible under srun (`--gpus-per-task=1`: each
///   task's own) → `cuda:0`;
/// - `cuda:N` with several local workers → refused (one GPU for all);
/// - fewer GPUs than local workers → refused, naming the launcher, both
///   counts and `CUDA_VISIBLE_DEVICES` (NCCL would stop at "Duplicate GPU").
pub fn worker_device(
    request: DeviceRequest,
    (local_rank, local_world_size): (usize, usize),
    visible: usize,
    launcher: Launcher,
) -> Result<Device> {
    match request {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Gpu(n) if local_world_size > 1 => Err(Error::config(
            "--device",
            format!(
                "cuda:{n} names one GPU for the {local_world_size} workers of this machine; use --device cuda (worker i takes cuda:i)"
            ),
        )),
        DeviceRequest::Gpu(n) if n < visible => Ok(Device::Cuda(n)),
        DeviceRequest::Gpu(n) => Err(Error::config(
            "--device",
            format!("cuda:{n}, but {visible} GPU(s) are visible"),
        )),
        DeviceRequest::AnyGpu if visible == 0 => Err(Error::config(
            "--device",
            "cuda, but no CUDA GPU is visible to this worker; use --device cpu",
        )),
        DeviceRequest::AnyGpu if visible >= local_world_size => Ok(Device::Cuda(local_rank)),
        DeviceRequest::AnyGpu if visible == 1 && launcher == Launcher::Slurm => Ok(Device::Cuda(0)),
        DeviceRequest::AnyGpu => Err(Error::config(
            "LOCAL_WORLD_SIZE",
            format!(
                "{} started {local_world_size} workers on this machine, one per GPU, but {visible} GPU(s) are visible (CUDA_VISIBLE_DEVICES={}): start at most {visible} worker(s) here, or make more GPUs visible",
                launcher.name(),
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
            ),
        )),
    }
}

/// The CPUs this process may run on (`sched_getaffinity`), if known.
pub fn cpus_allowed() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t filled by the kernel for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set))
            .ok()
            .filter(|&n| n > 0)
    }
}

/// The CPUs of this machine that are online.
pub fn cpus_online() -> Option<usize> {
    // SAFETY: a plain query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// Threads for one of `local_size` workers that may use `allowed` of the
/// machine's `online` CPUs: a worker pinned to its share (srun's binding,
/// `allowed < online`) uses all of it; otherwise the workers split the
/// CPUs.
pub fn threads_per_worker(allowed: usize, online: usize, local_size: usize) -> usize {
    if local_size > 1 && allowed >= online {
        (allowed / local_size).max(1)
    } else {
        allowed.max(1)
    }
}

/// Writes a worker's final error where its launcher reads it: plain text to
/// `EQCO_ERROR_FILE` (eqco's own launcher), and torchrun's JSON to
/// `TORCHELASTIC_ERROR_FILE`, so that torchrun's failure summary shows it.
pub fn record_error(message: &str) {
    if let Some(path) = std::env::var_os(ERROR_FILE) {
        let _ = std::fs::write(path, message);
    }
    if let Some(path) = std::env::var_os(TORCHELASTIC_ERROR_FILE) {
        let _ = std::fs::write(path, torchelastic_error(message, unix_now()));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// torchrun's error-file JSON (torch's `ErrorHandler.record_exception`):
/// `{"message": {"message": …, "extraInfo": {"timestamp": "…"}}}`. Without a
/// `py_callstack`, the summary shows the message itself.
pub fn torchelastic_error(message: &str, timestamp: u64) -> String {
    serde_json::json!({
        "message": {
            "message": message,
            "extraInfo": { "timestamp": timestamp.to_string() },
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn env(vars: &[(&str, &str)]) -> Result<Option<Env>> {
        Env::from_lookup(lookup(vars))
    }

    const TORCHRUN: [(&str, &str); 6] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn torchrun_variables_are_read_and_checked() {
        assert_eq!(env(&[]).unwrap(), None, "no variables: one process");
        let e = env(&TORCHRUN).unwrap().unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (1, 4, 1, 2)
        );
        assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.1", 29500));
        assert!(!e.agent_store && !e.serves_store());
        let with = |k: &str, v: &str| {
            let mut vars: Vec<(&str, &str)> =
                TORCHRUN.iter().filter(|p| p.0 != k).copied().collect();
            if !v.is_empty() {
                vars.push((k, v));
            }
            env(&vars).unwrap_err()
        };
        for (k, v, needle) in [
            ("WORLD_SIZE", "0", "`WORLD_SIZE`"),
            ("RANK", "4", "`RANK`"),
            ("RANK", "-1", "`RANK`"),
            ("LOCAL_RANK", "2", "`LOCAL_RANK`"),
            ("MASTER_PORT", "70000", "`MASTER_PORT`"),
            ("MASTER_PORT", "", "`MASTER_PORT`"),
            ("MASTER_ADDR", "", "`MASTER_ADDR`"),
            (
                "TORCHELASTIC_RESTART_COUNT",
                "x",
                "`TORCHELASTIC_RESTART_COUNT`",
            ),
        ] {
            let e = with(k, v);
            assert!(
                e.is_usage() && e.to_string().contains(needle),
                "{k}={v}: {e}"
            );
        }
    }

    #[test]
    fn the_agent_store_is_joined_by_every_rank_with_a_prefix_per_attempt() {
        let mut vars = TORCHRUN.to_vec();
        vars[0] = ("RANK", "0");
        vars[2] = ("LOCAL_RANK", "0");
        let plain = env(&vars).unwrap().unwrap();
        assert!(
            plain.serves_store(),
            "rank 0 serves the store without torchrun's agent"
        );
        vars.extend([
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RUN_ID", "job7"),
            ("TORCHELASTIC_RESTART_COUNT", "1"),
        ]);
        let agent = env(&vars).unwrap().unwrap();
        assert!(agent.agent_store && !agent.serves_store());
        assert_eq!(agent.store_prefix(), "eqco/job7/1/");
        for v in vars.iter_mut() {
            if v.0 == "TORCHELASTIC_USE_AGENT_STORE" {
                v.1 = "False";
            }
        }
        assert!(env(&vars).unwrap().unwrap().serves_store());
    }

    #[test]
    fn slurm_task_counts_are_read_for_this_node() {
        for (spec, node, n) in [
            ("8(x2),7", 0, 8),
            ("8(x2),7", 1, 8),
            ("8(x2),7", 2, 7),
            ("8,7", 1, 7),
            ("2(x1)", 0, 2),
            ("4", 0, 4),
            ("1,3(x2),2", 3, 2),
        ] {
            assert_eq!(
                slurm_tasks_on_node(spec, node).unwrap(),
                n,
                "{spec} node {node}"
            );
        }
        for (spec, node) in [("8(x2),7", 3), ("8(2)", 0), ("x", 0), ("", 0)] {
            let e = slurm_tasks_on_node(spec, node).unwrap_err();
            assert!(
                e.is_usage() && e.to_string().contains("`SLURM_TASKS_PER_NODE`"),
                "{e}"
            );
        }
        // Without LOCAL_WORLD_SIZE, the SLURM count of this node.
        let e = env(&[
            ("RANK", "17"),
            ("WORLD_SIZE", "23"),
            ("LOCAL_RANK", "1"),
            ("SLURM_TASKS_PER_NODE", "8(x2),7"),
            ("SLURM_NODEID", "2"),
            ("MASTER_ADDR", "n0"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(e.local_world_size, 7);
    }

    #[test]
    fn nccl_keeps_its_error_handling() {
        assert!(check_nccl_error_handling(lookup(&[])).is_ok());
        for v in ["1", "2", "3", " 3 "] {
            let vars = [("TORCH_NCCL_ASYNC_ERROR_HANDLING", v)];
            assert!(check_nccl_error_handling(lookup(&vars)).is_ok(), "{v}");
        }
        for (name, v) in [
            ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0"),
            ("NCCL_ASYNC_ERROR_HANDLING", "0"),
            ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "yes"),
        ] {
            let e = check_nccl_error_handling(lookup(&[(name, v)])).unwrap_err();
            assert!(
                e.is_usage() && e.to_string().contains(&format!("`{name}`")),
                "{e}"
            );
        }
        // The current name wins over the old one, as in torch.
        let both = [
            ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3"),
            ("NCCL_ASYNC_ERROR_HANDLING", "0"),
        ];
        assert!(check_nccl_error_handling(lookup(&both)).is_ok());
    }

    #[test]
    fn restarts_mean_resume() {
        assert!(!restarted(lookup(&[])).unwrap());
        assert!(!restarted(lookup(&[("TORCHELASTIC_RESTART_COUNT", "0")])).unwrap());
        assert!(restarted(lookup(&[("TORCHELASTIC_RESTART_COUNT", "1")])).unwrap());
        assert!(restarted(lookup(&[("SLURM_RESTART_COUNT", "2")])).unwrap());
        let e = restarted(lookup(&[("SLURM_RESTART_COUNT", "two")])).unwrap_err();
        assert!(e.to_string().contains("`SLURM_RESTART_COUNT`"), "{e}");
    }

    #[test]
    fn gpus_are_mapped_from_the_local_rank() {
        use DeviceRequest::*;
        use Launcher::*;
        // cuda with at least LOCAL_WORLD_SIZE GPUs: cuda:LOCAL_RANK.
        assert_eq!(
            worker_device(AnyGpu, (3, 4), 8, Torchrun).unwrap(),
            Device::Cuda(3)
        );
        assert_eq!(
            worker_device(AnyGpu, (1, 2), 2, Eqco).unwrap(),
            Device::Cuda(1)
        );
        assert_eq!(
            worker_device(AnyGpu, (0, 1), 4, Other).unwrap(),
            Device::Cuda(0)
        );
        // One GPU visible to each srun task (--gpus-per-task=1): cuda:0.
        assert_eq!(
            worker_device(AnyGpu, (5, 8), 1, Slurm).unwrap(),
            Device::Cuda(0)
        );
        // One GPU shared by several workers of another launcher: refused,
        // naming the launcher and both counts.
        for launcher in [Eqco, Torchrun, Other] {
            let e = worker_device(AnyGpu, (1, 2), 1, launcher).unwrap_err();
            let m = e.to_string();
            assert!(
                e.is_usage()
                    && m.contains(launcher.name())
                    && m.contains("2 workers")
                    && m.contains("1 GPU(s)")
                    && m.contains("CUDA_VISIBLE_DEVICES"),
                "{m}"
            );
        }
        // cuda:N: a single worker takes it; several are refused.
        assert_eq!(
            worker_device(Gpu(1), (0, 1), 2, Other).unwrap(),
            Device::Cuda(1)
        );
        let e = worker_device(Gpu(1), (0, 2), 2, Eqco).unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("cuda:1"), "{e}");
        // Fewer GPUs than local workers: both counts named.
        let e = worker_device(AnyGpu, (0, 4), 2, Slurm).unwrap_err();
        let m = e.to_string();
        assert!(
            e.is_usage() && m.contains("4 workers") && m.contains("2 GPU(s)"),
            "{m}"
        );
        assert!(worker_device(AnyGpu, (0, 1), 0, Other)
            .unwrap_err()
            .is_usage());
        assert!(worker_device(Gpu(2), (0, 1), 2, Other)
            .unwrap_err()
            .is_usage());
        assert_eq!(worker_device(Cpu, (1, 2), 0, Eqco).unwrap(), Device::Cpu);
        assert_eq!(
            Launcher::of(|k| (k == "TORCHELASTIC_RUN_ID").then(String::new)),
            Torchrun
        );
        assert_eq!(Launcher::of(|k| (k == JOB_ID).then(String::new)), Eqco);
        assert_eq!(
            Launcher::of(|k| (k == "SLURM_PROCID").then(String::new)),
            Slurm
        );
        assert_eq!(Launcher::of(|_| None), Other);
        assert_eq!(DeviceRequest::parse("cuda"), AnyGpu);
        assert_eq!(DeviceRequest::parse("CUDA:3"), Gpu(3));
        assert_eq!(DeviceRequest::parse("cpu"), Cpu);
    }

    #[test]
    fn threads_follow_the_cpus_this_worker_may_use() {
        // Unpinned (torchrun, --nproc-per-node): the machine split.
        assert_eq!(threads_per_worker(16, 16, 4), 4);
        assert_eq!(threads_per_worker(2, 2, 4), 1);
        // Pinned by srun to its share: all of it.
        assert_eq!(threads_per_worker(4, 16, 4), 4);
        assert_eq!(threads_per_worker(16, 16, 1), 16);
        let allowed = cpus_allowed().unwrap();
        assert!(allowed >= 1 && allowed <= cpus_online().unwrap());
    }

    #[test]
    fn the_error_file_is_torchruns_json() {
        let text = torchelastic_error("error: `--out` x: denied", 1_700_000_000);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"]["message"], "error: `--out` x: denied");
        assert_eq!(v["message"]["extraInfo"]["timestamp"], "1700000000");
    }

    #[test]
    fn a_job_is_named_by_its_launcher() {
        let named = |vars: &[(&str, &str)]| {
            job_identity(|k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        assert_eq!(
            named(&[("EQCO_JOB_ID", "9f"), ("SLURM_JOB_ID", "7")]),
            "eqco job 9f"
        );
        assert_eq!(named(&[("TORCHELASTIC_RUN_ID", "r1")]), "torchrun run r1");
        assert_eq!(
            named(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0")]),
            "SLURM job 7 step 0"
        );
        assert_eq!(named(&[("SLURM_JOB_ID", "7")]), "SLURM job 7");
        assert_eq!(named(&[("EQCO_JOB_ID", " ")]), "");
    }

    #[test]
    fn a_one_host_job_reaches_its_store_and_binds_gloo_on_loopback() {
        let vars = |local: &'static str| {
            move |k: &str| match k {
                "RANK" => Some("1".to_string()),
                "WORLD_SIZE" => Some("2".to_string()),
                "LOCAL_WORLD_SIZE" => Some(local.to_string()),
                "LOCAL_RANK" => Some("0".to_string()),
                "MASTER_ADDR" => Some("node0".to_string()),
                "MASTER_PORT" => Some("29500".to_string()),
                _ => None,
            }
        };
        let one = Env::from_lookup(vars("2")).unwrap().unwrap();
        assert!(one.one_host());
        assert_eq!(one.store_host(), "127.0.0.1");
        assert!(matches!(one.gloo_bind().unwrap(), GlooBind::Address(a) if a.is_loopback()));
        let two = Env::from_lookup(vars("1")).unwrap().unwrap();
        assert!(!two.one_host());
        assert_eq!(two.store_host(), "node0");
    }

    #[test]
    fn the_route_to_loopback_starts_at_loopback() {
        assert_eq!(
            route_address("127.0.0.1", 29500).unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
        let e = route_address("no-such-host.invalid", 29500).unwrap_err();
        assert!(
            e.to_string().contains("MASTER_ADDR=no-such-host.invalid"),
            "{e}"
        );
    }
}
