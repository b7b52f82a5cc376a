//! Scalar reference kernels: the definition every SIMD kernel is tested against.
//!
//! Integer parts are exact; float accumulation runs block by block in order.

use crate::blocks::{
    f16_to_f32, scales_bytes, Q2Block, Q4Block, Q8ActBlock, Q8Block, Q2_ROW_HEADER, QK,
};

/// Byte offsets inside a Q2 row of `cols` weights: (codes start, sub-scales start, row bytes).
#[inline]
pub(crate) fn q2_row_layout(cols: usize) -> (usize, usize, usize) {
    let nb = cols / QK;
    let sc = Q2_ROW_HEADER + nb * 8;
    (Q2_ROW_HEADER, sc, sc + nb.div_ceil(2))
}

/// Row scale of a Q2 row.
#[inline]
pub(crate) fn q2_row_d(row: &[u8]) -> f32 {
    f32::from_le_bytes([row[0], row[1], row[2], row[3]])
}

/// Sub-scale `k` (0..=15) of block `b` from the row's sub-scale bytes.
#[inline]
pub(crate) fn q2_sub(sc: &[u8], b: usize) -> u8 {
    (sc[b / 2] >> (4 * (b % 2))) & 15
}

/// 2-bit code of element `i` of a Q2 block.
#[inline]
pub fn q2_code(blk: &Q2Block, i: usize) -> u8 {
    (blk.qs[i % 8] >> (2 * (i / 8))) & 3
}

/// Dequantize one Q2 row (`row.len() == QuantFormat::Q2.row_bytes(out.len())`).
pub fn dequantize_row_q2(row: &[u8], out: &mut [f32]) {
    let (q0, s0, _) = q2_row_layout(out.len());
    let d = q2_row_d(row);
    let blocks: &[Q2Block] = bytemuck::cast_slice(&row[q0..s0]);
    let sc = &row[s0..];
    for (b, (blk, o)) in blocks.iter().zip(out.chunks_exact_mut(QK)).enumerate() {
        let s = d * q2_sub(sc, b) as f32;
        for (i, v) in o.iter_mut().enumerate() {
            *v = (q2_code(blk, i) as f32 - 1.5) * s;
        }
    }
}

/// Split a Q4/Q8 row of `nb` blocks into its f16 scale bytes and its blocks.
#[inline]
pub(crate) fn split_row<B: bytemuck::Pod>(row: &[u8], nb: usize) -> (&[u8], &[B]) {
    let (sc, body) = row.split_at(scales_bytes(nb));
    (sc, bytemuck::cast_slice(body))
}

/// f16 scale `b` of a Q4/Q8 row's scale bytes.
#[inline]
pub(crate) fn scale_at(sc: &[u8], b: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([sc[2 * b], sc[2 * b + 1]]))
}

/// Dequantize one Q4 row (`row.len() == QuantFormat::Q4.row_bytes(out.len())`).
pub fn dequantize_row_q4(row: &[u8], out: &mut [f32]) {
    let (sc, blocks) = split_row::<Q4Block>(row, out.len() / QK);
    for (b, (blk, o)) in blocks.iter().zip(out.chunks_exact_mut(QK)).enumerate() {
        let d = scale_at(sc, b);
        for j in 0..16 {
            o[j] = ((blk.qs[j] & 15) as i32 - 8) as f32 * d;
            o[j + 16] = ((blk.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Dequantize one Q8 row.
pub fn dequantize_row_q8(row: &[u8], out: &mut [f32]) {
    let (sc, blocks) = split_row::<Q8Block>(row, out.len() / QK);
    for (b, (blk, o)) in blocks.iter().zip(out.chunks_exact_mut(QK)).enumerate() {
        let d = scale_at(sc, b);
        for (v, &q) in o.iter_mut().zip(&blk.qs) {
            *v = q as f32 * d;
        }
    }
}

/// Dequantize f16 values.
pub fn dequantize_row_f16(h: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(h) {
        *o = f16_to_f32(v);
    }
}

/// max |x| (0 for an empty slice); written so that it vectorizes.
#[inline]
pub(crate) fn max_abs(x: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &v in x {
        let a = v.abs();
        m = if a > m { a } else { m };
    }
    m
}

/// Round to nearest, ties to even, for |v| <= 2^22 (the SIMD `cvtps2dq`
/// rounding; the magic-number form needs no libm call).
#[inline(always)]
pub(crate) fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// The int8 scale of a block or row with max `amax`: `amax / 127`, or 0 when
/// that is not a normal float (`1 / d` would overflow; such values, below
/// 1.5e-36, are stored as zeros).
#[inline(always)]
pub(crate) fn act_scale(amax: f32) -> f32 {
    let d = amax / 127.0;
    if d >= f32::MIN_POSITIVE {
        d
    } else {
        0.0
    }
}

/// Quantize activations into int8 blocks: `d = max|x| / 127`, `q = round(x / d)`.
/// `x.len()` must be `32 * out.len()`; returns false if `x` holds NaN or inf.
pub fn quantize_act(x: &[f32], out: &mut [Q8ActBlock]) -> bool {
    if !x.iter().all(|v| v.is_finite()) {
        return false;
    }
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = max_abs(xs);
        let d = act_scale(amax);
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in blk.qs.iter_mut().zip(xs) {
            let r = round_even((v * id).clamp(-127.0, 127.0)) as i8;
            *q = r;
            sum += r as i32;
        }
        blk.d = d;
        blk.sum = sum;
    }
    true
}

/// One Q2 row against int8 activations.
#[inline]
pub fn q2_q8_row(row: &[u8], act: &[Q8ActBlock]) -> f32 {
    let nb = act.len();
    let (q0, s0, _) = q2_row_layout(nb * QK);
    let d = q2_row_d(row);
    let blocks: &[Q2Block] = bytemuck::cast_slice(&row[q0..s0]);
    let sc = &row[s0..];
    let mut acc = 0.0f32;
    for (b, (blk, a)) in blocks.iter().zip(act).enumerate() {
        let k = q2_sub(sc, b);
        if k == 0 {
            continue;
        }
        let mut isum = 0i32;
        for i in 0..QK {
            isum += q2_code(blk, i) as i32 * a.qs[i] as i32;
        }
        // sum (c - 1.5) q = (2 sum c q - 3 sum q) / 2
        acc += (k as f32 * a.d) * (2 * isum - 3 * a.sum) as f32;
    }
    0.5 * d * acc
}

/// Q2 rows (`rows.len() == out.len() * row_bytes(cols)`) against int8 activations.
pub fn q2_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    let rb = q2_row_layout(cols).2;
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
        *o = q2_q8_row(row, act);
    }
}

/// Q2 rows against f32 activations.
pub fn q2_f32(rows: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let (q0, s0, rb) = q2_row_layout(cols);
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(rb)) {
        let d = q2_row_d(row);
        let blocks: &[Q2Block] = bytemuck::cast_slice(&row[q0..s0]);
        let sc = &row[s0..];
        let mut acc = 0.0f32;
        for (b, (blk, xs)) in blocks.iter().zip(x.chunks_exact(QK)).enumerate() {
            let mut s = 0.0f32;
            for (i, &v) in xs.iter().enumerate() {
                s += (q2_code(blk, i) as f32 - 1.5) * v;
            }
            acc += q2_sub(sc, b) as f32 * s;
        }
        *o = d * acc;
    }
}

/// One Q4 row against int8 activations.
#[inline]
pub fn q4_q8_row(row: &[u8], act: &[Q8ActBlock]) -> f32 {
    let (sc, blocks) = split_row::<Q4Block>(row, act.len());
    let mut acc = 0.0f32;
    for (b, (w, a)) in blocks.iter().zip(act).enumerate() {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (w.qs[j] & 15) as i32 * a.qs[j] as i32;
            isum += (w.qs[j] >> 4) as i32 * a.qs[j + 16] as i32;
        }
        acc += (scale_at(sc, b) * a.d) * (isum - 8 * a.sum) as f32;
    }
    acc
}

/// Q4 rows (`rows.len() == out.len() * row_bytes(cols)`) against int8 activations.
pub fn q4_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols / QK * 18)) {
        *o = q4_q8_row(row, act);
    }
}

/// Q4 rows against f32 activations.
pub fn q4_f32(rows: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let nb = cols / QK;
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb * 18)) {
        let (sc, blocks) = split_row::<Q4Block>(row, nb);
        let mut acc = 0.0f32;
        for (b, (w, xs)) in blocks.iter().zip(x.chunks_exact(QK)).enumerate() {
            let mut s = 0.0f32;
            for j in 0..16 {
                s += ((w.qs[j] & 15) as i32 - 8) as f32 * xs[j];
                s += ((w.qs[j] >> 4) as i32 - 8) as f32 * xs[j + 16];
            }
            acc += scale_at(sc, b) * s;
        }
        *o = acc;
    }
}

/// One Q8 row against int8 activations.
#[inline]
pub fn q8_q8_row(row: &[u8], act: &[Q8ActBlock]) -> f32 {
    let (sc, blocks) = split_row::<Q8Block>(row, act.len());
    let mut acc = 0.0f32;
    for (b, (w, a)) in blocks.iter().zip(act).enumerate() {
        let mut isum = 0i32;
        for i in 0..QK {
            isum += w.qs[i] as i32 * a.qs[i] as i32;
        }
        acc += (scale_at(sc, b) * a.d) * isum as f32;
    }
    acc
}

/// Q8 rows against int8 activations.
pub fn q8_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols / QK * 34)) {
        *o = q8_q8_row(row, act);
    }
}

/// Q8 rows against f32 activations.
pub fn q8_f32(rows: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let nb = cols / QK;
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(nb * 34)) {
        let (sc, blocks) = split_row::<Q8Block>(row, nb);
        let mut acc = 0.0f32;
        for (b, (w, xs)) in blocks.iter().zip(x.chunks_exact(QK)).enumerate() {
            let mut s = 0.0f32;
            for (&q, &v) in w.qs.iter().zip(xs) {
                s += q as f32 * v;
            }
            acc += scale_at(sc, b) * s;
        }
        *o = acc;
    }
}

/// f32 rows against f32 activations.
pub fn f32_f32(rows: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols)) {
        *o = dot_f32(row, x);
    }
}

/// f16 rows against f32 activations.
pub fn f16_f32(rows: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols)) {
        *o = row.iter().zip(x).map(|(&h, &v)| f16_to_f32(h) * v).sum();
    }
}

/// `sum a[i] * b[i]`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y[i] += alpha * x[i]`.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// `sum q[i] * x[i]` (no scale).
pub fn dot_i8_f32(q: &[i8], x: &[f32]) -> f32 {
    q.iter().zip(x).map(|(&a, &b)| a as f32 * b).sum()
}

/// `y[i] += alpha * q[i]`.
pub fn axpy_i8(alpha: f32, q: &[i8], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(q) {
        *o += alpha * v as f32;
    }
}

/// Batched Q2 reference: every row of `w` times every column of `panel`.
///
/// # Safety
/// See [`super::GemmFn`].
pub(crate) unsafe fn q2_gemm(
    w: &[u8],
    cols: usize,
    panel: &super::ActPanel,
    out: &super::OutTile<'_>,
    r0: usize,
) {
    let rb = q2_row_layout(cols).2;
    for (r, row) in w.chunks_exact(rb).enumerate() {
        for j in 0..out.n() {
            // SAFETY: the caller owns rows r0.. of `out`.
            unsafe { out.put(j, r0 + r, q2_q8_row(row, panel.column(j))) };
        }
    }
}

/// Batched Q4 reference.
///
/// # Safety
/// See [`super::GemmFn`].
pub(crate) unsafe fn q4_gemm(
    w: &[u8],
    cols: usize,
    panel: &super::ActPanel,
    out: &super::OutTile<'_>,
    r0: usize,
) {
    for (r, row) in w.chunks_exact(cols / QK * 18).enumerate() {
        for j in 0..out.n() {
            // SAFETY: the caller owns rows r0.. of `out`.
            unsafe { out.put(j, r0 + r, q4_q8_row(row, panel.column(j))) };
        }
    }
}

/// Batched Q8 reference.
///
/// # Safety
/// See [`super::GemmFn`].
pub(crate) unsafe fn q8_gemm(
    w: &[u8],
    cols: usize,
    panel: &super::ActPanel,
    out: &super::OutTile<'_>,
    r0: usize,
) {
    for (r, row) in w.chunks_exact(cols / QK * 34).enumerate() {
        for j in 0..out.n() {
            // SAFETY: the caller owns rows r0.. of `out`.
            unsafe { out.put(j, r0 + r, q8_q8_row(row, panel.column(j))) };
        }
    }
}
