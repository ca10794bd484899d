//! Negative selection: never the row's own positive, distinct keys, the right
//! sharing, determinism for a seed, and errors naming `k_negatives`.

use std::collections::HashSet;

use eqco::loss::negatives::{
    all_but, gather_keys, gather_similarities, per_query, per_row_draws, shared_subset,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

fn rows(idx: &Tensor) -> Vec<Vec<i64>> {
    let k = idx.size()[1] as usize;
    Vec::<i64>::try_from(idx.flatten(0, -1))
        .unwrap()
        .chunks(k)
        .map(<[i64]>::to_vec)
        .collect()
}

/// SimCLR's layout: 2N embeddings, query i's positive is i ± N.
fn simclr_excluded(n: usize) -> impl Fn(usize) -> Vec<usize> {
    move |i| vec![i, (i + n) % (2 * n)]
}

proptest! {
    #[test]
    fn shared_subset_is_shared_and_never_the_positive(n in 2usize..40, frac in 0.0f64..1.0, seed: u64) {
        let k = 1 + ((n - 2) as f64 * frac) as usize;
        let idx = shared_subset(n, k, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(idx.size(), vec![n as i64, k as i64]);
        let rows = rows(&idx);
        // The columns of the off-diagonal matrix are the same for every row.
        let col = |i: usize, key: i64| if (key as usize) < i { key } else { key - 1 };
        let cols0: Vec<i64> = rows[0].iter().map(|&key| col(0, key)).collect();
        for (i, row) in rows.iter().enumerate() {
            prop_assert!(!row.contains(&(i as i64)), "row {} picked its positive", i);
            prop_assert_eq!(row.iter().collect::<HashSet<_>>().len(), k);
            prop_assert!(row.iter().all(|&key| (0..n as i64).contains(&key)));
            let cols: Vec<i64> = row.iter().map(|&key| col(i, key)).collect();
            prop_assert_eq!(&cols, &cols0);
        }
    }

    #[test]
    fn per_query_never_picks_an_excluded_key(n in 2usize..30, frac in 0.0f64..1.0, seed: u64) {
        let available = 2 * n - 2;
        let k = 1 + ((available - 1) as f64 * frac) as usize;
        let idx = per_query(2 * n, 2 * n, k, simclr_excluded(n), &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        for (i, row) in rows(&idx).iter().enumerate() {
            let ex = simclr_excluded(n)(i);
            prop_assert!(row.iter().all(|&key| !ex.contains(&(key as usize))), "row {}: {:?}", i, row);
            prop_assert_eq!(row.iter().collect::<HashSet<_>>().len(), k);
            prop_assert!(row.iter().all(|&key| (0..2 * n as i64).contains(&key)));
        }
    }
}

#[test]
fn deterministic_for_a_seed_and_different_across_seeds() {
    let draw = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (
            rows(&shared_subset(64, 16, &mut rng).unwrap()),
            rows(&per_query(128, 128, 16, simclr_excluded(64), &mut rng).unwrap()),
        )
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn per_query_rows_are_independent() {
    let idx = per_query(64, 64, 8, |i| vec![i], &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let sets: HashSet<Vec<i64>> = rows(&idx)
        .into_iter()
        .map(|mut r| {
            r.sort_unstable();
            r
        })
        .collect();
    assert!(
        sets.len() > 60,
        "rows should differ: {} distinct sets",
        sets.len()
    );
}

#[test]
fn every_other_key_is_reachable_when_k_is_all_of_them() {
    let idx = per_query(
        6,
        6,
        4,
        simclr_excluded(3),
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    for (i, row) in rows(&idx).iter().enumerate() {
        let mut got = row.clone();
        got.sort_unstable();
        let want: Vec<i64> = (0..6)
            .filter(|&j| j != i as i64 && j != ((i + 3) % 6) as i64)
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn too_many_negatives_name_k_negatives() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for e in [
        shared_subset(8, 8, &mut rng).unwrap_err(),
        shared_subset(8, 0, &mut rng).unwrap_err(),
        shared_subset(1, 1, &mut rng).unwrap_err(),
        per_query(8, 8, 7, simclr_excluded(4), &mut rng).unwrap_err(),
    ] {
        assert!(e.is_usage(), "{e}");
        assert!(e.to_string().contains("`k_negatives`"), "{e}");
    }
}

#[test]
fn gathering_follows_the_indices() {
    let keys = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([4, 3]);
    let idx = Tensor::from_slice(&[1i64, 2, 0, 3]).view([2, 2]);
    let g = gather_keys(&keys, &idx);
    assert_eq!(g.size(), vec![2, 2, 3]);
    assert_eq!(
        Vec::<f32>::try_from(g.get(0).get(1)).unwrap(),
        vec![6.0, 7.0, 8.0]
    );
    let sims = Tensor::arange(8, (Kind::Float, tch::Device::Cpu)).view([2, 4]);
    let s = gather_similarities(&sims, &idx);
    assert_eq!(
        Vec::<f32>::try_from(s.flatten(0, -1)).unwrap(),
        vec![1.0, 2.0, 4.0, 7.0]
    );
}

/// SimCLR's per-row draws with the RNG of (seed, row): what one process
/// draws for all 2N rows is what W ranks draw for their own rows (W = 2:
/// the first views' and second views' halves of each rank's rows), and the
/// same in rayon pools of 1 and 3 threads.
#[test]
fn per_row_draws_are_the_same_at_any_world_size_and_thread_count() {
    let (n, k) = (24usize, 7usize);
    let rng_of = |i: usize| ChaCha8Rng::seed_from_u64(1000 + i as u64);
    let draw = |rows: &[usize], threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| per_row_draws(rows, 2 * n, k, simclr_excluded(n), rng_of).unwrap())
    };
    let all: Vec<usize> = (0..2 * n).collect();
    let one = draw(&all, 1);
    assert_eq!(one, draw(&all, 3), "another thread count drew others");
    // W = 2: rank r scores rows [r·N/2, (r + 1)·N/2) of each view.
    let half = n / 2;
    for rank in 0..2 {
        let rows: Vec<usize> = (rank * half..(rank + 1) * half)
            .chain((rank * half..(rank + 1) * half).map(|i| n + i))
            .collect();
        let mine = draw(&rows, 2);
        for (j, &i) in rows.iter().enumerate() {
            assert_eq!(mine[j * k..(j + 1) * k], one[i * k..(i + 1) * k], "row {i}");
        }
    }
    for (i, row) in one.chunks(k).enumerate() {
        let partner = ((i + n) % (2 * n)) as i64;
        assert!(
            !row.contains(&(i as i64)) && !row.contains(&partner),
            "row {i}: {row:?}"
        );
        assert_eq!(row.iter().collect::<HashSet<_>>().len(), k, "row {i}");
    }
}

/// At K = 2(N − 1) nothing is drawn: each row is every key but the query
/// and its partner, in order.
#[test]
fn all_but_lists_every_other_key_in_order() {
    let n = 5i64;
    let excluded: Vec<i64> = (0..2 * n)
        .flat_map(|i| {
            let p = (i + n) % (2 * n);
            [i.min(p), i.max(p)]
        })
        .collect();
    let idx = all_but(&Tensor::from_slice(&excluded).view([2 * n, 2]), 2 * n);
    assert_eq!(idx.size(), vec![2 * n, 2 * n - 2]);
    for (i, row) in rows(&idx).iter().enumerate() {
        let p = (i as i64 + n) % (2 * n);
        let want: Vec<i64> = (0..2 * n).filter(|&j| j != i as i64 && j != p).collect();
        assert_eq!(row, &want, "row {i}");
    }
}
