//! TensorBoard event files in the run folder, so that `tensorboard --logdir
//! runs/` shows a run while it trains: every figure of `metrics.jsonl` as a
//! scalar, a grid of augmented view pairs as an image and the resolved
//! `config.toml` as text.
//!
//! An event file is a sequence of records, each `u64` length, the masked
//! CRC-32C of those 8 bytes, an `Event` protobuf and its masked CRC-32C
//! (all little-endian). The messages below are the subset of TensorBoard's
//! `event.proto` / `summary.proto` / `tensor.proto` that eqco writes, with
//! their field numbers; prost encodes them, the `crc32c` crate checksums.
//!
//! Files are append-only. Each invocation of a run writes its own file, named
//! so that it sorts after the run's earlier ones (TensorBoard reads a run's
//! files in name order). A resumed run starts its file with a `SessionLog`
//! START event at the first step it will write again: TensorBoard's reader
//! then drops the steps that the interrupted invocation wrote after its last
//! checkpoint, and shows each step once.
//!
//! Each call writes its records with one `write` to the file (nothing is
//! buffered in the process), so what a crash leaves is what the reader sees.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::base::error::{Error, Result};

/// The tag names of the series eqco writes (listed in the README and the
/// interface page; stable across versions).
pub mod tags {
    /// The batch's mean loss.
    pub const LOSS: &str = "train/loss";
    /// The empirical MI lower bound.
    pub const MI_BOUND: &str = "train/mi_bound";
    /// Mean ‖∂L/∂q‖.
    pub const GRAD_NORM_Q: &str = "train/grad_norm_q";
    /// The learning rate.
    pub const LR: &str = "train/lr";
    /// Images per second.
    pub const IMG_PER_S: &str = "train/img_per_s";
    /// The share of the window's time spent waiting for the loader.
    pub const DATA_WAIT_SHARE: &str = "train/data_wait_share";
    /// The epoch (0-based).
    pub const EPOCH: &str = "train/epoch";
    /// Negatives per query K.
    pub const K: &str = "train/k";
    /// The kNN monitor's top-1 accuracy.
    pub const KNN_TOP1: &str = "eval/knn_top1";
    /// The grid of augmented view pairs (an image, at step 0).
    pub const VIEWS: &str = "data/view_pairs";
    /// The resolved configuration (text).
    pub const CONFIG: &str = "config";
}

/// TensorBoard's protobuf messages, as far as eqco writes them.
pub mod proto {
    /// `tensorflow.Event`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        /// Seconds since the epoch.
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        /// The global step.
        #[prost(int64, tag = "2")]
        pub step: i64,
        /// What the event holds.
        #[prost(oneof = "What", tags = "3, 5, 7")]
        pub what: Option<What>,
    }

    /// `Event.what`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// The first event of a file: `brain.Event:2`.
        #[prost(string, tag = "3")]
        FileVersion(String),
        /// Summary values.
        #[prost(message, tag = "5")]
        Summary(Summary),
        /// A session's start (a restart) or stop.
        #[prost(message, tag = "7")]
        SessionLog(SessionLog),
    }

    /// `tensorflow.Summary`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        /// The values.
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<Value>,
    }

    /// `tensorflow.Summary.Value`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        /// The series' name.
        #[prost(string, tag = "1")]
        pub tag: String,
        /// Which plugin reads it.
        #[prost(message, optional, tag = "9")]
        pub metadata: Option<SummaryMetadata>,
        /// The value.
        #[prost(oneof = "Kind", tags = "2, 4, 8")]
        pub value: Option<Kind>,
    }

    /// `Summary.Value.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A scalar.
        #[prost(float, tag = "2")]
        SimpleValue(f32),
        /// An encoded image.
        #[prost(message, tag = "4")]
        Image(Image),
        /// A tensor (text: a string tensor).
        #[prost(message, tag = "8")]
        Tensor(TensorProto),
    }

    /// `tensorflow.Summary.Image`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        /// Height in pixels.
        #[prost(int32, tag = "1")]
        pub height: i32,
        /// Width in pixels.
        #[prost(int32, tag = "2")]
        pub width: i32,
        /// 1 grayscale, 3 RGB, 4 RGBA.
        #[prost(int32, tag = "3")]
        pub colorspace: i32,
        /// The PNG file.
        #[prost(bytes = "vec", tag = "4")]
        pub encoded_image_string: Vec<u8>,
    }

    /// `tensorflow.SummaryMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SummaryMetadata {
        /// The plugin.
        #[prost(message, optional, tag = "1")]
        pub plugin_data: Option<PluginData>,
    }

    /// `SummaryMetadata.PluginData`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PluginData {
        /// `text`, `scalars`, …
        #[prost(string, tag = "1")]
        pub plugin_name: String,
        /// The plugin's own settings (empty: version 0).
        #[prost(bytes = "vec", tag = "2")]
        pub content: Vec<u8>,
    }

    /// `tensorflow.TensorProto`, string tensors only.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        /// `DataType` (7: `DT_STRING`).
        #[prost(int32, tag = "1")]
        pub dtype: i32,
        /// The shape.
        #[prost(message, optional, tag = "2")]
        pub tensor_shape: Option<TensorShapeProto>,
        /// The strings.
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub string_val: Vec<Vec<u8>>,
    }

    /// `tensorflow.TensorShapeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        /// The dimensions.
        #[prost(message, repeated, tag = "2")]
        pub dim: Vec<Dim>,
    }

    /// `TensorShapeProto.Dim`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dim {
        /// The size.
        #[prost(int64, tag = "1")]
        pub size: i64,
    }

    /// `tensorflow.SessionLog`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionLog {
        /// `SessionStatus` (1: `START`).
        #[prost(int32, tag = "1")]
        pub status: i32,
    }

    /// `DataType.DT_STRING`.
    pub const DT_STRING: i32 = 7;
    /// `SessionLog.SessionStatus.START`.
    pub const SESSION_START: i32 = 1;
}

use proto::{Event, Kind, Summary, Value, What};

/// The masked CRC-32C of TFRecords: `rotr(crc, 15) + 0xa282ead8`.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// Appends `data` to `out` as one TFRecord.
pub fn frame(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// The prefix of every event file's name (TensorBoard finds files by `tfevents`).
const PREFIX: &str = "events.out.tfevents.";

/// One invocation's event file in a run folder.
pub struct EventFile {
    path: PathBuf,
    file: File,
}

impl EventFile {
    /// Creates a new event file in `dir`, named to sort after the event files
    /// already there. With `restart_at`, the first event after the file
    /// version is a `SessionLog` START at that step: the reader drops the
    /// earlier files' events at that step and later.
    pub fn create(dir: &Path, restart_at: Option<u64>) -> Result<EventFile> {
        crate::base::io::create_dir(dir)?;
        let path = dir.join(file_name(dir)?);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut f = EventFile { path, file };
        let mut events = vec![event(0, What::FileVersion("brain.Event:2".into()))];
        if let Some(step) = restart_at {
            events.push(event(
                step,
                What::SessionLog(proto::SessionLog {
                    status: proto::SESSION_START,
                }),
            ));
        }
        f.write(&events)?;
        Ok(f)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `events` as records with one write.
    pub fn write(&mut self, events: &[Event]) -> Result<()> {
        let mut buf = Vec::new();
        for e in events {
            frame(&e.encode_to_vec(), &mut buf);
        }
        self.file
            .write_all(&buf)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// One event of scalars `(tag, value)` at `step` (values as float32, as
    /// TensorBoard stores them).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|&(tag, v)| Value {
                tag: tag.to_string(),
                metadata: None,
                value: Some(Kind::SimpleValue(v as f32)),
            })
            .collect();
        self.write(&[event(step, What::Summary(Summary { value }))])
    }

    /// A PNG image of `width × height` pixels (RGB) under `tag` at `step`.
    pub fn image(
        &mut self,
        tag: &str,
        step: u64,
        png: Vec<u8>,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let value = Value {
            tag: tag.to_string(),
            metadata: None,
            value: Some(Kind::Image(proto::Image {
                height: height as i32,
                width: width as i32,
                colorspace: 3,
                encoded_image_string: png,
            })),
        };
        self.write(&[event(step, What::Summary(Summary { value: vec![value] }))])
    }

    /// Markdown `text` under `tag` at `step`, for TensorBoard's text plugin.
    pub fn text(&mut self, tag: &str, step: u64, text: &str) -> Result<()> {
        let value = Value {
            tag: tag.to_string(),
            metadata: Some(proto::SummaryMetadata {
                plugin_data: Some(proto::PluginData {
                    plugin_name: "text".into(),
                    content: Vec::new(),
                }),
            }),
            value: Some(Kind::Tensor(proto::TensorProto {
                dtype: proto::DT_STRING,
                tensor_shape: Some(proto::TensorShapeProto {
                    dim: vec![proto::Dim { size: 1 }],
                }),
                string_val: vec![text.as_bytes().to_vec()],
            })),
        };
        self.write(&[event(step, What::Summary(Summary { value: vec![value] }))])
    }

    /// Makes what was written durable (at checkpoints: the event file holds
    /// every step up to the checkpoint's before the checkpoint exists).
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

fn event(step: u64, what: What) -> Event {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    Event {
        wall_time: now,
        step: step as i64,
        what: Some(what),
    }
}

/// `events.out.tfevents.<seconds>.<host>.<pid>.0`, with `<seconds>` the
/// current time or, when a file of the same or a later second is already in
/// `dir`, one second after the latest one (so that this file sorts last).
fn file_name(dir: &Path) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let latest = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(PREFIX)?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max();
    let secs = match latest {
        Some(t) if t >= now => t + 1,
        _ => now,
    };
    Ok(format!(
        "{PREFIX}{secs:010}.{}.{}.0",
        hostname(),
        std::process::id()
    ))
}

/// This machine's name (`localhost` when unknown), as TensorBoard's writers
/// put it into file names.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().replace(['/', '.'], "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tfrecord_values() {
        // CRC-32C of 32 zero bytes (RFC 3720, B.4) is 0x8a9136aa.
        assert_eq!(crc32c::crc32c(&[0; 32]), 0x8a91_36aa);
        // A `file_version` event record from a TensorFlow event file.
        assert_eq!(masked_crc(b"\x1a\x11CRC test, one two"), 0x5794_d08a);
    }

    #[test]
    fn records_are_framed_with_length_and_checksums() {
        let mut out = Vec::new();
        frame(b"abc", &mut out);
        assert_eq!(out.len(), 8 + 4 + 3 + 4);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[8..12], &masked_crc(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        assert_eq!(&out[15..], &masked_crc(b"abc").to_le_bytes());
    }

    #[test]
    fn later_files_sort_after_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = Vec::new();
        for _ in 0..3 {
            let f = EventFile::create(dir.path(), None).unwrap();
            names.push(f.path().file_name().unwrap().to_owned());
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(
            names.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
    }
}
