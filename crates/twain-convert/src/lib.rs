//! twain-convert: offline work on a model, done once before inference.
//!
//! It holds: the presets (which twain format each tensor gets), conversion
//! of a loaded model to a preset, calibration data and the statistics
//! measured on it ([`hessian`]), error-feedback rounding ([`gptq`]),
//! incoherence rotations fused into the weights ([`rotate`]), the
//! post-training pipeline with bit allocation ([`ptq`]), evaluation against
//! a reference model (perplexity, KL divergence, top-1 agreement), the
//! KV-share retrofit, and random models for tests and benchmarks. It does not run models itself (twain-core does)
//! nor read or write files (twain-io does).
//!
//! ```
//! use twain_convert::{convert, synthetic, ConvertOptions, Preset};
//! use twain_core::{Transformer, TransformerOptions};
//!
//! let f32_model = synthetic::random_model(&synthetic::tiny_config(2), Preset::F32, 1)?;
//! let q4 = convert(f32_model, Preset::Q4, ConvertOptions::default())?;
//! assert_eq!(q4.tensors["blk.0.attn_q.weight"].format(), twain_quant::QuantFormat::Q4);
//! let model = Transformer::from_loaded(q4, TransformerOptions::default())?;
//! # let _ = model;
//! # Ok::<(), twain_convert::ConvertError>(())
//! ```
#![deny(missing_docs)]

pub mod calib;
mod convert;
mod error;
pub mod eval;
pub mod gptq;
pub mod hessian;
mod linalg;
mod preset;
pub mod ptq;
pub mod recovered;
pub mod rotate;
pub mod synthetic;

pub use convert::{apply_plan, convert, ConvertOptions, Progress};
pub use error::ConvertError;
pub use preset::{Preset, AFM_MIX_BUDGET};
