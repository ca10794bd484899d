//! Checkpoints: their layout, how they are written, and how a run's
//! checkpoint is opened by everything that reads one (resume, evaluation,
//! embedding, export).
//!
//! One safetensors file per save holds the query encoder (`query.*`), the
//! method's state (`key.*`, `queue.*`), the optimizer's momentum buffers
//! (`optim.*`) and the position (`meta.step`, `meta.epoch`, `meta.batch`).
//! All randomness is derived from the seed and the position, so this is the
//! whole state. Files are written to a temporary name and renamed;
//! `latest.safetensors` is replaced the same way.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Tensor;

use super::config::PretrainConfig;
use super::folder::run_config;
use crate::base::device::Compute;
use crate::base::error::{Error, Result};
use crate::base::seed::with_torch_seed;
use crate::model::export::write_safetensors;
use crate::model::state::load_named;
use crate::model::{Encoder, Norm, ResNet};

/// The query encoder's variables: `query.conv1.weight`, …, `query.head.*`.
pub const QUERY: &str = "query.";
/// The position entries.
const META: [&str; 3] = ["meta.step", "meta.epoch", "meta.batch"];

/// Where training stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Optimizer steps done.
    pub step: u64,
    /// The epoch to continue in.
    pub epoch: u64,
    /// The batch of that epoch to continue with.
    pub batch: u64,
}

/// The checkpoints folder of a run folder.
pub fn dir_of(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// The file of the checkpoint after `step` steps.
pub fn step_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step}.safetensors"))
}

/// The newest checkpoint of a run.
pub fn latest_path(dir: &Path) -> PathBuf {
    dir.join("latest.safetensors")
}

/// The run folder a checkpoint belongs to: `<run>/checkpoints/<file>`.
pub fn run_of(file: &Path) -> PathBuf {
    file.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Writes `tensors` and `pos` to `step-<step>.safetensors` and
/// `latest.safetensors` in `dir`. The file is written whole to a temporary
/// name, synced and renamed; on failure (a full disk) nothing new is left
/// behind, the error says what the OS said, and the checkpoints before
/// stay as they were.
pub fn save(dir: &Path, pos: Position, tensors: Vec<(String, Tensor)>) -> Result<PathBuf> {
    crate::base::io::create_dir(dir)?;
    let mut all = tensors;
    for (name, v) in META.iter().zip([pos.step, pos.epoch, pos.batch]) {
        all.push((name.to_string(), Tensor::from_slice(&[v as i64])));
    }
    let path = step_path(dir, pos.step);
    write_safetensors(&all, HashMap::new(), &path)?;
    let latest = latest_path(dir);
    let tmp_latest = dir.join(format!(".latest.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp_latest);
    std::fs::hard_link(&path, &tmp_latest)
        .or_else(|_| std::fs::copy(&path, &tmp_latest).map(|_| ()))
        .and_then(|_| std::fs::rename(&tmp_latest, &latest))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp_latest);
            Error::io(&latest, e)
        })?;
    Ok(path)
}

/// Whether `dir` holds a checkpoint (`latest` or a `step-<step>` one).
pub fn exists(dir: &Path) -> bool {
    latest_path(dir).is_file() || steps(dir).is_ok_and(|s| !s.is_empty())
}

/// The `step-<step>` checkpoints in `dir`, by step.
pub fn steps(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-")?.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(step) = step {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes the `step-<step>` checkpoints of `dir` that `keeps(step,
/// newer)` lets go (`newer`: how many are newer).
pub fn prune(dir: &Path, keeps: impl Fn(u64, usize) -> bool) -> Result<()> {
    for (newer, (step, path)) in steps(dir)?.into_iter().rev().enumerate() {
        if !keeps(step, newer) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The newest checkpoint of `dir` that reads whole: `latest`, else the
/// `step-<step>` ones from the newest; with the files passed over, and why.
pub fn newest_whole(dir: &Path) -> Result<(Checkpoint, Vec<(PathBuf, String)>)> {
    let mut candidates = vec![latest_path(dir)];
    candidates.extend(
        steps(dir)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|(_, p)| p),
    );
    let mut passed = Vec::new();
    for file in candidates.into_iter().filter(|f| f.is_file()) {
        match Checkpoint::read(&file) {
            Ok(c) => return Ok((c, passed)),
            Err(e) => passed.push((file, e.to_string())),
        }
    }
    let why: Vec<String> = passed.iter().map(|(_, e)| e.clone()).collect();
    Err(Error::Data {
        path: dir.to_path_buf(),
        message: match why.is_empty() {
            true => "holds no checkpoint to resume from".into(),
            false => format!("no checkpoint here reads whole: {}", why.join("; ")),
        },
    })
}

/// Reads a checkpoint: its tensors by name, and its position.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, Position)> {
    let c = Checkpoint::read(path)?;
    Ok((c.state, c.pos))
}

/// One checkpoint file, read.
pub struct Checkpoint {
    /// The file.
    pub file: PathBuf,
    /// Its tensors by name.
    pub state: HashMap<String, Tensor>,
    /// Where training stood.
    pub pos: Position,
}

impl Checkpoint {
    /// Reads `file`; a missing, unreadable or foreign file is a data error naming it.
    pub fn read(file: &Path) -> Result<Checkpoint> {
        if !file.is_file() {
            return Err(Error::Data {
                path: file.to_path_buf(),
                message: "no checkpoint here".into(),
            });
        }
        let named = Tensor::read_safetensors(file).map_err(|e| Error::Data {
            path: file.to_path_buf(),
            message: format!("not a readable checkpoint: {e}"),
        })?;
        let state: HashMap<String, Tensor> = named.into_iter().collect();
        let get = |k: &str| {
            state
                .get(k)
                .map(|t| t.int64_value(&[0]) as u64)
                .ok_or_else(|| Error::Data {
                    path: file.to_path_buf(),
                    message: format!("not an eqco checkpoint: no {k}"),
                })
        };
        let pos = Position {
            step: get(META[0])?,
            epoch: get(META[1])?,
            batch: get(META[2])?,
        };
        Ok(Checkpoint {
            file: file.to_path_buf(),
            state,
            pos,
        })
    }

    /// A mismatch between this file and what reads it, as a data error
    /// naming the file, `what` it should fit, and the tensor.
    pub fn mismatch(&self, what: &str, e: Error) -> Error {
        Error::Data {
            path: self.file.clone(),
            message: format!("does not fit {what}: {e}"),
        }
    }

    /// Copies the `prefix<name>` entries into the variables of `vs`.
    pub fn restore(&self, prefix: &str, vs: &VarStore) -> Result<()> {
        load_named(prefix, vs, &self.state)
    }

    /// Checks that the file holds no tensor besides `names` and the position
    /// (every one of `names` was restored, so none is missing).
    pub fn check_no_extra<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let expected: BTreeSet<&str> = names.into_iter().chain(META).collect();
        match self
            .state
            .keys()
            .filter(|k| !expected.contains(k.as_str()))
            .min()
        {
            Some(extra) => Err(Error::Mismatch(format!(
                "extra tensor `{extra}` (the configuration has no such part)"
            ))),
            None => Ok(()),
        }
    }
}

/// A run's checkpoint with the run's configuration: what evaluation and
/// embedding start from.
pub struct RunCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The run's configuration (its data folder possibly replaced).
    pub config: PretrainConfig,
}

impl RunCheckpoint {
    /// Opens `file` (in `<run>/checkpoints/`) and its run's `config.toml`;
    /// `dataset` replaces the run's dataset folder (format detected).
    pub fn open(file: &Path, dataset: Option<&Path>) -> Result<RunCheckpoint> {
        // The checkpoint first: a missing file is named as such, not as a
        // missing config.toml beside it.
        let checkpoint = Checkpoint::read(file)?;
        let mut config = run_config(&run_of(file), &[])?;
        if let Some(d) = dataset {
            config.data = config.data.with_dir(d.to_path_buf());
        }
        Ok(RunCheckpoint { checkpoint, config })
    }

    /// How the run's encoder computes on `device`: its precision and
    /// memory format, the precision used and why, and any warning.
    pub fn compute(&self, device: tch::Device) -> (Compute, String, Option<String>) {
        self.config.compute.resolve(device)
    }

    /// The query encoder's backbone for `channels`-channel images, with the
    /// checkpoint's weights, in `vs` (at its root, as in `query.*`).
    pub fn backbone(&self, vs: &VarStore, channels: u8, compute: Compute) -> Result<ResNet> {
        let resnet = self.config.encoder(channels)?.resnet;
        // The initial weights are overwritten; drawing them still takes the
        // generator's lock, so that it cannot perturb another thread's
        // seeded draws (see `seed::with_torch_seed`).
        let backbone = with_torch_seed(self.config.seed, || ResNet::new(&vs.root(), resnet))?;
        self.load(vs, compute)?;
        Ok(backbone)
    }

    /// The whole query encoder (backbone and head), in inference mode's
    /// local batch normalisation, with the checkpoint's weights.
    pub fn encoder(&self, vs: &VarStore, channels: u8, compute: Compute) -> Result<Encoder> {
        let cfg = self.config.encoder(channels)?;
        let encoder = with_torch_seed(self.config.seed, || {
            Encoder::new(&vs.root(), &cfg, compute, &Norm::Local)
        })?;
        self.load(vs, compute)?;
        Ok(encoder)
    }

    /// Lays `vs` out for `compute` and fills it from `query.*`.
    fn load(&self, vs: &VarStore, compute: Compute) -> Result<()> {
        compute.prepare(vs);
        let what = format!(
            "the model of its run's config.toml ({})",
            run_of(&self.checkpoint.file).join("config.toml").display()
        );
        self.checkpoint
            .restore(QUERY, vs)
            .map_err(|e| self.checkpoint.mismatch(&what, e))
    }
}
