//! Choosing K negatives per query among the keys of a batch (paper Sec. 2.1,
//! "how K is decoupled from the batch").
//!
//! Both selections return key indices `[N, K]` (int64): row i lists the keys
//! that query i is contrasted with. [`gather_similarities`] and [`gather_keys`]
//! apply them. Neither ever picks a query's own positive, and both are
//! deterministic for a seeded RNG.

use rand::seq::index;
use rand::Rng;
use tch::Tensor;

use crate::base::error::{Error, Result};

/// SiMo's rule: one random subset of K of the other N − 1 keys, shared by every
/// row, for N queries whose positive is the key with the same index.
///
/// The subset is drawn once as K of the N − 1 off-diagonal columns; row i maps
/// column c to key `c` if `c < i`, else `c + 1`. So every row sees the same
/// keys, except that the key that would be its own positive is replaced by the
/// next one along: exactly the same columns taken from every row of the
/// off-diagonal `[N, N − 1]` similarity matrix.
pub fn shared_subset(n: usize, k: usize, rng: &mut impl Rng) -> Result<Tensor> {
    let cols = shared_columns(n, k, rng)?;
    Ok(shared_subset_from_columns(
        &Tensor::from_slice(&cols),
        n as i64,
    ))
}

/// The draw behind [`shared_subset`]: K distinct columns of the N − 1
/// off-diagonal ones. Uploading these K numbers, not `[N, K]` indices, is
/// all a GPU needs (see [`shared_subset_from_columns`]).
pub fn shared_columns(n: usize, k: usize, rng: &mut impl Rng) -> Result<Vec<i64>> {
    check_k(k, n.saturating_sub(1), n)?;
    Ok(index::sample(rng, n - 1, k)
        .into_iter()
        .map(|c| c as i64)
        .collect())
}

/// [`shared_subset`]'s indices `[N, K]` from its columns `cols: [K]`, on
/// their device: row i maps column c to key `c + (c ≥ i)`.
pub fn shared_subset_from_columns(cols: &Tensor, n: i64) -> Tensor {
    let c = cols.unsqueeze(0);
    let rows = Tensor::arange(n, (tch::Kind::Int64, cols.device())).unsqueeze(1);
    &c + c.ge_tensor(&rows).to_kind(tch::Kind::Int64)
}

/// SimCLR's rule: for each of `n_queries` queries, K distinct keys drawn
/// independently among the `n_keys` keys that are not in `excluded(i)` (the
/// query itself and its positive).
pub fn per_query(
    n_queries: usize,
    n_keys: usize,
    k: usize,
    excluded: impl Fn(usize) -> Vec<usize>,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let idx = per_query_draws(n_queries, n_keys, k, excluded, rng)?;
    Ok(Tensor::from_slice(&idx).view([n_queries as i64, k as i64]))
}

/// [`per_query`]'s indices as host numbers, row after row (to upload).
pub fn per_query_draws(
    n_queries: usize,
    n_keys: usize,
    k: usize,
    excluded: impl Fn(usize) -> Vec<usize>,
    rng: &mut impl Rng,
) -> Result<Vec<i64>> {
    let mut idx = Vec::with_capacity(n_queries * k);
    for i in 0..n_queries {
        let mut ex = excluded(i);
        ex.sort_unstable();
        ex.dedup();
        let available = n_keys - ex.iter().filter(|&&e| e < n_keys).count();
        check_k(k, available, n_keys)?;
        for c in index::sample(rng, available, k) {
            // The c-th key that is not excluded.
            let mut key = c;
            for &e in &ex {
                if e <= key {
                    key += 1;
                }
            }
            idx.push(key as i64);
        }
    }
    Ok(idx)
}

/// SimCLR's rule, one row at a time: for each query `i` of `rows`, K
/// distinct keys among the `n_keys` keys not in `excluded(i)`, drawn with
/// the RNG `rng_of(i)` of that row alone. So a process that draws only its
/// own rows draws what one process drawing every row does, whatever the
/// world size, and the rows are drawn in parallel (rayon's pool) with the
/// same result at any thread count. Host numbers, row after row `[rows, K]`.
pub fn per_row_draws<R: Rng>(
    rows: &[usize],
    n_keys: usize,
    k: usize,
    excluded: impl Fn(usize) -> Vec<usize> + Sync,
    rng_of: impl Fn(usize) -> R + Sync,
) -> Result<Vec<i64>> {
    use rayon::prelude::*;
    let drawn: Vec<Vec<i64>> = rows
        .par_iter()
        .map(|&i| per_query_draws(1, n_keys, k, |_| excluded(i), &mut rng_of(i)))
        .collect::<Result<_>>()?;
    Ok(drawn.concat())
}

/// Every key but the excluded ones, for each row, without drawing: indices
/// `[m, n_keys − E]` on `excluded`'s device, from `excluded: [m, E]` (int64,
/// each row ascending and distinct, all below `n_keys`). Column c of a row
/// is its c-th key that is not excluded: SimCLR's negatives when K = 2(N − 1).
pub fn all_but(excluded: &Tensor, n_keys: i64) -> Tensor {
    let e = excluded.size()[1];
    let mut key = Tensor::arange(n_keys - e, (tch::Kind::Int64, excluded.device()))
        .unsqueeze(0)
        .expand([excluded.size()[0], n_keys - e], false);
    for j in 0..e {
        // Past the j-th excluded key, every later key moves up by one.
        let ej = excluded.narrow(1, j, 1);
        key = &key + key.ge_tensor(&ej).to_kind(tch::Kind::Int64);
    }
    key
}

fn check_k(k: usize, available: usize, batch: usize) -> Result<()> {
    if k == 0 || k > available {
        return Err(Error::config(
            "k_negatives",
            format!(
                "{k} (must be between 1 and {available}: the other keys of a batch of {batch})"
            ),
        ));
    }
    Ok(())
}

/// The similarities `[N, K]` of the chosen negatives, from all of a query's
/// similarities `sims: [N, M]` and indices `idx: [N, K]` into its M keys.
pub fn gather_similarities(sims: &Tensor, idx: &Tensor) -> Tensor {
    sims.gather(1, &idx.to_device(sims.device()), false)
}

/// The chosen negative keys `[N, K, D]` from keys `[M, D]` and indices `[N, K]`.
pub fn gather_keys(keys: &Tensor, idx: &Tensor) -> Tensor {
    let s = idx.size();
    keys.index_select(0, &idx.flatten(0, -1).to_device(keys.device()))
        .view([s[0], s[1], -1])
}
