//! PNG plots of metrics against the step: one run's `training.png`, and the
//! curves that `eqco report` draws for several runs.

use std::path::Path;

use super::metrics::StepMetrics;
use crate::error::Result;
use crate::plot::{write_png, Panel, Series, Stroke};

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

/// One panel per field, one curve per `(label, metrics, colour, stroke)`.
pub fn panels(
    fields: &[Field],
    runs: &[(String, &[StepMetrics], (u8, u8, u8), Stroke)],
) -> Vec<Panel> {
    fields
        .iter()
        .map(|(name, f)| Panel {
            title: name.to_string(),
            x_label: "step".into(),
            y_label: name.to_string(),
            x_ticks: None,
            series: runs
                .iter()
                .map(|(label, m, color, stroke)| Series {
                    name: label.clone(),
                    points: smooth(m, *f),
                    color: *color,
                    stroke: *stroke,
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
    let runs = [(
        "this run".to_string(),
        metrics,
        (31, 119, 180),
        Stroke::Thin,
    )];
    write_png(
        &dir.join("training.png"),
        &panels(&fields, &runs),
        2,
        (520, 360),
    )
}
