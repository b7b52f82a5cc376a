//! Input second moments `H = X^T X` of every linear layer, streamed through
//! a (full-precision) model over calibration windows: no activation is
//! stored, each window's inputs are folded into `H` by an f32 matmul on all
//! cores.

use std::collections::BTreeMap;

use twain_core::Transformer;
use twain_model::{Model, TokenId};
use twain_quant::{matmul_f32, Parallelism, QMatrixRef, QuantFormat};

use crate::ConvertError;

/// `H = sum x x^T` over `count` input rows of one linear input.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Columns of the input (`H` is `cols x cols`, row-major).
    pub cols: usize,
    /// The sum of outer products.
    pub h: Vec<f32>,
    /// Input rows summed.
    pub count: usize,
}

impl Hessian {
    /// `diag(H) / count`: the mean squared input per column.
    pub fn mean_square(&self) -> Vec<f32> {
        let n = self.count.max(1) as f32;
        (0..self.cols)
            .map(|i| self.h[i * self.cols + i] / n)
            .collect()
    }
}

/// The tensor whose input statistics `tensor` shares: the K/V projections
/// read the q projection's input, the up projection the gate's.
/// The LM head is its own key. `None` for other tensors.
pub fn input_of(tensor: &str) -> Option<String> {
    if tensor == "token_embd.weight" || tensor == "output.weight" {
        // The LM head's input (the tied embedding's when there is none).
        return Some(tensor.to_string());
    }
    let (layer, part) = tensor.strip_prefix("blk.")?.split_once('.')?;
    let first = match part {
        "attn_q.weight" | "attn_k.weight" | "attn_v.weight" => "attn_q.weight",
        "attn_output.weight" => "attn_output.weight",
        "ffn_gate.weight" | "ffn_up.weight" => "ffn_gate.weight",
        "ffn_down.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{first}"))
}

/// `H` of every decoder linear input of `model` over `tokens`, in windows of
/// `ctx` tokens (each window starts a fresh sequence). Keys are the first
/// consumer's tensor name ([`input_of`]).
pub fn collect(
    model: &Transformer,
    tokens: &[TokenId],
    ctx: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<BTreeMap<String, Hessian>, ConvertError> {
    if tokens.is_empty() {
        return Err(ConvertError::Calibration("no calibration tokens".into()));
    }
    let ctx = ctx.clamp(1, model.info().context_length);
    let windows: Vec<&[TokenId]> = tokens.chunks(ctx).collect();
    let mut out: BTreeMap<String, Hessian> = BTreeMap::new();
    let mut logits = vec![0.0f32; model.info().vocab_size];
    let mut failure: Option<ConvertError> = None;
    let mut xt = Vec::new();
    let mut y = Vec::new();
    for (w, window) in windows.iter().enumerate() {
        let mut state = model.new_state();
        let mut observe = |name: &str, x: &[f32], cols: usize| {
            if failure.is_some() || input_of(name).as_deref() != Some(name) {
                return;
            }
            if let Err(e) = accumulate(&mut out, name, x, cols, &mut xt, &mut y) {
                failure = Some(e);
            }
        };
        model.forward_observed(&mut state, window, &mut logits, &mut observe)?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
        progress(w + 1, windows.len());
    }
    Ok(out)
}

fn accumulate(
    out: &mut BTreeMap<String, Hessian>,
    name: &str,
    x: &[f32],
    cols: usize,
    xt: &mut Vec<f32>,
    y: &mut Vec<f32>,
) -> Result<(), ConvertError> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(ConvertError::Calibration(format!(
            "{name}: input of {} values is not rows of {cols}",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(ConvertError::Calibration(format!(
            "{name}: input value {i} is {} (non-finite activations)",
            x[i]
        )));
    }
    let n = x.len() / cols;
    // X^T (cols x n) as an f32 matrix; X^T (X^T)^T = X^T X.
    xt.clear();
    xt.resize(cols * n, 0.0);
    for r in 0..n {
        for c in 0..cols {
            xt[c * n + r] = x[r * cols + c];
        }
    }
    y.clear();
    y.resize(cols * cols, 0.0);
    let m = QMatrixRef::new(QuantFormat::F32, cols, n, bytemuck::cast_slice(&xt[..]))?;
    matmul_f32(&m, &xt[..], &mut y[..], Parallelism::Rayon)?;
    let e = out.entry(name.to_string()).or_insert_with(|| Hessian {
        cols,
        h: vec![0.0; cols * cols],
        count: 0,
    });
    if e.cols != cols {
        return Err(ConvertError::Calibration(format!(
            "{name}: input width changed from {} to {cols}",
            e.cols
        )));
    }
    for (a, b) in e.h.iter_mut().zip(y.iter()) {
        *a += b;
    }
    e.count += n;
    Ok(())
}
