//! twain's weight formats and their kernels: 2-bit decoder weights
//! ([`QuantFormat::Q2`]), 4-bit embeddings / tied LM head ([`QuantFormat::Q4`]),
//! int8 weights ([`QuantFormat::Q8`]), f16/f32 baselines, int8 KV-cache rows
//! ([`int8`]) and int8 activation blocks ([`blocks::Q8ActBlock`]).
//!
//! * [`quantize`] turns f32 weights into a [`QMatrix`], searching each group's
//!   clipping factor (optionally weighted by per-column importance).
//! * [`QMatrixRef`] is a checked, zero-copy view of a matrix's bytes (e.g. in an
//!   mmapped file); `dequantize_row` is the embedding lookup.
//! * [`matmul`] / [`matvec`] compute `y = x W^T`, quantizing `x` to int8 blocks
//!   for the quantized formats ([`matmul_f32`] keeps f32 activations), split over
//!   rayon by row chunks.
//! * [`kernels`] holds the scalar reference and the SIMD families (AVX2,
//!   AVX-512 VNNI) chosen once at run time ([`backend_name`]); [`traits`] is the
//!   static per-format table; [`blocks`] the byte layouts.
//!
//! Formats, byte layouts, error bounds and the measurements behind them are in
//! `docs/formats.md`; kernel speeds in `docs/benchmarks.md`.
//!
//! ```
//! use twain_quant::{matvec, quantize, Parallelism, QuantFormat, QuantizeOptions};
//!
//! let (rows, cols) = (4, 64);
//! let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
//! let q = quantize(QuantFormat::Q4, rows, cols, &w, &QuantizeOptions::default())?;
//! assert_eq!(q.data().len(), QuantFormat::Q4.matrix_bytes(rows, cols)?);
//!
//! let x = vec![1.0f32; cols];
//! let mut y = vec![0.0f32; rows];
//! matvec(&q.as_ref(), &x, &mut y, Parallelism::Sequential)?;
//! let exact: f32 = w[..cols].iter().sum();
//! assert!((y[0] - exact).abs() < 0.1 * cols as f32 / 8.0);
//! # Ok::<(), twain_quant::QuantError>(())
//! ```
#![deny(missing_docs)]

use thiserror::Error;

pub mod attn;
pub mod blocks;
pub mod f32v;
mod format;
pub mod grid;
pub mod hadamard;
pub mod int8;
pub mod kernels;
mod matmul;
mod matrix;
mod pool;
mod quantize;
pub mod traits;

pub use format::QuantFormat;
pub use matmul::{
    matmul, matmul_f32, matmul_f32_with, matmul_many, matmul_many_with, matmul_with, matvec,
    quantize_activations, Parallelism, PAR_MIN_WORK,
};
pub use matrix::{QMatrix, QMatrixRef};
pub use quantize::quantize;

/// Errors from quantizers and kernels.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum QuantError {
    /// A buffer, matrix or index does not fit the operation (lengths, row
    /// counts, alignment, ranges). The text says which and where.
    #[error("{0}")]
    Shape(String),
    /// A value is NaN, infinite or outside what the format can represent.
    #[error("{0}")]
    Value(String),
    /// The format, length or kernel path is not supported (here).
    #[error("{0}")]
    Unsupported(String),
    /// A format name that is none of f32, f16, q8, q4, q2.
    #[error("unknown format {0:?} (expected f32, f16, q8, q4 or q2)")]
    UnknownFormat(String),
    /// A size computation overflows `usize`.
    #[error("{0}")]
    Overflow(String),
    /// `source`, inside `context` (a row, a block).
    #[error("{context}: {source}")]
    At {
        /// Where it happened, e.g. `quantize q2: row 7`.
        context: String,
        /// What happened.
        #[source]
        source: Box<QuantError>,
    },
}

impl QuantError {
    /// This error, inside `context`.
    pub fn at(self, context: impl Into<String>) -> Self {
        Self::At {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The innermost error under any [`At`](Self::At) contexts.
    pub fn root(&self) -> &QuantError {
        match self {
            Self::At { source, .. } => source.root(),
            e => e,
        }
    }
}

/// How a quantizer chooses scales.
#[derive(Debug, Clone, Default)]
pub struct QuantizeOptions {
    /// Per-input-column importance (len = cols), e.g. mean squared activations
    /// from calibration text; `None` weighs every column equally.
    pub importance: Option<Vec<f32>>,
    /// Skip the clipping-factor search and use scale = max|w| / q_max.
    pub no_clip_search: bool,
}

/// The kernel family chosen for this CPU (detected once, cached).
pub fn backend_name() -> &'static str {
    kernels::best().backend.name()
}
