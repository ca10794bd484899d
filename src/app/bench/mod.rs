//! Benchmarks that print figures and ratios against PyTorch measured in
//! the same call: the toy MI training step ([`toy_mi`]), the two-view data
//! pipeline ([`data`]), whole training steps ([`train`]) and training with
//! several data-parallel processes ([`dist`]).
//!
//! The PyTorch side of each benchmark is a script in `scripts/`, compiled
//! into the binary so that a benchmark runs from any folder; it prints one
//! JSON line that is read back here.

pub mod data;
pub mod dist;
pub mod toy_mi;
pub mod train;

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

/// The Python interpreter that runs the PyTorch side.
#[derive(Debug, Clone)]
pub struct Python {
    /// The interpreter, with torch installed.
    pub interpreter: PathBuf,
}

impl Python {
    /// `explicit`, else `$VIRTUAL_ENV/bin/python`, else `.venv/bin/python`, else `python3`.
    pub fn find(explicit: Option<PathBuf>) -> Python {
        let interpreter = explicit.unwrap_or_else(|| {
            let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python"));
            let local = PathBuf::from(".venv/bin/python");
            venv.filter(|p| p.exists())
                .or_else(|| local.exists().then_some(local))
                .unwrap_or_else(|| PathBuf::from("python3"))
        });
        Python { interpreter }
    }

    /// Runs `script` (its text, named `name`) with `args` and parses the
    /// JSON line it prints.
    pub fn run(
        &self,
        name: &str,
        script: &str,
        args: &[String],
    ) -> anyhow::Result<serde_json::Value> {
        let python = &self.interpreter;
        let dir = tempfile::tempdir().context("creating a temporary folder")?;
        let file = dir.path().join(name);
        std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
        let out = Command::new(python)
            .arg(&file)
            .args(args)
            .output()
            .with_context(|| {
                format!(
                    "running {} (set --python, or --no-python)",
                    python.display()
                )
            })?;
        if !out.status.success() {
            anyhow::bail!(
                "scripts/{name} failed under {}: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let last = line.lines().last().unwrap_or("");
        serde_json::from_str(last.trim())
            .with_context(|| format!("parsing the output of scripts/{name}: {line:?}"))
    }
}

/// A count option that must be at least 1; the error names the flag.
pub fn positive(flag: &str, v: usize) -> crate::Result<()> {
    if v == 0 {
        return Err(crate::Error::config(flag, "0 (must be ≥ 1)"));
    }
    Ok(())
}

/// Where the PyTorch side runs (options shared by the benchmarks).
#[derive(Debug, Clone, clap::Args)]
pub struct PythonArgs {
    /// Python with torch (and torchvision for `bench data`) [default: $VIRTUAL_ENV/bin/python, else .venv/bin/python, else python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch side.
    #[arg(long)]
    pub no_python: bool,
}

impl PythonArgs {
    /// The interpreter to run, or `None` with `--no-python`.
    pub fn python(&self) -> Option<Python> {
        (!self.no_python).then(|| Python::find(self.python.clone()))
    }
}
