//! PNG plots of a run's metrics: loss, MI bound, gradient norm and learning
//! rate against the step.

use std::path::Path;

use super::metrics::StepMetrics;
use crate::error::Result;
use crate::plot::{write_png, Panel, Series, Stroke};

/// One curve per field, smoothed over a window of `1 + len/50` steps when long.
fn curve(metrics: &[StepMetrics], f: fn(&StepMetrics) -> f64) -> Vec<(f64, f64)> {
    let w = 1 + metrics.len() / 50;
    metrics
        .windows(w)
        .map(|win| {
            let y = win.iter().map(f).sum::<f64>() / w as f64;
            (win[w - 1].step as f64, y)
        })
        .collect()
}

/// A metric's name and how to read it from a line.
type Field = (&'static str, fn(&StepMetrics) -> f64);

/// Writes `training.png` (2 × 2 panels) into `dir`.
pub fn write(dir: &Path, metrics: &[StepMetrics]) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let fields: [Field; 4] = [
        ("loss", |m| m.loss),
        ("MI bound (nats)", |m| m.mi_bound),
        ("‖∂L/∂q‖", |m| m.grad_norm_q),
        ("learning rate", |m| m.lr),
    ];
    let panels: Vec<Panel> = fields
        .iter()
        .map(|(name, f)| Panel {
            title: name.to_string(),
            x_label: "step".into(),
            y_label: name.to_string(),
            x_ticks: None,
            series: vec![Series {
                name: name.to_string(),
                points: curve(metrics, *f),
                color: (31, 119, 180),
                stroke: Stroke::Thin,
            }],
        })
        .collect();
    write_png(&dir.join("training.png"), &panels, 2, (520, 360))
}
