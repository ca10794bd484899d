//! Evaluation end to end on fixtures: the linear probe in both modes, the
//! baselines (random init, supervised), sweeps that resume, reports, and the
//! export under torchvision's names.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{eqco, text};

/// The flags of a tiny SiMo run on a synthetic CIFAR-10 folder in `dir`.
fn tiny_sets(dir: &Path) -> Vec<String> {
    let data = dir.join("cifar");
    if !data.exists() {
        eqco::data::synthetic::write_cifar10(&data, 192).unwrap();
    }
    [
        "dataset=cifar10".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "backbone=resnet10".into(),
        "width=0.125".into(),
        "batch_size=32".into(),
        "k_negatives=31".into(),
        "image_size=16".into(),
        "head_hidden=32".into(),
        "embed_dim=16".into(),
        "loader_threads=1".into(),
        "precision=fp32".into(),
        "memory_format=channels_last".into(),
    ]
    .into()
}

/// Runs `eqco pretrain` into `out` with the tiny settings and `extra`.
fn pretrain(dir: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<String> = vec![
        "pretrain".into(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    for s in tiny_sets(dir)
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = eqco(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn latest(run: &Path) -> PathBuf {
    run.join("checkpoints/latest.safetensors")
}

#[test]
fn eval_linear_runs_both_modes_and_says_which() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    pretrain(tmp.path(), &run, &["max_steps=2"]);
    let ckpt = latest(&run);
    let ckpt = ckpt.to_str().unwrap();
    let out = tmp.path().join("fast");
    let o = eqco(&[
        "eval",
        "linear",
        "--checkpoint",
        ckpt,
        "--mode",
        "fast",
        "--epochs",
        "3",
        "--lr",
        "0.1",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("fast mode"), "{}", text(&o.stdout));
    let r = json(&out.join("linear.json"));
    assert_eq!(r["settings"]["mode"], "fast");
    assert_eq!(r["settings"]["milestones"], serde_json::json!([2, 2]));
    assert_eq!(
        (r["train_images"].as_u64(), r["test_images"].as_u64()),
        (Some(192), Some(48))
    );
    assert_eq!(r["epochs"].as_array().unwrap().len(), 3);
    let (top1, top5) = (r["top1"].as_f64().unwrap(), r["top5"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&top1) && top5 >= top1, "{r}");

    let out = tmp.path().join("moco");
    let o = eqco(&[
        "eval",
        "linear",
        "--checkpoint",
        ckpt,
        "--mode",
        "moco",
        "--epochs",
        "1",
        "--max-images",
        "64",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("MoCo protocol"),
        "{}",
        text(&o.stdout)
    );
    let r = json(&out.join("linear.json"));
    assert_eq!(
        (r["settings"]["mode"].as_str(), r["train_images"].as_u64()),
        (Some("moco"), Some(64))
    );

    for (flag, value) in [("--lr", "0"), ("--epochs", "0"), ("--momentum", "1.5")] {
        let o = eqco(&["eval", "linear", "--checkpoint", ckpt, flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        assert!(
            text(&o.stderr).starts_with("error:") && text(&o.stderr).contains(flag),
            "{}",
            text(&o.stderr)
        );
    }
}

/// An IDX folder whose class is the image's brightness (plus noise): learnable.
fn write_learnable_idx(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let header = |dims: &[u32]| {
        let mut h = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            h.extend_from_slice(&d.to_be_bytes());
        }
        h
    };
    for (prefix, count) in [("train", n), ("t10k", n / 2)] {
        let mut images = header(&[count as u32, 16, 16]);
        let mut labels = header(&[count as u32]);
        for i in 0..count {
            let class = (i * 7 % 10) as u8;
            labels.push(class);
            images.extend((0..256).map(|p| class * 24 + ((i * 31 + p * 17) % 13) as u8));
        }
        std::fs::File::create(dir.join(format!("{prefix}-images-idx3-ubyte")))
            .and_then(|mut f| f.write_all(&images))
            .unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

#[test]
fn baselines_random_init_and_supervised() {
    let tmp = tempfile::tempdir().unwrap();
    // Random init: the initialisation only, as a step-0 checkpoint.
    let random = tmp.path().join("random");
    pretrain(tmp.path(), &random, &["max_steps=0"]);
    assert!(random.join("checkpoints/step-0.safetensors").is_file());
    assert_eq!(json(&random.join("summary.json"))["steps"], 0);

    // Supervised on labels that the brightness gives away: the loss falls
    // far below ln 10 and the MI bound ln C − L rises with it.
    let data = tmp.path().join("idx");
    write_learnable_idx(&data, 256);
    let sup = tmp.path().join("supervised");
    let o = eqco(&[
        "pretrain",
        "--out",
        sup.to_str().unwrap(),
        "--threads",
        "1",
        "--set",
        "dataset=idx",
        "--set",
        &format!("data_dir=\"{}\"", data.display()),
        "--set",
        "method=supervised",
        "--set",
        "augment=supervised",
        "--set",
        "backbone=resnet10",
        "--set",
        "width=0.125",
        "--set",
        "batch_size=32",
        "--set",
        "epochs=6",
        "--set",
        "lr=0.2",
        "--set",
        "loader_threads=1",
        "--set",
        "precision=fp32",
        "--set",
        "memory_format=channels_last",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(sup.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 48);
    let mean = |ls: &[serde_json::Value], k: &str| {
        ls.iter().map(|l| l[k].as_f64().unwrap()).sum::<f64>() / ls.len() as f64
    };
    let (first, last) = (mean(&lines[..6], "loss"), mean(&lines[42..], "loss"));
    assert!(last < 0.6 * first && first > 2.0, "loss {first} → {last}");
    let l = &lines[47];
    let bound = 10f64.ln() - l["loss"].as_f64().unwrap();
    assert!((l["mi_bound"].as_f64().unwrap() - bound).abs() < 1e-9);
    assert_eq!(l["k"], 0);
    // Its backbone is read by evaluation like any other.
    let o = eqco(&[
        "eval",
        "knn",
        "--checkpoint",
        latest(&sup).to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_sweep_runs_evaluates_reports_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let sets: Vec<String> = tiny_sets(tmp.path())
        .into_iter()
        .chain([
            "max_steps=3".to_string(),
            "checkpoint_every=2".into(),
            "knn_every=1".into(),
            "knn_bank=64".into(),
        ])
        .collect();
    let set_lines: String = sets
        .iter()
        .map(|s| {
            let (k, v) = s.split_once('=').unwrap();
            let v = if v.starts_with('"') || v.parse::<f64>().is_ok() {
                v.to_string()
            } else {
                format!("\"{v}\"")
            };
            format!("{k} = {v}\n")
        })
        .collect();
    let file = tmp.path().join("sweep.toml");
    std::fs::write(
        &file,
        format!(
            "base = \"fmnist-simo\"\n[set]\n{set_lines}[grid]\nk_negatives = [4, 31]\nalpha = [64.0, \"none\"]\n\
             [[baseline]]\nname = \"random-init\"\nset = {{ max_steps = 0 }}\n\
             [eval]\nknn = true\nlinear = \"fast\"\nlinear_epochs = 2\nlinear_lr = 0.1\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("sweep");
    let args = [
        "sweep",
        "--config",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "1",
    ];
    let o = eqco(&["sweep", "--config", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let listed = text(&o.stdout);
    for name in [
        "k4-alpha64",
        "k4-alphanone",
        "k31-alpha64",
        "k31-alphanone",
        "random-init",
    ] {
        assert!(listed.contains(name), "{listed}");
    }
    let o = eqco(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let md = text(&o.stdout);
    assert_eq!(md.matches("| `").count(), 5, "{md}");
    assert!(md.contains("random init") && md.contains("(fast)"), "{md}");
    for f in ["report.md", "report.png", "accuracy.png", "sweep.toml"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    for run in ["k4-alpha64", "k31-alphanone", "random-init"] {
        let r = json(&out.join(run).join("eval/linear.json"));
        assert!((0.0..=1.0).contains(&r["top1"].as_f64().unwrap()));
        assert!(out.join(run).join("eval/knn.json").is_file());
    }
    let first = std::fs::read(out.join("k4-alpha64/eval/knn.json")).unwrap();

    // Interrupted after a checkpoint: the run resumes; finished ones are skipped.
    std::fs::remove_file(out.join("k31-alpha64/summary.json")).unwrap();
    std::fs::remove_dir_all(out.join("k31-alpha64/eval")).unwrap();
    let o = eqco(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let log = text(&o.stderr);
    assert!(
        log.contains("k31-alpha64: resuming") && log.contains("k4-alpha64: trained"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(out.join("k4-alpha64/eval/knn.json")).unwrap(),
        first
    );
    assert!(out.join("k31-alpha64/eval/linear.json").is_file());

    // Another sweep in the same folder is refused; so is an impossible grid.
    let o = eqco(&[&args[..], &["--set", "epochs=5"]].concat());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("holds another sweep"),
        "{}",
        text(&o.stderr)
    );
    let o = eqco(&[
        "sweep",
        "--config",
        file.to_str().unwrap(),
        "--dry-run",
        "--set",
        "batch_size=16",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("`k_negatives`") && text(&o.stderr).contains("k31"),
        "{}",
        text(&o.stderr)
    );
    let o = eqco(&["sweep", "--config", "fmnist-nothing", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("unknown sweep preset"));

    // `eqco report` takes the sweep folder for its runs.
    let o = eqco(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).matches("| `").count(), 5);
}

/// The `name shape` lines of a torchvision fixture.
fn torchvision_names(arch: &str) -> Vec<(String, Vec<i64>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/torchvision-{arch}-state.txt"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, shape) = l.split_once(' ').unwrap();
            let dims = shape
                .trim_matches(['[', ']'])
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse().unwrap())
                .collect();
            (name.to_string(), dims)
        })
        .collect()
}

#[test]
fn export_matches_torchvision_names_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["resnet18", "resnet50"] {
        let run = tmp.path().join(arch);
        pretrain(
            tmp.path(),
            &run,
            &[
                "max_steps=0",
                &format!("backbone={arch}"),
                "width=1",
                "stem=imagenet",
                "channels=3",
            ],
        );
        let file = tmp.path().join(format!("{arch}.safetensors"));
        let o = eqco(&[
            "export",
            "--checkpoint",
            latest(&run).to_str().unwrap(),
            "--format",
            "safetensors",
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains(&format!("torchvision.models.{arch}()")));
        let mut got: Vec<(String, Vec<i64>)> = tch::Tensor::read_safetensors(&file)
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                if n.ends_with("num_batches_tracked") {
                    assert_eq!(t.kind(), tch::Kind::Int64, "{n}");
                }
                (n, t.size())
            })
            .collect();
        let mut want = torchvision_names(arch);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{arch}");
        // The metadata names the architecture.
        let raw = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).unwrap();
        assert_eq!(header["__metadata__"]["arch"], arch);
        assert_eq!(header["__metadata__"]["stem"], "imagenet");
    }
    // Not a checkpoint: an error naming the file.
    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, b"not safetensors").unwrap();
    let o = eqco(&[
        "export",
        "--checkpoint",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("bad.safetensors"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn the_long_sweep_presets_run_at_tiny_size_and_report_the_seed_spread() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    eqco::data::synthetic::write_cifar10(&data, 600).unwrap();
    // The presets' own grids (K up to 255, so N = 256), one short epoch.
    let sets = [
        "dataset=cifar10".to_string(),
        format!("data_dir=\"{}\"", data.display()),
        "max_images=512".into(),
        "epochs=1".into(),
        "warmup_epochs=0".into(),
        "backbone=resnet10".into(),
        "width=0.125".into(),
        "image_size=8".into(),
        "head_hidden=16".into(),
        "embed_dim=8".into(),
        "loader_threads=1".into(),
        "precision=fp32".into(),
        "memory_format=channels_last".into(),
    ];
    for (preset, runs, seeds) in [
        ("fmnist-simo-k-long", 10, 2),
        ("fmnist-mocov2-k-long", 8, 2),
        ("fmnist-simo-k-paired", 17, 4),
        ("fmnist-simo-k16-more-seeds", 2, 1),
        ("fmnist-simo-k-small", 2, 1),
        ("fmnist-mocov2-k-paired", 12, 4),
        ("fmnist-simo-table6", 2, 1),
        ("fmnist-simo-table7", 2, 1),
        ("fmnist-simclr-alpha-paired", 2, 1),
    ] {
        let out = tmp.path().join(preset);
        let mut args: Vec<String> = vec![
            "sweep".into(),
            "--config".into(),
            preset.into(),
            "--out".into(),
            out.display().to_string(),
            "--threads".into(),
            "1".into(),
        ];
        for s in &sets {
            args.extend(["--set".to_string(), s.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = eqco(&args);
        assert!(o.status.success(), "{preset}: {}", text(&o.stderr));
        let report = std::fs::read_to_string(out.join("report.md")).unwrap();
        let rows = report.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, runs, "{preset}: {report}");
        assert_eq!(
            report.contains("## Over seeds"),
            seeds > 1,
            "{preset}: {report}"
        );
        if seeds > 1 {
            // Each configuration over its seeds: a mean ± sd and the range
            // in brackets; four configurations, three where K = α is one.
            let list = (0..seeds)
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let spread = report
                .lines()
                .filter(|l| {
                    l.contains(&format!("| {list} |")) && l.contains('–') && l.contains('(')
                })
                .count();
            let configs = if preset == "fmnist-mocov2-k-paired" {
                3
            } else {
                4
            };
            assert_eq!(spread, configs, "{preset}: {report}");
            assert!(
                report.contains(" EqCo α=") && report.contains(" InfoNCE K=16"),
                "{preset}: {report}"
            );
            check_paired_differences(&out, &report, preset, seeds);
        }
        for dir in std::fs::read_dir(&out).unwrap().flatten() {
            let p = dir.path();
            if p.join("config.toml").is_file() {
                assert!(p.join("eval/knn.json").is_file(), "{}", p.display());
            }
        }
    }
    // The ablations' runs are series of their own, told apart by the key.
    let t6 = std::fs::read_to_string(tmp.path().join("fmnist-simo-table6/report.md")).unwrap();
    assert!(
        t6.contains("ema_momentum0`") && t6.contains("ema_momentum0.99`"),
        "{t6}"
    );
}

/// The report's paired kNN differences (EqCo − InfoNCE at each K, and
/// each loss at K = 16 − at the largest K) equal the ones computed here
/// from the runs' own `eval/knn.json`, by hand: the mean, s with n − 1, and
/// the 95 % half width t₀.₉₇₅,ₙ₋₁ · s / √n from the table (12.706 for two
/// seeds, 3.182 for four).
fn check_paired_differences(out: &Path, report: &str, preset: &str, n: usize) {
    use std::collections::BTreeMap;
    // (K, EqCo?) → seed → kNN top-1 in points.
    let mut knn: BTreeMap<(usize, bool), BTreeMap<u64, f64>> = BTreeMap::new();
    for dir in std::fs::read_dir(out).unwrap().flatten() {
        let p = dir.path();
        if !p.join("metrics.jsonl").is_file() {
            continue;
        }
        let run = eqco::app::report::RunView::read(&p).unwrap();
        if run.role() != eqco::app::report::Role::Contrastive {
            continue;
        }
        let top1 = json(&p.join("eval/knn.json"))["top1"].as_f64().unwrap();
        knn.entry((run.cfg.k(), run.cfg.loss.alpha.is_some()))
            .or_default()
            .insert(run.cfg.seed, 100.0 * top1);
    }
    let seeds: Vec<u64> = (0..n as u64).collect();
    let list = seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let t = match n {
        2 => 12.706,
        4 => 3.182,
        _ => panic!("no t quantile here for {n} seeds"),
    };
    // The mean, s and half width of `a − b` seed by seed, and the table row
    // that must show them.
    let stats = |a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>| {
        let d: Vec<f64> = seeds.iter().map(|s| a[s] - b[s]).collect();
        let mean = d.iter().sum::<f64>() / n as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
        let listed = d
            .iter()
            .map(|x| format!("{x:+.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        (mean, sd, t * sd / (n as f64).sqrt(), listed)
    };
    let ks: Vec<usize> = knn.keys().map(|k| k.0).collect();
    for &k in &ks {
        let (Some(eqco), Some(infonce)) = (knn.get(&(k, true)), knn.get(&(k, false))) else {
            continue;
        };
        let (mean, sd, half, listed) = stats(eqco, infonce);
        // The table row shows the differences, their mean and s; the
        // verdict line the mean and the half width (printed to 2 decimals).
        let row = format!("InfoNCE at K = {k} | kNN top-1 | {list} | {listed} |");
        let row = report.lines().find(|l| l.contains(&row));
        let row = row.unwrap_or_else(|| panic!("{preset}: no K = {k} kNN row in {report}"));
        let cells: Vec<&str> = row.split(" | ").collect();
        let (m, s) = cells[4].split_once(" ± ").unwrap();
        close_to(m, mean, 0.0051, row);
        close_to(s, sd, 0.0051, row);
        let head = format!("InfoNCE at K = {k}, kNN top-1: ");
        let line = report
            .lines()
            .find(|l| l.starts_with("- ") && l.contains(&head));
        let line = line.unwrap_or_else(|| panic!("{preset}: no K = {k} verdict in {report}"));
        let rest = line.split_once(&head).unwrap().1;
        let (m, rest) = rest.split_once(" ± ").unwrap();
        let (h, rest) = rest
            .split_once(&format!(" points (95 % interval, {n} seeds): "))
            .unwrap();
        close_to(m, mean, 0.0051, line);
        close_to(h, half, 0.0051 + 1e-4 * half, line);
        if (mean.abs() - half).abs() > 0.01 {
            let verdict = if mean.abs() > half {
                "resolved"
            } else {
                "not resolved at this scale"
            };
            assert_eq!(rest, verdict, "{line}");
        }
    }
    // Small K against the largest K, each loss against itself (EqCo against
    // InfoNCE at K = α where only that ran), seed by seed.
    let (small, big) = (ks[0], ks[ks.len() - 1]);
    for eqco in [true, false] {
        let reference = knn.get(&(big, eqco)).unwrap_or(&knn[&(big, false)]);
        let (mean, sd, _, listed) = stats(&knn[&(small, eqco)], reference);
        let row = format!("K = {small} − K = {big}");
        let row = report.lines().find(|l| {
            l.contains(&row) && l.contains(&format!(" | kNN top-1 | {list} | {listed} |"))
        });
        let row = row.unwrap_or_else(|| {
            panic!("{preset}: no K = {small} − K = {big} row (EqCo {eqco}) in {report}")
        });
        let cells: Vec<&str> = row.split(" | ").collect();
        let (m, s) = cells[4].split_once(" ± ").unwrap();
        close_to(m, mean, 0.0051, row);
        close_to(s, sd, 0.0051, row);
    }
}

/// `text` (a printed number) is within `tol` of `want`.
fn close_to(text: &str, want: f64, tol: f64, context: &str) {
    let got: f64 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} in {context}"));
    assert!((got - want).abs() <= tol, "{got} vs {want} in {context}");
}

/// The `logreg` probe (the default) reaches what an independent logistic
/// regression fitted in PyTorch reaches on the same frozen features, within
/// 0.3 points: real Fashion-MNIST (60,000 training and 10,000 test images,
/// as scripts/setup.sh installs it), a briefly trained default-preset run
/// (fp32), its features as `eqco embed` writes them, and the reference's
/// protocol in tests/python/logreg_reference.py (standardised, weight decay
/// chosen on 10,000 held-out training images, refitted on all, L-BFGS).
#[test]
fn the_logreg_probe_matches_a_pytorch_logistic_regression_on_the_same_features() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let run_s = run.to_str().unwrap();
    let sets = [
        "max_steps=10",
        "precision=fp32",
        "knn_every=0",
        "tensorboard=false",
    ];
    let mut args = vec!["pretrain", "--out", run_s, "--threads", "2"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let o = eqco(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ckpt = latest(&run);
    let ckpt = ckpt.to_str().unwrap();
    let eval = tmp.path().join("eval");
    let o = eqco(&[
        "eval",
        "linear",
        "--checkpoint",
        ckpt,
        "--threads",
        "2",
        "--out",
        eval.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    eprintln!("{}", text(&o.stdout));
    let r = json(&eval.join("linear.json"));
    assert_eq!(r["settings"]["mode"], "logreg");
    let logreg = &r["logreg"];
    assert_eq!(logreg["held_out"], 10_000, "{r}");
    assert_eq!(logreg["candidates"].as_array().unwrap().len(), 6);
    assert_eq!(logreg["fit"]["converged"], true, "{r}");
    let ours = r["top1"].as_f64().unwrap();
    let mut files = Vec::new();
    for split in ["train", "test"] {
        let out = tmp.path().join(format!("{split}.npy"));
        let o = eqco(&[
            "embed",
            "--checkpoint",
            ckpt,
            "--split",
            split,
            "--threads",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        files.push(out.display().to_string());
        files.push(
            tmp.path()
                .join(format!("{split}.rows.csv"))
                .display()
                .to_string(),
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/logreg_reference.py");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let o = std::process::Command::new(python)
        .arg(script)
        .args(&files)
        .output()
        .expect("the venv's python runs (bash scripts/setup.sh installs torch)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let theirs = reference["top1"].as_f64().unwrap();
    eprintln!(
        "logreg top-1 {:.2} % (λ = {}), PyTorch's reference {:.2} % (weight decay {})",
        100.0 * ours,
        logreg["lambda"],
        100.0 * theirs,
        reference["decay"]
    );
    assert!(
        (ours - theirs).abs() <= 0.003,
        "ours {ours}, PyTorch's {theirs}: more than 0.3 points apart"
    );
}
