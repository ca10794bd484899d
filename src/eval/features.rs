//! Frozen features: the backbone's pooled output, in inference mode (BN with
//! its running statistics), on the views of a recipe (deterministic for the
//! `eval` recipe), made by the multi-threaded loader: one view per image,
//! written in the model's layout and, for a GPU, copied from page-locked
//! memory without blocking.

use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Kind, Tensor};

use crate::base::device::{float32, Compute};
use crate::base::error::Result;
use crate::data::{Dataset, Feed, Loader, LoaderConfig, Recipe};
use crate::model::ResNet;

/// Images per forward pass.
const BATCH: usize = 256;

/// A loader of images `indices` of `dataset`, once each and in that order
/// (no shuffle, the last batch kept), `batch_size` at a time through
/// `feed`'s threads under its pinned cap, written for `compute` (its device
/// and layout): what every pass over frozen features reads.
pub fn in_order(
    dataset: &Arc<Dataset>,
    recipe: &Recipe,
    indices: &[usize],
    batch_size: usize,
    feed: Feed,
    compute: Compute,
) -> Result<Loader> {
    Loader::with_images(
        dataset.clone(),
        recipe.clone(),
        LoaderConfig {
            batch_size: batch_size.min(indices.len()).max(1),
            threads: feed.threads.max(1),
            pinned: feed.pinned,
            pageable_when_full: true,
            shuffle: false,
            drop_last: false,
            device: compute.device,
            channels_last: compute.channels_last,
            ..Default::default()
        },
        indices.to_vec(),
    )
}

/// Pooled features `[n, F]` (float32, not normalised) and labels `[n]` (−1
/// where the dataset has none) of images `indices` of `dataset`, in that
/// order, computed as `compute` says (device, precision, memory format),
/// fed as `feed` says.
pub fn extract(
    backbone: &ResNet,
    dataset: &Arc<Dataset>,
    recipe: &Recipe,
    indices: &[usize],
    compute: Compute,
    feed: Feed,
) -> Result<(Tensor, Tensor)> {
    let loader = in_order(dataset, recipe, indices, BATCH, feed, compute)?;
    let (mut feats, mut labels) = (Vec::new(), Vec::new());
    for batch in loader.single_view_epoch(0) {
        let batch = batch?;
        let f = tch::no_grad(|| compute.run(|| backbone.forward_t(&batch.view, false)));
        feats.push(float32(&f));
        labels.push(batch.labels.unwrap_or_else(|| {
            Tensor::full(
                [batch.indices.len() as i64],
                -1,
                (Kind::Int64, compute.device),
            )
        }));
    }
    if feats.is_empty() {
        let dim = backbone.config.feature_dim();
        let empty = |k, shape: &[i64]| Tensor::zeros(shape, (k, compute.device));
        return Ok((empty(Kind::Float, &[0, dim]), empty(Kind::Int64, &[0])));
    }
    Ok((Tensor::cat(&feats, 0), Tensor::cat(&labels, 0)))
}
