//! Loading a GGUF file at its own precision: each ggml tensor type maps to
//! the twain format that holds it exactly, or else the nearest one above it
//! (docs/formats.md, "GGUF at its own precision").
//!
//! | ggml type | twain format | how |
//! |---|---|---|
//! | F32 | f32 | copy |
//! | F16 | f16 | copy (1-D tensors: f32, exact) |
//! | BF16 | f16 when every value survives the round trip, else f32 | exact |
//! | Q8_0 | q8 | re-layout (scales first), bit-exact; a block with code -128 (outside twain's -127..=127) makes the tensor f16 |
//! | Q4_0 | q4 | re-layout (scales first), bit-exact |
//! | Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, Q8_K | f16 (f32 when a value overflows f16) | widened: within f16 rounding (2^-11 relative) of the file's values |
//! | I8, I16, I32, F64 | f32 | widened |
//!
//! 1-D tensors, norms and biases are always f32 (what twain-core reads).

use std::collections::BTreeMap;
use std::sync::Arc;

use half::f16;
use twain_quant::{QMatrix, QuantFormat};

use crate::model::config_from_gguf;
use crate::tensor::matrix_dims;
use crate::{GgmlType, GgufFile, GgufTensorInfo, IoError, LoadedModel, Tensor};

/// Version of the mapping and re-layouts below: part of every cache key of a
/// kept conversion, bumped whenever they would produce different bytes.
pub const KEEP_VERSION: u32 = 1;

/// How a GGUF tensor is held in twain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The same values, bit for bit (a copy or a re-layout).
    Exact(QuantFormat),
    /// Converted to a wider format (within that format's rounding).
    Widened(QuantFormat),
}

impl Kept {
    /// The twain format.
    pub fn format(self) -> QuantFormat {
        match self {
            Kept::Exact(f) | Kept::Widened(f) => f,
        }
    }

    /// Whether the file's values are held bit for bit.
    pub fn is_exact(self) -> bool {
        matches!(self, Kept::Exact(_))
    }
}

/// Whether twain-core reads this tensor as f32 whatever its format
/// (1-D tensors, norms, biases).
fn f32_only(name: &str, shape: &[usize]) -> bool {
    shape.len() != 2 || name.ends_with(".bias") || name.contains("norm")
}

/// What [`keep_tensor`] will do with a tensor of type `ty`, named `name`
/// with row-major `shape`, before looking at its values (a Q8_0 block with
/// code -128 or a BF16 value outside the f16 range still changes the plan).
pub fn planned(ty: GgmlType, name: &str, shape: &[usize]) -> Kept {
    if f32_only(name, shape) {
        return match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Kept::Exact(QuantFormat::F32),
            _ => Kept::Widened(QuantFormat::F32),
        };
    }
    match ty {
        GgmlType::F32 => Kept::Exact(QuantFormat::F32),
        GgmlType::F16 | GgmlType::BF16 => Kept::Exact(QuantFormat::F16),
        GgmlType::Q8_0 => Kept::Exact(QuantFormat::Q8),
        GgmlType::Q4_0 => Kept::Exact(QuantFormat::Q4),
        GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::F64 => {
            Kept::Widened(QuantFormat::F32)
        }
        _ => Kept::Widened(QuantFormat::F16),
    }
}

/// Re-lays ggml blocks `[f16 d][payload]` (interleaved) as twain's
/// `[nb x f16 d][nb x payload]` per row. `None` when a block's payload is
/// refused by `ok`.
fn relayout(
    data: &[u8],
    rows: usize,
    cols: usize,
    payload: usize,
    ok: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let nb = cols / 32;
    let block = 2 + payload;
    if !cols.is_multiple_of(32) || data.len() != rows * nb * block {
        return None;
    }
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data
        .chunks_exact(nb * block)
        .zip(out.chunks_exact_mut(nb * block))
    {
        let (scales, codes) = dst.split_at_mut(2 * nb);
        for (b, blk) in src.chunks_exact(block).enumerate() {
            if !ok(&blk[2..]) {
                return None;
            }
            scales[2 * b..2 * b + 2].copy_from_slice(&blk[..2]);
            codes[payload * b..payload * (b + 1)].copy_from_slice(&blk[2..]);
        }
    }
    Some(out)
}

/// f32 values as an f16 matrix, if every value is finite and in f16 range;
/// `exact` also requires every value to survive the round trip.
fn to_f16(rows: usize, cols: usize, v: &[f32], exact: bool) -> Option<QMatrix> {
    let mut bytes = Vec::with_capacity(2 * v.len());
    for &x in v {
        let h = f16::from_f32(x);
        if !h.is_finite() || (exact && h.to_f32() != x) {
            return None;
        }
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    QMatrix::from_bytes(QuantFormat::F16, rows, cols, &bytes).ok()
}

/// A GGUF tensor in the twain format [`planned`] picks (see the module's
/// table), and how it was kept.
pub fn keep_tensor(g: &GgufFile, info: &GgufTensorInfo) -> Result<(Tensor, Kept), IoError> {
    let shape = info.shape();
    let name = info.name.clone();
    let plan = planned(info.ggml_type, &name, &shape);
    let path = g.path().to_path_buf();
    let owned = |m: QMatrix| Tensor::from_qmatrix(name.clone(), shape.clone(), m);
    let dims = matrix_dims(&shape);
    let data = g.tensor_data(info);
    let direct = match (plan, dims) {
        (Kept::Exact(QuantFormat::Q8), Some((rows, cols))) => {
            // twain's Q8 codes are -127..=127 (ggml's quantizer never writes -128).
            relayout(data, rows, cols, 32, |q| q.iter().all(|&c| c != 0x80))
                .and_then(|b| QMatrix::from_bytes(QuantFormat::Q8, rows, cols, &b).ok())
                .map(|m| (m, plan))
        }
        (Kept::Exact(QuantFormat::Q4), Some((rows, cols))) => {
            relayout(data, rows, cols, 16, |_| true)
                .and_then(|b| QMatrix::from_bytes(QuantFormat::Q4, rows, cols, &b).ok())
                .map(|m| (m, plan))
        }
        (Kept::Exact(QuantFormat::F16), Some((rows, cols))) if info.ggml_type == GgmlType::F16 => {
            QMatrix::from_bytes(QuantFormat::F16, rows, cols, data)
                .ok()
                .map(|m| (m, plan))
        }
        _ => None,
    };
    if let Some((m, kept)) = direct {
        return Ok((owned(m)?.with_source(path), kept));
    }
    let values = g.dequantize_info(info)?;
    let f16_target = plan.format() == QuantFormat::F16 || plan == Kept::Exact(QuantFormat::Q8);
    if f16_target {
        if let Some((rows, cols)) = dims {
            // BF16 (and F16) are kept exact in f16; the rest within its rounding.
            let exact = matches!(info.ggml_type, GgmlType::BF16 | GgmlType::F16);
            if let Some(m) = to_f16(rows, cols, &values, exact) {
                let kept = if exact {
                    Kept::Exact(QuantFormat::F16)
                } else {
                    Kept::Widened(QuantFormat::F16)
                };
                return Ok((owned(m)?.with_source(path), kept));
            }
        }
    }
    let kept = match plan {
        Kept::Exact(_)
            if matches!(
                info.ggml_type,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
            ) =>
        {
            Kept::Exact(QuantFormat::F32)
        }
        _ => Kept::Widened(QuantFormat::F32),
    };
    Ok((
        Tensor::from_f32(name, shape, values)?.with_source(path),
        kept,
    ))
}

/// A model from a parsed GGUF file at the file's own precision (see the
/// module's table), with how each tensor was kept.
pub fn model_from_gguf_kept(g: GgufFile) -> Result<(LoadedModel, BTreeMap<String, Kept>), IoError> {
    let path = g.path().to_path_buf();
    let config = config_from_gguf(&g)?;
    let mut tensors = BTreeMap::new();
    let mut kept = BTreeMap::new();
    for info in g.tensors() {
        let (t, k) = keep_tensor(&g, info)?;
        tensors.insert(info.name.clone(), t);
        kept.insert(info.name.clone(), k);
    }
    let chat_template = match g.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| IoError::key(&path, "tokenizer.chat_template", "not a string"))?
                .to_string(),
        ),
    };
    Ok((
        LoadedModel {
            config,
            tensors,
            tokenizer_json: None,
            chat_template,
            gguf: Some(Arc::new(g)),
            source: path,
            provenance: BTreeMap::new(),
        },
        kept,
    ))
}
