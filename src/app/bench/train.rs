//! `eqco bench train`: whole training steps (forward, backward, SGD, EMA,
//! queue) of each method on random images, eqco against the same model and
//! method in PyTorch (`scripts/bench_train.py`) with the same precision and
//! memory format, measured in the same call. Each row also gives the ratio
//! to PyTorch's eager default, fp32 and NCHW, which is what the reference
//! implementations run.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tch::{Device, Kind, Tensor};

use super::{positive, Python, PythonArgs};
use crate::base::device::{native_bf16, Compute, MemoryFormat, Precision};
use crate::dist::World;
use crate::job::{Job, Request};
use crate::method::Shape;
use crate::run::PretrainConfig;
use crate::train::Step;

const TRAIN_SCRIPT: &str = include_str!("../../../scripts/bench_train.py");

/// `eqco bench train`: images/s of training steps, eqco vs PyTorch.
#[derive(Debug, Args)]
pub struct TrainBench {
    /// Methods to time.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "simo,mocov2,simclr,mocov1"
    )]
    pub methods: Vec<String>,
    /// Models: `fmnist` (the default preset's ResNet-18 ×0.25, small stem,
    /// 1×28×28, N = 256), `resnet18-32` (small stem, 3×32×32, N = 256),
    /// `resnet50-224` (ImageNet stem, 3×224×224, N = 64).
    #[arg(long, value_delimiter = ',', default_value = "fmnist,resnet18-32")]
    pub models: Vec<String>,
    /// Precisions to time [default: fp32, and bf16 where the hardware computes bfloat16 natively].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub precision: Option<Vec<Precision>>,
    /// Memory formats to time.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "contiguous,channels_last"
    )]
    pub memory_format: Vec<MemoryFormat>,
    /// Timed steps (after the warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Measure each row this many times, eqco and PyTorch taking turns
    /// (machine noise then falls on both alike); the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Override the batch size N of every model (a smoke test).
    #[arg(long)]
    pub batch: Option<usize>,
    /// CPU threads for both implementations [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda or cuda:N (both implementations).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The PyTorch side.
    #[command(flatten)]
    pub python: PythonArgs,
}

/// A model row: the backbone at its image size and batch.
struct Model {
    name: &'static str,
    backbone: &'static str,
    width: f64,
    small_stem: bool,
    channels: u8,
    size: u32,
    batch: usize,
}

const MODELS: [Model; 3] = [
    Model {
        name: "fmnist",
        backbone: "resnet18",
        width: 0.25,
        small_stem: true,
        channels: 1,
        size: 28,
        batch: 256,
    },
    Model {
        name: "resnet18-32",
        backbone: "resnet18",
        width: 1.0,
        small_stem: true,
        channels: 3,
        size: 32,
        batch: 256,
    },
    Model {
        name: "resnet50-224",
        backbone: "resnet50",
        width: 1.0,
        small_stem: false,
        channels: 3,
        size: 224,
        batch: 64,
    },
];

const METHODS: [&str; 4] = ["simo", "mocov1", "mocov2", "simclr"];

/// One timed configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Variant {
    bf16: bool,
    channels_last: bool,
}

impl Variant {
    const EAGER_DEFAULT: Variant = Variant {
        bf16: false,
        channels_last: false,
    };

    fn precision(&self) -> &'static str {
        if self.bf16 {
            "bf16"
        } else {
            "fp32"
        }
    }

    fn format(&self) -> &'static str {
        if self.channels_last {
            "channels-last"
        } else {
            "NCHW"
        }
    }
}

/// Seconds per training step (the median) and the seconds of it the CPU
/// spent waiting for the device at the end.
#[derive(Debug, Clone, Copy)]
struct Timing {
    step: f64,
    wait: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Timing {
    /// The median of each figure over rounds (`None` for none).
    fn median(rounds: &[Timing]) -> Option<Timing> {
        (!rounds.is_empty()).then(|| Timing {
            step: median(rounds.iter().map(|t| t.step).collect()),
            wait: median(rounds.iter().map(|t| t.wait).collect()),
        })
    }
}

/// What one table of the benchmark runs on: the device, its threads, the
/// PyTorch interpreter and the variants timed.
struct Setup {
    device: Device,
    threads: usize,
    python: Option<Python>,
    variants: Vec<Variant>,
}

/// The median timings of one model and method: eqco's and PyTorch's for
/// each variant, and PyTorch's eager default.
struct Rows {
    ours: Vec<Timing>,
    theirs: Vec<Option<Timing>>,
    eager: Option<Timing>,
}

impl TrainBench {
    /// Runs the benchmark and prints its table.
    pub fn run(&self) -> anyhow::Result<()> {
        positive("--steps", self.steps)?;
        positive("--repeats", self.repeats)?;
        if let Some(t) = self.threads {
            positive("--threads", t)?;
        }
        let job = Job::single(&Request {
            device: self.device.clone(),
            threads: self.threads,
            nproc_per_node: None,
        })?;
        let (device, threads) = (job.device, job.threads);
        tch::set_num_threads(threads as i32);
        if device.is_cuda() {
            Cuda::benchmark_mode();
        }
        let models = self.models()?;
        let native = native_bf16(device);
        let setup = Setup {
            device,
            threads,
            python: self.python.python(),
            variants: self.variants(native.is_some()),
        };
        self.print_header(&setup, &native);
        for model in &models {
            for method in &self.methods {
                let n = self.batch.unwrap_or(model.batch);
                let rows = self.measure(&setup, model, method, n)?;
                print_rows(&setup, model, method, n, &rows);
            }
        }
        println!("  (PyTorch: the same precision and format; eager: PyTorch in fp32 and NCHW;");
        println!("   ratio = eqco img/s ÷ theirs, > 1 means eqco is faster)");
        Ok(())
    }

    /// The models of `--models`, and a check of `--methods`.
    fn models(&self) -> anyhow::Result<Vec<&'static Model>> {
        if let Some(m) = self.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            return Err(crate::Error::config(
                "--methods",
                format!("'{m}' (simo, mocov1, mocov2, simclr)"),
            )
            .into());
        }
        let models = self
            .models
            .iter()
            .map(|name| {
                MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
                    crate::Error::config(
                        "--models",
                        format!("'{name}' (fmnist, resnet18-32 or resnet50-224)"),
                    )
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(models)
    }

    /// Every precision of `--precision` (fp32, and bf16 where `native`)
    /// in every memory format of `--memory-format`.
    fn variants(&self, native: bool) -> Vec<Variant> {
        let precisions = self.precision.clone().unwrap_or_else(|| {
            let mut p = vec![Precision::Fp32];
            if native {
                p.push(Precision::Bf16);
            }
            p
        });
        precisions
            .iter()
            .flat_map(|&p| {
                let bf16 = match p {
                    Precision::Fp32 => false,
                    Precision::Bf16 => true,
                    Precision::Auto => native,
                };
                self.memory_format.iter().map(move |&f| Variant {
                    bf16,
                    channels_last: f == MemoryFormat::ChannelsLast,
                })
            })
            .collect()
    }

    /// The table's title and column heads.
    fn print_header(&self, setup: &Setup, native: &Option<String>) {
        println!(
            "bench train: {} warm-up + {} timed steps (median) on random images, {} round(s), {} thread(s), {}",
            self.warmup,
            self.steps,
            self.repeats,
            setup.threads,
            describe(setup.device, native),
        );
        if self.precision.is_none() && native.is_none() {
            println!(
                "  (no bf16 rows: {}; --precision fp32,bf16 times them emulated)",
                no_native(setup.device)
            );
        }
        println!(
            "  {:<13} {:<7} {:<5} {:<14} {:>4}  {:>10}  {:>10}  {:>6}  {:>10}  {:>6}{}",
            "model",
            "method",
            "prec",
            "format",
            "N",
            "eqco img/s",
            "PyTorch",
            "ratio",
            "eager",
            "ratio",
            match setup.device.is_cuda() {
                true => "   wait ms (eqco / PyTorch)",
                false => "",
            }
        );
    }

    /// Every variant, and PyTorch's eager default, once per round; the
    /// medians over rounds (machine noise falls on both alike).
    fn measure(
        &self,
        setup: &Setup,
        model: &Model,
        method: &str,
        n: usize,
    ) -> anyhow::Result<Rows> {
        let cfg = config(method, model, n)?;
        let variants = &setup.variants;
        let mut ours: Vec<Vec<Timing>> = vec![Vec::new(); variants.len()];
        let mut theirs: Vec<Vec<Timing>> = vec![Vec::new(); variants.len()];
        let mut eager = Vec::new();
        let pytorch = |v: Variant| -> anyhow::Result<Option<Timing>> {
            match &setup.python {
                Some(py) => Ok(Some(self.time_pytorch(py, method, model, n, v, setup)?)),
                None => Ok(None),
            }
        };
        for _ in 0..self.repeats {
            for (i, &v) in variants.iter().enumerate() {
                ours[i].push(time_eqco(
                    &cfg,
                    model,
                    v,
                    setup.device,
                    self.warmup,
                    self.steps,
                )?);
                if let Some(t) = pytorch(v)? {
                    theirs[i].push(t);
                    if v == Variant::EAGER_DEFAULT {
                        eager.push(t);
                    }
                }
            }
            if !variants.contains(&Variant::EAGER_DEFAULT) {
                eager.extend(pytorch(Variant::EAGER_DEFAULT)?);
            }
        }
        Ok(Rows {
            ours: ours
                .iter()
                .map(|t| Timing::median(t).expect("at least one round"))
                .collect(),
            theirs: theirs.iter().map(|t| Timing::median(t)).collect(),
            eager: Timing::median(&eager),
        })
    }

    /// PyTorch's step of `method` on `model` at batch `n` in variant `v`.
    fn time_pytorch(
        &self,
        python: &Python,
        method: &str,
        model: &Model,
        n: usize,
        v: Variant,
        setup: &Setup,
    ) -> anyhow::Result<Timing> {
        let (device, threads) = (setup.device, setup.threads);
        let mut args: Vec<String> = [
            ("--method", method.to_string()),
            ("--arch", model.backbone.to_string()),
            ("--width", model.width.to_string()),
            ("--channels", model.channels.to_string()),
            ("--size", model.size.to_string()),
            ("--batch", n.to_string()),
            ("--queue", "4096".to_string()),
            ("--groups", groups(n).to_string()),
            ("--steps", self.steps.to_string()),
            ("--warmup", self.warmup.to_string()),
            ("--threads", threads.to_string()),
            (
                "--device",
                match device {
                    Device::Cuda(i) => format!("cuda:{i}"),
                    _ => "cpu".to_string(),
                },
            ),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        for (on, flag) in [
            (model.small_stem, "--small-stem"),
            (v.bf16, "--bf16"),
            (v.channels_last, "--channels-last"),
        ] {
            if on {
                args.push(flag.to_string());
            }
        }
        let out = python.run("bench_train.py", TRAIN_SCRIPT, &args)?;
        Ok(Timing {
            step: out["step_s"].as_f64().context("no step_s")?,
            wait: out["wait_s"].as_f64().context("no wait_s")?,
        })
    }
}

/// One table row per variant of `model` and `method` at batch `n`.
fn print_rows(setup: &Setup, model: &Model, method: &str, n: usize, rows: &Rows) {
    let cuda = setup.device.is_cuda();
    for (i, &v) in setup.variants.iter().enumerate() {
        let (ours, same) = (rows.ours[i], rows.theirs[i]);
        let img = |t: &Timing| n as f64 / t.step;
        let col = |t: Option<Timing>| match t {
            Some(t) => (
                format!("{:10.1}", img(&t)),
                format!("{:6.2}", t.step / ours.step),
            ),
            None => (format!("{:>10}", "-"), format!("{:>6}", "-")),
        };
        let ((s, sr), (e, er)) = (col(same), col(rows.eager));
        let wait = match (cuda, same) {
            (false, _) => String::new(),
            (true, Some(t)) => format!("   {:7.2} / {:7.2}", 1e3 * ours.wait, 1e3 * t.wait),
            (true, None) => format!("   {:7.2}", 1e3 * ours.wait),
        };
        println!(
            "  {:<13} {:<7} {:<5} {:<14} {:>4}  {:10.1}  {s}  {sr}  {e}  {er}{wait}",
            model.name,
            method,
            v.precision(),
            v.format(),
            n,
            img(&ours),
        );
    }
}

/// MoCo's shuffle-BN groups for a batch of `n`: 32 images each.
fn groups(n: usize) -> usize {
    (n / 32).max(1)
}

/// The method's paper preset with the model's backbone and batch.
fn config(method: &str, model: &Model, n: usize) -> anyhow::Result<PretrainConfig> {
    let mut sets = vec![
        format!("backbone={}", model.backbone),
        format!(
            "stem={}",
            if model.small_stem {
                "small"
            } else {
                "imagenet"
            }
        ),
        format!("width={}", model.width),
        format!("channels={}", model.channels),
        format!("image_size={}", model.size),
        format!("batch_size={n}"),
        "queue_size=4096".into(),
        format!("shuffle_bn_groups={}", groups(n)),
    ];
    if method == "simo" {
        sets.push(format!("k_negatives={}", n - 1));
    }
    Ok(PretrainConfig::load(Some(method), &sets)?)
}

/// The same figures for eqco: its method and SGD, timed step by step.
fn time_eqco(
    cfg: &PretrainConfig,
    model: &Model,
    v: Variant,
    device: Device,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<Timing> {
    let compute = Compute {
        device,
        bf16: v.bf16,
        channels_last: v.channels_last,
    };
    let shape = Shape {
        encoder: cfg.encoder(model.channels)?,
        batch_size: cfg.optim.batch_size,
        classes: 10,
        seed: cfg.seed,
    };
    let world = World::single();
    let method = crate::method::build(&cfg.method, &shape, compute, &world)?;
    let sgd = (cfg.optim.momentum, cfg.optim.weight_decay);
    // The trainer's own step: forward, the objective, backward, the guard, SGD.
    let mut step = Step::new(method, cfg.loss, sgd, &world, false)?;
    let n = cfg.optim.batch_size as i64;
    let (c, s) = (model.channels as i64, model.size as i64);
    let view = || {
        let x = crate::base::seed::with_torch_seed(cfg.seed, || {
            Tensor::randn([n, c, s, s], (Kind::Float, device))
        });
        compute.layout(&x)
    };
    let batch = crate::data::TwoViewBatch {
        view1: view(),
        view2: view(),
        indices: (0..cfg.optim.batch_size).collect(),
        labels: None,
    };
    let mut step = |i: usize| -> anyhow::Result<()> {
        step.run(&batch, i as u64, 0.03)?;
        Ok(())
    };
    for i in 0..warmup {
        step(i)?;
    }
    Cuda::sync(device);
    let (mut times, mut waits) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for i in 0..steps {
        let start = Instant::now();
        step(warmup + i)?;
        let queued = Instant::now();
        Cuda::sync(device);
        let end = Instant::now();
        times.push((end - start).as_secs_f64());
        waits.push((end - queued).as_secs_f64());
    }
    Ok(Timing {
        step: median(times),
        wait: median(waits),
    })
}

/// The device, and whether it computes bfloat16 natively.
fn describe(device: Device, native: &Option<String>) -> String {
    let what = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    match native {
        Some(why) => format!("{what} ({why})"),
        None => format!("{what} ({})", no_native(device)),
    }
}

fn no_native(device: Device) -> &'static str {
    if device.is_cuda() {
        "no native bf16: compute capability below 8.0"
    } else {
        "no native bf16: neither AVX-512 BF16 nor AMX"
    }
}

/// CUDA helpers that are no-ops on the CPU.
struct Cuda;

impl Cuda {
    /// Waits for the device's queued work (timing is otherwise of launches only).
    fn sync(device: Device) {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// cuDNN picks the fastest convolution algorithms for the shapes seen.
    fn benchmark_mode() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}
