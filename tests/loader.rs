//! The two-view loader: shapes, per-epoch permutations, drop-last, labels
//! aligned with indices, identical output for any thread count, errors.

mod common;

use std::sync::Arc;

use eqco::data::formats;
use eqco::data::{
    Dataset, Loader, LoaderConfig, Normalize, OpenOptions, PinnedCap, Recipe, RecipeName,
};
use tch::Tensor;

fn cifar(n_per_batch: usize) -> (tempfile::TempDir, Arc<Dataset>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar");
    common::write_cifar10(&dir, 1, n_per_batch);
    let ds = formats::open(&dir, &OpenOptions::default()).unwrap();
    (tmp, Arc::new(ds))
}

fn loader(ds: &Arc<Dataset>, batch: usize, threads: usize, seed: u64) -> Loader {
    let recipe = Recipe::named(RecipeName::Mocov2, 24, 3, Normalize::imagenet()).unwrap();
    let cfg = LoaderConfig {
        batch_size: batch,
        threads,
        prefetch: 2,
        seed,
        ..Default::default()
    };
    Loader::new(ds.clone(), recipe, cfg).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

#[test]
fn batches_have_two_views_indices_and_labels() {
    let (_tmp, ds) = cifar(23);
    let l = loader(&ds, 5, 2, 0);
    assert_eq!(
        l.batches_per_epoch(),
        4,
        "drop-last: 23 images make 4 batches of 5"
    );
    let batches: Vec<_> = l.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 4);
    let mut seen = Vec::new();
    for b in &batches {
        assert_eq!(b.view1.size(), vec![5, 3, 24, 24]);
        assert_eq!(b.view2.size(), vec![5, 3, 24, 24]);
        assert_eq!(b.view1.kind(), tch::Kind::Float);
        let idx = b.indices.clone();
        let labels = ints(b.labels.as_ref().unwrap());
        for (i, l) in idx.iter().zip(&labels) {
            assert_eq!(Some(*l), ds.label(*i), "label of image {i}");
        }
        assert!(
            !b.view1.equal(&b.view2),
            "the two views are independent draws"
        );
        seen.extend(idx);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "no image twice in an epoch");
    assert_ne!(seen, (0..20).collect::<Vec<usize>>(), "shuffled");
}

#[test]
fn each_epoch_has_its_own_order() {
    let (_tmp, ds) = cifar(40);
    let l = loader(&ds, 8, 1, 3);
    let e0 = l.order(0);
    let e1 = l.order(1);
    assert_ne!(e0, e1);
    let mut s = e1.clone();
    s.sort_unstable();
    assert_eq!(s, (0..40).collect::<Vec<_>>());
    assert_eq!(e0, loader(&ds, 8, 1, 3).order(0), "fixed by the seed");
    assert_ne!(e0, loader(&ds, 8, 1, 4).order(0));
}

#[test]
fn output_does_not_depend_on_the_thread_count() {
    let (_tmp, ds) = cifar(30);
    let collect = |threads| -> Vec<(Vec<usize>, Tensor, Tensor)> {
        loader(&ds, 6, threads, 9)
            .epoch(2)
            .map(|b| {
                let b = b.unwrap();
                (b.indices, b.view1, b.view2)
            })
            .collect()
    };
    let one = collect(1);
    for threads in [2, 3, 7] {
        let many = collect(threads);
        assert_eq!(one.len(), many.len());
        for (a, b) in one.iter().zip(&many) {
            assert_eq!(a.0, b.0);
            assert!(a.1.equal(&b.1) && a.2.equal(&b.2), "threads = {threads}");
        }
    }
    // Resuming mid-epoch gives the same batches as the uninterrupted epoch.
    let l = loader(&ds, 6, 2, 9);
    let tail: Vec<_> = l.epoch_from(2, 3).map(|b| b.unwrap().indices).collect();
    let full: Vec<_> = one.iter().skip(3).map(|b| b.0.clone()).collect();
    assert_eq!(tail, full);
}

#[test]
fn dropping_an_epoch_early_stops_its_workers() {
    let (_tmp, ds) = cifar(50);
    let l = loader(&ds, 2, 3, 0);
    let mut epoch = l.epoch(0);
    assert!(epoch.next().unwrap().is_ok());
    drop(epoch); // Must not hang.
}

#[test]
fn a_broken_image_stops_the_epoch_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("folder");
    common::write_image_folder(&root);
    std::fs::write(root.join("a_cls/zz_broken.png"), b"garbage").unwrap();
    let ds = Arc::new(formats::open(&root, &OpenOptions::default()).unwrap());
    let recipe = Recipe::named(RecipeName::Simclr, 16, 3, Normalize::imagenet()).unwrap();
    let cfg = LoaderConfig {
        batch_size: 6,
        threads: 2,
        ..Default::default()
    };
    let l = Loader::new(ds, recipe, cfg).unwrap();
    let results: Vec<_> = l.epoch(0).collect();
    assert_eq!(results.len(), 1);
    let e = results[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("zz_broken.png"), "{e}");
}

#[test]
fn impossible_configurations_name_the_field() {
    let (_tmp, ds) = cifar(10);
    let recipe = || Recipe::named(RecipeName::Eval, 32, 3, Normalize::imagenet()).unwrap();
    let with = |cfg: LoaderConfig| {
        Loader::new(ds.clone(), recipe(), cfg)
            .err()
            .unwrap()
            .to_string()
    };
    let e = with(LoaderConfig {
        batch_size: 11,
        ..Default::default()
    });
    assert!(e.contains("`batch_size`") && e.contains("10 images"), "{e}");
    let e = with(LoaderConfig {
        batch_size: 2,
        threads: 0,
        ..Default::default()
    });
    assert!(e.contains("`threads`"), "{e}");
}

#[test]
fn views_match_what_the_batches_hold() {
    let (_tmp, ds) = cifar(12);
    let l = loader(&ds, 4, 2, 5);
    let b = l.epoch(1).next().unwrap().unwrap();
    let first = b.indices[0];
    let (v1, v2) = l.views(1, first).unwrap();
    let got1 = Vec::<f32>::try_from(b.view1.get(0).flatten(0, -1)).unwrap();
    let got2 = Vec::<f32>::try_from(b.view2.get(0).flatten(0, -1)).unwrap();
    assert_eq!(v1, got1);
    assert_eq!(v2, got2);
}

#[test]
fn channels_last_batches_hold_the_same_views_in_nhwc_memory() {
    let (_tmp, ds) = cifar(12);
    let with = |channels_last| {
        let recipe = Recipe::named(RecipeName::Mocov2, 24, 3, Normalize::imagenet()).unwrap();
        let cfg = LoaderConfig {
            batch_size: 4,
            threads: 2,
            seed: 5,
            channels_last,
            ..Default::default()
        };
        Loader::new(ds.clone(), recipe, cfg)
            .unwrap()
            .epoch(1)
            .next()
            .unwrap()
            .unwrap()
    };
    let (nchw, nhwc) = (with(false), with(true));
    for (a, b) in [(&nchw.view1, &nhwc.view1), (&nchw.view2, &nhwc.view2)] {
        assert_eq!(b.size(), vec![4, 3, 24, 24]);
        assert!(a.is_contiguous() && !eqco::base::device::is_channels_last(a));
        assert!(
            eqco::base::device::is_channels_last(b),
            "strides {:?}",
            b.stride()
        );
        assert!(a.equal(b), "the same values in either layout");
    }
    assert_eq!(nchw.indices, nhwc.indices);
    assert!(nchw.labels.unwrap().equal(&nhwc.labels.unwrap()));
}

#[test]
fn the_epoch_reports_the_time_it_waited_for_workers() {
    let (_tmp, ds) = cifar(24);
    let l = loader(&ds, 4, 1, 0);
    let mut epoch = l.epoch(0);
    assert_eq!(epoch.waited(), std::time::Duration::ZERO);
    for b in epoch.by_ref() {
        b.unwrap();
    }
    // The first batch cannot have been ready before it was asked for.
    assert!(epoch.waited() > std::time::Duration::ZERO);
}

#[test]
fn staged_batches_and_single_views_hold_the_same_images() {
    let (_tmp, ds) = cifar(30);
    let with = |stage_on_cpu, channels_last| {
        let recipe = Recipe::named(RecipeName::Mocov2, 16, 3, Normalize::imagenet()).unwrap();
        let cfg = LoaderConfig {
            batch_size: 7,
            threads: 3,
            prefetch: 1,
            seed: 2,
            drop_last: false,
            channels_last,
            stage_on_cpu,
            ..Default::default()
        };
        Loader::new(ds.clone(), recipe, cfg).unwrap()
    };
    for channels_last in [false, true] {
        let plain: Vec<_> = with(false, channels_last)
            .epoch(3)
            .map(Result::unwrap)
            .collect();
        let staged_loader = with(true, channels_last);
        // Two epochs through the same slots: every slot is reused.
        for _ in 0..2 {
            let staged: Vec<_> = staged_loader.epoch(3).map(Result::unwrap).collect();
            assert_eq!(
                plain.len(),
                5,
                "30 images in batches of 7, the last one short"
            );
            assert_eq!(staged.len(), plain.len());
            for (a, b) in plain.iter().zip(&staged) {
                assert_eq!(a.indices, b.indices);
                assert!(a.view1.equal(&b.view1) && a.view2.equal(&b.view2));
                assert!(a.labels.as_ref().unwrap().equal(b.labels.as_ref().unwrap()));
                assert_eq!(
                    eqco::base::device::is_channels_last(&b.view1),
                    channels_last
                );
            }
        }
        // One view per image: each image's first view, staged or not.
        for stage in [false, true] {
            let single: Vec<_> = with(stage, channels_last)
                .single_view_epoch(3)
                .map(Result::unwrap)
                .collect();
            assert_eq!(single.len(), plain.len());
            for (a, b) in plain.iter().zip(&single) {
                assert_eq!(a.indices, b.indices);
                assert!(a.view1.equal(&b.view), "stage {stage}");
                assert!(a.labels.as_ref().unwrap().equal(b.labels.as_ref().unwrap()));
            }
        }
    }
}

#[test]
fn the_staging_pool_stays_under_its_cap() {
    let (_tmp, ds) = cifar(64);
    let recipe = || Recipe::named(RecipeName::Mocov2, 32, 3, Normalize::imagenet()).unwrap();
    let loader = |threads, mib| {
        let cfg = LoaderConfig {
            batch_size: 64,
            threads,
            prefetch: 2,
            pinned: PinnedCap::new(mib, 1),
            stage_on_cpu: true,
            ..Default::default()
        };
        Loader::new(ds.clone(), recipe(), cfg).unwrap()
    };
    // A batch of 64 images × 2 views × 3×32×32 floats + labels ≈ 1.5 MiB.
    let batch = 4 * (2 * 64 * 3 * 32 * 32 + 64);
    let roomy = loader(3, 64).staging_plan(2).unwrap();
    assert_eq!(
        (roomy.workers, roomy.slots_per_worker, roomy.slot_bytes),
        (3, 4, batch)
    );
    let tight = loader(3, 4).staging_plan(2).unwrap();
    assert!(tight.pinned_bytes() <= 4 << 20, "{tight}");
    assert_eq!((tight.workers, tight.slots_per_worker), (2, 1));
    // Training through the tight pool still visits every batch in order.
    let l = loader(3, 4);
    let seen: Vec<usize> = l.epoch(0).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(seen, l.order(0));
    // The cap is the machine's: two local processes share 8 MiB as 4 each.
    let shared = Loader::new(
        ds.clone(),
        recipe(),
        LoaderConfig {
            batch_size: 64,
            threads: 3,
            prefetch: 2,
            pinned: PinnedCap::new(8, 2),
            stage_on_cpu: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(shared.staging_plan(2).unwrap(), tight);
    // An evaluation's loader (the kNN monitor's, beside the trainer's pool)
    // stages in pageable memory instead, and still visits every batch.
    let beside = Loader::new(
        ds.clone(),
        recipe(),
        LoaderConfig {
            batch_size: 64,
            threads: 2,
            prefetch: 2,
            pinned: PinnedCap::new(1, 1),
            pageable_when_full: true,
            stage_on_cpu: true,
            ..Default::default()
        },
    )
    .unwrap();
    let seen: Vec<usize> = beside.epoch(0).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(seen, beside.order(0));
    // Not even one batch fits: an error naming the key, at the first batch.
    let e = loader(2, 1)
        .epoch(0)
        .next()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("`pinned_memory_mib`"), "{e}");
}
