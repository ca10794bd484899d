//! `eqco data inspect`: what a dataset holds, and a grid of augmented pairs.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::CommonArgs;
use crate::base::error::Error;
use crate::base::io::atomic_write;
use crate::data::formats::idx::FASHION_MNIST_DEFAULT_DIR;
use crate::data::preview::view_pairs_png;
use crate::data::{
    Cifar100Labels, Dataset, Loader, LoaderConfig, Normalize, OpenOptions, Recipe, RecipeName,
    Split,
};

/// The `eqco data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Detect a dataset's format, print counts, classes and image size, and
    /// write a PNG grid of augmented view pairs.
    Inspect(InspectArgs),
}

/// How a dataset is opened and augmented: shared by the commands that read images.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Split to read.
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// CIFAR-100: fine or coarse labels.
    #[arg(long, value_enum, default_value = "fine")]
    pub cifar100_labels: Cifar100Labels,
    /// ImageFolder: skip (and count) undecodable images instead of failing.
    #[arg(long)]
    pub skip_undecodable: bool,
    /// Augmentation recipe.
    #[arg(long, value_enum, default_value = "mocov2")]
    pub recipe: RecipeName,
    /// Side of the views [default: the images' own side; 224 for ImageFolder].
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Channels of the views: 1 keeps grayscale, 3 replicates it [default: the images' own].
    #[arg(long)]
    pub channels: Option<u8>,
}

impl DataArgs {
    /// Opens the dataset at `path`.
    pub fn open(&self, path: &std::path::Path) -> crate::Result<Dataset> {
        crate::data::formats::open(
            path,
            &OpenOptions {
                split: self.split,
                cifar100_labels: self.cifar100_labels,
                skip_undecodable: self.skip_undecodable,
            },
        )
    }

    /// The recipe for `dataset`, with its normalisation statistics.
    pub fn recipe(&self, dataset: &Dataset) -> crate::Result<Recipe> {
        let shape = dataset.image_shape();
        let size = self
            .image_size
            .unwrap_or_else(|| shape.map_or(224, |(w, h, _)| w.min(h)));
        let channels = self.channels.unwrap_or_else(|| shape.map_or(3, |s| s.2));
        Recipe::named(
            self.recipe,
            size,
            channels,
            Normalize::for_dataset(dataset, channels),
        )
        .map_err(super::as_flag)
    }
}

/// Options of `eqco data inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The dataset folder [default: Fashion-MNIST from the Debian package].
    pub path: Option<PathBuf>,
    /// How to open and augment it.
    #[command(flatten)]
    pub data: DataArgs,
    /// Images shown in the grid (each with its two views).
    #[arg(long, default_value_t = 12)]
    pub pairs: usize,
    /// Common options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs a data subcommand.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect(args),
    }
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DEFAULT_DIR));
    if args.pairs == 0 {
        return Err(Error::config("--pairs", "0 (must be ≥ 1)").into());
    }
    let dataset = Arc::new(args.data.open(&path)?);
    println!("dataset   {}", path.display());
    println!("format    {}", dataset.format.name());
    println!("split     {:?}", dataset.split);
    println!("images    {}", dataset.len());
    match dataset.image_shape() {
        Some((w, h, c)) => println!("size      {w}×{h}, {c} channel(s)"),
        None => {
            let first = dataset.image(0)?;
            println!(
                "size      varies (one file per image; the first is {}×{}), decoded to RGB",
                first.width, first.height
            );
        }
    }
    if dataset.has_labels() {
        let counts = dataset.class_counts();
        println!("classes   {}", dataset.classes.len());
        for (name, n) in dataset.classes.iter().zip(&counts).take(20) {
            println!("  {n:>7}  {name}");
        }
        if dataset.classes.len() > 20 {
            println!("  … and {} more", dataset.classes.len() - 20);
        }
    } else {
        println!(
            "labels    none ({} class names known)",
            dataset.classes.len()
        );
    }
    if !dataset.skipped.is_empty() {
        println!(
            "skipped   {} undecodable file(s), e.g. {}",
            dataset.skipped.len(),
            dataset.skipped[0].0.display()
        );
    }

    let recipe = args.data.recipe(&dataset)?;
    let norm = &recipe.normalize;
    println!(
        "recipe    {:?} at {}×{}, {} channel(s), mean {:?}, std {:?}",
        args.data.recipe,
        recipe.size(),
        recipe.size(),
        recipe.channels,
        norm.mean,
        norm.std
    );
    let loader = Loader::new(
        dataset.clone(),
        recipe.clone(),
        LoaderConfig {
            batch_size: 1,
            seed: args.common.seed.unwrap_or(0),
            ..Default::default()
        },
    )?;
    let (bytes, _, _) = view_pairs_png(&loader, args.pairs)?;
    let out = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/inspect"));
    let file = out.join("views.png");
    atomic_write(&file, &bytes)?;
    println!(
        "wrote     {} (each row: original, view 1, view 2)",
        file.display()
    );
    Ok(())
}
