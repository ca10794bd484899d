//! The pretraining configuration: one flat serde struct, presets as TOML
//! files compiled in, `--set key=value` overrides, validated once at load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::data::formats::idx::FASHION_MNIST_DEFAULT_DIR;
use crate::data::{RecipeName, Split};
pub use crate::device::{MemoryFormat, Precision};
pub use crate::dist::{Backend, BnMode};
use crate::error::{Error, Result};
use crate::loss::LossConfig;
use crate::model::{EncoderConfig, HeadKind, ResNetConfig, Stem};

/// Whether `eqco pretrain` continues a run it finds in `--out` (the `resume`
/// key, or `--resume auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResumeMode {
    /// A folder that holds a run is refused (continue it with `--resume DIR`).
    #[default]
    Never,
    /// Continue from the newest checkpoint in `--out` when there is one,
    /// else start fresh: what a restarted worker or a requeued job needs.
    Auto,
}

/// The frameworks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    /// MoCo v2 without queue: momentum keys of the batch, a shared K-subset of negatives.
    Simo,
    /// MoCo v1: momentum encoder, queue, shuffle BN, linear head.
    Mocov1,
    /// MoCo v2: MoCo v1 with an MLP head and aug+.
    Mocov2,
    /// SimCLR: one encoder, in-batch negatives, symmetric loss.
    Simclr,
    /// The supervised baseline: the backbone and a linear classifier trained
    /// with cross-entropy on the labels (view 1 only; no K, τ or α).
    Supervised,
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the base rate to 0.
    Cosine,
    /// ×0.1 at each epoch of `lr_steps`.
    Step,
}

/// Every pretraining setting; the keys of `config.toml`, of presets and of `--set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// `fashion-mnist` (the Debian package's files), or a format read from
    /// `data_dir`: `auto`, `idx`, `cifar10`, `cifar100`, `stl10`, `imagefolder`.
    pub dataset: String,
    /// The dataset's folder (not needed for `fashion-mnist`).
    pub data_dir: Option<PathBuf>,
    /// The split trained on.
    pub split: Split,
    /// Train on a random subset of this many images (fixed by `seed`).
    pub max_images: Option<usize>,
    /// The framework: `simo`, `mocov1`, `mocov2`, `simclr`, or the
    /// `supervised` baseline.
    pub method: MethodName,
    /// `resnet10`, `resnet18`, `resnet34` or `resnet50`.
    pub backbone: String,
    /// Width multiplier of every layer.
    pub width: f64,
    /// `imagenet` or `small`.
    pub stem: Stem,
    /// Zero-initialise each residual block's last BN γ.
    pub zero_init_residual: bool,
    /// `linear`, `mlp` or `mlp-bn`.
    pub head: HeadKind,
    /// Hidden width of MLP heads [default: the backbone's feature width].
    pub head_hidden: Option<i64>,
    /// Embedding width.
    pub embed_dim: i64,
    /// Temperature τ.
    pub tau: f64,
    /// EqCo's α; absent (or `"none"`) for plain InfoNCE.
    #[serde(
        deserialize_with = "alpha_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub alpha: Option<f64>,
    /// Negatives per query K (SiMo: ≤ N − 1, default N − 1; SimCLR: ≤ 2(N − 1),
    /// default 2(N − 1); MoCo: the queue, set `queue_size`).
    pub k_negatives: Option<usize>,
    /// MoCo's queue length (its K).
    pub queue_size: usize,
    /// MoCo's shuffle BN: sub-batches with their own BN statistics.
    pub shuffle_bn_groups: i64,
    /// Images (queries) per batch N.
    pub batch_size: usize,
    /// Epochs.
    pub epochs: usize,
    /// Base learning rate at N = 256; the rate used is `lr × N / 256`.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Linear warm-up, in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// `cosine` or `step`.
    pub schedule: Schedule,
    /// Epochs at which a `step` schedule multiplies the rate by 0.1.
    pub lr_steps: Vec<usize>,
    /// Momentum m of the key encoder's moving average (0 = copy).
    pub ema_momentum: f64,
    /// Augmentation recipe: `mocov1`, `mocov2`, `simclr`, or `supervised`
    /// (crop 0.08–1 and flip: the supervised baseline's).
    pub augment: RecipeName,
    /// Side of the views [default: the images' own side, 224 for ImageFolder].
    pub image_size: Option<u32>,
    /// Channels of the views: 1 keeps grayscale, 3 replicates it [default: the images' own].
    pub channels: Option<u8>,
    /// `auto` (bf16 where the hardware computes bfloat16 natively, else
    /// fp32), `fp32`, or `bf16` (autocast for the encoders' forward passes).
    pub precision: Precision,
    /// `channels_last` (NHWC images and convolution weights) or `contiguous` (NCHW).
    pub memory_format: MemoryFormat,
    /// Write a checkpoint every this many steps (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Run the kNN monitor every this many epochs (0: never); its top-1 goes
    /// into `metrics.jsonl` as `knn_top1` on the epoch's last line.
    pub knn_every: usize,
    /// Neighbours k of the kNN monitor.
    pub knn_k: i64,
    /// Temperature of the kNN monitor's vote weights.
    pub knn_tau: f64,
    /// Training images in the kNN monitor's memory bank (a fixed subset).
    pub knn_bank: usize,
    /// Stop after this many optimizer steps; 0 writes the initialisation
    /// only (a step-0 checkpoint: the random-init baseline).
    pub max_steps: Option<usize>,
    /// Seed of initialisation, shuffling, augmentation and negative sampling.
    pub seed: u64,
    /// Data-loading worker threads [default: the `--threads` value].
    pub loader_threads: Option<usize>,
    /// Read the steps' figures (loss, gradient norm) from the device every
    /// this many steps [default: 10 on a GPU, 1 on the CPU]; a NaN is found
    /// and named within this many steps.
    pub log_every: Option<usize>,
    /// Write TensorBoard event files into the run folder as training goes
    /// (every figure of `metrics.jsonl`, the view pairs, this configuration).
    pub tensorboard: bool,
    /// On a GPU, let cuDNN time its convolution algorithms and keep the
    /// fastest (results then differ in the last bits between runs).
    pub cudnn_benchmark: bool,
    /// Cap of the pools of page-locked batch buffers the loaders fill for a
    /// GPU, in MiB, for the whole machine: its local workers
    /// (`LOCAL_WORLD_SIZE`) share it equally.
    pub pinned_memory_mib: usize,
    /// Batch normalisation across devices: `sync` (statistics of the global
    /// batch), `shuffle` (MoCo's: keys from a batch shuffled across ranks
    /// and `shuffle_bn_groups` groups) or `local` [default: sync for SiMo,
    /// SimCLR and the supervised baseline, shuffle for MoCo].
    pub bn: Option<BnMode>,
    /// Collectives: `auto` (NCCL on GPUs, Gloo on the CPU), `gloo` or `nccl`.
    pub dist_backend: Backend,
    /// With several processes, all-reduce each bucket of gradients as soon
    /// as backward has accumulated them, overlapping communication with the
    /// rest of backward (as DDP); `false` averages them after backward.
    /// Both give the same sums; bit for bit at 2 processes (tested), in the
    /// last bits beyond, where the order of a ring all-reduce's additions
    /// depends on the buckets' layout.
    pub grad_overlap: bool,
    /// Seconds any wait on another process may take once every rank has
    /// joined (every collective and barrier) before the job ends with an error.
    pub dist_timeout: f64,
    /// Seconds to reach the rendezvous store and for every rank to join:
    /// a peer that never starts ends the job then, named.
    pub dist_join_timeout: f64,
    /// `never` or `auto`: continue from the newest checkpoint in `--out`
    /// when there is one (torchrun restarts and requeued SLURM jobs do so
    /// whatever this says).
    pub resume: ResumeMode,
}

fn alpha_or_none<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum A {
        Num(f64),
        Int(i64),
        Text(String),
    }
    match A::deserialize(d)? {
        A::Num(v) => Ok(Some(v)),
        A::Int(v) => Ok(Some(v as f64)),
        A::Text(s) if s.eq_ignore_ascii_case("none") => Ok(None),
        A::Text(s) => Err(serde::de::Error::custom(format!(
            "'{s}' is not a number or \"none\""
        ))),
    }
}

impl Default for PretrainConfig {
    /// Neutral values for keys a preset or file leaves out: plain InfoNCE, K
    /// the whole batch, no warm-up; a small ResNet-18 on Fashion-MNIST.
    fn default() -> Self {
        PretrainConfig {
            dataset: "fashion-mnist".into(),
            data_dir: None,
            split: Split::Train,
            max_images: None,
            method: MethodName::Simo,
            backbone: "resnet18".into(),
            width: 1.0,
            stem: Stem::Small,
            zero_init_residual: false,
            head: HeadKind::Mlp,
            head_hidden: None,
            embed_dim: 128,
            tau: 0.2,
            alpha: None,
            k_negatives: None,
            queue_size: 4096,
            shuffle_bn_groups: 1,
            batch_size: 256,
            epochs: 1,
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_epochs: 0.0,
            schedule: Schedule::Cosine,
            lr_steps: Vec::new(),
            ema_momentum: 0.999,
            augment: RecipeName::Mocov2,
            image_size: None,
            channels: None,
            precision: Precision::Auto,
            memory_format: MemoryFormat::ChannelsLast,
            checkpoint_every: 0,
            knn_every: 0,
            knn_k: 200,
            knn_tau: 0.1,
            knn_bank: 10_000,
            max_steps: None,
            seed: 0,
            loader_threads: None,
            log_every: None,
            tensorboard: true,
            cudnn_benchmark: true,
            pinned_memory_mib: 4096,
            bn: None,
            dist_backend: Backend::Auto,
            grad_overlap: true,
            dist_timeout: 1800.0,
            dist_join_timeout: 300.0,
            resume: ResumeMode::Never,
        }
    }
}

/// The presets compiled into the binary: `(name, TOML)`.
pub const PRESETS: [(&str, &str); 8] = [
    (
        "fmnist-simo",
        include_str!("../../presets/fmnist-simo.toml"),
    ),
    (
        "fmnist-mocov2",
        include_str!("../../presets/fmnist-mocov2.toml"),
    ),
    (
        "fmnist-mocov1",
        include_str!("../../presets/fmnist-mocov1.toml"),
    ),
    (
        "fmnist-simclr",
        include_str!("../../presets/fmnist-simclr.toml"),
    ),
    ("simo", include_str!("../../presets/simo.toml")),
    ("mocov2", include_str!("../../presets/mocov2.toml")),
    ("mocov1", include_str!("../../presets/mocov1.toml")),
    ("simclr", include_str!("../../presets/simclr.toml")),
];

/// The default preset.
pub const DEFAULT_PRESET: &str = "fmnist-simo";

fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>()
        .map_err(|e| Error::config(origin, format!("not valid TOML: {}", e.message())))
}

/// The text of `spec` and where it came from: a compiled-in preset of
/// `presets` by name, else a TOML file; anything else is an error listing
/// the `kind`s (e.g. "preset") there are.
pub fn resolve(spec: &str, presets: &[(&str, &str)], kind: &str) -> Result<(String, String)> {
    if let Some((_, text)) = presets.iter().find(|(n, _)| *n == spec) {
        Ok((text.to_string(), format!("{kind} {spec}")))
    } else if spec.ends_with(".toml") || Path::new(spec).is_file() {
        let text = std::fs::read_to_string(spec).map_err(|e| Error::io(spec, e))?;
        Ok((text, spec.to_string()))
    } else {
        let names: Vec<&str> = presets.iter().map(|p| p.0).collect();
        Err(Error::config(
            "--config",
            format!(
                "unknown {kind} '{spec}' ({kind}s: {}; or give a .toml file)",
                names.join(", ")
            ),
        ))
    }
}

/// The value of `--set key=value`: TOML if it parses (numbers, booleans,
/// arrays, quoted strings), else the text as a string.
pub fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

impl PretrainConfig {
    /// Resolves `--config` (a preset name or a TOML file) and `--set key=value`
    /// overrides, then validates. Errors name the key, file or preset.
    pub fn load(config: Option<&str>, sets: &[String]) -> Result<PretrainConfig> {
        let spec = config.unwrap_or(DEFAULT_PRESET);
        let (text, origin) = resolve(spec, &PRESETS, "preset")?;
        let mut table = parse_table(&text, &origin)?;
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| Error::config("--set", format!("'{set}' is not key=value")))?;
            table.insert(key.trim().to_string(), parse_value(value.trim()));
        }
        let cfg: PretrainConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| config_error(&e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The resolved configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("plain data serialises")
    }

    /// The backbone's depth from `backbone` (`resnetNN`).
    pub fn depth(&self) -> Result<usize> {
        self.backbone
            .strip_prefix("resnet")
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                Error::config(
                    "backbone",
                    format!(
                        "'{}' (known: resnet10, resnet18, resnet34, resnet50)",
                        self.backbone
                    ),
                )
            })
    }

    /// The encoder, for `channels` input channels.
    pub fn encoder(&self, channels: u8) -> Result<EncoderConfig> {
        let resnet = ResNetConfig {
            depth: self.depth()?,
            width: self.width,
            stem: self.stem,
            in_channels: channels as i64,
            zero_init_residual: self.zero_init_residual,
        };
        resnet.validate()?;
        Ok(EncoderConfig {
            resnet,
            head: self.head,
            head_hidden: self.head_hidden.unwrap_or_else(|| resnet.feature_dim()),
            embed_dim: self.embed_dim,
        })
    }

    /// The loss's τ and α.
    pub fn loss(&self) -> LossConfig {
        LossConfig {
            tau: self.tau,
            alpha: self.alpha,
            margin: None,
        }
    }

    /// The number of negatives per query K for this method and batch.
    pub fn k(&self) -> usize {
        let n = self.batch_size;
        match self.method {
            MethodName::Simo => self.k_negatives.unwrap_or(n.saturating_sub(1)),
            MethodName::Simclr => self.k_negatives.unwrap_or(2 * n.saturating_sub(1)),
            MethodName::Mocov1 | MethodName::Mocov2 => self.queue_size,
            MethodName::Supervised => 0,
        }
    }

    /// Steps between reads of the figures from `device`: `log_every`, else
    /// 10 on a GPU (so that steps do not wait for it) and 1 on the CPU.
    pub fn log_every(&self, device: tch::Device) -> usize {
        self.log_every
            .unwrap_or(if device.is_cuda() { 10 } else { 1 })
    }

    /// The batch normalisation mode: `bn`, else the paper's for the method
    /// (shuffle BN for MoCo, synchronised BN for the others).
    pub fn bn(&self) -> BnMode {
        self.bn.unwrap_or(match self.method {
            MethodName::Mocov1 | MethodName::Mocov2 => BnMode::Shuffle,
            _ => BnMode::Sync,
        })
    }

    /// Checks what depends on the number of processes `world`: the global
    /// batch must split evenly, and so must shuffle BN's groups; errors name
    /// the key.
    pub fn validate_world(&self, world: usize) -> Result<()> {
        let n = self.batch_size;
        if n % world != 0 {
            return Err(Error::config(
                "batch_size",
                format!("{n} does not split over {world} processes (batch_size is the global N; it must be a multiple of the world size)"),
            ));
        }
        if n / world < 2 && self.bn() != BnMode::Sync {
            return Err(Error::config(
                "batch_size",
                format!("{n} over {world} processes leaves fewer than 2 images per process for BN"),
            ));
        }
        if self.bn() == BnMode::Shuffle && self.shuffle_bn_groups as usize % world != 0 {
            return Err(Error::config(
                "shuffle_bn_groups",
                format!(
                    "{} BN groups do not split over {world} processes (use a multiple of {world}: each process takes its share of the groups)",
                    self.shuffle_bn_groups
                ),
            ));
        }
        Ok(())
    }

    /// Shuffle BN's groups per process for `world` processes.
    pub fn groups_per_rank(&self, world: usize) -> i64 {
        (self.shuffle_bn_groups / world as i64).max(1)
    }

    /// The learning rate at full schedule: `lr × N / 256` (the linear scaling rule, Sec. 2.2).
    pub fn scaled_lr(&self) -> f64 {
        self.lr * self.batch_size as f64 / 256.0
    }

    /// The dataset folder.
    pub fn data_path(&self) -> Result<PathBuf> {
        match (&self.data_dir, self.dataset.as_str()) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, "fashion-mnist") => Ok(PathBuf::from(FASHION_MNIST_DEFAULT_DIR)),
            (None, other) => Err(Error::config(
                "data_dir",
                format!("not set; dataset '{other}' is read from files you supply (--set data_dir=PATH)"),
            )),
        }
    }

    /// Checks every field once; the error names the first invalid key.
    pub fn validate(&self) -> Result<()> {
        let known = [
            "fashion-mnist",
            "auto",
            "idx",
            "cifar10",
            "cifar100",
            "stl10",
            "imagefolder",
        ];
        if !known.contains(&self.dataset.as_str()) {
            return Err(Error::config(
                "dataset",
                format!("'{}' (one of: {})", self.dataset, known.join(", ")),
            ));
        }
        let n = self.batch_size;
        if n < 2 {
            return Err(Error::config(
                "batch_size",
                format!("{n} (must be ≥ 2: the other images are the negatives)"),
            ));
        }
        if self.max_images == Some(0) {
            return Err(Error::config("max_images", "0 (must be ≥ 1)"));
        }
        self.encoder(self.channels.unwrap_or(3))?;
        if let Some(c) = self.channels {
            if c != 1 && c != 3 {
                return Err(Error::config("channels", format!("{c} (must be 1 or 3)")));
            }
        }
        if self.embed_dim < 1 {
            return Err(Error::config(
                "embed_dim",
                format!("{} (must be ≥ 1)", self.embed_dim),
            ));
        }
        if matches!(self.head_hidden, Some(h) if h < 1) {
            return Err(Error::config("head_hidden", "must be ≥ 1"));
        }
        self.loss().validate()?;
        let k = self.k();
        match self.method {
            MethodName::Simo if k == 0 || k > n - 1 => {
                return Err(Error::config(
                    "k_negatives",
                    format!("{k} (SiMo takes its negatives from the other keys of the batch: 1 to {} for batch_size {n})", n - 1),
                ))
            }
            MethodName::Simclr if k == 0 || k > 2 * (n - 1) => {
                return Err(Error::config(
                    "k_negatives",
                    format!("{k} (SimCLR has 2(N − 1) = {} in-batch negatives for batch_size {n})", 2 * (n - 1)),
                ))
            }
            MethodName::Mocov1 | MethodName::Mocov2 => {
                if self.queue_size == 0 {
                    return Err(Error::config("queue_size", "0 (must be ≥ 1)"));
                }
                if matches!(self.k_negatives, Some(k) if k != self.queue_size) {
                    return Err(Error::config(
                        "k_negatives",
                        format!(
                            "{} differs from queue_size {}: MoCo's negatives are its queue, set queue_size instead",
                            self.k_negatives.unwrap_or(0),
                            self.queue_size
                        ),
                    ));
                }
            }
            _ => {}
        }
        if self.epochs == 0 {
            return Err(Error::config("epochs", "0 (must be ≥ 1)"));
        }
        crate::optim::validate(self.lr, self.momentum, self.weight_decay)?;
        if !(self.warmup_epochs.is_finite()
            && self.warmup_epochs >= 0.0
            && self.warmup_epochs < self.epochs as f64)
        {
            return Err(Error::config(
                "warmup_epochs",
                format!(
                    "{} (must be in [0, epochs = {}))",
                    self.warmup_epochs, self.epochs
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.ema_momentum) {
            return Err(Error::config(
                "ema_momentum",
                format!("{} (must be in [0, 1])", self.ema_momentum),
            ));
        }
        if self.schedule == Schedule::Step
            && self.lr_steps.iter().any(|&e| e == 0 || e >= self.epochs)
        {
            return Err(Error::config(
                "lr_steps",
                format!(
                    "{:?} (each must be an epoch in 1..{})",
                    self.lr_steps, self.epochs
                ),
            ));
        }
        if self.augment == RecipeName::Eval {
            return Err(Error::config(
                "augment",
                "eval (pretraining needs a random recipe: mocov1, mocov2, simclr)",
            ));
        }
        if self.image_size == Some(0) {
            return Err(Error::config("image_size", "0 (must be ≥ 1)"));
        }
        if self.knn_k < 1 {
            return Err(Error::config(
                "knn_k",
                format!("{} (must be ≥ 1)", self.knn_k),
            ));
        }
        if !(self.knn_tau.is_finite() && self.knn_tau > 0.0) {
            return Err(Error::config(
                "knn_tau",
                format!("{} (must be > 0)", self.knn_tau),
            ));
        }
        if self.knn_every > 0 && self.knn_bank == 0 {
            return Err(Error::config(
                "knn_bank",
                "0 (must be ≥ 1 when knn_every is set)",
            ));
        }
        if self.loader_threads == Some(0) {
            return Err(Error::config("loader_threads", "0 (must be ≥ 1)"));
        }
        if self.log_every == Some(0) {
            return Err(Error::config("log_every", "0 (must be ≥ 1)"));
        }
        if self.pinned_memory_mib == 0 {
            return Err(Error::config("pinned_memory_mib", "0 (must be ≥ 1)"));
        }
        for (key, value) in [
            ("dist_timeout", self.dist_timeout),
            ("dist_join_timeout", self.dist_join_timeout),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::config(
                    key,
                    format!("{value} (seconds, must be > 0)"),
                ));
            }
        }
        if self.bn() == BnMode::Shuffle
            && matches!(self.method, MethodName::Simclr | MethodName::Supervised)
        {
            return Err(Error::config(
                "bn",
                "shuffle needs a momentum key encoder (simo, mocov1, mocov2); use sync or local",
            ));
        }
        if self.bn() == BnMode::Shuffle
            && (self.shuffle_bn_groups < 1 || self.shuffle_bn_groups as usize > n / 2)
        {
            return Err(Error::config(
                "shuffle_bn_groups",
                format!(
                    "{} (1 to {}: each group needs at least 2 images for BN)",
                    self.shuffle_bn_groups,
                    n / 2
                ),
            ));
        }
        Ok(())
    }
}

/// A deserialisation error as a config error naming the key.
fn config_error(e: &serde_path_to_error::Error<toml::de::Error>) -> Error {
    let msg = e.inner().message().to_string();
    // serde: "unknown field `foo`, expected one of …"
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or("");
        return Error::config(
            key,
            "unknown key (`eqco pretrain --print-config` lists every key)",
        );
    }
    let path = e.path().to_string();
    let key = if path.is_empty() || path == "." {
        "config".to_string()
    } else {
        path
    };
    Error::config(key, msg)
}
