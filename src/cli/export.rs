//! `eqco export --checkpoint F --format safetensors --out FILE`: a
//! checkpoint's backbone under torchvision's ResNet names, for PyTorch.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::base::error::Error;
use crate::model::export::{torchvision_metadata, torchvision_state, write_safetensors};
use crate::run::checkpoint;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A safetensors file (torchvision names; metadata: arch, stem, width, channels, step).
    Safetensors,
}

/// Options of `eqco export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint written by `eqco pretrain`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The file format.
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes the export and says how to load it in torchvision.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let (state, pos) = checkpoint::load(&args.checkpoint)?;
    let tensors = torchvision_state(&state, pos.step).map_err(|e| Error::Data {
        path: args.checkpoint.clone(),
        message: e.to_string(),
    })?;
    let metadata = torchvision_metadata(&tensors, pos.step)?;
    let (arch, stem) = (metadata["arch"].clone(), metadata["stem"].clone());
    let width: f64 = metadata["width"].parse().unwrap_or(1.0);
    let channels = metadata["in_channels"].clone();
    let stem_width = (64.0 * width).round() as i64;
    match args.format {
        ExportFormat::Safetensors => write_safetensors(&tensors, metadata, &args.out)?,
    }
    let params: i64 = tensors
        .iter()
        .filter(|(n, _)| !n.contains("running_") && !n.ends_with("num_batches_tracked"))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    println!(
        "exported the {arch} backbone of {} (step {}): {} tensors, {params} parameters, to {}",
        args.checkpoint.display(),
        pos.step,
        tensors.len(),
        args.out.display()
    );
    println!(
        "load it: m = torchvision.models.{arch}(); m.fc = torch.nn.Identity(); m.load_state_dict(safetensors.torch.load_file(\"{}\"), strict=True)",
        args.out.display()
    );
    if stem == "small" {
        println!("  small stem: first m.conv1 = torch.nn.Conv2d({channels}, {stem_width}, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity()");
    } else if channels != "3" {
        println!("  {channels} input channel(s): first m.conv1 = torch.nn.Conv2d({channels}, {stem_width}, 7, 2, 3, bias=False)");
    }
    if width != 1.0 {
        println!("  width ×{width}: torchvision's ResNets have no width multiplier; build the network at this width (scripts/check_export.py shows how)");
    }
    Ok(())
}
