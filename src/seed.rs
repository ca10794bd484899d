//! Seeds derived from a base seed and a few integers, so that every random
//! stream (a run, an epoch's shuffle, an image's augmentation) is fixed by
//! the user's seed alone and independent of thread scheduling.

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
}
