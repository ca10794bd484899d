//! `eqco embed --checkpoint FILE --out FILE.{npy,safetensors,csv}`:
//! embeddings of a dataset's images from a checkpoint's frozen encoder.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::CommonArgs;
use crate::base::device::parse_device;
use crate::base::error::Error;
use crate::data::Split;
use crate::eval::embed::{check_out, embed, sidecars, EmbedSettings, Layer};

/// Options of `eqco embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A checkpoint written by `eqco pretrain` (its run folder's config.toml
    /// gives the model and the dataset).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Another dataset folder to embed (format detected) [default: the run's].
    #[arg(long, visible_alias = "data")]
    pub dataset: Option<PathBuf>,
    /// The split embedded.
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// `backbone`: the pooled features (what kNN, the linear probe and an
    /// export see); `head`: the projection head's output.
    #[arg(long, value_enum, default_value = "backbone")]
    pub layer: Layer,
    /// Divide each embedding by its L2 norm.
    #[arg(long)]
    pub normalize: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Common options; `--out FILE` is required here: its extension (.npy,
    /// .safetensors or .csv) chooses the format.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `eqco embed`.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let out = args.common.out.clone().ok_or_else(|| {
        Error::config(
            "--out",
            "missing: give the file to write (emb.npy, emb.safetensors or emb.csv)",
        )
    })?;
    if args.batch_size == 0 {
        return Err(Error::config("--batch-size", "0 (must be ≥ 1)").into());
    }
    let format = check_out(&out)?;
    let device = parse_device(&args.common.device)?;
    let threads = args.common.threads()?;
    tch::set_num_threads(threads as i32);
    let settings = EmbedSettings {
        dataset: args.dataset.clone(),
        split: args.split,
        layer: args.layer,
        normalize: args.normalize,
        batch_size: args.batch_size,
        threads,
        device,
        progress: std::io::stderr().is_terminal(),
    };
    let e = embed(&args.checkpoint, &settings)?;
    e.write(&out, format)?;
    let (rows, info) = sidecars(&out);
    let i = &e.info;
    println!(
        "embedded {} images of {} ({:?} split) with the {} of {} (step {}): {} × {} float32{}, {}",
        i.rows,
        i.dataset.display(),
        i.split,
        match i.layer {
            Layer::Backbone => "backbone",
            Layer::Head => "projection head",
        },
        i.checkpoint.display(),
        i.step,
        i.rows,
        i.dim,
        if i.l2_normalized {
            ", L2-normalised"
        } else {
            ""
        },
        i.precision
    );
    println!(
        "wrote {} (rows: {}, settings: {})",
        out.display(),
        rows.display(),
        info.display()
    );
    Ok(())
}
