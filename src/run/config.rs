//! A run's configuration: one section per layer, composed with flat keys.
//!
//! Each section lives beside the layer that uses it and validates its own
//! keys: [`DataConfig`], [`ModelConfig`], [`MethodConfig`], [`LossConfig`],
//! [`OptimConfig`], [`ComputeConfig`], [`DistConfig`] and [`MonitorConfig`].
//! Here they are composed into [`PretrainConfig`], read from a preset or a
//! TOML file with `--set key=value` overrides, and checked against each
//! other. The TOML stays flat: every key belongs to exactly one section.

use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};

pub use super::monitor::{MonitorConfig, ResumeMode};
pub use crate::base::device::{ComputeConfig, MemoryFormat, Precision};
use crate::base::error::{Error, Result};
pub use crate::data::DataConfig;
pub use crate::dist::{Backend, BnMode, DistConfig};
pub use crate::loss::LossConfig;
pub use crate::method::config::{MethodConfig, MethodName};
pub use crate::model::config::ModelConfig;
use crate::model::EncoderConfig;
pub use crate::optim::{OptimConfig, Schedule};

/// Every pretraining setting; the keys of `config.toml`, of presets and of
/// `--set`, grouped by the layer that reads them.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PretrainConfig {
    /// Seed of initialisation, shuffling, augmentation and negative sampling.
    pub seed: u64,
    /// The images and their augmentations.
    #[serde(flatten)]
    pub data: DataConfig,
    /// The encoder: backbone and head.
    #[serde(flatten)]
    pub model: ModelConfig,
    /// The framework and its negatives.
    #[serde(flatten)]
    pub method: MethodConfig,
    /// τ and α.
    #[serde(flatten)]
    pub loss: LossConfig,
    /// The batch, the run's length, SGD and the schedule.
    #[serde(flatten)]
    pub optim: OptimConfig,
    /// Precision, memory format and pinned memory.
    #[serde(flatten)]
    pub compute: ComputeConfig,
    /// Collectives across processes.
    #[serde(flatten)]
    pub dist: DistConfig,
    /// Checkpoints, the kNN monitor, TensorBoard and resuming.
    #[serde(flatten)]
    pub monitor: MonitorConfig,
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
        let cfg = PretrainConfig::from_table(table)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every key, section by section (what `--set` and config files accept).
    pub fn keys() -> Vec<&'static str> {
        let mut keys = vec!["seed"];
        for fields in Self::sections() {
            keys.extend_from_slice(fields);
        }
        keys
    }

    /// The keys of each section, in the order of the struct.
    fn sections() -> [&'static [&'static str]; 8] {
        [
            fields::<DataConfig>(),
            fields::<ModelConfig>(),
            fields::<MethodConfig>(),
            fields::<LossConfig>(),
            fields::<OptimConfig>(),
            fields::<ComputeConfig>(),
            fields::<DistConfig>(),
            fields::<MonitorConfig>(),
        ]
    }

    /// Splits a flat table into the sections; an unknown key is an error naming it.
    fn from_table(mut table: toml::Table) -> Result<PretrainConfig> {
        let known = Self::keys();
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Error::config(
                key.clone(),
                "unknown key (`eqco pretrain --print-config` lists every key)",
            ));
        }
        let seed = match table.remove("seed") {
            Some(v) => section::<Seed>(toml::Table::from_iter([("seed".to_string(), v)]))?.seed,
            None => 0,
        };
        let mut take = |fields: &[&str]| -> toml::Table {
            let keys: Vec<String> = table
                .keys()
                .filter(|k| fields.contains(&k.as_str()))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| table.remove(&k).map(|v| (k, v)))
                .collect()
        };
        let [data, model, method, loss, optim, compute, dist, monitor] = Self::sections();
        Ok(PretrainConfig {
            seed,
            data: section(take(data))?,
            model: section(take(model))?,
            method: section(take(method))?,
            loss: section(take(loss))?,
            optim: section(take(optim))?,
            compute: section(take(compute))?,
            dist: section(take(dist))?,
            monitor: section(take(monitor))?,
        })
    }

    /// The resolved configuration as flat TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("plain data serialises")
    }

    /// Checks every section, then the rules between sections: K and shuffle
    /// BN's groups against the batch. The error names the first invalid key.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.model.validate()?;
        self.method.validate()?;
        self.loss.validate()?;
        self.optim.validate()?;
        self.compute.validate()?;
        self.dist.validate()?;
        self.monitor.validate()?;
        self.method.validate_batch(self.optim.batch_size)
    }

    /// Checks what depends on the number of processes `world`: the global
    /// batch must split evenly, and so must shuffle BN's groups; errors name
    /// the key.
    pub fn validate_world(&self, world: usize) -> Result<()> {
        self.method.validate_world(self.optim.batch_size, world)
    }

    /// The number of negatives per query K for this method and batch.
    pub fn k(&self) -> usize {
        self.method.k(self.optim.batch_size)
    }

    /// The encoder, for `channels` input channels.
    pub fn encoder(&self, channels: u8) -> Result<EncoderConfig> {
        self.model.encoder(channels)
    }

    /// The method and its loss in a few words: `K = 16, EqCo α = 256`.
    pub fn describe_loss(&self) -> String {
        match (self.method.method, self.loss.alpha) {
            (MethodName::Supervised, _) => "cross-entropy on the labels".to_string(),
            (_, None) => format!("K = {}, InfoNCE", self.k()),
            (_, Some(a)) => format!("K = {}, EqCo α = {a}", self.k()),
        }
    }
}

/// The `seed` key alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    seed: u64,
}

/// A section from its keys of the flat table.
fn section<T: DeserializeOwned>(table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| config_error(&e))
}

/// The field names of a struct that derives `Deserialize` (what serde
/// passes to `deserialize_struct`).
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// A deserialisation error as a config error naming the key.
fn config_error(e: &serde_path_to_error::Error<toml::de::Error>) -> Error {
    let msg = e.inner().message().to_string();
    let path = e.path().to_string();
    let key = if path.is_empty() || path == "." {
        "config".to_string()
    } else {
        path
    };
    Error::config(key, msg)
}
