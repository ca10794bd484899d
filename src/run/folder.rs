//! The run folder: `config.toml`, `metrics.jsonl`, `checkpoints/`,
//! `plots/`, `summary.json` (see the interface page), and how a run starts
//! in one: fresh, or continuing what the folder holds.

use std::path::{Path, PathBuf};

use super::checkpoint;
use super::config::PretrainConfig;
use super::monitor::ResumeMode;
use crate::base::error::{Error, Result};

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

/// How `eqco pretrain` was asked to start: `--config`, `--set`, `--out`
/// and `--resume`.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// A preset name or a TOML file.
    pub config: Option<String>,
    /// `key=value` overrides.
    pub sets: Vec<String>,
    /// The run folder [default: `runs/pretrain`].
    pub out: Option<PathBuf>,
    /// `--resume DIR` or `--resume auto`.
    pub resume: Option<PathBuf>,
}

/// A run about to start: its configuration, its folder, whether it
/// continues from a checkpoint, and whether it resumes on its own.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// The configuration (a continued run's `config.toml` with `--set` applied).
    pub config: PretrainConfig,
    /// The run folder.
    pub out: PathBuf,
    /// Continue from the folder's latest checkpoint.
    pub resume: bool,
    /// Resume on its own (`--resume auto`, the `resume` key, or a restart):
    /// continue from the newest checkpoint in `out` when there is one, and
    /// start fresh otherwise.
    pub auto: bool,
}

impl RunStart {
    /// Resolves `req`; `restarted` says that a launcher restarted this
    /// process (it then resumes on its own).
    pub fn resolve(req: &StartRequest, restarted: bool) -> Result<RunStart> {
        let auto_flag = req.resume.as_deref() == Some(Path::new("auto"));
        if let Some(run) = req.resume.as_ref().filter(|_| !auto_flag) {
            if req.config.is_some() {
                return Err(Error::config(
                    "--resume",
                    format!(
                        "{} continues with that run's config.toml: leave --config out (or use --resume auto with --config and --out)",
                        run.display()
                    ),
                ));
            }
            let config = run_config(run, &req.sets)?;
            return Ok(RunStart::new(config, run.clone(), true, false));
        }
        let config = PretrainConfig::load(req.config.as_deref(), &req.sets)?;
        let out = req
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/pretrain"));
        let auto = auto_flag || restarted || config.monitor.resume == ResumeMode::Auto;
        if auto && checkpoint::exists(&checkpoint::dir_of(&out)) {
            return Ok(RunStart::new(run_config(&out, &req.sets)?, out, true, true));
        }
        Ok(RunStart::new(config, out, false, auto))
    }

    fn new(config: PretrainConfig, out: PathBuf, resume: bool, auto: bool) -> RunStart {
        RunStart {
            config,
            out,
            resume,
            auto,
        }
    }

    /// A new run may not overwrite a folder that holds one.
    pub fn check_out(&self) -> Result<()> {
        if !self.resume && self.out.join("metrics.jsonl").exists() {
            return Err(Error::config(
                "--out",
                format!(
                    "{} already holds a run; continue it with --resume {0}, or choose another --out",
                    self.out.display()
                ),
            ));
        }
        Ok(())
    }
}
