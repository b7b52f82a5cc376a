//! Fake quantization on twain's Q2 grid, differentiable: the forward pass is
//! exactly twain's quantize -> dequantize of a row under given group scales
//! ([`twain_quant::grid`]), the backward pass is the straight-through
//! estimator for the weights and LSQ's step-size gradient for the scales.
//!
//! A Q2 row stores an f32 row scale `d` and a 4-bit sub-scale `k` in 0..=15
//! per group of 32, so a group's scale is `d * k`. Training keeps `d` fixed
//! (from the conversion) and learns a continuous scale `s` per group; the
//! forward pass uses `d * clamp(round(s / d), 0, 15)`, the scale the row can
//! store, and the gradient reaches `s` as if the rounding were not there (a
//! group whose scale rounds to 0 is zero, as in the file, and gets no
//! gradient).
//! That is the learnable clipping of the reference system (`scale = f *
//! max|w| / q_max` with `f` learned), on the grid the file format has.
//!
//! With frozen codes (EfficientQAT's second stage: the weights are not
//! trained) the op holds the matrix's 2-bit codes as stored and never
//! re-rounds: the forward is `(code - 1.5) * d * k` whatever the scales do,
//! there is no weight gradient, and a group's scale gradient is
//! `sum grad * (code - 1.5)`, exact since the value is linear in the scale.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use twain_quant::blocks::QK;
use twain_quant::{grid, QuantFormat};

/// The largest sub-scale a Q2 row stores.
const K_MAX: f32 = 15.0;

/// The scale a Q2 group uses for the continuous scale `s` under row scale
/// `d`: `d * k`, `k = clamp(round(s / d), 0, 15)` (a zero row scale gives 0).
#[inline]
pub fn stored_scale(d: f32, s: f32) -> f32 {
    if d > 0.0 && s.is_finite() {
        d * (s / d).round().clamp(0.0, K_MAX)
    } else {
        0.0
    }
}

/// Sub-scale `k` of [`stored_scale`].
#[inline]
pub fn stored_k(d: f32, s: f32) -> u8 {
    if d > 0.0 && s.is_finite() {
        (s / d).round().clamp(0.0, K_MAX) as u8
    } else {
        0
    }
}

/// The fake-quantization op of one Q2 matrix (rows x cols): arguments are
/// the latent weights (rows x cols) and the continuous group scales
/// (rows x cols/32); the row scales are part of the op.
#[derive(Debug, Clone)]
pub struct FakeQ2 {
    /// Row scale `d` of every row.
    pub row_scale: Arc<Vec<f32>>,
    /// The frozen codes (rows x cols, each 0..=3), if the codes are frozen:
    /// the forward uses them instead of rounding the latent weights (whose
    /// values are then ignored, only their shape counts) and the backward
    /// gives no weight gradient.
    pub codes: Option<Arc<Vec<u8>>>,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("fake-q2: {what} is not contiguous")))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

impl FakeQ2 {
    fn dims(&self, w: &Layout, s: &Layout) -> Result<(usize, usize)> {
        let (rows, cols) = w.shape().dims2()?;
        let (sr, nb) = s.shape().dims2()?;
        let codes_ok = self.codes.as_ref().is_none_or(|c| c.len() == rows * cols);
        if sr != rows
            || !cols.is_multiple_of(QK)
            || nb != cols / QK
            || self.row_scale.len() != rows
            || !codes_ok
        {
            return Err(candle_core::Error::Msg(format!(
                "fake-q2: weights {rows}x{cols}, scales {sr}x{nb}, {} row scales, {:?} codes",
                self.row_scale.len(),
                self.codes.as_ref().map(|c| c.len())
            )));
        }
        Ok((rows, cols))
    }
}

impl FakeQ2 {
    fn backward(
        &self,
        wv: &[f32],
        sv: &[f32],
        gv: &[f32],
        cols: usize,
        dw: &mut [f32],
        ds: &mut [f32],
    ) -> Result<()> {
        let nb = cols / QK;
        if wv.len() != dw.len() || gv.len() != dw.len() || sv.len() != ds.len() {
            return Err(candle_core::Error::Msg("fake-q2: gradient shapes".into()));
        }
        dw.par_chunks_mut(cols)
            .zip(ds.par_chunks_mut(nb))
            .enumerate()
            .for_each(|(r, (dwr, dsr))| {
                let d = self.row_scale[r];
                for b in 0..nb {
                    let sc = stored_scale(d, sv[r * nb + b]);
                    if sc == 0.0 {
                        continue;
                    }
                    let mut acc = 0.0f32;
                    for c in b * QK..(b + 1) * QK {
                        let x = wv[r * cols + c];
                        let g = gv[r * cols + c];
                        let u = x / sc;
                        let level = grid::code(QuantFormat::Q2, sc, x) as f32 - 1.5;
                        if u.abs() <= 2.0 {
                            // Inside the grid's range: value ~ w, and
                            // d value / d scale = level - w / scale (LSQ).
                            dwr[c] = g;
                            acc += g * (level - u);
                        } else {
                            // Clipped: value = +-1.5 scale.
                            acc += g * level;
                        }
                    }
                    dsr[b] = acc;
                }
            });
        Ok(())
    }
}

impl FakeQ2 {
    /// The scale gradient of the frozen codes `codes` for the gradient `gv`
    /// of the values: `sum grad * (code - 1.5)` per group (the value is
    /// `(code - 1.5) * scale`), 0 for a group whose stored scale is 0.
    fn backward_frozen(
        &self,
        codes: &[u8],
        sv: &[f32],
        gv: &[f32],
        cols: usize,
        ds: &mut [f32],
    ) -> Result<()> {
        let nb = cols / QK;
        if gv.len() != codes.len() || sv.len() != ds.len() || ds.len() * QK != codes.len() {
            return Err(candle_core::Error::Msg("fake-q2: gradient shapes".into()));
        }
        ds.par_chunks_mut(nb).enumerate().for_each(|(r, dsr)| {
            let d = self.row_scale[r];
            for (b, out) in dsr.iter_mut().enumerate() {
                if stored_scale(d, sv[r * nb + b]) == 0.0 {
                    continue;
                }
                let at = r * cols + b * QK;
                *out = gv[at..at + QK]
                    .iter()
                    .zip(&codes[at..at + QK])
                    .map(|(&g, &c)| g * (c as f32 - 1.5))
                    .sum();
            }
        });
        Ok(())
    }

    /// The fake-quantized values of latent weights `w` (or of the frozen
    /// codes) under scales `s`.
    fn quantized(&self, w: &[f32], s: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let nb = cols / QK;
        let mut out = vec![0.0f32; rows * cols];
        out.par_chunks_mut(cols).enumerate().for_each(|(r, o)| {
            let d = self.row_scale[r];
            for b in 0..nb {
                let sc = stored_scale(d, s[r * nb + b]);
                for c in b * QK..(b + 1) * QK {
                    let code = match &self.codes {
                        Some(codes) => codes[r * cols + c],
                        None => grid::code(QuantFormat::Q2, sc, w[r * cols + c]),
                    };
                    o[c] = grid::value(QuantFormat::Q2, sc, code);
                }
            }
        });
        out
    }
}

impl CustomOp2 for FakeQ2 {
    fn name(&self) -> &'static str {
        "twain-fake-q2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = self.dims(l1, l2)?;
        let w = contiguous(s1, l1, "weights")?;
        let s = contiguous(s2, l2, "scales")?;
        let out = self.quantized(w, s, rows, cols);
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }

    fn bwd(
        &self,
        w: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, cols) = w.dims2()?;
        let nb = cols / QK;
        let grad = grad.contiguous()?;
        if let Some(codes) = &self.codes {
            // Frozen codes: no weight gradient, the scales' only.
            if !s.track_op() {
                return Ok((None, None));
            }
            let mut ds = vec![0.0f32; rows * nb];
            with_f32(s, |sv| {
                with_f32(&grad, |gv| {
                    self.backward_frozen(codes, sv, gv, cols, &mut ds)
                })
            })???;
            let ds = Tensor::from_vec(ds, (rows, nb), s.device())?;
            return Ok((None, Some(ds)));
        }
        let mut dw = vec![0.0f32; rows * cols];
        let mut ds = vec![0.0f32; rows * nb];
        with_f32(w, |wv| {
            with_f32(s, |sv| {
                with_f32(&grad, |gv| {
                    self.backward(wv, sv, gv, cols, &mut dw, &mut ds)
                })
            })
        })????;
        let dw = Tensor::from_vec(dw, (rows, cols), w.device())?;
        let ds = Tensor::from_vec(ds, (rows, nb), s.device())?;
        Ok((Some(dw), Some(ds)))
    }
}

/// Q2 fake quantization of `w` (rows x cols) under group scales `s`
/// (rows x cols/32) and row scales `d`.
pub fn fake_q2(w: &Tensor, s: &Tensor, d: Arc<Vec<f32>>) -> Result<Tensor> {
    w.apply_op2(
        s,
        FakeQ2 {
            row_scale: d,
            codes: None,
        },
    )
}

/// Q2 values of the frozen `codes` (rows x cols, each 0..=3, as stored)
/// under group scales `s` (rows x cols/32) and row scales `d`; `w` gives the
/// shape only. The gradient reaches `s` alone (see the module doc).
pub fn fake_q2_frozen(
    w: &Tensor,
    s: &Tensor,
    d: Arc<Vec<f32>>,
    codes: Arc<Vec<u8>>,
) -> Result<Tensor> {
    w.apply_op2(
        s,
        FakeQ2 {
            row_scale: d,
            codes: Some(codes),
        },
    )
}

/// The Q2 row of the frozen `codes` under the scales `s` the fake
/// quantization uses: `template`'s codes replaced by `codes` (normally the
/// same), its sub-scales by the stored ones of `s`, its row scale kept.
pub fn encode_q2_row_frozen(
    template: &[u8],
    codes: &[u8],
    s: &[f32],
) -> std::result::Result<Vec<u8>, twain_quant::QuantError> {
    let cols = codes.len();
    let mut row = template.to_vec();
    let d = grid::q2_row_scale(&row).unwrap_or(0.0);
    for (b, &sb) in s.iter().enumerate().take(cols / QK) {
        grid::set_group_scale(QuantFormat::Q2, &mut row, cols, b, stored_scale(d, sb))?;
    }
    grid::set_codes(QuantFormat::Q2, &mut row, codes)?;
    Ok(row)
}

/// Encode latent weights as a Q2 row of twain's format, with the scales the
/// fake quantization uses: the bytes dequantize to exactly what [`fake_q2`]
/// computes. `template` is a Q2 row of the same width (its row scale is kept).
pub fn encode_q2_row(
    template: &[u8],
    w: &[f32],
    s: &[f32],
) -> std::result::Result<Vec<u8>, twain_quant::QuantError> {
    let cols = w.len();
    let mut row = template.to_vec();
    let d = grid::q2_row_scale(&row).unwrap_or(0.0);
    let mut codes = vec![0u8; cols];
    for (b, &sb) in s.iter().enumerate().take(cols / QK) {
        let sc = stored_scale(d, sb);
        // set_group_scale stores round(sc / d) = k exactly.
        grid::set_group_scale(QuantFormat::Q2, &mut row, cols, b, sc)?;
        for c in b * QK..(b + 1) * QK {
            codes[c] = grid::code(QuantFormat::Q2, sc, w[c]);
        }
    }
    grid::set_codes(QuantFormat::Q2, &mut row, &codes)?;
    Ok(row)
}

/// A contiguous f32 view of a CPU tensor's data, without copying.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(contiguous(cpu, layout, "tensor")?)),
        _ => Err(candle_core::Error::Msg(
            "twain-train runs on the CPU".into(),
        )),
    }
}

/// `y = x W^T` for a matrix `W` that is not trained: its backward gives the
/// input's gradient only (candle's matmul would also compute `W`'s).
#[derive(Debug, Clone)]
pub struct ConstLinear {
    /// The rows x cols matrix, contiguous.
    pub w: Tensor,
}

impl candle_core::CustomOp1 for ConstLinear {
    fn name(&self) -> &'static str {
        "twain-const-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, "input")?;
        let dims = l.shape().dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        let (rows, wc) = self.w.dims2()?;
        if cols != wc {
            return Err(candle_core::Error::Msg(format!(
                "const-linear: input width {cols}, matrix {rows}x{wc}"
            )));
        }
        let n = x.len() / cols.max(1);
        let mut y = vec![0.0f32; n * rows];
        with_f32(&self.w, |w| gemm_nt(x, w, cols, &mut y))??;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = rows;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let rows = self.w.dims2()?.0;
        let n = grad.elem_count() / rows;
        let g = grad.contiguous()?.reshape((n, rows))?;
        Ok(Some(g.matmul(&self.w)?.reshape(arg.shape())?))
    }
}

/// Mean KL divergence from fixed target distributions (rows x vocab, each
/// row summing to 1) to `softmax(logits)`, up to the targets' entropy: the
/// forward gives `-(1/rows) sum p log softmax(z)`, the backward
/// `(softmax(z) - p) / rows`, without the vocabulary-sized intermediates of
/// composing it from elementwise ops.
#[derive(Debug, Clone)]
pub struct SoftCrossEntropy {
    /// Target probabilities, rows x vocab.
    pub p: Arc<Vec<f32>>,
}

fn log_softmax_row(z: &[f32], out: &mut [f32]) {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
    let lse = m as f64 + s.ln();
    for (o, &v) in out.iter_mut().zip(z) {
        *o = (v as f64 - lse) as f32;
    }
}

impl candle_core::CustomOp1 for SoftCrossEntropy {
    fn name(&self) -> &'static str {
        "twain-soft-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = contiguous(s, l, "logits")?;
        let (rows, vocab) = l.shape().dims2()?;
        if self.p.len() != rows * vocab {
            return Err(candle_core::Error::Msg(format!(
                "soft cross-entropy: {rows}x{vocab} logits, {} target values",
                self.p.len()
            )));
        }
        let total: f64 = z
            .par_chunks(vocab)
            .zip(self.p.par_chunks(vocab))
            .map(|(zr, pr)| {
                let mut lq = vec![0.0f32; vocab];
                log_softmax_row(zr, &mut lq);
                -pr.iter()
                    .zip(&lq)
                    .map(|(&p, &q)| p as f64 * q as f64)
                    .sum::<f64>()
            })
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / rows as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, vocab) = arg.dims2()?;
        let g = grad.to_scalar::<f32>()? / rows as f32;
        let mut out = vec![0.0f32; rows * vocab];
        with_f32(arg, |z| {
            out.par_chunks_mut(vocab)
                .zip(z.par_chunks(vocab))
                .zip(self.p.par_chunks(vocab))
                .for_each(|((o, zr), pr)| {
                    log_softmax_row(zr, o);
                    for (o, &p) in o.iter_mut().zip(pr) {
                        *o = g * (o.exp() - p);
                    }
                });
        })?;
        Ok(Some(Tensor::from_vec(out, (rows, vocab), arg.device())?))
    }
}

/// The rotation `x -> (x * D) H` of every row (`H` the normalized Hadamard
/// matrix of the row width, `D` a sign vector) with twain's fast transform:
/// O(n log n) per row instead of a dense n x n matmul, forward and backward
/// (`dx = (dy H^T) * D`). With `inverse`, `x -> (x H^T) * D`.
#[derive(Debug, Clone)]
pub struct Rotate {
    /// The signs `D`.
    pub signs: Arc<Vec<f32>>,
    /// Apply the inverse rotation.
    pub inverse: bool,
}

impl Rotate {
    fn apply(&self, data: &mut [f32], inverse: bool) -> Result<()> {
        let n = self.signs.len();
        data.par_chunks_mut(n)
            .try_for_each(|row| -> std::result::Result<(), twain_quant::QuantError> {
                if inverse {
                    twain_quant::hadamard::transform_transposed(row)?;
                    row.iter_mut()
                        .zip(self.signs.iter())
                        .for_each(|(a, s)| *a *= s);
                } else {
                    row.iter_mut()
                        .zip(self.signs.iter())
                        .for_each(|(a, s)| *a *= s);
                    twain_quant::hadamard::transform(row)?;
                }
                Ok(())
            })
            .map_err(|e| candle_core::Error::Msg(format!("rotation: {e}")))
    }
}

impl candle_core::CustomOp1 for Rotate {
    fn name(&self) -> &'static str {
        "twain-rotate"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, "input")?;
        if l.shape().dims().last() != Some(&self.signs.len()) {
            return Err(candle_core::Error::Msg(format!(
                "rotation of width {} on rows of {:?}",
                self.signs.len(),
                l.shape()
            )));
        }
        let mut y = x.to_vec();
        self.apply(&mut y, self.inverse)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // y = (x D) H  =>  dx = (dy H^T) D: the inverse rotation of dy; and
        // the inverse's gradient is the forward rotation.
        let g = grad.contiguous()?;
        let mut dx = with_f32(&g, |v| v.to_vec())?;
        self.apply(&mut dx, !self.inverse)?;
        Ok(Some(Tensor::from_vec(dx, grad.shape(), grad.device())?))
    }
}

/// `out = a b^T` for row-major `a` (n x k) and `b` (m x k), with twain's f32
/// kernels (the prefill path: register-tiled, on all threads).
pub(crate) fn gemm_nt(a: &[f32], b: &[f32], k: usize, out: &mut [f32]) -> Result<()> {
    let m = b.len() / k.max(1);
    let w = twain_quant::QMatrixRef::new(QuantFormat::F32, m, k, bytemuck::cast_slice(b))
        .map_err(|e| candle_core::Error::Msg(format!("gemm: {e}")))?;
    twain_quant::matmul(&w, a, out, twain_quant::Parallelism::Rayon)
        .map_err(|e| candle_core::Error::Msg(format!("gemm: {e}")))
}

/// The transpose of a row-major rows x cols matrix.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; a.len()];
    const B: usize = 32;
    t.par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(cb, dst)| {
            let c0 = cb * B;
            let c1 = (c0 + B).min(cols);
            for r in 0..rows {
                for c in c0..c1 {
                    dst[(c - c0) * rows + r] = a[r * cols + c];
                }
            }
        });
    t
}

/// `y = x Q^T` where `Q` is the Q2 fake quantization of latent weights `w`
/// (rows x cols) under group scales `s`, in one op: the forward and both
/// backward products run on twain's f32 kernels, and the weight gradient
/// goes straight to the latent weights and scales (straight-through / LSQ,
/// as [`FakeQ2`]) without a rows x cols intermediate node.
#[derive(Debug, Clone)]
pub struct QLinear {
    /// The fake quantization (row scales).
    pub q: FakeQ2,
}

impl candle_core::CustomOp3 for QLinear {
    fn name(&self) -> &'static str {
        "twain-q2-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = self.q.dims(l2, l3)?;
        let x = contiguous(s1, l1, "input")?;
        let dims = l1.shape().dims().to_vec();
        if dims.last() != Some(&cols) {
            return Err(candle_core::Error::Msg(format!(
                "q2-linear: input {dims:?}, matrix {rows}x{cols}"
            )));
        }
        let wq = self.q.quantized(
            contiguous(s2, l2, "weights")?,
            contiguous(s3, l3, "scales")?,
            rows,
            cols,
        );
        let n = x.len() / cols;
        let mut y = vec![0.0f32; n * rows];
        gemm_nt(x, &wq, cols, &mut y)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = rows;
        }
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, cols) = w.dims2()?;
        let nb = cols / QK;
        let grad = grad.contiguous()?;
        let x = x.contiguous()?;
        let n = x.elem_count() / cols;
        let mut dx = vec![0.0f32; n * cols];
        // Frozen codes under fixed scales: nothing of the matrix trains.
        let need_dq = self.q.codes.is_none() || s.track_op();
        let mut dq = vec![0.0f32; if need_dq { rows * cols } else { 0 }];
        with_f32(w, |wv| {
            with_f32(s, |sv| {
                with_f32(&grad, |g| {
                    with_f32(&x, |xv| -> Result<()> {
                        let wq = self.q.quantized(wv, sv, rows, cols);
                        // dx = dy Q: rows of Q^T against dy.
                        gemm_nt(g, &transpose(&wq, rows, cols), rows, &mut dx)?;
                        if !need_dq {
                            return Ok(());
                        }
                        // dQ = dy^T x: rows of x^T against dy^T.
                        gemm_nt(&transpose(g, n, rows), &transpose(xv, n, cols), n, &mut dq)
                    })
                })
            })
        })?????;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let mut ds = vec![0.0f32; rows * nb];
        if let Some(codes) = &self.q.codes {
            // Frozen codes: no weight gradient, the scales' only.
            if !need_dq {
                return Ok((Some(dx), None, None));
            }
            with_f32(s, |sv| {
                self.q.backward_frozen(codes, sv, &dq, cols, &mut ds)
            })??;
            return Ok((
                Some(dx),
                None,
                Some(Tensor::from_vec(ds, (rows, nb), s.device())?),
            ));
        }
        let mut dw = vec![0.0f32; rows * cols];
        with_f32(w, |wv| {
            with_f32(s, |sv| self.q.backward(wv, sv, &dq, cols, &mut dw, &mut ds))
        })???;
        Ok((
            Some(dx),
            Some(Tensor::from_vec(dw, (rows, cols), w.device())?),
            Some(Tensor::from_vec(ds, (rows, nb), s.device())?),
        ))
    }
}

/// `x Q^T` for the Q2 fake quantization `Q` of `w` under `s` and `d`.
pub fn q2_linear(x: &Tensor, w: &Tensor, s: &Tensor, d: Arc<Vec<f32>>) -> Result<Tensor> {
    x.apply_op3(
        w,
        s,
        QLinear {
            q: FakeQ2 {
                row_scale: d,
                codes: None,
            },
        },
    )
}

/// `x Q^T` for the Q2 values `Q` of the frozen `codes` under `s` and `d`
/// (see [`fake_q2_frozen`]; `w` gives the shape only).
pub fn q2_linear_frozen(
    x: &Tensor,
    w: &Tensor,
    s: &Tensor,
    d: Arc<Vec<f32>>,
    codes: Arc<Vec<u8>>,
) -> Result<Tensor> {
    x.apply_op3(
        w,
        s,
        QLinear {
            q: FakeQ2 {
                row_scale: d,
                codes: Some(codes),
            },
        },
    )
}
