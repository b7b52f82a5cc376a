//! The allowed-token mask used by guided generation.

use crate::SampleError;
use twain_model::TokenId;

/// A bitset over the vocabulary: which tokens may be sampled at this step.
///
/// Token `t` is bit `t % 64` of word `t / 64`. Guided generation builds a
/// new mask every step; to keep that cheap, reuse one mask (reset it with
/// [`TokenMask::set_all`], or write whole words through
/// [`TokenMask::words_mut`]) and hand it back and forth with
/// [`Sampler::set_mask`](crate::Sampler::set_mask), which returns the previous
/// mask, or lend it per call to
/// [`Sampler::sample_masked`](crate::Sampler::sample_masked).
///
/// ```
/// use twain_sample::TokenMask;
///
/// let mut mask = TokenMask::deny_all(100);
/// mask.allow(7).unwrap();
/// mask.allow(64).unwrap();
/// assert!(mask.is_allowed(64) && !mask.is_allowed(8));
/// assert_eq!(mask.allowed().collect::<Vec<_>>(), vec![7, 64]);
///
/// let mut logits = vec![1.0; 100];
/// mask.apply(&mut logits).unwrap();
/// assert_eq!(logits[7], 1.0);
/// assert_eq!(logits[8], f32::NEG_INFINITY);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u64>,
    vocab_size: usize,
}

impl TokenMask {
    /// A mask over `vocab_size` tokens that allows every token.
    pub fn allow_all(vocab_size: usize) -> Self {
        let mut m = Self::deny_all(vocab_size);
        m.set_all(true);
        m
    }

    /// A mask over `vocab_size` tokens that allows no token.
    pub fn deny_all(vocab_size: usize) -> Self {
        Self {
            words: vec![0; vocab_size.div_ceil(64)],
            vocab_size,
        }
    }

    /// A mask that allows exactly `tokens`.
    pub fn from_allowed(
        vocab_size: usize,
        tokens: impl IntoIterator<Item = TokenId>,
    ) -> Result<Self, SampleError> {
        let mut m = Self::deny_all(vocab_size);
        for t in tokens {
            m.allow(t)?;
        }
        Ok(m)
    }

    /// Number of tokens the mask covers.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// True when `token` is in range and allowed.
    pub fn is_allowed(&self, token: TokenId) -> bool {
        let t = token as usize;
        t < self.vocab_size && self.words[t / 64] >> (t % 64) & 1 == 1
    }

    fn check(&self, token: TokenId) -> Result<usize, SampleError> {
        let t = token as usize;
        if t < self.vocab_size {
            Ok(t)
        } else {
            Err(SampleError::TokenOutOfRange {
                what: "token mask",
                token,
                vocab_size: self.vocab_size,
            })
        }
    }

    /// Allow `token`.
    pub fn allow(&mut self, token: TokenId) -> Result<(), SampleError> {
        let t = self.check(token)?;
        self.words[t / 64] |= 1 << (t % 64);
        Ok(())
    }

    /// Disallow `token`.
    pub fn deny(&mut self, token: TokenId) -> Result<(), SampleError> {
        let t = self.check(token)?;
        self.words[t / 64] &= !(1 << (t % 64));
        Ok(())
    }

    /// Allow (`true`) or disallow (`false`) every token, keeping the allocation.
    pub fn set_all(&mut self, allowed: bool) {
        self.words.fill(if allowed { u64::MAX } else { 0 });
        self.clear_tail();
    }

    /// Keep only the tokens that `other` allows too.
    pub fn intersect_with(&mut self, other: &TokenMask) -> Result<(), SampleError> {
        if other.vocab_size != self.vocab_size {
            return Err(SampleError::MaskSizeMismatch {
                mask: self.vocab_size,
                logits: other.vocab_size,
            });
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
        Ok(())
    }

    /// Number of allowed tokens.
    pub fn count_allowed(&self) -> usize {
        let full = self.vocab_size / 64;
        let mut n: usize = self.words[..full]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum();
        if let Some(&last) = self.words.get(full) {
            n += (last & self.tail_bits()).count_ones() as usize;
        }
        n
    }

    /// The allowed tokens in increasing order.
    pub fn allowed(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.words.iter().enumerate().flat_map(move |(wi, &w)| {
            let base = wi * 64;
            let vocab = self.vocab_size;
            (0..64usize)
                .filter(move |b| w >> b & 1 == 1)
                .map(move |b| base + b)
                .filter(move |&t| t < vocab)
                .map(|t| t as TokenId)
        })
    }

    /// The bits, 64 tokens per word (token `t` is bit `t % 64` of word `t / 64`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The bits, for writing a whole mask at once. Bits past `vocab_size` in
    /// the last word are ignored.
    pub fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Set the logits of disallowed tokens to `-inf`.
    pub fn apply(&self, logits: &mut [f32]) -> Result<(), SampleError> {
        if logits.len() != self.vocab_size {
            return Err(SampleError::MaskSizeMismatch {
                mask: self.vocab_size,
                logits: logits.len(),
            });
        }
        for (chunk, &w) in logits.chunks_mut(64).zip(&self.words) {
            if w == u64::MAX {
                continue;
            }
            for (b, x) in chunk.iter_mut().enumerate() {
                if w >> b & 1 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// The first allowed token with the largest logit (NaN ignored), if any
    /// allowed logit is above `-inf`. `logits` must cover the vocabulary.
    pub(crate) fn best_allowed(&self, logits: &[f32]) -> Option<(usize, f32)> {
        let mut best_i = usize::MAX;
        let mut best_v = f32::NEG_INFINITY;
        for (wi, (chunk, &w)) in logits.chunks(64).zip(&self.words).enumerate() {
            let mut bits = w;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(&x) = chunk.get(b) {
                    if x > best_v {
                        best_v = x;
                        best_i = wi * 64 + b;
                    }
                }
            }
        }
        (best_i != usize::MAX).then_some((best_i, best_v))
    }

    /// Bits of the last word that are inside the vocabulary.
    fn tail_bits(&self) -> u64 {
        match self.vocab_size % 64 {
            0 => u64::MAX,
            r => (1u64 << r) - 1,
        }
    }

    fn clear_tail(&mut self) {
        let tail = self.tail_bits();
        if let Some(last) = self.words.last_mut() {
            *last &= tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ignore_bits_past_the_vocabulary() {
        let mut m = TokenMask::deny_all(70);
        m.words_mut()[1] = u64::MAX;
        assert_eq!(m.count_allowed(), 6);
        assert_eq!(m.allowed().count(), 6);
        assert!(!m.is_allowed(70));
        assert_eq!(TokenMask::allow_all(70).count_allowed(), 70);
        assert_eq!(TokenMask::allow_all(128).count_allowed(), 128);
        assert_eq!(TokenMask::allow_all(0).count_allowed(), 0);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut m = TokenMask::deny_all(10);
        assert_eq!(
            m.allow(10),
            Err(SampleError::TokenOutOfRange {
                what: "token mask",
                token: 10,
                vocab_size: 10
            })
        );
        assert!(TokenMask::from_allowed(10, [1, 2, 30]).is_err());
        assert!(m.apply(&mut [0.0; 11]).is_err());
    }

    #[test]
    fn allow_deny_intersect() {
        let mut a = TokenMask::from_allowed(200, [1, 100, 199]).unwrap();
        let b = TokenMask::from_allowed(200, [100, 199, 3]).unwrap();
        a.intersect_with(&b).unwrap();
        assert_eq!(a.allowed().collect::<Vec<_>>(), vec![100, 199]);
        a.deny(199).unwrap();
        assert_eq!(a.allowed().collect::<Vec<_>>(), vec![100]);
        assert!(a.intersect_with(&TokenMask::deny_all(5)).is_err());
    }
}
