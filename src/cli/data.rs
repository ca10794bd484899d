//! `eqco data inspect`: what a dataset holds, and a grid of augmented pairs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rayon::prelude::*;

use clap::{Args, Subcommand};

use super::CommonArgs;
use crate::base::error::Error;
use crate::base::io::atomic_write;
use crate::data::formats::folder::image_extension;
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
    /// Image folders and file lists: skip (and count) undecodable images instead of failing.
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
    let unreadable = match dataset.image_shape() {
        Some((w, h, c)) => {
            println!("size      {w}×{h}, {c} channel(s)");
            0
        }
        None => print_files(&dataset),
    };
    print_labels(&dataset);
    // The grid shows images that decode.
    let dataset = match unreadable > 0 && !args.data.skip_undecodable {
        true => {
            let skipping = DataArgs {
                skip_undecodable: true,
                ..args.data.clone()
            };
            Arc::new(skipping.open(&path)?)
        }
        false => dataset,
    };
    preview(&args, dataset)
}

/// The image files of a folder or list: how many of each extension, the
/// range of their sizes (from their headers), and the files that are not
/// images or whose header does not decode; returns how many do not decode.
fn print_files(dataset: &Dataset) -> usize {
    let paths: Vec<&std::path::Path> = (0..dataset.len()).filter_map(|i| dataset.path(i)).collect();
    let mut per_ext: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &paths {
        *per_ext
            .entry(image_extension(p).unwrap_or("?"))
            .or_default() += 1;
    }
    let counts: Vec<String> = per_ext.iter().map(|(e, n)| format!("{n} .{e}")).collect();
    println!("files     {}", counts.join(", "));
    let sizes: Vec<Result<(u32, u32), String>> = paths
        .par_iter()
        .map(|p| header_size(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect();
    let ok: Vec<(u32, u32)> = sizes
        .iter()
        .filter_map(|s| s.as_ref().ok().copied())
        .collect();
    if let (Some(min), Some(max)) = (
        ok.iter().min_by_key(|s| s.0 * s.1),
        ok.iter().max_by_key(|s| s.0 * s.1),
    ) {
        println!(
            "size      {}×{} to {}×{} (width × height; the least and the most pixels), decoded to RGB",
            min.0, min.1, max.0, max.1
        );
    }
    let bad: Vec<&String> = sizes.iter().filter_map(|s| s.as_ref().err()).collect();
    let skipped: Vec<String> = dataset
        .skipped
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    list(
        "unreadable",
        bad.iter()
            .map(|s| s.as_str())
            .chain(skipped.iter().map(String::as_str)),
    );
    let ignored: Vec<String> = dataset
        .ignored
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    list("not images", ignored.iter().map(String::as_str));
    bad.len() + skipped.len()
}

/// Prints `what`: how many `items`, and the first ten.
fn list<'a>(what: &str, items: impl Iterator<Item = &'a str>) {
    let items: Vec<&str> = items.collect();
    if items.is_empty() {
        return;
    }
    println!("{what:<9} {} file(s)", items.len());
    for item in items.iter().take(10) {
        println!("  {item}");
    }
    if items.len() > 10 {
        println!("  … and {} more", items.len() - 10);
    }
}

/// An image file's width and height, read from its header.
fn header_size(path: &std::path::Path) -> Result<(u32, u32), String> {
    image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())
}

/// The classes and their counts, or that there are no labels.
fn print_labels(dataset: &Dataset) {
    if dataset.has_labels() {
        let counts = dataset.class_counts();
        println!("classes   {}", dataset.classes.len());
        for (name, n) in dataset.classes.iter().zip(&counts).take(20) {
            println!("  {n:>7}  {name}");
        }
        if dataset.classes.len() > 20 {
            println!("  … and {} more", dataset.classes.len() - 20);
        }
    } else if dataset.path(0).is_some() {
        println!(
            "labels    none: unlabeled images (labels come from class sub-folders of a folder that holds no image itself, or from a file list's second column); pretraining and embedding need none, evaluation does"
        );
    } else {
        println!(
            "labels    none ({} class names known)",
            dataset.classes.len()
        );
    }
}

/// The recipe, and a grid of augmented view pairs written to `--out`.
fn preview(args: &InspectArgs, dataset: Arc<Dataset>) -> anyhow::Result<()> {
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
