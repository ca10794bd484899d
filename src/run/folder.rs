//! The run folder: `config.toml`, `metrics.jsonl`, `checkpoints/`,
//! `plots/`, `summary.json` (see the interface page).

use std::path::Path;

use super::config::PretrainConfig;
use crate::error::{Error, Result};

/// Reads a run's resolved configuration (`<run>/config.toml`) with `sets`
/// applied; a missing file is an error naming it.
pub fn run_config(run: &Path, sets: &[String]) -> Result<PretrainConfig> {
    let path = run.join("config.toml");
    if !path.is_file() {
        return Err(Error::Data {
            path,
            message: "missing: is this a run folder written by `eqco pretrain`?".into(),
        });
    }
    PretrainConfig::load(Some(path.to_str().unwrap_or_default()), sets)
}
