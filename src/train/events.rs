//! Where a run's figures go, opened once at its start (on rank 0):
//! `metrics.jsonl` and, with `tensorboard = true`, the TensorBoard event file
//! beside it, which starts with the resolved configuration (text) and a grid
//! of augmented view pairs (image) and then mirrors every metrics line.

use std::path::Path;

use crate::base::error::Result;
use crate::data::preview::view_pairs_png;
use crate::data::Loader;
use crate::run::metrics::MetricsWriter;
use crate::run::tensorboard::{tags, EventFile};
use crate::run::PretrainConfig;

/// Images in the event file's grid of view pairs (as `eqco data inspect`).
const PAIRS: usize = 12;

/// Opens `out/metrics.jsonl` (dropping the lines after step `resumed_at`
/// when resuming) and, if `cfg.tensorboard`, a new event file in `out`. A
/// resumed run's event file starts with a restart at step `resumed_at + 1`,
/// the first step written again, so that TensorBoard drops the steps the
/// interrupted invocation wrote after its last checkpoint; the view pairs
/// are drawn from `loader` on a fresh start only.
pub fn open_metrics(
    cfg: &PretrainConfig,
    out: &Path,
    resumed_at: Option<u64>,
    loader: &Loader,
) -> Result<MetricsWriter> {
    let metrics = MetricsWriter::open(&out.join("metrics.jsonl"), resumed_at)?;
    if !cfg.monitor.tensorboard {
        return Ok(metrics);
    }
    let restart = resumed_at.map(|s| s + 1);
    let mut tb = EventFile::create(out, restart)?;
    let logdir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(out);
    eprintln!(
        "tensorboard: {} (watch the run: tensorboard --logdir {})",
        tb.path().display(),
        logdir.display()
    );
    tb.text(
        tags::CONFIG,
        restart.unwrap_or(0),
        &code_block(&cfg.to_toml()),
    )?;
    if restart.is_none() {
        let (png, width, height) = view_pairs_png(loader, PAIRS)?;
        tb.image(tags::VIEWS, 0, png, width, height)?;
    }
    Ok(metrics.with_tensorboard(tb))
}

/// `text` as a Markdown code block (TensorBoard renders text as Markdown).
pub fn code_block(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
