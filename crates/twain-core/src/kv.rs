//! The KV cache: one store per layer that owns K/V, rows of `head_dim`
//! values per (position, kv head), in int8 (default), f16 or f32.

use half::f16;
use twain_quant::{f32v, int8};

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// Symmetric int8 with one f32 scale per (position, head) row: 8.5 bits per value at head_dim 64.
    #[default]
    Int8,
    /// IEEE half.
    F16,
    /// f32.
    F32,
}

impl KvDtype {
    /// Bytes one row of `head_dim` values takes, scale included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvDtype::Int8 => head_dim + 4,
            KvDtype::F16 => 2 * head_dim,
            KvDtype::F32 => 4 * head_dim,
        }
    }

    /// Parse "int8" / "f16" / "f32".
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "int8" | "i8" | "q8" => Some(KvDtype::Int8),
            "f16" => Some(KvDtype::F16),
            "f32" => Some(KvDtype::F32),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Rows {
    Int8 { q: Vec<i8>, scale: Vec<f32> },
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Rows {
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::Int8 => Rows::Int8 {
                q: Vec::new(),
                scale: Vec::new(),
            },
            KvDtype::F16 => Rows::F16(Vec::new()),
            KvDtype::F32 => Rows::F32(Vec::new()),
        }
    }

    fn push(&mut self, row: &[f32]) -> Result<(), twain_quant::QuantError> {
        match self {
            Rows::Int8 { q, scale } => {
                let start = q.len();
                q.resize(start + row.len(), 0);
                match int8::quantize_row(row, &mut q[start..]) {
                    Ok(s) => scale.push(s),
                    Err(e) => {
                        // Leave no partial row behind.
                        q.truncate(start);
                        return Err(e);
                    }
                }
            }
            Rows::F16(v) => v.extend(row.iter().map(|&x| f16::from_f32(x))),
            Rows::F32(v) => v.extend_from_slice(row),
        }
        Ok(())
    }

    fn truncate(&mut self, rows: usize, dim: usize) {
        match self {
            Rows::Int8 { q, scale } => {
                q.truncate(rows * dim);
                scale.truncate(rows);
            }
            Rows::F16(v) => v.truncate(rows * dim),
            Rows::F32(v) => v.truncate(rows * dim),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Rows::Int8 { q, scale } => q.len() + 4 * scale.len(),
            Rows::F16(v) => 2 * v.len(),
            Rows::F32(v) => 4 * v.len(),
        }
    }

    /// dot(row r, x)
    #[inline]
    fn dot(&self, r: usize, dim: usize, x: &[f32]) -> f32 {
        match self {
            Rows::Int8 { q, scale } => int8::dot_f32(&q[r * dim..(r + 1) * dim], scale[r], x),
            Rows::F16(v) => v[r * dim..(r + 1) * dim]
                .iter()
                .zip(x)
                .map(|(a, b)| a.to_f32() * b)
                .sum(),
            Rows::F32(v) => f32v::dot(&v[r * dim..(r + 1) * dim], x),
        }
    }

    /// y += alpha * row r
    #[inline]
    fn axpy(&self, r: usize, dim: usize, alpha: f32, y: &mut [f32]) {
        match self {
            Rows::Int8 { q, scale } => int8::axpy(alpha, &q[r * dim..(r + 1) * dim], scale[r], y),
            Rows::F16(v) => {
                for (o, a) in y.iter_mut().zip(&v[r * dim..(r + 1) * dim]) {
                    *o += alpha * a.to_f32();
                }
            }
            Rows::F32(v) => f32v::axpy(alpha, &v[r * dim..(r + 1) * dim], y),
        }
    }
}

/// K and V of one owning layer, rows indexed by `position * n_kv_heads + head`.
#[derive(Debug, Clone)]
pub(crate) struct LayerCache {
    k: Rows,
    v: Rows,
    head_dim: usize,
    n_kv_heads: usize,
    len: usize,
}

impl LayerCache {
    pub(crate) fn new(dtype: KvDtype, n_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            k: Rows::new(dtype),
            v: Rows::new(dtype),
            head_dim,
            n_kv_heads,
            len: 0,
        }
    }

    /// Positions stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Append one position's K and V (each n_kv_heads * head_dim values).
    /// On error (a non-finite value for the int8 cache) nothing is appended.
    pub(crate) fn push(&mut self, k: &[f32], v: &[f32]) -> Result<(), twain_quant::QuantError> {
        for h in 0..self.n_kv_heads {
            let r = h * self.head_dim..(h + 1) * self.head_dim;
            let pushed = self.k.push(&k[r.clone()]).and_then(|()| self.v.push(&v[r]));
            if let Err(e) = pushed {
                // Drop the heads of this position already written (K and V of
                // heads before h, and K of head h if V failed).
                self.truncate_rows(self.len);
                return Err(e);
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Keep positions `0..len` (no-op for `len >= self.len`). The buffers are
    /// cut even when `len == self.len`, so no partial row survives.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len <= self.len {
            self.truncate_rows(len);
            self.len = len;
        }
    }

    fn truncate_rows(&mut self, positions: usize) {
        let rows = positions * self.n_kv_heads;
        self.k.truncate(rows, self.head_dim);
        self.v.truncate(rows, self.head_dim);
    }

    pub(crate) fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// Keys (`values == false`) or values of kv head `g` at positions `0..len`
    /// as f32 rows of `head_dim`, into `out` (`len * head_dim`).
    pub(crate) fn head_f32(&self, g: usize, len: usize, values: bool, out: &mut [f32]) {
        let (dim, nkv) = (self.head_dim, self.n_kv_heads);
        let rows = if values { &self.v } else { &self.k };
        for (t, o) in out.chunks_exact_mut(dim).take(len).enumerate() {
            let r = t * nkv + g;
            match rows {
                Rows::Int8 { q, scale } => {
                    let s = scale[r];
                    for (o, &c) in o.iter_mut().zip(&q[r * dim..(r + 1) * dim]) {
                        *o = c as f32 * s;
                    }
                }
                Rows::F16(v) => {
                    for (o, c) in o.iter_mut().zip(&v[r * dim..(r + 1) * dim]) {
                        *o = c.to_f32();
                    }
                }
                Rows::F32(v) => o.copy_from_slice(&v[r * dim..(r + 1) * dim]),
            }
        }
    }

    /// Attention of one query head `q` (already scaled) over positions `0..=last`
    /// of kv head `g`, written to `out` (head_dim). `scores` is scratch of len >= last + 1.
    pub(crate) fn attend(
        &self,
        q: &[f32],
        g: usize,
        last: usize,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let dim = self.head_dim;
        let n = last + 1;
        let scores = &mut scores[..n];
        let nkv = self.n_kv_heads;
        if let Rows::Int8 { q: kq, scale } = &self.k {
            // One fused call over the strided rows of head g.
            twain_quant::attn::dot_rows(&kq[g * dim..], nkv * dim, &scale[g..], nkv, q, scores);
        } else {
            for (t, s) in scores.iter_mut().enumerate() {
                *s = self.k.dot(t * nkv + g, dim, q);
            }
        }
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum = twain_quant::attn::exp_sub_sum(scores, max);
        let inv = 1.0 / sum;
        out.fill(0.0);
        if let Rows::Int8 { q: vq, scale } = &self.v {
            scores.iter_mut().for_each(|s| *s *= inv);
            twain_quant::attn::axpy_rows(scores, &vq[g * dim..], nkv * dim, &scale[g..], nkv, out);
        } else {
            for (t, &s) in scores.iter().enumerate() {
                self.v.axpy(t * nkv + g, dim, s * inv, out);
            }
        }
    }
}
