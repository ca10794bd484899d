//! Reports of pretraining runs (`eqco report`, and the end of `eqco sweep`):
//! a Markdown table, training curves (loss, MI bound, gradient norm, kNN
//! monitor), and the accuracy of the frozen backbones against K with and
//! without EqCo, beside the random-init and supervised baselines.
//!
//! Runs of several seeds are summarised per configuration (mean ± standard
//! deviation), and EqCo is compared with InfoNCE seed by seed, with a 95 %
//! interval and a verdict ([`paired`]).
//!
//! A run's evaluations are read from `<run>/eval/knn.json` and
//! `<run>/eval/linear.json` (written by `eqco sweep`, and by `eqco eval …`
//! on one of the run's checkpoints unless `--out` sends them elsewhere).

pub mod paired;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::base::error::{Error, Result};
use crate::base::io::atomic_write;
use crate::base::plot::{write_png, Panel, Series, Stroke};
use crate::eval::{KnnReport, LinearMode, LinearReport};
use crate::run::config::MethodName;
use crate::run::metrics::{self, tail_mean, StepMetrics};
use crate::run::run_config;
use crate::run::PretrainConfig;
use crate::train::plots;

/// What a run is, for grouping in tables and plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A contrastive run.
    Contrastive,
    /// The network as initialised (`max_steps = 0`).
    RandomInit,
    /// The supervised baseline.
    Supervised,
}

/// A run as the report shows it.
pub struct RunView {
    /// Its folder.
    pub dir: PathBuf,
    /// Its configuration.
    pub cfg: PretrainConfig,
    /// Its metrics (none for a random-init run).
    pub metrics: Vec<StepMetrics>,
    /// kNN evaluation, if made.
    pub knn: Option<KnnReport>,
    /// Linear probe, if made.
    pub linear: Option<LinearReport>,
    /// The series it belongs to in accuracy-vs-K plots: method and loss,
    /// and the other keys in which the reported runs differ (not K, not
    /// the seed); see [`set_families`].
    pub family: String,
}

impl RunView {
    /// Reads a run folder.
    pub fn read(dir: &Path) -> Result<RunView> {
        let cfg = run_config(dir, &[])?;
        let metrics = metrics::read(&dir.join("metrics.jsonl"))?;
        let family = method_and_loss(&cfg);
        Ok(RunView {
            dir: dir.to_path_buf(),
            metrics,
            knn: read_json(&dir.join("eval/knn.json"))?,
            linear: read_json(&dir.join("eval/linear.json"))?,
            cfg,
            family,
        })
    }

    /// Contrastive run or baseline.
    pub fn role(&self) -> Role {
        if self.cfg.optim.max_steps == Some(0) {
            Role::RandomInit
        } else if self.cfg.method.method == MethodName::Supervised {
            Role::Supervised
        } else {
            Role::Contrastive
        }
    }

    /// "simo EqCo α=256 K=16", "simo InfoNCE K=16", "random init", "supervised".
    pub fn label(&self) -> String {
        match self.role() {
            Role::RandomInit => "random init".into(),
            Role::Supervised => "supervised".into(),
            Role::Contrastive => format!("{} K={}", self.family, self.cfg.k()),
        }
    }
}

/// "simo EqCo α=256", "mocov2 InfoNCE".
fn method_and_loss(cfg: &PretrainConfig) -> String {
    let loss = cfg
        .loss
        .alpha
        .map_or("InfoNCE".to_string(), |a| format!("EqCo α={a}"));
    format!(
        "{} {loss}",
        format!("{:?}", cfg.method.method).to_lowercase()
    )
}

/// Keys that neither name a series nor tell runs of one apart (K and α are
/// in the label; runs of several seeds are one configuration).
const NOT_A_SERIES: [&str; 6] = [
    "k_negatives",
    "queue_size",
    "alpha",
    "method",
    "seed",
    "data_dir",
];

/// Sets each contrastive run's family: its method and loss, plus every
/// other key in which the contrastive runs differ (`ema_momentum=0`,
/// `bn=shuffle`…), so that ablations are series of their own.
pub fn set_families(runs: &mut [RunView]) {
    let tables: Vec<toml::Table> = runs
        .iter()
        .map(|r| r.cfg.to_toml().parse().unwrap_or_default())
        .collect();
    let contrastive: Vec<usize> = (0..runs.len())
        .filter(|&i| runs[i].role() == Role::Contrastive)
        .collect();
    let mut varying: Vec<String> = contrastive
        .iter()
        .flat_map(|&i| tables[i].keys().cloned())
        .filter(|k| !NOT_A_SERIES.contains(&k.as_str()))
        .filter(|k| {
            let first = tables[contrastive[0]].get(k);
            contrastive.iter().any(|&i| tables[i].get(k) != first)
        })
        .collect();
    varying.sort();
    varying.dedup();
    for &i in &contrastive {
        let mut family = method_and_loss(&runs[i].cfg);
        for k in &varying {
            let v = tables[i].get(k).map_or("none".to_string(), |v| match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            family.push_str(&format!(" {k}={v}"));
        }
        runs[i].family = family;
    }
}

/// Runs that differ only in their seed.
struct SeedGroup<'a> {
    label: String,
    runs: Vec<&'a RunView>,
}

/// The report's runs grouped by configuration apart from the seed, in order.
fn seed_groups(runs: &[RunView]) -> Vec<SeedGroup<'_>> {
    let mut groups: Vec<(String, SeedGroup)> = Vec::new();
    for r in runs {
        let key = PretrainConfig {
            seed: 0,
            ..r.cfg.clone()
        }
        .to_toml();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.runs.push(r),
            None => groups.push((
                key,
                SeedGroup {
                    label: r.label(),
                    runs: vec![r],
                },
            )),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// "76.12 ± 0.45 (75.80–76.44)": the mean, the sample standard deviation
/// and the range of `values`, one decimal place more for figures below 10.
fn mean_and_range(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let d = if mean.abs() < 10.0 { 3 } else { 2 };
    if values.len() == 1 {
        format!("{mean:.d$}")
    } else {
        let n = values.len() as f64;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        format!("{mean:.d$} ± {sd:.d$} ({lo:.d$}–{hi:.d$})")
    }
}

/// The key of a configuration apart from its seed (and, for `alpha =
/// None`, the key of its InfoNCE twin).
fn config_key(cfg: &PretrainConfig, alpha: Option<f64>) -> String {
    let mut key = PretrainConfig {
        seed: 0,
        ..cfg.clone()
    };
    key.loss.alpha = alpha;
    key.to_toml()
}

/// Each EqCo configuration against the InfoNCE configuration that differs
/// from it only in α, seed by seed, for kNN and linear top-1 (in points).
fn paired_comparisons(groups: &[SeedGroup]) -> Vec<paired::Paired> {
    let mut out = Vec::new();
    for g in groups {
        let cfg = &g.runs[0].cfg;
        let Some(alpha) = cfg.loss.alpha else {
            continue;
        };
        if g.runs[0].role() != Role::Contrastive {
            continue;
        }
        let twin = config_key(cfg, None);
        let Some(reference) = groups.iter().find(|r| {
            config_key(&r.runs[0].cfg, None) == twin && r.runs[0].cfg.loss.alpha.is_none()
        }) else {
            continue;
        };
        let family = &g.runs[0].family;
        let method = format!("{:?}", cfg.method.method).to_lowercase();
        let extras = family
            .split_once(&format!("EqCo α={alpha}"))
            .map_or("", |(_, rest)| rest);
        let label = format!(
            "{method}{extras}: EqCo α={alpha} − InfoNCE at K = {}",
            cfg.k()
        );
        out.extend(pair_by_seed(&label, g, reference));
    }
    out
}

/// The key of a configuration apart from its seed and its K, with `alpha`.
fn key_without_k(cfg: &PretrainConfig, alpha: Option<f64>) -> String {
    let mut any_k = cfg.clone();
    any_k.method.k_negatives = None;
    any_k.method.queue_size = 0;
    config_key(&any_k, alpha)
}

/// Whether `big` is `small` trained with another K and the same loss: the
/// same α, or, for EqCo with α, InfoNCE at K = α (where EqCo's margin
/// τ·ln(α/K) is 0, so the two are one computation).
fn same_loss_other_k(small: &PretrainConfig, big: &PretrainConfig) -> bool {
    let same = key_without_k(small, small.loss.alpha) == key_without_k(big, big.loss.alpha);
    let at_alpha = big.loss.alpha.is_none()
        && small.loss.alpha == Some(big.k() as f64)
        && key_without_k(small, None) == key_without_k(big, None);
    same || at_alpha
}

/// Each contrastive configuration against the one with the largest K that
/// differs from it only in K (the same loss, see [`same_loss_other_k`]),
/// seed by seed: what a small K costs (paper Fig. 3/4), with InfoNCE and
/// with EqCo.
fn k_comparisons(groups: &[SeedGroup]) -> Vec<paired::Paired> {
    let mut out = Vec::new();
    for g in groups {
        let cfg = &g.runs[0].cfg;
        if g.runs[0].role() != Role::Contrastive {
            continue;
        }
        let Some(largest) = groups
            .iter()
            .filter(|r| r.runs[0].role() == Role::Contrastive)
            .filter(|r| same_loss_other_k(cfg, &r.runs[0].cfg))
            .max_by_key(|r| {
                (
                    r.runs[0].cfg.k(),
                    r.runs[0].cfg.loss.alpha == cfg.loss.alpha,
                )
            })
        else {
            continue;
        };
        let big = &largest.runs[0].cfg;
        if big.k() <= cfg.k() {
            continue;
        }
        let note = if big.loss.alpha == cfg.loss.alpha {
            ""
        } else {
            " (InfoNCE: EqCo's margin is 0 at K = α)"
        };
        let label = format!(
            "{}: K = {} − K = {}{note}",
            g.runs[0].family,
            cfg.k(),
            big.k()
        );
        out.extend(pair_by_seed(&label, g, largest));
    }
    out
}

/// The per-seed differences `a − b` of kNN and linear top-1 (in points),
/// over the seeds both groups have and both evaluated.
fn pair_by_seed(label: &str, a: &SeedGroup, b: &SeedGroup) -> Vec<paired::Paired> {
    type Metric = fn(&RunView) -> Option<f64>;
    let metrics: [(&'static str, Metric); 2] = [
        ("kNN top-1", |r| r.knn.as_ref().map(|k| 100.0 * k.top1)),
        ("linear top-1", |r| {
            r.linear.as_ref().map(|l| 100.0 * l.top1)
        }),
    ];
    let mut out = Vec::new();
    for (name, metric) in metrics {
        let mut seeds = Vec::new();
        let mut diffs = Vec::new();
        for r in &a.runs {
            let twin = b.runs.iter().find(|x| x.cfg.seed == r.cfg.seed);
            if let (Some(x), Some(y)) = (metric(r), twin.and_then(|t| metric(t))) {
                seeds.push(r.cfg.seed);
                diffs.push(x - y);
            }
        }
        if !diffs.is_empty() {
            out.push(paired::Paired::new(label.to_string(), name, seeds, diffs));
        }
    }
    out
}

/// A Markdown section of paired comparisons under `title`, `what` saying
/// which runs are subtracted from which.
fn paired_section(title: &str, what: &str, comparisons: &[paired::Paired]) -> String {
    let mut md = format!(
        "\n## {title}\n\n\
         {what}, in points: the differences, their mean ± standard deviation, and the 95 % \
         interval of the mean (Student's t). *Resolved* means the interval excludes 0.\n\n\
         | comparison | metric | seeds | differences | mean ± sd | 95 % interval |\n|---|---|---|---|---|---|\n",
    );
    for p in comparisons {
        let (lo, hi) = p.interval();
        let list = |v: Vec<String>| v.join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:+.2} ± {:.2} | {:+.2} to {:+.2} |",
            p.label,
            p.metric,
            list(p.seeds.iter().map(u64::to_string).collect()),
            list(p.diffs.iter().map(|d| format!("{d:+.2}")).collect()),
            p.mean,
            p.sd,
            lo,
            hi
        );
    }
    md.push('\n');
    for p in comparisons {
        let _ = writeln!(md, "- {}", p.verdict());
    }
    md
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Data {
                path: path.to_path_buf(),
                message: format!("not a valid evaluation file: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Run folders from the arguments: a sweep folder (with `sweep.toml`)
/// stands for each of its runs.
pub fn expand(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dir in dirs {
        if dir.join("sweep.toml").is_file() {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut runs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.toml").is_file())
                .collect();
            runs.sort();
            out.extend(runs);
        } else {
            out.push(dir.clone());
        }
    }
    Ok(out)
}

/// Colours for up to ten series (then repeated).
pub const COLORS: [(u8, u8, u8); 10] = [
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

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}", 100.0 * v))
}

fn mode(r: &LinearReport) -> &'static str {
    match r.settings.mode {
        LinearMode::Logreg => "logreg",
        LinearMode::Fast => "fast",
        LinearMode::Moco => "moco",
    }
}

/// Writes `report.md`, `report.png` (training curves) and, when runs were
/// evaluated, `accuracy.png` into `out`; returns the Markdown.
pub fn write(dirs: &[PathBuf], out: &Path) -> Result<String> {
    let mut runs = Vec::new();
    for dir in expand(dirs)? {
        runs.push(RunView::read(&dir)?);
    }
    if runs.is_empty() {
        return Err(Error::config("runs", "no run folders given"));
    }
    set_families(&mut runs);
    runs.sort_by_cached_key(|r| (r.role(), r.family.clone(), r.cfg.k(), r.dir.clone()));
    let mut md = runs_table(&runs);
    md.push_str(&seeds_section(&seed_groups(&runs)));
    crate::base::io::create_dir(out)?;
    md.push_str(&plots_section(&runs, out)?);
    atomic_write(&out.join("report.md"), md.as_bytes())?;
    Ok(md)
}

/// The report's head and its table of runs, one row each.
fn runs_table(runs: &[RunView]) -> String {
    let mut md = String::from("# eqco report\n\n");
    md.push_str(
        "MI bound: `ln K + m/τ − L` (`ln α − L` under EqCo; supervised: `ln C − L`); training figures are means over the last 10 % of steps. \
         Accuracies are top-1 on the test split of the frozen backbone (`eval/knn.json`, `eval/linear.json`; linear mode in brackets).\n\n",
    );
    md.push_str("| run | method | K | α | N | steps | loss | MI bound | ‖∂L/∂q‖ | kNN top-1 % | linear top-1 % |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        md.push_str(&run_row(r));
    }
    md
}

/// One run's row of the table.
fn run_row(r: &RunView) -> String {
    let m = &r.metrics;
    let tail = |f: fn(&StepMetrics) -> f64| match m.is_empty() {
        true => "–".to_string(),
        false => format!("{:.4}", tail_mean(m, f)),
    };
    let contrastive = r.role() == Role::Contrastive;
    format!(
        "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        r.dir.display(),
        match r.role() {
            Role::RandomInit => "random init".to_string(),
            _ => format!("{:?}", r.cfg.method.method).to_lowercase(),
        },
        match contrastive {
            true => r.cfg.k().to_string(),
            false => "–".into(),
        },
        match (contrastive, r.cfg.loss.alpha) {
            (true, Some(a)) => a.to_string(),
            (true, None) => "none".into(),
            _ => "–".into(),
        },
        r.cfg.optim.batch_size,
        m.last().map_or(0, |x| x.step),
        tail(|x| x.loss),
        tail(|x| x.mi_bound),
        tail(|x| x.grad_norm_q),
        pct(r.knn.as_ref().map(|k| k.top1)),
        r.linear.as_ref().map_or("–".into(), |l| format!(
            "{} ({})",
            pct(Some(l.top1)),
            mode(l)
        )),
    )
}

/// When some configuration ran with several seeds: their means and
/// ranges, and the paired comparisons (EqCo against InfoNCE, small K
/// against the largest); empty otherwise.
fn seeds_section(groups: &[SeedGroup]) -> String {
    if groups.iter().all(|g| g.runs.len() <= 1) {
        return String::new();
    }
    let mut md = String::from(
        "\n## Over seeds\n\nRuns that differ only in their seed: the mean ± the standard deviation, and the lowest and highest value in brackets.\n\n\
         | configuration | seeds | MI bound | kNN top-1 % | linear top-1 % |\n|---|---|---|---|---|\n",
    );
    for g in groups {
        md.push_str(&seed_group_row(g));
    }
    let comparisons = paired_comparisons(groups);
    if !comparisons.is_empty() {
        md.push_str(&paired_section(
            "EqCo against InfoNCE, paired by seed",
            "Each EqCo run minus the InfoNCE run of the same configuration, K and seed",
            &comparisons,
        ));
    }
    let comparisons = k_comparisons(groups);
    if !comparisons.is_empty() {
        md.push_str(&paired_section(
            "Small K against the largest K, paired by seed",
            "Each run minus the run of the same configuration and seed at the largest K \
             of the report (the same loss: InfoNCE against InfoNCE, EqCo against EqCo)",
            &comparisons,
        ));
    }
    md
}

/// One configuration's row over its seeds.
fn seed_group_row(g: &SeedGroup) -> String {
    let values = |f: &dyn Fn(&RunView) -> Option<f64>| -> Vec<f64> {
        g.runs.iter().filter_map(|r| f(r)).collect()
    };
    let mi = values(&|r| (!r.metrics.is_empty()).then(|| tail_mean(&r.metrics, |x| x.mi_bound)));
    let knn = values(&|r| r.knn.as_ref().map(|k| 100.0 * k.top1));
    let linear = values(&|r| r.linear.as_ref().map(|l| 100.0 * l.top1));
    let seeds: Vec<String> = g.runs.iter().map(|r| r.cfg.seed.to_string()).collect();
    format!(
        "| {} | {} | {} | {} | {} |\n",
        g.label,
        seeds.join(", "),
        mean_and_range(&mi),
        mean_and_range(&knn),
        mean_and_range(&linear)
    )
}

/// `report.png` (training curves) and `accuracy.png` in `out`, where there
/// is something to plot, and the Markdown that shows them.
fn plots_section(runs: &[RunView], out: &Path) -> Result<String> {
    let mut md = String::new();
    let trained: Vec<&RunView> = runs.iter().filter(|r| !r.metrics.is_empty()).collect();
    if !trained.is_empty() {
        md.push_str(
            "\n![loss, MI bound, gradient norm and kNN monitor over training](report.png)\n",
        );
        write_png(
            &out.join("report.png"),
            &training_panels(&trained),
            2,
            (560, 420),
        )?;
    }
    let accuracy = accuracy_panels(runs);
    if !accuracy.is_empty() {
        md.push_str(
            "\n![accuracy against K, with and without EqCo, beside the baselines](accuracy.png)\n",
        );
        write_png(&out.join("accuracy.png"), &accuracy, 2, (600, 440))?;
    }
    Ok(md)
}

fn training_panels(runs: &[&RunView]) -> Vec<Panel> {
    let curves: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| plots::Curve {
            label: r.label(),
            metrics: &r.metrics,
            color: COLORS[i % COLORS.len()],
            stroke: if r.cfg.loss.alpha.is_some() {
                Stroke::Solid
            } else {
                Stroke::Dashed
            },
        })
        .collect();
    let mut panels = plots::panels(&plots::TRAINING_FIELDS, &curves);
    let knn: Vec<Series> = curves
        .iter()
        .map(|c| Series {
            name: c.label.clone(),
            points: c
                .metrics
                .iter()
                .filter_map(|m| m.knn_top1.map(|a| (m.step as f64, 100.0 * a)))
                .collect(),
            color: c.color,
            stroke: c.stroke,
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if !knn.is_empty() {
        panels.push(Panel {
            title: "kNN monitor".into(),
            x_label: "step".into(),
            y_label: "kNN top-1 (%)".into(),
            x_ticks: None,
            series: knn,
        });
    }
    panels
}

/// Panels of linear and kNN top-1 against K (log scale): one series per
/// family through the means over seeds, each seed's value as a cross when
/// there are several, the baselines as horizontal lines.
fn accuracy_panels(runs: &[RunView]) -> Vec<Panel> {
    let picks: [(&str, Pick); 2] = [
        ("linear probe", |r| {
            r.linear.as_ref().map(|l| 100.0 * l.top1)
        }),
        ("kNN", |r| r.knn.as_ref().map(|k| 100.0 * k.top1)),
    ];
    picks
        .into_iter()
        .filter_map(|(name, pick)| accuracy_panel(runs, name, pick))
        .collect()
}

/// An accuracy of a run, in percent.
type Pick = fn(&RunView) -> Option<f64>;

/// log2 K of a run: the accuracy plots' x axis.
fn log_k(r: &RunView) -> f64 {
    (r.cfg.k().max(1) as f64).log2()
}

/// The panel of the accuracy `pick` against K, or `None` when no
/// contrastive run has it.
fn accuracy_panel(runs: &[RunView], name: &str, pick: Pick) -> Option<Panel> {
    let points: Vec<(&RunView, f64)> = runs
        .iter()
        .filter(|r| r.role() == Role::Contrastive)
        .filter_map(|r| pick(r).map(|a| (r, a)))
        .collect();
    if points.is_empty() {
        return None;
    }
    let (x0, x1) = points
        .iter()
        .map(|(r, _)| log_k(r))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let mut families: Vec<&str> = points.iter().map(|(r, _)| r.family.as_str()).collect();
    families.sort();
    families.dedup();
    let mut series: Vec<Series> = Vec::new();
    for (i, fam) in families.iter().enumerate() {
        series.extend(family_series(&points, fam, COLORS[i % COLORS.len()]));
    }
    let baselines = runs.iter().filter(|r| r.role() != Role::Contrastive);
    for (j, r) in baselines.enumerate() {
        if let Some(a) = pick(r) {
            series.push(Series {
                name: format!("{} (baseline)", r.label()),
                points: vec![(x0, a), (x1.max(x0 + 1.0), a)],
                color: COLORS[(families.len() + j) % COLORS.len()],
                stroke: Stroke::Thin,
            });
        }
    }
    Some(Panel {
        title: format!("{name} top-1 against K"),
        x_label: "negatives K".into(),
        y_label: "top-1 (%)".into(),
        x_ticks: Some(|v| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{}", 2f64.powf(v.round()))
            } else {
                String::new()
            }
        }),
        series,
    })
}

/// A family's line through its means over seeds at each K and, when it
/// has several seeds, a cross for each.
fn family_series(points: &[(&RunView, f64)], fam: &str, color: (u8, u8, u8)) -> Vec<Series> {
    let seeds: Vec<(f64, f64)> = points
        .iter()
        .filter(|(r, _)| r.family == fam)
        .map(|(r, a)| (log_k(r), *a))
        .collect();
    let mut ks: Vec<f64> = seeds.iter().map(|p| p.0).collect();
    ks.sort_by(f64::total_cmp);
    ks.dedup();
    let means: Vec<(f64, f64)> = ks
        .iter()
        .map(|&k| {
            let at: Vec<f64> = seeds.iter().filter(|p| p.0 == k).map(|p| p.1).collect();
            (k, at.iter().sum::<f64>() / at.len() as f64)
        })
        .collect();
    let several = means.len() < seeds.len();
    let mut series = vec![Series {
        name: match several {
            true => format!("{fam} (mean over seeds)"),
            false => fam.to_string(),
        },
        points: means,
        color,
        stroke: match fam.contains("EqCo") {
            true => Stroke::Solid,
            false => Stroke::Dashed,
        },
    }];
    if several {
        series.push(Series {
            name: "each seed".into(),
            points: seeds,
            color,
            stroke: Stroke::Markers,
        });
    }
    series
}
