//! Probability helpers: a portable `exp`, softmax and argmax.
//!
//! The sampler turns logits into probabilities with [`exp_nonpos`], written
//! here with plain IEEE additions and multiplications (no libm, no fused
//! multiply-add) so that the same logits and seed give the same token on every
//! platform; it is branch-free so loops over a whole vocabulary vectorise.

use crate::SampleError;
use twain_model::TokenId;

/// Below this, [`exp_nonpos`] returns exactly 0 (e^-87 is about 1.6e-38, the
/// smallest normal `f32`). Tokens this far below the best one have probability
/// 0 in `f32` anyway, so the sampler drops them before doing any work on them.
pub(crate) const EXP_CUTOFF: f32 = -87.0;

/// `e^x` for `x <= 0`, relative error below 3e-7; exactly 1 at 0, exactly 0
/// below [`EXP_CUTOFF`] and for NaN.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    // Cody-Waite range reduction x = n ln2 + r, |r| <= ln2 / 2, then the
    // Cephes expf polynomial for e^r, then scale by 2^n built from its bits.
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(EXP_CUTOFF, 0.0);
    let t = xc * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    // n is in [-126, 0], so n + 127 is a valid biased exponent.
    let n_int = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x >= EXP_CUTOFF {
        er * scale
    } else {
        0.0
    }
}

/// Sum in four fixed lanes of `f64`: fast, and the same on every platform.
pub(crate) fn sum_f64(values: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = values.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    let mut total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &v in rest {
        total += f64::from(v);
    }
    total
}

/// The first largest logit, ignoring NaN; `None` when no logit is above `-inf`.
/// `+inf` counts as largest.
pub(crate) fn best(logits: &[f32]) -> Option<(usize, f32)> {
    // Two passes that vectorise: the maximum in 16 lanes, then the first
    // 16-wide chunk holding it.
    const L: usize = 16;
    let mut acc = [f32::NEG_INFINITY; L];
    let chunks = logits.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(rest) {
        if x > m {
            m = x;
        }
    }
    if m == f32::NEG_INFINITY {
        return None;
    }
    let chunk = logits
        .chunks(L)
        .position(|c| c.iter().fold(false, |hit, &x| hit | (x == m)))?;
    let i = logits[chunk * L..].iter().position(|&x| x == m)?;
    Some((chunk * L + i, m))
}

/// `out[i] = e^((logits[i] - max) * inv_t)`: unnormalised probabilities, 0
/// for NaN, `-inf` and anything below the cutoff. `max` must be the finite
/// maximum and `inv_t` finite and positive, so the best token gets exactly 1.
pub(crate) fn scaled_exp(logits: &[f32], max: f32, inv_t: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(logits.iter().map(|&x| exp_nonpos((x - max) * inv_t)));
}

/// The token with the largest logit (the first one on ties), ignoring NaN.
///
/// This is what greedy decoding picks.
///
/// ```
/// assert_eq!(twain_sample::argmax(&[0.5, 2.0, f32::NAN, 2.0]), Ok(1));
/// assert!(twain_sample::argmax(&[f32::NEG_INFINITY]).is_err());
/// ```
pub fn argmax(logits: &[f32]) -> Result<TokenId, SampleError> {
    if logits.is_empty() {
        return Err(SampleError::EmptyLogits);
    }
    best(logits)
        .map(|(i, _)| i as TokenId)
        .ok_or(SampleError::NoFiniteLogits {
            allowed: logits.len(),
        })
}

/// Softmax of `logits` into a new vector; see [`softmax_in_place`].
///
/// ```
/// let p = twain_sample::softmax(&[0.0, 0.0, f32::NEG_INFINITY]).unwrap();
/// assert_eq!(p, vec![0.5, 0.5, 0.0]);
/// ```
pub fn softmax(logits: &[f32]) -> Result<Vec<f32>, SampleError> {
    let mut p = logits.to_vec();
    softmax_in_place(&mut p)?;
    Ok(p)
}

/// Replace logits by probabilities that sum to 1.
///
/// `-inf` and NaN logits get probability 0, as do logits more than 87 below
/// the largest (their probability is below `f32`'s smallest normal number).
/// If some logits are `+inf`, they share the probability equally.
/// Errors on empty input and when no logit is above `-inf`.
pub fn softmax_in_place(values: &mut [f32]) -> Result<(), SampleError> {
    if values.is_empty() {
        return Err(SampleError::EmptyLogits);
    }
    let (_, max) = best(values).ok_or(SampleError::NoFiniteLogits {
        allowed: values.len(),
    })?;
    if max == f32::INFINITY {
        for v in values.iter_mut() {
            *v = if *v == f32::INFINITY { 1.0 } else { 0.0 };
        }
    } else {
        for v in values.iter_mut() {
            // NaN - max is NaN and -inf - max is -inf: both give 0.
            *v = exp_nonpos(*v - max);
        }
    }
    let total = sum_f64(values);
    let inv = 1.0 / total;
    for v in values.iter_mut() {
        *v = (f64::from(*v) * inv) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_exact_at_the_ends() {
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
        assert_eq!(exp_nonpos(-87.5), 0.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(f32::NAN), 0.0);
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x >= EXP_CUTOFF {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpos(x));
            worst = worst.max(((got - want) / want).abs());
            x -= 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_is_monotone() {
        let mut x = 0.0f32;
        let mut prev = exp_nonpos(x);
        while x > -20.0 {
            x = f32::from_bits(x.to_bits() + 997).min(-f32::MIN_POSITIVE);
            let e = exp_nonpos(x);
            assert!(e <= prev, "exp({x}) = {e} > {prev}");
            prev = e;
        }
    }

    #[test]
    fn softmax_handles_infinities() {
        let p = softmax(&[f32::INFINITY, 1.0, f32::INFINITY]).unwrap();
        assert_eq!(p, vec![0.5, 0.0, 0.5]);
        assert_eq!(softmax(&[]), Err(SampleError::EmptyLogits));
        assert_eq!(
            softmax(&[f32::NAN, f32::NEG_INFINITY]),
            Err(SampleError::NoFiniteLogits { allowed: 2 })
        );
    }

    #[test]
    fn best_is_the_first_maximum() {
        let mut v = vec![0.0f32; 100];
        assert_eq!(best(&v), Some((0, 0.0)));
        v[37] = 2.0;
        v[90] = 2.0;
        v[5] = f32::NAN;
        assert_eq!(best(&v), Some((37, 2.0)));
        v[99] = f32::INFINITY;
        assert_eq!(best(&v), Some((99, f32::INFINITY)));
        assert_eq!(best(&[f32::NAN; 40]), None);
        assert_eq!(best(&[f32::NEG_INFINITY; 3]), None);
        assert_eq!(best(&[]), None);
    }

    #[test]
    fn sum_matches_naive() {
        let v: Vec<f32> = (0..1003).map(|i| (i as f32).sin().abs()).collect();
        let naive: f64 = v.iter().map(|&x| f64::from(x)).sum();
        assert!((sum_f64(&v) - naive).abs() < 1e-9);
    }
}
