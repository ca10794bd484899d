//! Backbone weights for other frameworks: a checkpoint's query backbone
//! under torchvision's ResNet names and layouts (`conv1.weight`,
//! `bn1.running_mean`, `layer1.0.conv1.weight`, …, with each BN's
//! `num_batches_tracked`), without the projection head or classifier, so
//! that `torchvision.models.resnet50()` (after dropping `fc`) loads it with
//! `strict=True`. Weights are already stored in PyTorch's layouts (OIHW
//! convolutions), so nothing is transposed.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::base::error::{Error, Result};

/// The backbone of checkpoint tensors `state` (entries `query.*`) under
/// torchvision's names, sorted, with `num_batches_tracked = steps` for each
/// BN (one BN update per optimizer step).
pub fn torchvision_state(
    state: &HashMap<String, Tensor>,
    steps: u64,
) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = state
        .iter()
        .filter_map(|(name, t)| {
            let n = name.strip_prefix("query.")?;
            (!n.starts_with("head.") && !n.starts_with("fc."))
                .then(|| (n.to_string(), t.shallow_clone()))
        })
        .collect();
    if !out.iter().any(|(n, _)| n == "conv1.weight") {
        return Err(Error::Internal(
            "no query.conv1.weight: not a checkpoint of a ResNet".into(),
        ));
    }
    let bns: Vec<String> = out
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    for bn in bns {
        out.push((
            format!("{bn}.num_batches_tracked"),
            Tensor::scalar_tensor(steps as f64, (Kind::Int64, Device::Cpu)),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The architecture of torchvision names: `(arch, stem kernel, in channels, stem width)`.
pub fn architecture(tensors: &[(String, tch::Tensor)]) -> Result<(String, i64, i64, i64)> {
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

/// The metadata an export carries, read off its torchvision-named
/// `tensors`: `format`, `layout`, `arch`, `stem` (`small` or `imagenet`),
/// `width` (the multiplier), `in_channels` and `step`.
pub fn torchvision_metadata(
    tensors: &[(String, Tensor)],
    step: u64,
) -> Result<HashMap<String, String>> {
    let (arch, kernel, channels, stem_width) = architecture(tensors)?;
    let stem = if kernel == 3 { "small" } else { "imagenet" };
    let width = stem_width as f64 / 64.0;
    Ok([
        ("format", "pt".to_string()),
        ("layout", "torchvision.models.resnet".to_string()),
        ("arch", arch),
        ("stem", stem.to_string()),
        ("width", width.to_string()),
        ("in_channels", channels.to_string()),
        ("step", step.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

fn dtype(kind: Kind) -> Result<safetensors::Dtype> {
    Ok(match kind {
        Kind::Float => safetensors::Dtype::F32,
        Kind::Double => safetensors::Dtype::F64,
        Kind::Half => safetensors::Dtype::F16,
        Kind::BFloat16 => safetensors::Dtype::BF16,
        Kind::Int64 => safetensors::Dtype::I64,
        Kind::Int => safetensors::Dtype::I32,
        Kind::Int16 => safetensors::Dtype::I16,
        Kind::Int8 => safetensors::Dtype::I8,
        Kind::Uint8 => safetensors::Dtype::U8,
        Kind::Bool => safetensors::Dtype::BOOL,
        other => return Err(Error::Internal(format!("cannot export a {other:?} tensor"))),
    })
}

/// Writes `tensors` and string `metadata` as one safetensors file at `path`
/// (atomically).
pub fn write_safetensors(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let mut buf = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut buf, t.numel());
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        bytes.push((name.clone(), dtype(t.kind())?, shape, buf));
    }
    let views = bytes
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Internal(format!("{n}: {e:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::tensor::serialize(views, &Some(metadata)).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        message: format!("serialising failed: {e:?}"),
    })?;
    crate::base::io::atomic_write(path, &data)
}
