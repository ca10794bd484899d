//! Frozen features: the backbone's pooled output, in inference mode (BN with
//! its running statistics), on the views of a recipe (deterministic for the
//! `eval` recipe; seeded by `seed` and the image otherwise).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::ModuleT;
use tch::Tensor;

use crate::data::{Dataset, Recipe};
use crate::device::{float32, Compute};
use crate::error::Result;
use crate::model::ResNet;
use crate::seed::derive;

/// Pooled features `[n, F]` (float32, not normalised) and labels `[n]` (−1
/// where the dataset has none) of images `indices` of `dataset`, in batches
/// of `batch` (a random recipe draws each image's view from its index),
/// computed as `compute` says (device, precision, memory format).
pub fn extract(
    backbone: &ResNet,
    dataset: &Dataset,
    recipe: &Recipe,
    indices: &[usize],
    batch: usize,
    compute: Compute,
) -> Result<(Tensor, Tensor)> {
    let device = compute.device;
    let len = recipe.view_len();
    let s = recipe.size() as i64;
    let mut feats = Vec::new();
    for chunk in indices.chunks(batch.max(1)) {
        let mut buf = vec![0f32; chunk.len() * len];
        for (&i, out) in chunk.iter().zip(buf.chunks_exact_mut(len)) {
            let mut rng = ChaCha8Rng::seed_from_u64(derive(0, &[i as u64]));
            recipe.apply(&dataset.image(i)?, &mut rng, out)?;
        }
        let x = Tensor::from_slice(&buf)
            .view([chunk.len() as i64, recipe.channels as i64, s, s])
            .to_device(device);
        let f = tch::no_grad(|| compute.run(|| backbone.forward_t(&compute.layout(&x), false)));
        feats.push(float32(&f));
    }
    let labels: Vec<i64> = indices
        .iter()
        .map(|&i| dataset.label(i).unwrap_or(-1))
        .collect();
    Ok((
        Tensor::cat(&feats, 0),
        Tensor::from_slice(&labels).to_device(device),
    ))
}
