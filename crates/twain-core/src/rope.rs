//! Rotary position embeddings: frequency table (with optional Llama-3
//! scaling) and application in either pair layout.

use twain_model::{RopeLayout, RopeScaling};

/// Inverse frequencies for one head, with Llama-3 frequency scaling applied when given.
pub fn inv_freqs(head_dim: usize, theta: f32, scaling: Option<RopeScaling>) -> Vec<f32> {
    let half = head_dim / 2;
    (0..half)
        .map(|i| {
            let f = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            match scaling {
                None => f as f32,
                Some(s) => llama3_scale(f, s) as f32,
            }
        })
        .collect()
}

fn llama3_scale(freq: f64, s: RopeScaling) -> f64 {
    let old = s.original_context as f64;
    let low_wavelen = old / s.low_freq_factor as f64;
    let high_wavelen = old / s.high_freq_factor as f64;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor as f64
    } else {
        let smooth = (old / wavelen - s.low_freq_factor as f64)
            / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
        (1.0 - smooth) * freq / s.factor as f64 + smooth * freq
    }
}

/// `(sin, cos)` of every frequency at position `pos`, appended to `out`.
pub fn angles(pos: usize, inv_freq: &[f32], out: &mut Vec<(f32, f32)>) {
    out.extend(inv_freq.iter().map(|&f| (pos as f32 * f).sin_cos()));
}

/// Rotate one head vector in place for position `pos`.
#[cfg(test)]
pub(crate) fn apply(x: &mut [f32], pos: usize, inv_freq: &[f32], layout: RopeLayout) {
    let mut t = Vec::new();
    angles(pos, inv_freq, &mut t);
    apply_angles(x, &t, layout);
}

/// Rotate one head vector in place by the [`angles`] of its position.
#[inline]
pub(crate) fn apply_angles(x: &mut [f32], angles: &[(f32, f32)], layout: RopeLayout) {
    let half = angles.len();
    debug_assert_eq!(x.len(), 2 * half);
    for (i, &(sin, cos)) in angles.iter().enumerate() {
        let (a, b) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::HalfSplit => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_agree_after_permutation() {
        // Interleaved layout of a vector = half-split layout with pairs gathered.
        let inv = inv_freqs(8, 10000.0, None);
        let half_split: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        let mut interleaved = vec![0.0; 8];
        for i in 0..4 {
            interleaved[2 * i] = half_split[i];
            interleaved[2 * i + 1] = half_split[i + 4];
        }
        let mut a = half_split.clone();
        let mut b = interleaved.clone();
        apply(&mut a, 7, &inv, RopeLayout::HalfSplit);
        apply(&mut b, 7, &inv, RopeLayout::Interleaved);
        for i in 0..4 {
            assert!((a[i] - b[2 * i]).abs() < 1e-6);
            assert!((a[i + 4] - b[2 * i + 1]).abs() < 1e-6);
        }
        // rotation preserves the norm
        let n0: f32 = half_split.iter().map(|v| v * v).sum();
        let n1: f32 = a.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        };
        let plain = inv_freqs(128, 500000.0, None);
        let scaled = inv_freqs(128, 500000.0, Some(s));
        assert_eq!(plain[0], scaled[0]);
        assert!((plain[63] / 8.0 - scaled[63]).abs() < 1e-12);
    }
}
