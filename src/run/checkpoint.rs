//! Checkpoints: one safetensors file per save holding the query encoder
//! (`query.*`), the method's state (`key.*`, `queue.*`), the optimizer's
//! momentum buffers (`optim.*`) and the position (`meta.step`, `meta.epoch`,
//! `meta.batch`). All randomness is derived from the seed and the position,
//! so this is the whole state. Files are written to a temporary name and
//! renamed; `latest.safetensors` is replaced the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::error::{Error, Result};

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

/// The file of the checkpoint after `step` steps.
pub fn step_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step}.safetensors"))
}

/// The newest checkpoint of a run.
pub fn latest_path(dir: &Path) -> PathBuf {
    dir.join("latest.safetensors")
}

/// Writes `tensors` and `pos` to `step-<step>.safetensors` and `latest.safetensors` in `dir`.
pub fn save(dir: &Path, pos: Position, tensors: Vec<(String, Tensor)>) -> Result<PathBuf> {
    crate::io::create_dir(dir)?;
    let mut all: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    for (name, v) in [
        ("meta.step", pos.step),
        ("meta.epoch", pos.epoch),
        ("meta.batch", pos.batch),
    ] {
        all.push((name.to_string(), Tensor::from_slice(&[v as i64])));
    }
    let path = step_path(dir, pos.step);
    let tmp = dir.join(format!(".checkpoint.{}.tmp", std::process::id()));
    Tensor::write_safetensors(&all, &tmp).map_err(|e| Error::Data {
        path: path.clone(),
        message: format!("writing the checkpoint failed: {e}"),
    })?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let latest = latest_path(dir);
    let tmp_latest = dir.join(format!(".latest.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp_latest);
    std::fs::hard_link(&path, &tmp_latest)
        .or_else(|_| std::fs::copy(&path, &tmp_latest).map(|_| ()))
        .map_err(|e| Error::io(&latest, e))?;
    std::fs::rename(&tmp_latest, &latest).map_err(|e| Error::io(&latest, e))?;
    Ok(path)
}

/// Reads a checkpoint: its tensors by name, and its position.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, Position)> {
    if !path.is_file() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            message: "no checkpoint here".into(),
        });
    }
    let named = Tensor::read_safetensors(path).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        message: format!("not a readable checkpoint: {e}"),
    })?;
    let map: HashMap<String, Tensor> = named.into_iter().collect();
    let get = |k: &str| {
        map.get(k)
            .map(|t| t.int64_value(&[0]) as u64)
            .ok_or_else(|| Error::Data {
                path: path.to_path_buf(),
                message: format!("not an eqco checkpoint: no {k}"),
            })
    };
    let pos = Position {
        step: get("meta.step")?,
        epoch: get("meta.epoch")?,
        batch: get("meta.batch")?,
    };
    Ok((map, pos))
}
