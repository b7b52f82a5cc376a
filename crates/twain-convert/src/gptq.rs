//! Error-feedback rounding (GPTQ / OPTQ; LDLQ in QuIP) on twain's grids.
//!
//! For a linear layer `y = x W^T` with input second moments `H = X^T X`,
//! rounding `W` to `Q` costs `tr((W - Q) H (W - Q)^T)` on the calibration
//! data. Nearest rounding ignores `H`; error feedback rounds the columns in
//! order and, after each, moves its rounding error onto the columns not yet
//! rounded, weighted by the upper Cholesky factor `U` of `H^{-1}` (the
//! optimal compensation for the remaining columns). The group scales are
//! chosen before the sweep by twain's clipping search, weighted by
//! `diag(H)` ([`twain_quant::quantize`]); the sweep then only picks codes,
//! so the result is an ordinary twain matrix for the same kernels.

use rayon::prelude::*;
use twain_quant::blocks::QK;
use twain_quant::{grid, quantize, QMatrix, QuantFormat, QuantizeOptions};

use crate::linalg;
use crate::ConvertError;

/// Options of [`gptq`].
#[derive(Debug, Clone)]
pub struct GptqOptions {
    /// Damping added to `H`'s diagonal, as a fraction of its mean (0.01 in
    /// the GPTQ paper). Raised tenfold (up to 3 times) when `H` is not
    /// positive definite after damping.
    pub damp: f64,
    /// Round columns in order of decreasing `diag(H)` (GPTQ's act-order);
    /// group scales stay those of the natural column groups.
    pub act_order: bool,
    /// Re-choose each group's scale when the sweep reaches the group, from
    /// the weights as error feedback has updated them (the clipping search
    /// again; Q2 keeps the row scale of the first pass). Without act-order
    /// only (with it, the first pass's scales are kept).
    pub dynamic_scales: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            act_order: false,
            dynamic_scales: false,
        }
    }
}

/// A row's codes (one per column) and group scales after the sweep.
type RowResult = (Vec<u8>, Vec<f32>);

/// Rows rounded together: one pass over `U` serves all of them.
const TILE: usize = 8;

/// Quantize the `rows x cols` matrix `w` to `format` with error feedback
/// under the `cols x cols` second-moment matrix `h` (any positive scaling).
pub fn gptq(
    format: QuantFormat,
    rows: usize,
    cols: usize,
    w: &[f32],
    h: &[f32],
    opts: &GptqOptions,
) -> Result<QMatrix, ConvertError> {
    let bad = |m: String| Err(ConvertError::Calibration(m));
    if !grid::has_grid(format) {
        return bad(format!("error feedback needs a grid format, not {format}"));
    }
    if w.len() != rows * cols || h.len() != cols * cols {
        return bad(format!(
            "gptq: {rows}x{cols} weights with {} values and a Hessian of {} values",
            w.len(),
            h.len()
        ));
    }
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return bad(format!("Hessian entry {i} is {}", h[i]));
    }
    let diag: Vec<f64> = (0..cols).map(|i| h[i * cols + i] as f64).collect();
    // Columns that never saw input: their weights do not matter; keep the
    // system definite.
    let dead: Vec<bool> = diag.iter().map(|&d| d <= 0.0).collect();
    let mean = diag.iter().filter(|d| **d > 0.0).sum::<f64>() / cols as f64;
    let mean = if mean > 0.0 { mean } else { 1.0 };
    // Scales first: the clipping search weighted by diag(H).
    let importance: Vec<f32> = diag.iter().map(|&d| (d.max(0.0) / mean) as f32).collect();
    let q = quantize(
        format,
        rows,
        cols,
        w,
        &QuantizeOptions {
            importance: Some(importance),
            no_clip_search: false,
        },
    )?;
    let perm: Vec<usize> = if opts.act_order {
        let mut p: Vec<usize> = (0..cols).collect();
        p.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
        p
    } else {
        (0..cols).collect()
    };
    let u = factor(h, cols, &perm, &dead, mean, opts.damp)?;
    let row_bytes = format.row_bytes(cols)?;
    let scales: Vec<Vec<f32>> = (0..rows)
        .map(|r| grid::group_scales(format, &q.data()[r * row_bytes..(r + 1) * row_bytes], cols))
        .collect::<Result<_, _>>()?;
    let dynamic = opts.dynamic_scales && !opts.act_order;
    let imp_f32: Vec<f32> = diag.iter().map(|&d| (d.max(0.0) / mean) as f32).collect();
    let row_d: Vec<f32> = (0..rows)
        .map(|r| grid::q2_row_scale(&q.data()[r * row_bytes..]).unwrap_or(0.0))
        .collect();
    let swept: Vec<Result<RowResult, ConvertError>> = w
        .par_chunks(cols * TILE)
        .enumerate()
        .flat_map_iter(|(t, tile)| {
            let n = tile.len() / cols;
            // Weights of the tile in sweep order.
            let mut x: Vec<Vec<f32>> = (0..n)
                .map(|r| {
                    perm.iter()
                        .map(|&c| if dead[c] { 0.0 } else { tile[r * cols + c] })
                        .collect()
                })
                .collect();
            let mut out = vec![vec![0u8; cols]; n];
            let mut sc: Vec<Vec<f32>> = (0..n).map(|r| scales[t * TILE + r].clone()).collect();
            let mut err = [0.0f32; TILE];
            let mut failed = None;
            for i in 0..cols {
                let c = perm[i];
                let urow = &u[i * cols..(i + 1) * cols];
                let uii = urow[i];
                if dynamic && c.is_multiple_of(QK) {
                    for r in 0..n {
                        let g = &x[r][i..i + QK];
                        match grid::group_scale(
                            format,
                            g,
                            Some(&imp_f32[c..c + QK]),
                            row_d[t * TILE + r],
                        ) {
                            Ok(s) => sc[r][c / QK] = s,
                            Err(e) => failed = Some(e),
                        }
                    }
                }
                for r in 0..n {
                    let s = sc[r][c / QK];
                    let code = grid::code(format, s, x[r][i]);
                    out[r][c] = code;
                    err[r] = (x[r][i] - grid::value(format, s, code)) / uii;
                }
                let tail = &urow[i + 1..];
                for r in 0..n {
                    let e = err[r];
                    for (v, &uij) in x[r][i + 1..].iter_mut().zip(tail) {
                        *v -= e * uij;
                    }
                }
            }
            match failed {
                Some(e) => vec![Err(e.into())],
                None => out.into_iter().zip(sc).map(Ok).collect(),
            }
        })
        .collect();
    let mut data = q.data().to_vec();
    for (r, res) in swept.into_iter().enumerate() {
        let (c, s) = res?;
        let row = &mut data[r * row_bytes..(r + 1) * row_bytes];
        if dynamic {
            for (b, &v) in s.iter().enumerate() {
                grid::set_group_scale(format, row, cols, b, v)?;
            }
        }
        grid::set_codes(format, row, &c)?;
    }
    Ok(QMatrix::from_bytes(format, rows, cols, &data)?)
}

/// `U` (f32, row-major, in sweep order) with `H^{-1} = U^T U` for the damped,
/// permuted `H`.
fn factor(
    h: &[f32],
    n: usize,
    perm: &[usize],
    dead: &[bool],
    mean: f64,
    damp: f64,
) -> Result<Vec<f32>, ConvertError> {
    let mut damp = damp.max(1e-6);
    for _ in 0..4 {
        let mut a = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                let (pi, pj) = (perm[i], perm[j]);
                a[i * n + j] = if dead[pi] || dead[pj] {
                    0.0
                } else {
                    h[pi * n + pj] as f64
                };
            }
            a[i * n + i] = if dead[perm[i]] { mean } else { a[i * n + i] } + damp * mean;
        }
        if let Ok(l) = linalg::cholesky(&a, n) {
            if let Ok(u) = linalg::inverse_upper_factor(&l, n) {
                return Ok(u.into_iter().map(|v| v as f32).collect());
            }
        }
        damp *= 10.0;
    }
    Err(ConvertError::Calibration(format!(
        "the {n}x{n} input second-moment matrix is not positive definite even with damping {damp:e} x its mean diagonal"
    )))
}

/// The layer proxy loss `tr((W - Q) H (W - Q)^T)` of a quantized matrix.
pub fn proxy_loss(w: &[f32], q: &QMatrix, h: &[f32]) -> f64 {
    let (rows, cols) = (q.rows(), q.cols());
    let deq = q.as_ref().dequantize();
    (0..rows)
        .into_par_iter()
        .map(|r| {
            let d: Vec<f64> = (0..cols)
                .map(|c| (w[r * cols + c] - deq[r * cols + c]) as f64)
                .collect();
            let mut s = 0.0;
            for i in 0..cols {
                let hi = &h[i * cols..(i + 1) * cols];
                let t: f64 = hi.iter().zip(&d).map(|(&a, &b)| a as f64 * b).sum();
                s += d[i] * t;
            }
            s
        })
        .sum()
}
