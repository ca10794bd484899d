//! Table 5 beside the paper's numbers, and its CSV, JSON and PNG files.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{Estimator, RunResult, ToyConfig};
use crate::base::error::Result;
use crate::base::io::atomic_write;
use crate::base::plot::{write_png, Panel, Series, Stroke};

/// The paper's Table 5: `(true MI, InfoNCE at K = 64/128/256/512, EqCo at the same K)`.
pub const PAPER_TABLE5: [(f64, [f64; 4], [f64; 4]); 5] = [
    (2.0, [1.7, 1.8, 1.9, 1.9], [1.9, 1.9, 1.9, 1.9]),
    (4.0, [2.9, 3.2, 3.4, 3.6], [3.8, 3.7, 3.6, 3.6]),
    (6.0, [3.6, 4.1, 4.5, 4.9], [5.1, 5.0, 4.9, 4.9]),
    (8.0, [3.9, 4.6, 5.1, 5.6], [5.8, 5.7, 5.7, 5.6]),
    (10.0, [4.1, 4.7, 5.4, 6.0], [6.1, 6.0, 6.0, 6.0]),
];

/// The K values of the paper's Table 5.
pub const PAPER_KS: [usize; 4] = [64, 128, 256, 512];

/// The paper's estimate for a cell, if the paper has that cell (its EqCo
/// column is for α = 512 only).
pub fn paper_value(estimator: Estimator, true_mi: f64, k: usize, alpha: f64) -> Option<f64> {
    if estimator == Estimator::EqCo && alpha != 512.0 {
        return None;
    }
    let col = PAPER_KS.iter().position(|&pk| pk == k)?;
    let row = PAPER_TABLE5.iter().find(|r| (r.0 - true_mi).abs() < 1e-9)?;
    Some(match estimator {
        Estimator::InfoNce => row.1[col],
        Estimator::EqCo => row.2[col],
    })
}

fn distinct<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn find(results: &[RunResult], est: Estimator, mi: f64, k: usize) -> Option<&RunResult> {
    results
        .iter()
        .find(|r| r.spec.estimator == est && r.spec.true_mi == mi && r.spec.k == k)
}

/// The table as text: one row per (true MI, estimator), one column per K, each
/// cell `ours (paper's)`.
pub fn format_table(results: &[RunResult], alpha: f64) -> String {
    let mut mis = distinct(results.iter().map(|r| r.spec.true_mi));
    mis.sort_by(f64::total_cmp);
    let mut ks = distinct(results.iter().map(|r| r.spec.k));
    ks.sort_unstable();
    let ests = distinct(results.iter().map(|r| r.spec.estimator));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Bound on I(x;y) in nats: ours (paper's). InfoNCE: ln K − L; EqCo (α = {alpha}): ln α − L."
    );
    let _ = write!(s, "{:>7}  {:<8}", "true MI", "");
    for k in &ks {
        let _ = write!(s, "  {:>13}", format!("K = {k}"));
    }
    s.push('\n');
    for &mi in &mis {
        for &est in &ests {
            let _ = write!(s, "{mi:>7}  {:<8}", est.label());
            for &k in &ks {
                let cell = match find(results, est, mi, k) {
                    Some(r) => match paper_value(est, mi, k, alpha) {
                        Some(p) => format!("{:.2} ({p:.1})", r.estimate),
                        None => format!("{:.2}", r.estimate),
                    },
                    None => "-".to_string(),
                };
                let _ = write!(s, "  {cell:>13}");
            }
            s.push('\n');
        }
    }
    let _ = write!(s, "{:>7}  {:<8}", "", "ln(K+1)");
    for &k in &ks {
        let _ = write!(s, "  {:>13}", format!("{:.2}", ((k + 1) as f64).ln()));
    }
    s.push('\n');
    s
}

#[derive(Serialize)]
struct Table5Json<'a> {
    config: &'a ToyConfig,
    threads: usize,
    wall_seconds: f64,
    runs: Vec<RunJson<'a>>,
}

#[derive(Serialize)]
struct RunJson<'a> {
    #[serde(flatten)]
    run: &'a RunResult,
    paper: Option<f64>,
    ln_k_plus_1: f64,
}

/// Writes `table5.csv`, `table5.json` and `table5.png` into `out`.
pub fn write_outputs(
    out: &Path,
    cfg: &ToyConfig,
    results: &[RunResult],
    threads: usize,
    wall_seconds: f64,
) -> Result<()> {
    let paper = |r: &RunResult| paper_value(r.spec.estimator, r.spec.true_mi, r.spec.k, cfg.alpha);
    let mut csv =
        String::from("estimator,true_mi,k,estimate,estimate_std,paper,alpha,ms_per_step\n");
    for r in results {
        let alpha = match r.spec.estimator {
            Estimator::InfoNce => String::new(),
            Estimator::EqCo => cfg.alpha.to_string(),
        };
        let _ = writeln!(
            csv,
            "{},{},{},{:.6},{:.6},{},{},{:.4}",
            r.spec.estimator.name(),
            r.spec.true_mi,
            r.spec.k,
            r.estimate,
            r.estimate_std,
            paper(r).map(|p| p.to_string()).unwrap_or_default(),
            alpha,
            r.ms_per_step
        );
    }
    atomic_write(&out.join("table5.csv"), csv.as_bytes())?;

    let json = Table5Json {
        config: cfg,
        threads,
        wall_seconds,
        runs: results
            .iter()
            .map(|r| RunJson {
                run: r,
                paper: paper(r),
                ln_k_plus_1: ((r.spec.k + 1) as f64).ln(),
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&json).expect("plain data serialises");
    atomic_write(&out.join("table5.json"), text.as_bytes())?;

    write_png(
        &out.join("table5.png"),
        &panels(cfg, results),
        3,
        (520, 400),
    )
}

/// Labels the integer ticks of a log2 axis with their power of two.
fn log2_ticks(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{:.0}", v.round().exp2())
    } else {
        String::new()
    }
}

/// One panel per true MI: both estimators against log2 K, the paper's values,
/// the ln(K+1) ceiling and the true MI.
fn panels(cfg: &ToyConfig, results: &[RunResult]) -> Vec<Panel> {
    let mut mis = distinct(results.iter().map(|r| r.spec.true_mi));
    mis.sort_by(f64::total_cmp);
    let mut ks = distinct(results.iter().map(|r| r.spec.k));
    ks.sort_unstable();
    let x = |k: usize| (k as f64).log2();
    let blue = (31, 119, 180);
    let red = (214, 39, 40);
    mis.iter()
        .map(|&mi| {
            let mut series = Vec::new();
            for (est, color, stroke) in [
                (Estimator::InfoNce, blue, Stroke::Solid),
                (Estimator::EqCo, red, Stroke::Dashed),
            ] {
                let ours: Vec<_> = ks
                    .iter()
                    .filter_map(|&k| find(results, est, mi, k).map(|r| (x(k), r.estimate)))
                    .collect();
                if ours.is_empty() {
                    continue;
                }
                let name = match est {
                    Estimator::InfoNce => "InfoNCE".to_string(),
                    Estimator::EqCo => format!("EqCo (α={})", cfg.alpha),
                };
                series.push(Series {
                    name,
                    points: ours,
                    color,
                    stroke,
                });
                let paper: Vec<_> = ks
                    .iter()
                    .filter_map(|&k| paper_value(est, mi, k, cfg.alpha).map(|p| (x(k), p)))
                    .collect();
                if !paper.is_empty() {
                    series.push(Series {
                        name: format!("{} (paper)", est.label()),
                        points: paper,
                        color: (color.0 / 2 + 100, color.1 / 2 + 100, color.2 / 2 + 100),
                        stroke: Stroke::Markers,
                    });
                }
            }
            series.push(Series {
                name: "ln(K+1)".into(),
                points: ks.iter().map(|&k| (x(k), ((k + 1) as f64).ln())).collect(),
                color: (60, 60, 60),
                stroke: Stroke::Thin,
            });
            series.push(Series {
                name: "true MI".into(),
                points: ks.iter().map(|&k| (x(k), mi)).collect(),
                color: (44, 160, 44),
                stroke: Stroke::Thin,
            });
            Panel {
                title: format!("true MI = {mi} nats"),
                x_label: "K (negatives)".into(),
                y_label: "MI lower bound (nats)".into(),
                x_ticks: Some(log2_ticks),
                series,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::toy::RunSpec;

    fn result(estimator: Estimator, true_mi: f64, k: usize, estimate: f64) -> RunResult {
        RunResult {
            spec: RunSpec {
                estimator,
                true_mi,
                k,
            },
            estimate,
            estimate_std: 0.1,
            final_train_bound: estimate,
            ms_per_step: 1.0,
        }
    }

    #[test]
    fn paper_values_are_looked_up_by_cell() {
        assert_eq!(paper_value(Estimator::InfoNce, 6.0, 128, 512.0), Some(4.1));
        assert_eq!(paper_value(Estimator::EqCo, 10.0, 512, 512.0), Some(6.0));
        assert_eq!(paper_value(Estimator::EqCo, 10.0, 512, 256.0), None);
        assert_eq!(paper_value(Estimator::InfoNce, 10.0, 512, 256.0), Some(6.0));
        assert_eq!(paper_value(Estimator::EqCo, 3.0, 512, 512.0), None);
        assert_eq!(paper_value(Estimator::EqCo, 2.0, 32, 512.0), None);
    }

    #[test]
    fn table_shows_ours_beside_the_papers() {
        let rs = vec![
            result(Estimator::InfoNce, 2.0, 64, 1.734),
            result(Estimator::EqCo, 2.0, 64, 1.912),
        ];
        let t = format_table(&rs, 512.0);
        assert!(t.contains("1.73 (1.7)"), "{t}");
        assert!(t.contains("1.91 (1.9)"), "{t}");
        assert!(t.contains("4.17"), "ln(65) ceiling: {t}");
        // With another alpha the paper's EqCo column does not apply.
        let t = format_table(&rs, 256.0);
        assert!(t.contains("1.91") && !t.contains("1.91 (1.9)"), "{t}");
    }

    #[test]
    fn outputs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let rs = vec![
            result(Estimator::InfoNce, 2.0, 64, 1.7),
            result(Estimator::InfoNce, 2.0, 128, 1.8),
            result(Estimator::EqCo, 2.0, 64, 1.9),
            result(Estimator::EqCo, 2.0, 128, 1.9),
        ];
        write_outputs(dir.path(), &ToyConfig::default(), &rs, 2, 1.0).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("table5.csv")).unwrap();
        assert!(csv.starts_with("estimator,true_mi,k,estimate"));
        assert_eq!(csv.lines().count(), 5);
        assert!(csv.contains("\neqco,2,128,1.900000,"), "{csv}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("table5.json")).unwrap())
                .unwrap();
        assert_eq!(json["runs"].as_array().unwrap().len(), 4);
        assert_eq!(json["runs"][0]["estimator"], "infonce");
        let png = image::open(dir.path().join("table5.png")).unwrap();
        assert_eq!(png.width(), 520);
    }
}
