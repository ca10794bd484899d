//! PNG plots of metrics against the step: one run's `training.png`, and the
//! curves that `eqco report` draws for several runs.

use std::path::Path;

use crate::base::error::Result;
use crate::base::plot::{write_png, Panel, Series, Stroke};
use crate::run::metrics::StepMetrics;

/// A metric's name and how to read it from a line.
pub type Field = (&'static str, fn(&StepMetrics) -> f64);

/// The loss, the MI bound and the gradient norm.
pub const TRAINING_FIELDS: [Field; 3] = [
    ("loss", |m| m.loss),
    ("MI bound (nats)", |m| m.mi_bound),
    ("‖∂L/∂q‖", |m| m.grad_norm_q),
];

/// A moving average of `f` over `1 + len/25` steps, a point every half window.
pub fn smooth(metrics: &[StepMetrics], f: fn(&StepMetrics) -> f64) -> Vec<(f64, f64)> {
    let w = 1 + metrics.len() / 25;
    metrics
        .windows(w)
        .step_by((w / 2).max(1))
        .map(|win| {
            (
                win[w - 1].step as f64,
                win.iter().map(f).sum::<f64>() / w as f64,
            )
        })
        .collect()
}

/// One run's curves: its legend label, metrics, colour and stroke.
pub struct Curve<'a> {
    /// Legend text.
    pub label: String,
    /// The run's metrics.
    pub metrics: &'a [StepMetrics],
    /// RGB colour.
    pub color: (u8, u8, u8),
    /// How the curve is drawn.
    pub stroke: Stroke,
}

/// One panel per field, one curve per run.
pub fn panels(fields: &[Field], runs: &[Curve<'_>]) -> Vec<Panel> {
    fields
        .iter()
        .map(|(name, f)| Panel {
            title: name.to_string(),
            x_label: "step".into(),
            y_label: name.to_string(),
            x_ticks: None,
            series: runs
                .iter()
                .map(|c| Series {
                    name: c.label.clone(),
                    points: smooth(c.metrics, *f),
                    color: c.color,
                    stroke: c.stroke,
                })
                .collect(),
        })
        .collect()
}

/// Writes `training.png` (loss, MI bound, gradient norm, learning rate) into `dir`.
pub fn write(dir: &Path, metrics: &[StepMetrics]) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let mut fields = TRAINING_FIELDS.to_vec();
    fields.push(("learning rate", |m| m.lr));
    let runs = [Curve {
        label: "this run".into(),
        metrics,
        color: (31, 119, 180),
        stroke: Stroke::Thin,
    }];
    write_png(
        &dir.join("training.png"),
        &panels(&fields, &runs),
        2,
        (520, 360),
    )
}
