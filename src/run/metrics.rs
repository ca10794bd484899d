//! `metrics.jsonl`: one JSON object per optimizer step, mirrored (when the
//! run has `tensorboard = true`) into the run's TensorBoard event file.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tensorboard::{tags, EventFile};
use crate::base::error::{Error, Result};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps done, counting this one (1-based).
    pub step: u64,
    /// The epoch this step belongs to (0-based).
    pub epoch: u64,
    /// The batch's mean loss.
    pub loss: f64,
    /// Empirical MI lower bound `ln K + m/τ − L` (Eq. 4/6).
    pub mi_bound: f64,
    /// Mean over queries of `‖∂L_i/∂q_i‖` (Theorem 2).
    pub grad_norm_q: f64,
    /// The learning rate used for this step.
    pub lr: f64,
    /// Images per second over this step, data loading included.
    pub img_per_s: f64,
    /// Negatives per query.
    pub k: u64,
    /// kNN top-1 accuracy, on lines where the monitor ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_top1: Option<f64>,
    /// The share of the time since the previous read of the figures that
    /// this process spent waiting for the loader (absent in runs made
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_wait_share: Option<f64>,
}

impl StepMetrics {
    /// The line's figures under their TensorBoard tags (the optional ones
    /// where present).
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            (tags::LOSS, self.loss),
            (tags::MI_BOUND, self.mi_bound),
            (tags::GRAD_NORM_Q, self.grad_norm_q),
            (tags::LR, self.lr),
            (tags::IMG_PER_S, self.img_per_s),
            (tags::EPOCH, self.epoch as f64),
            (tags::K, self.k as f64),
        ];
        if let Some(w) = self.data_wait_share {
            v.push((tags::DATA_WAIT_SHARE, w));
        }
        if let Some(acc) = self.knn_top1 {
            v.push((tags::KNN_TOP1, acc));
        }
        v
    }
}

/// Appends metrics lines, flushing each so that a crash loses nothing, and
/// writes the same figures to the TensorBoard event file when there is one.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    tensorboard: Option<EventFile>,
}

impl MetricsWriter {
    /// Opens `path` for appending; when resuming after `keep_through` steps,
    /// first drops the lines of later steps (a crash may have left some).
    pub fn open(path: &Path, keep_through: Option<u64>) -> Result<MetricsWriter> {
        if let Some(last) = keep_through {
            // Keep the lines as written: no re-serialisation of their numbers.
            let text: String = read_lines(path)?
                .into_iter()
                .filter(|(_, m)| m.step <= last)
                .map(|(line, _)| line + "\n")
                .collect();
            crate::base::io::atomic_write(path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            file,
            tensorboard: None,
        })
    }

    /// Also writes every line's figures to the event file `tb`.
    pub fn with_tensorboard(self, tb: EventFile) -> MetricsWriter {
        MetricsWriter {
            tensorboard: Some(tb),
            ..self
        }
    }

    /// The TensorBoard event file, if the run writes one.
    pub fn tensorboard(&mut self) -> Option<&mut EventFile> {
        self.tensorboard.as_mut()
    }

    /// Appends one line (and its event, written through to the file as the
    /// line is: both are complete up to the last step whenever a checkpoint
    /// is written).
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m).expect("plain data") + "\n";
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        match &mut self.tensorboard {
            Some(tb) => tb.scalars(m.step, &m.scalars()),
            None => Ok(()),
        }
    }
}

/// The mean of `f` over the last 10 % of `metrics` (at least one line; NaN
/// for none): the figure summaries and reports quote.
pub fn tail_mean(metrics: &[StepMetrics], f: fn(&StepMetrics) -> f64) -> f64 {
    let tail = &metrics[metrics.len() - (metrics.len() / 10).max(1).min(metrics.len())..];
    tail.iter().map(f).sum::<f64>() / tail.len() as f64
}

/// Reads a `metrics.jsonl` (missing file: no lines); the error names the line.
pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
    Ok(read_lines(path)?.into_iter().map(|(_, m)| m).collect())
}

/// Each line of a `metrics.jsonl` with its parsed content.
fn read_lines(path: &Path) -> Result<Vec<(String, StepMetrics)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let m = serde_json::from_str(&line).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?;
        out.push((line, m));
    }
    Ok(out)
}
