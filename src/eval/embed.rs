//! Embeddings of a dataset's images from a checkpoint's frozen encoder: the
//! backbone's pooled features or the projection head's output, optionally
//! L2-normalised, in inference mode (BN with its running statistics), on the
//! evaluation transform (resize and centre crop, the run's normalisation),
//! batched through the multi-threaded loader.
//!
//! Written as `.npy` (float32 `[n, d]`), `.safetensors` (one tensor,
//! `embeddings`, with the settings as metadata) or `.csv` (a header
//! `d0,d1,…`, one row per image), chosen by the file's extension, beside two
//! sidecars: `<stem>.rows.csv` (for each row: the image's index in the
//! split, its file for an ImageFolder, its label and class when known) and
//! `<stem>.json` (the checkpoint, the layer, the dataset and the transform).
//! All three are written to temporary files first and renamed into place
//! once complete, the embeddings last.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Tensor};

use crate::base::device::memory::set_thread_device;
use crate::base::device::{float32, Compute};
use crate::base::error::{Error, Result};
use crate::data::{DataConfig, Dataset, Feed, PinnedCap, Recipe, RecipeName, Split};
use crate::model::head::l2_normalize;
use crate::model::{Encoder, ResNet};
use crate::run::{MethodName, RunCheckpoint};

/// Which output of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The backbone's globally pooled features (what kNN and the linear
    /// probe see; what an export gives PyTorch).
    Backbone,
    /// The projection head's output (the space the contrastive loss works in).
    Head,
}

/// The file formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// NumPy's `.npy`: float32, C order, shape `[n, d]`.
    Npy,
    /// One float32 tensor `embeddings` `[n, d]` with string metadata.
    Safetensors,
    /// Text: a header, then one line of `d` numbers per image.
    Csv,
}

impl OutputFormat {
    /// The format of `path`'s extension; anything else is an error naming `--out`.
    pub fn of(path: &Path) -> Result<OutputFormat> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("npy") => Ok(OutputFormat::Npy),
            Some("safetensors") => Ok(OutputFormat::Safetensors),
            Some("csv") => Ok(OutputFormat::Csv),
            _ => Err(Error::config(
                "--out",
                format!(
                    "{}: unknown extension (use .npy, .safetensors or .csv)",
                    path.display()
                ),
            )),
        }
    }
}

/// What to embed and how.
#[derive(Debug, Clone)]
pub struct EmbedSettings {
    /// Another dataset folder (format detected) instead of the run's.
    pub dataset: Option<PathBuf>,
    /// The split embedded.
    pub split: Split,
    /// Which output of the encoder.
    pub layer: Layer,
    /// Divide each embedding by its L2 norm.
    pub normalize: bool,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Loader threads.
    pub threads: usize,
    /// Where the encoder runs.
    pub device: Device,
    /// Show a progress bar.
    pub progress: bool,
}

/// The `<stem>.json` sidecar: where the embeddings come from.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedInfo {
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// Its optimizer steps.
    pub step: u64,
    /// The run's method.
    pub method: MethodName,
    /// Which output.
    pub layer: Layer,
    /// Whether each row was L2-normalised.
    pub l2_normalized: bool,
    /// The dataset's file or folder.
    pub dataset: PathBuf,
    /// The split.
    pub split: Split,
    /// Rows (images).
    pub rows: usize,
    /// Columns (embedding width).
    pub dim: usize,
    /// The precision the encoder ran in.
    pub precision: String,
    /// The evaluation transform (crop, normalisation, channels).
    pub transform: Recipe,
}

/// A dataset's embeddings, row `r` for image `indices[r]`.
pub struct Embeddings {
    /// Row-major `[rows, dim]` float32.
    pub values: Vec<f32>,
    /// The images' indices in the split.
    pub indices: Vec<usize>,
    /// Where they came from.
    pub info: EmbedInfo,
    dataset: Arc<Dataset>,
}

/// The encoder a checkpoint holds, up to the requested layer.
enum Model {
    Backbone(ResNet),
    Head(Encoder),
}

/// Loads the checkpoint's encoder (its run folder's `config.toml` gives the
/// model) and embeds every image of the chosen split.
pub fn embed(checkpoint_file: &Path, s: &EmbedSettings) -> Result<Embeddings> {
    // This thread's CUDA objects belong to that GPU (see set_thread_device).
    set_thread_device(s.device)?;
    let opened = RunCheckpoint::open(checkpoint_file, s.dataset.as_deref())?;
    let config = &opened.config;
    let (dataset, recipe) = open_split(&config.data, s.split)?;
    let (compute, precision, warning) = opened.compute(s.device);
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let vs = VarStore::new(s.device);
    let model = build(&opened, &vs, recipe.channels, s.layer, compute)?;
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let feed = Feed {
        threads: s.threads,
        pinned: PinnedCap::new(config.compute.pinned_memory_mib, 1),
    };
    let (values, dim) = forward_all(&model, &dataset, &recipe, &indices, (compute, feed), s)?;
    let info = EmbedInfo {
        checkpoint: checkpoint_file.to_path_buf(),
        step: opened.checkpoint.pos.step,
        method: config.method.method,
        layer: s.layer,
        l2_normalized: s.normalize,
        dataset: dataset.source.clone(),
        split: s.split,
        rows: indices.len(),
        dim,
        precision,
        transform: recipe,
    };
    Ok(Embeddings {
        values,
        indices,
        info,
        dataset,
    })
}

/// The split to embed, and the evaluation recipe with the normalisation of
/// the source's training split (the statistics the encoder was trained and
/// is evaluated with; the split's own where there is no training split).
fn open_split(data: &DataConfig, split: Split) -> Result<(Arc<Dataset>, Recipe)> {
    let dataset = data.open(split)?;
    let recipe = match split {
        Split::Train => data.recipe(&dataset, RecipeName::Eval)?,
        _ => match data.open(Split::Train) {
            Ok(train) => data.recipe(&train, RecipeName::Eval)?,
            Err(_) => data.recipe(&dataset, RecipeName::Eval)?,
        },
    };
    if dataset.is_empty() {
        return Err(Error::Data {
            path: dataset.source.clone(),
            message: format!("the {split:?} split has no images"),
        });
    }
    Ok((Arc::new(dataset), recipe))
}

/// The backbone (its variables at the root, as in the checkpoint's
/// `query.*`) or the backbone and head, with the checkpoint's weights.
fn build(
    opened: &RunCheckpoint,
    vs: &VarStore,
    channels: u8,
    layer: Layer,
    compute: Compute,
) -> Result<Model> {
    Ok(match layer {
        Layer::Backbone => Model::Backbone(opened.backbone(vs, channels, compute)?),
        Layer::Head if opened.config.method.method == MethodName::Supervised => {
            return Err(Error::config(
                "--layer",
                "head: this run is the supervised baseline, which has no projection head (use --layer backbone)",
            ))
        }
        Layer::Head => Model::Head(opened.encoder(vs, channels, compute)?),
    })
}

/// Every image's embedding, in order, as row-major float32 on the CPU, and
/// the embedding width, computed and fed as `(compute, feed)` say.
fn forward_all(
    model: &Model,
    dataset: &Arc<Dataset>,
    recipe: &Recipe,
    indices: &[usize],
    (compute, feed): (Compute, Feed),
    s: &EmbedSettings,
) -> Result<(Vec<f32>, usize)> {
    let loader = super::features::in_order(dataset, recipe, indices, s.batch_size, feed, compute)?;
    let bar = progress_bar(indices.len(), s.progress);
    let (mut values, mut dim) = (Vec::with_capacity(indices.len() * 128), 0);
    for batch in loader.single_view_epoch(0) {
        let batch = batch?;
        let z = tch::no_grad(|| match model {
            Model::Backbone(b) => float32(&compute.run(|| b.forward_t(&batch.view, false))),
            Model::Head(e) => e.project(&batch.view, false),
        });
        let z = if s.normalize { l2_normalize(&z) } else { z };
        dim = z.size()[1] as usize;
        let z = z.to_device(Device::Cpu).contiguous().view([-1]);
        values.extend(Vec::<f32>::try_from(&z)?);
        bar.inc(batch.indices.len() as u64);
    }
    bar.finish_and_clear();
    Ok((values, dim))
}

fn progress_bar(n: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images  {elapsed_precise} < {eta_precise}",
        )
        .expect("valid template"),
    );
    bar
}

/// The sidecars of `out`: `<stem>.rows.csv` and `<stem>.json`.
pub fn sidecars(out: &Path) -> (PathBuf, PathBuf) {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        out.with_file_name(format!("{stem}.rows.csv")),
        out.with_file_name(format!("{stem}.json")),
    )
}

/// Checks before any work that `out` has a known extension and that its
/// folder can take new files (it is created if missing); returns the format.
pub fn check_out(out: &Path) -> Result<OutputFormat> {
    if out.is_dir() {
        return Err(Error::config(
            "--out",
            format!("{} is a folder; give a file name", out.display()),
        ));
    }
    let format = OutputFormat::of(out)?;
    let dir = parent(out);
    crate::base::io::create_dir(dir)?;
    let probe = temp_beside(out, "probe");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(format)
}

/// `.<name>.<pid>.<what>` beside `target`.
fn temp_beside(target: &Path, what: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.{what}", std::process::id()))
}

/// Files written under temporary names, renamed to their targets together
/// by [`Staged::commit`]; whatever is not committed is removed on drop.
#[derive(Default)]
struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// The temporary name to write `target`'s content to.
    fn path(&mut self, target: &Path) -> PathBuf {
        let tmp = temp_beside(target, "tmp");
        self.files.push((tmp.clone(), target.to_path_buf()));
        tmp
    }

    /// Renames every file to its target, in the order they were staged.
    fn commit(mut self) -> Result<()> {
        while !self.files.is_empty() {
            let (tmp, target) = &self.files[0];
            std::fs::rename(tmp, target).map_err(|e| Error::io(target, e))?;
            self.files.remove(0);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl Embeddings {
    /// The embeddings as a `[rows, dim]` float32 tensor on the CPU.
    pub fn tensor(&self) -> Tensor {
        Tensor::from_slice(&self.values).view([self.info.rows as i64, self.info.dim as i64])
    }

    /// Writes the embeddings to `out` in `format`, with their sidecars; each
    /// file goes to a temporary name first, and all are renamed into place
    /// once all are complete (the embeddings last), so that a failure
    /// leaves no partial file and `out` never appears without its sidecars.
    pub fn write(&self, out: &Path, format: OutputFormat) -> Result<()> {
        let (rows_file, info_file) = sidecars(out);
        let mut staged = Staged::default();
        write_bytes(&staged.path(&rows_file), &self.rows_csv()?)?;
        let info = serde_json::to_string_pretty(&self.info).expect("plain data");
        write_bytes(&staged.path(&info_file), info.as_bytes())?;
        self.write_values(&staged.path(out), format)?;
        staged.commit()
    }

    fn write_values(&self, path: &Path, format: OutputFormat) -> Result<()> {
        match format {
            OutputFormat::Npy => self.tensor().write_npy(path).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                message: format!("writing .npy failed: {e}"),
            }),
            OutputFormat::Safetensors => {
                let meta = serde_json::to_value(&self.info).expect("plain data");
                let metadata: HashMap<String, String> = meta
                    .as_object()
                    .expect("a struct")
                    .iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        (k.clone(), v)
                    })
                    .collect();
                let tensors = [("embeddings".to_string(), self.tensor())];
                crate::model::export::write_safetensors(&tensors, metadata, path)
            }
            OutputFormat::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                let header: Vec<String> = (0..self.info.dim).map(|j| format!("d{j}")).collect();
                w.write_record(&header).map_err(|e| csv_error(path, e))?;
                for row in self.values.chunks(self.info.dim.max(1)) {
                    w.write_record(row.iter().map(|v| v.to_string()))
                        .map_err(|e| csv_error(path, e))?;
                }
                let bytes = w.into_inner().map_err(|e| Error::Internal(e.to_string()))?;
                write_bytes(path, &bytes)
            }
        }
    }

    /// `row,index,path,label,class`: one line per embedding.
    fn rows_csv(&self) -> Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e| csv_error(Path::new("rows"), e);
        w.write_record(["row", "index", "path", "label", "class"])
            .map_err(err)?;
        for (row, &i) in self.indices.iter().enumerate() {
            let label = self.dataset.label(i);
            let class = label
                .and_then(|l| self.dataset.classes.get(l as usize))
                .cloned()
                .unwrap_or_default();
            w.write_record([
                row.to_string(),
                i.to_string(),
                self.dataset
                    .path(i)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                label.map(|l| l.to_string()).unwrap_or_default(),
                class,
            ])
            .map_err(err)?;
        }
        w.into_inner().map_err(|e| Error::Internal(e.to_string()))
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: format!("writing CSV failed: {e}"),
    }
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
