//! Seeds derived from a base seed and a few integers, so that every random
//! stream (a run, an epoch's shuffle, an image's augmentation) is fixed by
//! the user's seed alone and independent of thread scheduling; and the one
//! lock under which anything draws from libtorch's process-wide generator.

use std::sync::Mutex;

/// Guards libtorch's default CPU generator, which every thread of the
/// process shares: [`with_torch_seed`] holds it while it seeds and draws.
static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Runs `f` with libtorch's default generator seeded with `seed`, holding
/// the process-wide lock, so that what `f` draws (weight initialisation,
/// `Tensor::randn`) depends on `seed` alone, even while other threads of the
/// process (parallel tests, concurrent runs) draw too. Every draw from the
/// default generator in the crate and its tests goes through here.
pub fn with_torch_seed<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed as i64);
    f()
}

/// SplitMix64's finaliser: a bijective mixing of 64 bits.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for the stream named by `parts` under `base`.
pub fn derive(base: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix64(base), |acc, &p| splitmix64(acc ^ splitmix64(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_by_every_part_and_order() {
        let a = derive(0, &[1, 2]);
        assert_eq!(a, derive(0, &[1, 2]));
        assert_ne!(a, derive(1, &[1, 2]));
        assert_ne!(a, derive(0, &[2, 1]));
        assert_ne!(a, derive(0, &[1, 3]));
    }

    #[test]
    fn a_seed_gives_the_same_draws_while_other_threads_draw() {
        let draw = || with_torch_seed(7, || tch::Tensor::randn([64], tch::kind::FLOAT_CPU));
        let reference = draw();
        std::thread::scope(|s| {
            let noise = s.spawn(|| {
                for i in 0..200 {
                    let _ = with_torch_seed(i, || tch::Tensor::randn([64], tch::kind::FLOAT_CPU));
                }
            });
            for _ in 0..200 {
                assert!(draw().equal(&reference));
            }
            noise.join().unwrap();
        });
    }
}
