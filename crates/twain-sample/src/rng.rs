//! A small seeded generator: xoshiro256++ seeded through SplitMix64.
//!
//! Written out here (a dozen lines) rather than pulled from a crate so that a
//! seed means the same token sequence on every platform and every version of
//! this crate's dependencies.

use std::hash::{BuildHasher, Hasher};

/// xoshiro256++ (Blackman and Vigna), state filled from the seed by SplitMix64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Xoshiro256 {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Xoshiro256 {
    /// The generator for `seed`.
    pub(crate) fn from_seed(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw from `[0, 1)` with 53 random bits.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed nobody chose: std's per-process random hasher keys mixed with the clock.
pub(crate) fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    h.write_u64(nanos);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference() {
        // Reference values of SplitMix64 from seed 0 (Vigna's splitmix64.c).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut s), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn xoshiro_stream_is_pinned() {
        // Computed by an independent implementation of xoshiro256++ with the
        // state filled by SplitMix64 from 42. A change here changes every
        // seeded token sequence.
        let mut r = Xoshiro256::from_seed(42);
        assert_eq!(r.next_u64(), 0xd076_4d4f_4476_689f);
        assert_eq!(r.next_u64(), 0x519e_4174_576f_3791);
        assert_eq!(r.next_u64(), 0xfbe0_7cfb_0c24_ed8c);
    }

    #[test]
    fn same_seed_same_stream_and_unit_interval() {
        let mut a = Xoshiro256::from_seed(42);
        let mut b = Xoshiro256::from_seed(42);
        let mut c = Xoshiro256::from_seed(43);
        let mut differs = false;
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
            differs |= x != c.next_f64();
        }
        assert!(differs);
    }

    #[test]
    fn mean_is_about_one_half() {
        let mut r = Xoshiro256::from_seed(7);
        let n = 100_000;
        let mean = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    }
}
