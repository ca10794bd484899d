//! Where the steps' figures go once read: `metrics.jsonl`, the progress
//! bar (or a log line every 5 % of the run), and the run's throughput; a
//! non-finite figure ends the run here.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use super::pending::{Diverged, Pending};
use crate::base::error::{Error, Result};
use crate::run::metrics::{MetricsWriter, StepMetrics};

/// Where the steps' figures go once read: `metrics.jsonl`, the progress bar
/// (or a log line every 5 % of the run), and the run's throughput.
pub struct Record {
    /// `metrics.jsonl` (rank 0 only).
    pub metrics: Option<MetricsWriter>,
    /// The lines of the ranks that write no file.
    pub lines: Vec<StepMetrics>,
    /// The progress bar (hidden when not on a terminal).
    pub bar: ProgressBar,
    progress: bool,
    total_steps: usize,
    report_every: u64,
    /// The sum of img/s over this invocation's steps.
    pub img_per_s_sum: f64,
    /// This invocation's steps recorded.
    pub steps: u64,
}

impl Record {
    /// A record of a run of `total_steps` standing at `step`, writing to
    /// `metrics` (rank 0), with a progress bar when `progress`.
    pub fn new(
        metrics: Option<MetricsWriter>,
        progress: bool,
        total_steps: usize,
        step: u64,
    ) -> Record {
        let bar = if progress {
            ProgressBar::new(total_steps as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {elapsed_precise} < {eta_precise}  {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(step);
        Record {
            metrics,
            lines: Vec::new(),
            bar,
            progress,
            total_steps,
            report_every: (total_steps / 20).max(1) as u64,
            img_per_s_sum: 0.0,
            steps: 0,
        }
    }

    /// Reads the pending steps and records them; a non-finite loss, averaged
    /// gradient or updated parameter ends the run with an error naming its
    /// step and the last checkpoint.
    pub fn write(&mut self, pending: &mut Pending, last_ckpt: &Path) -> Result<()> {
        let (lines, bad) = pending.read()?;
        for m in &lines {
            match &mut self.metrics {
                Some(file) => file.write(m)?,
                None => self.lines.push(m.clone()),
            }
            self.bar.set_message(format!(
                "loss {:.3}  MI bound {:.3}  ‖∂L/∂q‖ {:.2}  lr {:.4}  {:.0} img/s",
                m.loss, m.mi_bound, m.grad_norm_q, m.lr, m.img_per_s
            ));
            if let Some(acc) = m.knn_top1 {
                let line = format!("epoch {}: kNN top-1 {:.2} %", m.epoch, 100.0 * acc);
                if self.bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    self.bar.println(line);
                }
            }
            if !self.progress
                && self.metrics.is_some()
                && (m.step % self.report_every == 0 || m.step as usize == self.total_steps)
            {
                eprintln!(
                    "step {}/{} epoch {}: loss {:.4}  MI bound {:.4}  grad_norm_q {:.3}  lr {:.5}  {:.0} img/s",
                    m.step, self.total_steps, m.epoch, m.loss, m.mi_bound, m.grad_norm_q, m.lr, m.img_per_s
                );
            }
            self.img_per_s_sum += m.img_per_s;
            self.steps += 1;
        }
        let Some(b) = bad else {
            return Ok(());
        };
        let what = match b.what {
            Diverged::Loss(loss) => format!("the loss is {loss}"),
            Diverged::Gradient => {
                "a gradient (averaged over ranks) is not finite, with a finite loss,".to_string()
            }
            Diverged::Parameter => {
                "a parameter is not finite after the update, with a finite loss and gradients,"
                    .to_string()
            }
        };
        Err(Error::Numerical(format!(
            "{what} at step {} (epoch {}, lr {:.4}); the last checkpoint is {}; try a lower lr or a higher tau",
            b.step,
            b.epoch,
            b.lr,
            last_ckpt.display()
        )))
    }
}
