//! Quantizers: f32 rows -> blocks, with an (importance-weighted) clipping search.
//!
//! For every group of 32 weights the scale is `f * max|w| / q_max`; the
//! clipping factor `f` is searched on a grid and the value with the least
//! weighted squared error `sum imp[i] * (w[i] - q[i])^2` wins. This is the
//! post-training counterpart of the reference system's learnable clipping.
//! Q2 then quantizes each group's scale to a 4-bit multiple of the row scale
//! `d = max_g s_g / 15`, re-searching the sub-scale `k` around `s_g / d` (and `k = 0`)
//! with the codes, so the stored scale is the one the error was minimised for.

use crate::blocks::{
    f16_to_f32, f32_to_f16, scales_bytes, Q2Block, Q4Block, Q8Block, Q2_ROW_HEADER, QK,
};
use crate::{QMatrix, QuantError, QuantFormat, QuantizeOptions};
use rayon::prelude::*;

/// Clipping factors searched for Q2 (`f` in 0.30..=1.00 step 0.02).
const Q2_CLIP_STEPS: usize = 36;
/// Clipping factors searched for Q4 (`f` in 0.60..=1.00 step 0.02).
const Q4_CLIP_STEPS: usize = 21;
/// Clipping factors searched for Q8 (`f` in 0.90..=1.00 step 0.01).
const Q8_CLIP_STEPS: usize = 11;

fn grid(lo: f32, steps: usize, i: usize) -> f32 {
    if steps <= 1 {
        1.0
    } else {
        1.0 - (1.0 - lo) * i as f32 / (steps - 1) as f32
    }
}

/// Quantize a rows x cols f32 matrix. NaN/inf input is an Err.
pub fn quantize(
    format: QuantFormat,
    rows: usize,
    cols: usize,
    w: &[f32],
    opts: &QuantizeOptions,
) -> Result<QMatrix, QuantError> {
    let row_bytes = format.row_bytes(cols)?;
    let total = format.matrix_bytes(rows, cols)?;
    if rows == 0 {
        return Err(QuantError::Shape(format!("quantize {format}: 0 rows")));
    }
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| QuantError::Overflow("size overflow".into()))?;
    if w.len() != n {
        return Err(QuantError::Shape(format!(
            "quantize {format}: {rows}x{cols} needs {n} values, got {}",
            w.len()
        )));
    }
    let imp = match &opts.importance {
        None => None,
        Some(v) => {
            if v.len() != cols {
                return Err(QuantError::Shape(format!(
                    "quantize {format}: importance has {} entries, matrix has {cols} columns",
                    v.len()
                )));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite() || *x < 0.0) {
                return Err(QuantError::Value(format!(
                    "quantize {format}: importance[{i}] = {} (must be finite and >= 0)",
                    v[i]
                )));
            }
            Some(v.as_slice())
        }
    };
    let search = !opts.no_clip_search;
    let mut m = QMatrix::zeroed(format, rows, cols, total);
    let out = m.bytes_mut();
    out.par_chunks_mut(row_bytes)
        .zip(w.par_chunks(cols))
        .enumerate()
        .with_min_len(16)
        .try_for_each(|(r, (dst, src))| {
            if let Some(c) = src.iter().position(|x| !x.is_finite()) {
                return Err(QuantError::Value(format!(
                    "quantize {format}: w[{r}][{c}] = {} is not finite",
                    src[c]
                )));
            }
            quantize_row(format, src, imp, search, dst)
                .map_err(|e| e.at(format!("quantize {format}: row {r}")))
        })?;
    Ok(m)
}

/// Quantize one finite row into its bytes (`dst.len() == format.row_bytes(src.len())`).
pub fn quantize_row(
    format: QuantFormat,
    src: &[f32],
    imp: Option<&[f32]>,
    search: bool,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    match format {
        QuantFormat::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        QuantFormat::F16 => {
            for (i, (d, &x)) in dst.chunks_exact_mut(2).zip(src).enumerate() {
                let h = half::f16::from_f32(x);
                if !h.is_finite() {
                    return Err(QuantError::Value(format!(
                        "column {i}: {x} is out of f16 range"
                    )));
                }
                d.copy_from_slice(&h.to_bits().to_le_bytes());
            }
        }
        QuantFormat::Q8 => {
            let (sc, body) = dst.split_at_mut(scales_bytes(src.len() / QK));
            let blocks: &mut [Q8Block] = bytemuck::cast_slice_mut(body);
            for (b, (blk, x)) in blocks.iter_mut().zip(src.chunks_exact(QK)).enumerate() {
                let im = imp.map(|v| &v[b * QK..(b + 1) * QK]);
                let (d, q) =
                    quantize_block_q8(x, im, search).map_err(|e| e.at(format!("block {b}")))?;
                sc[2 * b..2 * b + 2].copy_from_slice(&d.to_le_bytes());
                *blk = q;
            }
        }
        QuantFormat::Q4 => {
            let (sc, body) = dst.split_at_mut(scales_bytes(src.len() / QK));
            let blocks: &mut [Q4Block] = bytemuck::cast_slice_mut(body);
            for (b, (blk, x)) in blocks.iter_mut().zip(src.chunks_exact(QK)).enumerate() {
                let im = imp.map(|v| &v[b * QK..(b + 1) * QK]);
                let (d, q) =
                    quantize_block_q4(x, im, search).map_err(|e| e.at(format!("block {b}")))?;
                sc[2 * b..2 * b + 2].copy_from_slice(&d.to_le_bytes());
                *blk = q;
            }
        }
        QuantFormat::Q2 => quantize_row_q2(src, imp, search, dst),
    }
    Ok(())
}

fn max_abs(x: &[f32]) -> f32 {
    crate::kernels::scalar::max_abs(x)
}

/// `round(v)` (half away from zero) clamped to `lo..=hi`, for `lo <= 0 <= hi`
/// and finite `v`: clamp first, then truncate `v +- 0.5`, which compiles to
/// plain SIMD instructions (no libm call on baseline x86-64).
#[inline(always)]
fn round_clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let v = v.clamp(lo, hi);
    ((v + 0.5f32.copysign(v)) as i32) as f32
}

/// Weighted squared error of quantizing `x / amax` with codes `round(x / s) + off`
/// (clamped to `0..=cmax`) and values `(c - off) * s`, all in units of `amax`.
#[inline]
fn err_uniform(xn: &[f32; QK], wt: &[f32; QK], s: f32, off: f32, cmax: f32) -> f32 {
    let inv = 1.0 / s;
    let mut e = 0.0;
    for i in 0..QK {
        let c = round_clamp(xn[i] * inv + off, 0.0, cmax);
        let d = xn[i] - (c - off) * s;
        e += wt[i] * d * d;
    }
    e
}

fn weights(imp: Option<&[f32]>) -> [f32; QK] {
    let mut wt = [1.0f32; QK];
    if let Some(im) = imp {
        let sum: f32 = im.iter().sum();
        if sum > 0.0 {
            // A floor keeps columns with zero importance from being ignored entirely.
            let floor = 1e-3 * sum / QK as f32;
            for (w, &v) in wt.iter_mut().zip(im) {
                *w = v + floor;
            }
        }
    }
    wt
}

fn normalized(x: &[f32], amax: f32) -> [f32; QK] {
    let mut xn = [0.0f32; QK];
    for (o, &v) in xn.iter_mut().zip(x) {
        *o = v / amax;
    }
    xn
}

/// Q8 block: `d = f * max|w| / 127` (f16), `q = round(w / d)`.
pub(crate) fn quantize_block_q8(
    x: &[f32],
    imp: Option<&[f32]>,
    search: bool,
) -> Result<(u16, Q8Block), QuantError> {
    let amax = max_abs(x);
    let mut blk = Q8Block { qs: [0; 32] };
    if amax == 0.0 {
        return Ok((0, blk));
    }
    if amax / 127.0 > 65504.0 {
        return Err(QuantError::Value(format!(
            "max |w| = {amax} is out of the f16 scale range"
        )));
    }
    let xn = normalized(x, amax);
    let wt = weights(imp);
    let steps = if search { Q8_CLIP_STEPS } else { 1 };
    let (mut best, mut best_d) = (f32::INFINITY, 0u16);
    for i in 0..steps {
        let d = f32_to_f16(grid(0.9, steps, i) * amax / 127.0);
        let df = f16_to_f32(d);
        if df == 0.0 {
            continue;
        }
        let e = err_q8(&xn, &wt, df / amax);
        if e < best {
            best = e;
            best_d = d;
        }
    }
    let df = f16_to_f32(best_d);
    if df == 0.0 {
        return Ok((0, blk));
    }
    let inv = 1.0 / df;
    for (q, &v) in blk.qs.iter_mut().zip(x) {
        *q = round_clamp(v * inv, -127.0, 127.0) as i8;
    }
    Ok((best_d, blk))
}

#[inline]
fn err_q8(xn: &[f32; QK], wt: &[f32; QK], s: f32) -> f32 {
    let inv = 1.0 / s;
    let mut e = 0.0;
    for i in 0..QK {
        let q = round_clamp(xn[i] * inv, -127.0, 127.0);
        let d = xn[i] - q * s;
        e += wt[i] * d * d;
    }
    e
}

/// Q4 block (ggml Q4_0 style): `d = f * w_max / -8` with `w_max` the signed
/// value of largest magnitude, `c = clamp(round(w / d) + 8, 0, 15)`.
pub(crate) fn quantize_block_q4(
    x: &[f32],
    imp: Option<&[f32]>,
    search: bool,
) -> Result<(u16, Q4Block), QuantError> {
    let mut mx = 0.0f32;
    for &v in x {
        if v.abs() > mx.abs() {
            mx = v;
        }
    }
    let amax = mx.abs();
    // Code 8 is the value 0: the block of exact zeros.
    let zero = Q4Block { qs: [0x88; 16] };
    if amax == 0.0 {
        return Ok((0, zero));
    }
    if amax / 8.0 > 65504.0 {
        return Err(QuantError::Value(format!(
            "max |w| = {amax} is out of the f16 scale range"
        )));
    }
    let xn = normalized(x, amax);
    let wt = weights(imp);
    let steps = if search { Q4_CLIP_STEPS } else { 1 };
    let (mut best, mut best_d) = (f32::INFINITY, 0u16);
    for i in 0..steps {
        let d = f32_to_f16(grid(0.6, steps, i) * mx / -8.0);
        let df = f16_to_f32(d);
        if df == 0.0 {
            continue;
        }
        let e = err_uniform(&xn, &wt, df / amax, 8.0, 15.0);
        if e < best {
            best = e;
            best_d = d;
        }
    }
    let df = f16_to_f32(best_d);
    if df == 0.0 {
        // Everything underflows the f16 scale: store exact zeros.
        return Ok((0, zero));
    }
    let mut blk = zero;
    let inv = 1.0 / df;
    let code = |v: f32| round_clamp(v * inv + 8.0, 0.0, 15.0) as u8;
    for j in 0..16 {
        blk.qs[j] = code(x[j]) | (code(x[j + 16]) << 4);
    }
    Ok((best_d, blk))
}

/// Codes of a Q2 group for scale `s` (in the same units as `x`): nearest of
/// `(c - 1.5) * s`, i.e. `c = clamp(floor(x / s + 2), 0, 3)`.
#[inline]
fn q2_code(x: f32, inv: f32) -> f32 {
    // floor == truncation after clamping to 0..=3.
    ((x * inv + 2.0).clamp(0.0, 3.0) as i32) as f32
}

#[inline]
fn err_q2(xn: &[f32; QK], wt: &[f32; QK], s: f32) -> f32 {
    let inv = 1.0 / s;
    let mut e = 0.0;
    for i in 0..QK {
        let c = q2_code(xn[i], inv);
        let d = xn[i] - (c - 1.5) * s;
        e += wt[i] * d * d;
    }
    e
}

/// Best continuous Q2 scale of a group in units of its max (`s / amax`), by the
/// clipping search plus one least-squares refinement of the scale for the
/// chosen codes.
fn q2_group_scale(xn: &[f32; QK], wt: &[f32; QK], search: bool) -> f32 {
    let steps = if search { Q2_CLIP_STEPS } else { 1 };
    let (mut best, mut best_s) = (f32::INFINITY, 1.0 / 1.5);
    for i in 0..steps {
        let s = grid(0.3, steps, i) / 1.5;
        let e = err_q2(xn, wt, s);
        if e < best {
            best = e;
            best_s = s;
        }
    }
    if search {
        // Least-squares scale for the chosen codes: s = sum w x v / sum w v^2.
        let inv = 1.0 / best_s;
        let (mut num, mut den) = (0.0f32, 0.0f32);
        for i in 0..QK {
            let v = q2_code(xn[i], inv) - 1.5;
            num += wt[i] * xn[i] * v;
            den += wt[i] * v * v;
        }
        if den > 0.0 {
            let s = num / den;
            if s > 0.0 && err_q2(xn, wt, s) < best {
                best_s = s;
            }
        }
    }
    best_s
}

/// One Q2 row: `[d: f32][nb x Q2Block][ceil(nb/2) sub-scale bytes]`.
fn quantize_row_q2(src: &[f32], imp: Option<&[f32]>, search: bool, dst: &mut [u8]) {
    let nb = src.len() / QK;
    let mut amaxs = vec![0.0f32; nb];
    let mut scales = vec![0.0f32; nb];
    let mut xns = vec![[0.0f32; QK]; nb];
    let mut wts = vec![[0.0f32; QK]; nb];
    let mut smax = 0.0f32;
    for b in 0..nb {
        let x = &src[b * QK..(b + 1) * QK];
        let amax = max_abs(x);
        amaxs[b] = amax;
        if amax == 0.0 {
            continue;
        }
        xns[b] = normalized(x, amax);
        wts[b] = weights(imp.map(|v| &v[b * QK..(b + 1) * QK]));
        let s = q2_group_scale(&xns[b], &wts[b], search) * amax;
        scales[b] = s;
        smax = smax.max(s);
    }
    dst.fill(0);
    let d = smax / 15.0;
    dst[..Q2_ROW_HEADER].copy_from_slice(&d.to_le_bytes());
    if d == 0.0 {
        // All-zero row (or a row so tiny that its scale underflows): zeros.
        dst[..Q2_ROW_HEADER].copy_from_slice(&0.0f32.to_le_bytes());
        return;
    }
    let (body, sc) = dst[Q2_ROW_HEADER..].split_at_mut(nb * 8);
    let blocks: &mut [Q2Block] = bytemuck::cast_slice_mut(body);
    for b in 0..nb {
        if amaxs[b] == 0.0 {
            continue; // k = 0: exact zeros
        }
        let k0 = (scales[b] / d).round() as i32;
        let (mut best, mut best_k) = (f32::INFINITY, 0i32);
        // k = 0 (the zero group) has error sum w x^2.
        let e0: f32 = (0..QK).map(|i| wts[b][i] * xns[b][i] * xns[b][i]).sum();
        if e0 < best {
            best = e0;
        }
        let (lo, hi) = if search { (k0 - 2, k0 + 2) } else { (k0, k0) };
        for k in lo.max(1)..=hi.min(15) {
            let s = (d * k as f32) / amaxs[b];
            let e = err_q2(&xns[b], &wts[b], s);
            if e < best {
                best = e;
                best_k = k;
            }
        }
        if best_k == 0 {
            continue;
        }
        sc[b / 2] |= (best_k as u8) << (4 * (b % 2));
        let inv = 1.0 / (d * best_k as f32);
        let x = &src[b * QK..(b + 1) * QK];
        let qs = &mut blocks[b].qs;
        for (i, &v) in x.iter().enumerate() {
            let c = q2_code(v, inv) as u8;
            qs[i % 8] |= c << (2 * (i / 8));
        }
    }
}
