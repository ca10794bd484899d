//! Sweeps: a grid of pretraining runs over config keys (K, α, N, method…)
//! plus baseline runs, each followed by its evaluations, one after another,
//! then a report. A sweep folder holds `sweep.toml` (what was asked) and one
//! run folder per grid point; running the same sweep again skips finished
//! runs and evaluations and resumes an interrupted run from its last
//! checkpoint.
//!
//! A sweep file:
//! ```toml
//! base = "fmnist-simo"            # preset or file every run starts from
//! [set]                           # keys set for every run
//! knn_every = 1
//! [grid]                          # every combination is a run
//! k_negatives = [16, 255]
//! alpha = [256.0, "none"]
//! [[baseline]]                    # extra runs beside the grid
//! name = "random-init"
//! set = { max_steps = 0 }
//! [eval]                          # evaluations after each run
//! knn = true
//! linear = "logreg"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::error::{Error, Result};
use crate::base::io::atomic_write;
use crate::eval::{evaluate_knn, evaluate_linear, Frozen, KnnSettings, LinearMode, LinearSettings};
use crate::job::Job;
use crate::run::checkpoint;
use crate::run::config::{parse_value, resolve};
use crate::run::PretrainConfig;
use crate::train::pretrain;

/// A run outside the grid (random init, supervised…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineRun {
    /// Its folder's name.
    pub name: String,
    /// Keys set on top of the sweep's `set`.
    #[serde(default)]
    pub set: toml::Table,
}

/// The evaluations made after each run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepEval {
    /// Weighted kNN (k = 200, τ = 0.1).
    pub knn: bool,
    /// kNN memory bank size (training images; all if absent).
    pub knn_bank: Option<usize>,
    /// Linear probe mode, or absent for none.
    pub linear: Option<LinearMode>,
    /// Linear probe epochs.
    pub linear_epochs: usize,
    /// Linear probe learning rate.
    pub linear_lr: f64,
    /// Train the linear probe on a fixed random subset of this many
    /// training images (all if absent).
    pub linear_images: Option<usize>,
}

impl Default for SweepEval {
    fn default() -> Self {
        SweepEval {
            knn: true,
            knn_bank: None,
            linear: Some(LinearMode::Logreg),
            linear_epochs: 100,
            linear_lr: 30.0,
            linear_images: None,
        }
    }
}

/// A sweep: the base configuration, keys set for all, the grid, baselines, evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Preset name or TOML file every run starts from.
    pub base: String,
    /// Keys set for every run.
    #[serde(default)]
    pub set: toml::Table,
    /// Key → values; every combination is a run.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<toml::Value>>,
    /// Runs beside the grid.
    #[serde(default)]
    pub baseline: Vec<BaselineRun>,
    /// Evaluations after each run.
    #[serde(default)]
    pub eval: SweepEval,
}

/// The sweep presets compiled into the binary: `(name, TOML)`.
pub const SWEEP_PRESETS: [(&str, &str); 15] = [
    (
        "fmnist-simo-k",
        include_str!("../../presets/sweeps/fmnist-simo-k.toml"),
    ),
    (
        "fmnist-mocov2-k",
        include_str!("../../presets/sweeps/fmnist-mocov2-k.toml"),
    ),
    (
        "fmnist-simo-alpha",
        include_str!("../../presets/sweeps/fmnist-simo-alpha.toml"),
    ),
    (
        "fmnist-mocov2-alpha",
        include_str!("../../presets/sweeps/fmnist-mocov2-alpha.toml"),
    ),
    (
        "fmnist-mocov2-n",
        include_str!("../../presets/sweeps/fmnist-mocov2-n.toml"),
    ),
    (
        "fmnist-precision",
        include_str!("../../presets/sweeps/fmnist-precision.toml"),
    ),
    (
        "fmnist-simo-k-long",
        include_str!("../../presets/sweeps/fmnist-simo-k-long.toml"),
    ),
    (
        "fmnist-mocov2-k-long",
        include_str!("../../presets/sweeps/fmnist-mocov2-k-long.toml"),
    ),
    (
        "fmnist-simo-k-paired",
        include_str!("../../presets/sweeps/fmnist-simo-k-paired.toml"),
    ),
    (
        "fmnist-simo-k16-more-seeds",
        include_str!("../../presets/sweeps/fmnist-simo-k16-more-seeds.toml"),
    ),
    (
        "fmnist-simo-k-small",
        include_str!("../../presets/sweeps/fmnist-simo-k-small.toml"),
    ),
    (
        "fmnist-mocov2-k-paired",
        include_str!("../../presets/sweeps/fmnist-mocov2-k-paired.toml"),
    ),
    (
        "fmnist-simo-table6",
        include_str!("../../presets/sweeps/fmnist-simo-table6.toml"),
    ),
    (
        "fmnist-simo-table7",
        include_str!("../../presets/sweeps/fmnist-simo-table7.toml"),
    ),
    (
        "fmnist-simclr-alpha-paired",
        include_str!("../../presets/sweeps/fmnist-simclr-alpha-paired.toml"),
    ),
];

/// One run of a sweep: its folder name and configuration.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Folder name inside the sweep folder.
    pub name: String,
    /// The resolved configuration.
    pub config: PretrainConfig,
}

/// Short names of grid keys in run names (`k16`, `n512`, `alpha256`).
fn key_tag(key: &str) -> &str {
    match key {
        "k_negatives" | "queue_size" => "k",
        "batch_size" => "n",
        "method" => "",
        other => other,
    }
}

/// The order of keys in run names: method, K, α, N, then the rest.
fn key_rank(key: &str) -> usize {
    ["method", "k_negatives", "queue_size", "alpha", "batch_size"]
        .iter()
        .position(|k| *k == key)
        .unwrap_or(usize::MAX)
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        other => other.to_string(),
    }
}

/// `key=value` strings for [`PretrainConfig::load`].
fn sets_of(table: &toml::Table) -> Vec<String> {
    table.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

impl SweepConfig {
    /// Resolves `--config` (a sweep preset or file) and `--set key=value`
    /// (added to the sweep's `set`); errors name the file and key.
    pub fn load(spec: &str, sets: &[String]) -> Result<(SweepConfig, String)> {
        let (text, origin) = resolve(spec, &SWEEP_PRESETS, "sweep preset")?;
        let mut cfg: SweepConfig = toml::from_str(&text).map_err(|e| {
            Error::config(
                origin.clone(),
                format!("not a valid sweep: {}", e.message()),
            )
        })?;
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| Error::config("--set", format!("'{set}' is not key=value")))?;
            cfg.set
                .insert(key.trim().to_string(), parse_value(value.trim()));
        }
        let resolved = toml::to_string(&cfg).expect("plain data serialises");
        Ok((cfg, resolved))
    }

    /// Every run of the sweep, grid first (in key order), then the
    /// baselines; each configuration is loaded and validated here, so an
    /// impossible grid point fails before anything runs.
    pub fn plan(&self) -> Result<Vec<PlannedRun>> {
        let mut keys: Vec<&String> = self.grid.keys().collect();
        keys.sort_by_key(|k| (key_rank(k), (*k).clone()));
        if let Some(k) = keys.iter().find(|k| self.grid[**k].is_empty()) {
            return Err(Error::config(format!("grid.{k}"), "no values"));
        }
        let mut points: Vec<Vec<(&String, &toml::Value)>> = vec![Vec::new()];
        for k in &keys {
            points = points
                .into_iter()
                .flat_map(|p| {
                    self.grid[*k].iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((*k, v));
                        q
                    })
                })
                .collect();
        }
        let mut runs = Vec::new();
        let load = |name: &str, extra: &toml::Table| -> Result<PretrainConfig> {
            let mut table = self.set.clone();
            table.extend(extra.clone());
            PretrainConfig::load(Some(&self.base), &sets_of(&table)).map_err(|e| match e {
                Error::Config { field, message } => {
                    Error::config(field, format!("{message} (in sweep run '{name}')"))
                }
                other => other,
            })
        };
        for point in points.iter().filter(|p| !p.is_empty()) {
            let name = point
                .iter()
                .map(|(k, v)| format!("{}{}", key_tag(k), value_text(v)))
                .collect::<Vec<_>>()
                .join("-");
            let extra: toml::Table = point
                .iter()
                .map(|(k, v)| ((*k).clone(), (*v).clone()))
                .collect();
            runs.push(PlannedRun {
                config: load(&name, &extra)?,
                name,
            });
        }
        for b in &self.baseline {
            if b.name.is_empty() || b.name.contains(['/', '\\']) || b.name.starts_with('.') {
                return Err(Error::config(
                    "baseline.name",
                    format!("'{}' is not a folder name", b.name),
                ));
            }
            runs.push(PlannedRun {
                config: load(&b.name, &b.set)?,
                name: b.name.clone(),
            });
        }
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(
                "baseline.name",
                format!("two runs are named '{}'", w[0]),
            ));
        }
        if runs.is_empty() {
            return Err(Error::config("grid", "the sweep has no runs"));
        }
        Ok(runs)
    }
}

/// How the sweep runs.
#[derive(Clone)]
pub struct SweepOptions {
    /// The sweep folder.
    pub out: PathBuf,
    /// Where models run, with how many threads (one process).
    pub job: Job,
    /// Progress bars.
    pub progress: bool,
}

/// Runs (or continues) the sweep; returns the report's Markdown.
pub fn run(cfg: &SweepConfig, resolved: &str, opts: &SweepOptions) -> Result<String> {
    let plan = cfg.plan()?;
    let out = &opts.out;
    crate::base::io::create_dir(out)?;
    let record = out.join("sweep.toml");
    match std::fs::read_to_string(&record) {
        Ok(old) if old != resolved => {
            return Err(Error::config(
                "--out",
                format!(
                    "{} holds another sweep ({} differs); choose another --out",
                    out.display(),
                    record.display()
                ),
            ))
        }
        Ok(_) => eprintln!("sweep: continuing {}", out.display()),
        Err(_) => atomic_write(&record, resolved.as_bytes())?,
    }
    for (i, run) in plan.iter().enumerate() {
        let dir = out.join(&run.name);
        let head = format!("sweep: run {}/{} {}", i + 1, plan.len(), run.name);
        if dir.join("summary.json").is_file() {
            eprintln!("{head}: trained");
        } else {
            let latest = checkpoint::latest_path(&dir.join("checkpoints"));
            let resume = latest.is_file();
            if !resume && dir.join("metrics.jsonl").exists() {
                // Stopped before its first checkpoint: nothing to resume from.
                std::fs::remove_file(dir.join("metrics.jsonl"))
                    .map_err(|e| Error::io(dir.join("metrics.jsonl"), e))?;
            }
            eprintln!("{head}: {}", if resume { "resuming" } else { "training" });
            let train = opts.job.train_options(&dir, resume, opts.progress);
            pretrain(&run.config, &train)?;
        }
        evaluate(&cfg.eval, &dir, &head, run.config.seed, opts)?;
    }
    crate::app::report::write(std::slice::from_ref(out), out)
}

/// The evaluations of one run not made yet, into `<run>/eval/`.
fn evaluate(e: &SweepEval, dir: &Path, head: &str, seed: u64, opts: &SweepOptions) -> Result<()> {
    let eval_dir = dir.join("eval");
    let (knn_file, linear_file) = (eval_dir.join("knn.json"), eval_dir.join("linear.json"));
    let need_knn = e.knn && !knn_file.is_file();
    let need_linear = e.linear.is_some() && !linear_file.is_file();
    if !need_knn && !need_linear {
        return Ok(());
    }
    crate::base::io::create_dir(&eval_dir)?;
    let frozen = Frozen::load(
        &checkpoint::latest_path(&dir.join("checkpoints")),
        None,
        opts.job.device,
        opts.job.threads,
    )?;
    // The linear probe first: it caches the training features kNN reuses.
    if let (true, Some(mode)) = (need_linear, e.linear) {
        let settings = LinearSettings {
            mode,
            epochs: e.linear_epochs,
            lr: e.linear_lr,
            max_images: e.linear_images,
            seed,
            threads: opts.job.threads,
            ..Default::default()
        };
        let r = evaluate_linear(&frozen, &settings)?;
        eprintln!(
            "{head}: linear top-1 {:.2} % ({mode:?} mode)",
            100.0 * r.top1
        );
        atomic_write(&linear_file, pretty(&r).as_bytes())?;
    }
    if need_knn {
        let r = evaluate_knn(
            &frozen,
            KnnSettings {
                bank: e.knn_bank,
                ..Default::default()
            },
        )?;
        eprintln!("{head}: kNN top-1 {:.2} %", 100.0 * r.top1);
        atomic_write(&knn_file, pretty(&r).as_bytes())?;
    }
    Ok(())
}

/// Pretty JSON of an evaluation report.
fn pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("plain data serialises")
}
