//! Runnable examples; see the `[[example]]` entries in Cargo.toml.

/// Log-softmax of a logits row, in f64.
pub fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    l.iter().map(|&v| v as f64 - lse).collect()
}

/// Index of the largest logit (the first on ties).
pub fn argmax(l: &[f32]) -> usize {
    (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
}
