//! `eqco export --checkpoint F --format safetensors --out FILE`: a
//! checkpoint's backbone under torchvision's ResNet names, for PyTorch.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::base::error::Error;
use crate::model::export::{torchvision_state, write_safetensors};
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

/// The architecture of torchvision names: `(arch, stem kernel, in channels, stem width)`.
fn architecture(tensors: &[(String, tch::Tensor)]) -> Result<(String, i64, i64, i64), Error> {
    let conv1 = tensors
        .iter()
        .find(|(n, _)| n == "conv1.weight")
        .map(|(_, t)| t.size())
        .ok_or_else(|| Error::Internal("no conv1.weight".into()))?;
    let blocks: Vec<usize> = (1..=4)
        .map(|l| {
            let prefix = format!("layer{l}.");
            let mut ids: Vec<&str> = tensors
                .iter()
                .filter_map(|(n, _)| n.strip_prefix(&prefix)?.split('.').next())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        })
        .collect();
    let bottleneck = tensors.iter().any(|(n, _)| n.ends_with(".conv3.weight"));
    let arch = match (blocks.as_slice(), bottleneck) {
        ([1, 1, 1, 1], false) => "resnet10",
        ([2, 2, 2, 2], false) => "resnet18",
        ([3, 4, 6, 3], false) => "resnet34",
        ([3, 4, 6, 3], true) => "resnet50",
        _ => "resnet",
    };
    Ok((arch.to_string(), conv1[2], conv1[1], conv1[0]))
}

/// Writes the export and says how to load it in torchvision.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let (state, pos) = checkpoint::load(&args.checkpoint)?;
    let tensors = torchvision_state(&state, pos.step).map_err(|e| Error::Data {
        path: args.checkpoint.clone(),
        message: e.to_string(),
    })?;
    let (arch, kernel, channels, stem_width) = architecture(&tensors)?;
    let stem = if kernel == 3 { "small" } else { "imagenet" };
    let width = stem_width as f64 / 64.0;
    let metadata: HashMap<String, String> = [
        ("format", "pt".to_string()),
        ("layout", "torchvision.models.resnet".to_string()),
        ("arch", arch.clone()),
        ("stem", stem.to_string()),
        ("width", width.to_string()),
        ("in_channels", channels.to_string()),
        ("step", pos.step.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
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
    } else if channels != 3 {
        println!("  {channels} input channel(s): first m.conv1 = torch.nn.Conv2d({channels}, {stem_width}, 7, 2, 3, bias=False)");
    }
    if width != 1.0 {
        println!("  width ×{width}: torchvision's ResNets have no width multiplier; build the network at this width (scripts/check_export.py shows how)");
    }
    Ok(())
}
