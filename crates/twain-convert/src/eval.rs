//! Perplexity and KL divergence over a token stream, scored the way
//! llama.cpp's perplexity tool does: independent windows of `ctx` tokens,
//! each scoring its second half.

use twain_model::{Model, ModelError, TokenId};

use twain_core::Transformer;

/// Result of [`perplexity`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalReport {
    /// Windows evaluated.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Mean KL(base || model) per scored token, when a base model was given.
    pub mean_kld: Option<f64>,
    /// Fraction of scored tokens where model and base agree on the top-1 token.
    pub top1_agreement: Option<f64>,
    /// Perplexity of the base model.
    pub base_perplexity: Option<f64>,
}

fn log_softmax(l: &[f32], out: &mut Vec<f64>) {
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = l.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    out.clear();
    out.extend(l.iter().map(|&v| v as f64 - lse));
}

fn argmax(l: &[f32]) -> usize {
    let mut b = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[b] {
            b = i;
        }
    }
    b
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Windows must hold at least 4 tokens.
    #[error("window length {ctx} is too short")]
    WindowTooShort {
        /// The window length asked for.
        ctx: usize,
    },
    /// The text does not fill one window.
    #[error("the text has {tokens} tokens, fewer than one window of {ctx}")]
    TextTooShort {
        /// Tokens in the text.
        tokens: usize,
        /// The window length.
        ctx: usize,
    },
}

/// Perplexity of `model` on `tokens` (windows of `ctx`, at most `max_chunks`),
/// and with `base` the mean KL divergence and top-1 agreement against it.
/// `progress` is called with (done, total) windows. Bad arguments are a
/// [`ModelError::Other`] holding an [`EvalError`].
pub fn perplexity(
    model: &Transformer,
    base: Option<&Transformer>,
    tokens: &[TokenId],
    ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport, ModelError> {
    if ctx < 4 {
        return Err(ModelError::other(EvalError::WindowTooShort { ctx }));
    }
    let mut chunks = tokens.len() / ctx;
    if let Some(m) = max_chunks {
        chunks = chunks.min(m);
    }
    if chunks == 0 {
        return Err(ModelError::other(EvalError::TextTooShort {
            tokens: tokens.len(),
            ctx,
        }));
    }
    let v = model.info().vocab_size;
    let first = ctx / 2;
    let (mut nll, mut base_nll, mut kld, mut agree, mut scored) =
        (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    let (mut lp, mut lq) = (Vec::new(), Vec::new());
    for c in 0..chunks {
        let window = &tokens[c * ctx..(c + 1) * ctx];
        let mut s = model.new_state();
        let logits = model.forward_all(&mut s, window)?;
        let base_logits = match base {
            Some(b) => {
                let mut bs = b.new_state();
                Some(b.forward_all(&mut bs, window)?)
            }
            None => None,
        };
        for j in first..ctx - 1 {
            let row = &logits[j * v..(j + 1) * v];
            let next = window[j + 1] as usize;
            log_softmax(row, &mut lq);
            nll -= lq[next];
            if let Some(bl) = &base_logits {
                let brow = &bl[j * v..(j + 1) * v];
                log_softmax(brow, &mut lp);
                base_nll -= lp[next];
                kld += lp
                    .iter()
                    .zip(&lq)
                    .map(|(&p, &q)| p.exp() * (p - q))
                    .sum::<f64>();
                if argmax(row) == argmax(brow) {
                    agree += 1;
                }
            }
            scored += 1;
        }
        progress(c + 1, chunks);
    }
    let n = scored as f64;
    Ok(EvalReport {
        chunks,
        scored,
        perplexity: (nll / n).exp(),
        mean_kld: base.map(|_| kld / n),
        top1_agreement: base.map(|_| agree as f64 / n),
        base_perplexity: base.map(|_| (base_nll / n).exp()),
    })
}

/// Per-input-column importance of every linear layer (mean squared input
/// activation), measured by running `model` over `tokens` in windows of
/// `ctx`. Feed it to [`ConvertOptions::importance`](crate::ConvertOptions).
pub fn calibrate(
    model: &Transformer,
    tokens: &[TokenId],
    ctx: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<std::collections::BTreeMap<String, Vec<f32>>, crate::ConvertError> {
    if tokens.is_empty() {
        return Err(crate::ConvertError::Calibration(
            "no calibration tokens".into(),
        ));
    }
    use std::collections::BTreeMap;
    let mut sums: BTreeMap<String, (Vec<f64>, usize)> = BTreeMap::new();
    let ctx = ctx.max(1).min(model.info().context_length);
    let windows: Vec<&[TokenId]> = tokens.chunks(ctx).collect();
    let mut logits = vec![0.0f32; model.info().vocab_size];
    for (w, window) in windows.iter().enumerate() {
        let mut state = model.new_state();
        let mut observe = |name: &str, x: &[f32], cols: usize| {
            let entry = sums
                .entry(name.to_string())
                .or_insert_with(|| (vec![0.0; cols], 0));
            if entry.0.len() != cols {
                return;
            }
            for row in x.chunks_exact(cols) {
                for (s, &v) in entry.0.iter_mut().zip(row) {
                    *s += (v as f64) * (v as f64);
                }
                entry.1 += 1;
            }
        };
        model.forward_observed(&mut state, window, &mut logits, &mut observe)?;
        progress(w + 1, windows.len());
    }
    Ok(sums
        .into_iter()
        .map(|(k, (s, n))| {
            (
                k,
                s.into_iter()
                    .map(|v| (v / n.max(1) as f64) as f32)
                    .collect(),
            )
        })
        .collect())
}
