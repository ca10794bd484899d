//! `eqco report <run dir>…`: a Markdown summary of pretraining runs and a
//! PNG of their loss, MI bound and gradient norm over training.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use crate::error::Error;
use crate::io::atomic_write;
use crate::plot::{write_png, Stroke};
use crate::train::metrics::{self, tail_mean, StepMetrics};
use crate::train::plots;
use crate::train::trainer::run_config;
use crate::train::PretrainConfig;

/// Options of `eqco report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run folders written by `eqco pretrain`.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output folder for report.md and report.png.
    #[arg(long, default_value = "runs/report")]
    pub out: PathBuf,
}

/// A run as the report shows it.
struct Run {
    dir: PathBuf,
    label: String,
    cfg: PretrainConfig,
    metrics: Vec<StepMetrics>,
}

/// "simo K=16 EqCo α=256" or "simo K=16 InfoNCE".
fn label(cfg: &PretrainConfig) -> String {
    let loss = cfg
        .alpha
        .map_or("InfoNCE".to_string(), |a| format!("EqCo α={a}"));
    let method = format!("{:?}", cfg.method).to_lowercase();
    format!("{method} K={} {loss}", cfg.k())
}

/// Colours for up to ten runs (then repeated).
const COLORS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Writes the report.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for dir in &args.runs {
        let cfg = run_config(dir, &[])?;
        let metrics = metrics::read(&dir.join("metrics.jsonl"))?;
        if metrics.is_empty() {
            return Err(Error::Data {
                path: dir.join("metrics.jsonl"),
                message: "no metrics yet".into(),
            }
            .into());
        }
        runs.push(Run {
            dir: dir.clone(),
            label: label(&cfg),
            cfg,
            metrics,
        });
    }
    runs.sort_by(|a, b| {
        (a.cfg.alpha.is_none(), a.cfg.k()).cmp(&(b.cfg.alpha.is_none(), b.cfg.k()))
    });

    let mut md = String::from("# eqco report\n\n");
    md.push_str(
        "MI bound: `ln K + m/τ − L` (`ln α − L` under EqCo); figures are means over the last 10 % of steps.\n\n",
    );
    md.push_str("| run | method | K | α | steps | loss | MI bound | ‖∂L/∂q‖ | img/s |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in &runs {
        let m = &r.metrics;
        let _ = writeln!(
            md,
            "| `{}` | {:?} | {} | {} | {} | {:.4} | {:.4} | {:.3} | {:.0} |",
            r.dir.display(),
            r.cfg.method,
            r.cfg.k(),
            r.cfg.alpha.map_or("none".into(), |a| a.to_string()),
            m.last().map_or(0, |x| x.step),
            tail_mean(m, |x| x.loss),
            tail_mean(m, |x| x.mi_bound),
            tail_mean(m, |x| x.grad_norm_q),
            tail_mean(m, |x| x.img_per_s),
        );
    }
    md.push_str("\n![loss, MI bound and gradient norm over training](report.png)\n");

    let curves: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| plots::Curve {
            label: r.label.clone(),
            metrics: &r.metrics,
            color: COLORS[i % COLORS.len()],
            stroke: if r.cfg.alpha.is_some() {
                Stroke::Solid
            } else {
                Stroke::Dashed
            },
        })
        .collect();
    let panels = plots::panels(&plots::TRAINING_FIELDS, &curves);
    crate::io::create_dir(&args.out)?;
    write_png(&args.out.join("report.png"), &panels, 3, (560, 420))?;
    atomic_write(&args.out.join("report.md"), md.as_bytes())?;
    print!("{md}");
    println!("\nwrote {0}/report.md, {0}/report.png", args.out.display());
    Ok(())
}
