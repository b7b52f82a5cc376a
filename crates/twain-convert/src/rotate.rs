//! Incoherence rotations fused into a full-precision model (QuaRot /
//! SpinQuant style), so that every quantized matrix sees inputs and weights
//! without outlier columns. The f32 model computes the same function after
//! [`rotate`] (a test holds it to float tolerance).
//!
//! With `Q = D H` (a random sign diagonal times an orthonormal Hadamard
//! matrix, [`twain_quant::hadamard`]):
//!
//! * **norm folding**: every RMSNorm gain before a linear moves into the
//!   linear's columns (`W diag(g)`), the gain becomes 1 — RMSNorm without a
//!   gain commutes with any rotation;
//! * **residual stream** (`Q_d`, d = model width): the residual lives in the
//!   rotated basis `x Q`. q/k/v/gate/up become `W Q` (their columns mix),
//!   attn_output/down become `Q^T W` (rows). The embedding table stays as it
//!   is, tied or not: the model rotates a looked-up row online, and turns the
//!   last state back before the final norm (tensor `rotation.residual` holds
//!   the signs; two fast transforms per token);
//! * **down input** (`Q_f`, f = FFN width): the SwiGLU output is rotated
//!   online before the down projection (tensor `rotation.ffn_down`), whose
//!   columns carry the inverse;
//! * **per head** (`Q_h`, h = head dim): each V head is rotated and the
//!   output projection's columns for that head carry the inverse; attention
//!   is linear in V, so nothing runs online (KV-sharing layers read the same
//!   rotated cache).

use twain_io::{LoadedModel, Tensor};
use twain_quant::hadamard;

use crate::synthetic::SplitMix;
use crate::ConvertError;

/// Which rotations [`rotate`] applies.
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Rotate the residual stream (needs a supported model width).
    pub residual: bool,
    /// Rotate the down projection's input online.
    pub ffn_down: bool,
    /// Rotate each V head and the output projection's matching columns.
    pub heads: bool,
    /// Seed of the random signs.
    pub seed: u64,
}

impl Default for RotateOptions {
    fn default() -> Self {
        Self {
            residual: true,
            ffn_down: true,
            heads: true,
            seed: 0x0074_7761_696e,
        }
    }
}

/// Name of the residual rotation's signs.
pub const RESIDUAL: &str = "rotation.residual";
/// Name of the per-head V/O rotation's signs (a marker: nothing runs online).
pub const HEADS: &str = "rotation.heads";
/// Name of the down-input rotation's signs.
pub const FFN_DOWN: &str = "rotation.ffn_down";

fn signs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 })
        .collect()
}

/// `row <- (row * s) H` for every `s.len()`-long run of `rows`.
fn rotate_runs(rows: &mut [f32], s: &[f32]) -> Result<(), ConvertError> {
    for run in rows.chunks_exact_mut(s.len()) {
        run.iter_mut().zip(s).for_each(|(a, b)| *a *= b);
        hadamard::transform(run)?;
    }
    Ok(())
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// A tensor's shape and values.
type Dense = (Vec<usize>, Vec<f32>);

struct Tensors<'a>(&'a mut LoadedModel);

impl Tensors<'_> {
    fn get(&self, name: &str) -> Result<Option<Dense>, ConvertError> {
        match self.0.tensors.get(name) {
            None => Ok(None),
            Some(t) => Ok(Some((t.shape().to_vec(), t.to_f32()?))),
        }
    }
    fn need(&self, name: &str) -> Result<Dense, ConvertError> {
        self.get(name)?
            .ok_or_else(|| ConvertError::Plan(format!("rotation: tensor {name} is missing")))
    }
    fn put(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<(), ConvertError> {
        self.0.tensors.insert(
            name.to_string(),
            Tensor::from_f32(name.to_string(), shape, data)?,
        );
        Ok(())
    }
    /// Columns of matrix `name` times `g`.
    fn scale_cols(&mut self, name: &str, g: &[f32]) -> Result<(), ConvertError> {
        if let Some((shape, mut w)) = self.get(name)? {
            for row in w.chunks_exact_mut(g.len()) {
                row.iter_mut().zip(g).for_each(|(a, b)| *a *= b);
            }
            self.put(name, shape, w)?;
        }
        Ok(())
    }
    /// `W <- W D H` (columns mix): every row rotated.
    fn rotate_cols(&mut self, name: &str, s: &[f32]) -> Result<(), ConvertError> {
        if let Some((shape, mut w)) = self.get(name)? {
            rotate_runs(&mut w, s)?;
            self.put(name, shape, w)?;
        }
        Ok(())
    }
    /// `W <- (D H)^T W` (rows mix): every column rotated.
    fn rotate_rows(&mut self, name: &str, s: &[f32]) -> Result<(), ConvertError> {
        if let Some((shape, w)) = self.get(name)? {
            let (rows, cols) = (shape[0], shape[1]);
            let mut t = transpose(&w, rows, cols);
            rotate_runs(&mut t, s)?;
            self.put(name, shape, transpose(&t, cols, rows))?;
        }
        Ok(())
    }
}

/// Fold the norm gains and apply the rotations `opts` asks for to an f32
/// (or any-format, read as f32) model. Tensors it touches come back in f32.
/// Errors name a width the Hadamard transform does not support.
pub fn rotate(model: &mut LoadedModel, opts: &RotateOptions) -> Result<(), ConvertError> {
    let c = &model.config;
    let (d, f, hd) = (c.d_model, c.ffn_hidden, c.head_dim);
    let signs = Signs {
        residual: opts.residual.then(|| signs(d, opts.seed)),
        ffn_down: opts.ffn_down.then(|| signs(f, opts.seed ^ 0xd0)),
        heads: opts.heads.then(|| signs(hd, opts.seed ^ 0x4e)),
    };
    rotate_with(model, signs)
}

/// The random signs of each rotation (`None`: that rotation is off).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signs {
    /// Of the residual stream (model width).
    pub residual: Option<Vec<f32>>,
    /// Of the down projection's input (FFN width).
    pub ffn_down: Option<Vec<f32>>,
    /// Of each V head (head dimension).
    pub heads: Option<Vec<f32>>,
}

impl Signs {
    /// The rotations a rotated model holds (none for a model that is not).
    pub fn of(model: &LoadedModel) -> Result<Signs, ConvertError> {
        let get = |name: &str| -> Result<Option<Vec<f32>>, ConvertError> {
            model
                .tensors
                .get(name)
                .map(|t| t.to_f32())
                .transpose()
                .map_err(Into::into)
        };
        Ok(Signs {
            residual: get(RESIDUAL)?,
            ffn_down: get(FFN_DOWN)?,
            heads: get(HEADS)?,
        })
    }
}

/// Rotate `model` as `rotated` was (same rotations, same signs): e.g. the
/// f32 source of a converted model, so the two compute in one basis.
pub fn rotate_like(model: &mut LoadedModel, rotated: &LoadedModel) -> Result<(), ConvertError> {
    rotate_with(model, Signs::of(rotated)?)
}

/// Fold the norm gains and apply the rotations with the given signs.
pub fn rotate_with(model: &mut LoadedModel, sg: Signs) -> Result<(), ConvertError> {
    let c = model.config.clone();
    let (d, f, hd) = (c.d_model, c.ffn_hidden, c.head_dim);
    for (s, n, what) in [
        (&sg.residual, d, "model width"),
        (&sg.ffn_down, f, "FFN width"),
        (&sg.heads, hd, "head dimension"),
    ] {
        let Some(s) = s else { continue };
        if !hadamard::supported(n) {
            return Err(ConvertError::Plan(format!(
                "rotation: {what} {n} is not 2^k * 12^j (j <= 2), which the Hadamard transform needs"
            )));
        }
        if s.len() != n || s.iter().any(|&v| v != 1.0 && v != -1.0) {
            return Err(ConvertError::Plan(format!(
                "rotation: the {what} rotation needs {n} signs of +-1, got {} values",
                s.len()
            )));
        }
    }
    let opts = RotateOptions {
        residual: sg.residual.is_some(),
        ffn_down: sg.ffn_down.is_some(),
        heads: sg.heads.is_some(),
        seed: 0,
    };
    if [RESIDUAL, FFN_DOWN, HEADS]
        .iter()
        .any(|n| model.tensors.contains_key(*n))
    {
        return Err(ConvertError::Plan("the model is already rotated".into()));
    }
    let mut t = Tensors(model);
    let s_res = sg.residual.unwrap_or_default();
    let s_down = sg.ffn_down.unwrap_or_default();
    let s_head = sg.heads.unwrap_or_default();
    for l in 0..c.n_layers {
        let p = |n: &str| format!("blk.{l}.{n}");
        if opts.residual {
            // Norm gains into the following linears' columns.
            for (norm, targets) in [
                ("attn_norm.weight", &["attn_q", "attn_k", "attn_v"][..]),
                ("ffn_norm.weight", &["ffn_gate", "ffn_up"][..]),
            ] {
                let (shape, g) = t.need(&p(norm))?;
                for m in targets {
                    t.scale_cols(&p(&format!("{m}.weight")), &g)?;
                }
                t.put(&p(norm), shape, vec![1.0; d])?;
            }
        }
        if opts.heads {
            // V heads: W_v^T's rows (one per input column) rotate per head.
            if let Some((shape, w)) = t.get(&p("attn_v.weight"))? {
                let (rows, cols) = (shape[0], shape[1]);
                let mut tr = transpose(&w, rows, cols);
                rotate_runs(&mut tr, &s_head)?;
                t.put(&p("attn_v.weight"), shape, transpose(&tr, cols, rows))?;
            }
            if let Some((shape, mut b)) = t.get(&p("attn_v.bias"))? {
                rotate_runs(&mut b, &s_head)?;
                t.put(&p("attn_v.bias"), shape, b)?;
            }
            t.rotate_cols(&p("attn_output.weight"), &s_head)?;
        }
        if opts.residual {
            for m in ["attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"] {
                t.rotate_cols(&p(&format!("{m}.weight")), &s_res)?;
            }
            for m in ["attn_output", "ffn_down"] {
                t.rotate_rows(&p(&format!("{m}.weight")), &s_res)?;
            }
        }
        if opts.ffn_down {
            t.rotate_cols(&p("ffn_down.weight"), &s_down)?;
        }
    }
    if opts.residual {
        t.put(RESIDUAL, vec![d], s_res)?;
    }
    if opts.ffn_down {
        t.put(FFN_DOWN, vec![f], s_down)?;
    }
    if opts.heads {
        t.put(HEADS, vec![hd], s_head)?;
    }
    Ok(())
}
