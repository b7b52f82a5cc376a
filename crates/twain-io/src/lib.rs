//! twain-io: model files for twain.
//!
//! - [`GgufFile`]: a GGUF (v2/v3) reader with every metadata type, zero-copy tensor views over an
//!   mmap and dequantization of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q2_K..Q6_K.
//! - Hugging Face directories (`config.json` + `model.safetensors` or a sharded index) of
//!   Llama-family models (Llama 3.x, SmolLM2, Qwen2, Qwen3).
//! - twain's native file ([`native`]): one mmapped safetensors container with config, tokenizer,
//!   chat template and tensors in twain formats, loaded without copying the weights.
//! - [`load_model`]: any of these as one [`LoadedModel`]: a `twain_model::ModelConfig` plus
//!   [`Tensor`]s under canonical GGUF-style names (see [`LoadedModel`]).
//!
//! It checks file-level facts only (the bytes are there, in a known type, with a consistent
//! header); whether the tensors are a model of their config is twain-core's check.
//! - [`keep`]: a GGUF file at its own precision (Q8_0 and Q4_0 re-laid out bit-exactly, other
//!   types widened), for loading without re-quantizing.
//! - [`fetch`] (feature `fetch`, on by default): the default model, downloaded once into the
//!   cache directory ([`cache_dir`]).
//!
//! ```
//! use twain_io::{GgufFile, MetaValue, gguf::write_gguf};
//!
//! let bytes = write_gguf(
//!     &[("tokenizer.ggml.model", MetaValue::String("gpt2".into()))],
//!     &[],
//! ).unwrap();
//! let g = GgufFile::from_bytes("mem.gguf", &bytes).unwrap();
//! assert_eq!(g.version(), 3);
//! assert_eq!(g.get("tokenizer.ggml.model").and_then(MetaValue::as_str), Some("gpt2"));
//! ```
#![deny(missing_docs)]

pub mod atomic;
mod backing;
mod cache;
mod error;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod ggml;
pub mod gguf;
mod hf;
pub mod keep;
mod model;
pub mod native;
pub mod patch;
mod tensor;

use std::io::Read;
use std::path::Path;

pub use atomic::{write_atomic, write_atomic_with, AtomicFile};
pub use cache::cache_dir;
pub use error::IoError;
pub use ggml::GgmlType;
pub use gguf::{GgufFile, GgufTensorInfo, MetaValue};
pub use hf::canonical_name;
pub use model::{model_from_gguf, LoadedModel};
pub use native::{read_native, write_native, NativeModel, WriteProgress, OMITTED_KEY};
pub use patch::{apply_patch, write_patch, PatchStats};
pub use tensor::Tensor;
pub use twain_quant::{QMatrix, QMatrixRef, QuantFormat};

/// Loads a model from a GGUF file, a twain native file, or a Hugging Face directory
/// (`config.json` + `model.safetensors` or `model.safetensors.index.json`; a path to a file
/// inside such a directory works too). The kind is detected from the magic bytes or the layout.
///
/// GGUF tensors are dequantized to owned f32; native tensors are zero-copy views of the mmap
/// in their stored formats; Hugging Face tensors (F32/F16/BF16) are converted to owned f32.
pub fn load_model(path: impl AsRef<Path>) -> Result<LoadedModel, IoError> {
    let path = path.as_ref();
    if path.is_dir() {
        return hf::load_hf_dir(path);
    }
    let mut head = [0u8; 9];
    let mut n = 0;
    let mut f = std::fs::File::open(path).map_err(|e| IoError::os(path, e))?;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(|e| IoError::os(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return model_from_gguf(GgufFile::open(path)?);
    }
    if native::looks_like_safetensors(head) {
        match native::read_native(path) {
            Ok(m) => return Ok(m),
            // A plain safetensors file inside a Hugging Face directory.
            Err(e) => match hf::hf_dir_of(path) {
                Some(dir) if !is_native_error(&e) => return hf::load_hf_dir(&dir),
                _ => return Err(e),
            },
        }
    }
    if let Some(dir) = hf::hf_dir_of(path) {
        return hf::load_hf_dir(&dir);
    }
    Err(IoError::malformed(
        path,
        "not a GGUF file, twain native file or Hugging Face model directory",
    ))
}

/// Whether a native-reader error says the file *is* a twain native file (so falling back to
/// the Hugging Face reader would hide the real problem).
fn is_native_error(e: &IoError) -> bool {
    !matches!(e, IoError::Malformed { what, .. } if what.contains("no __metadata__") || what.contains("header is not"))
        && !matches!(e, IoError::Key { key, .. } if key == "format")
}
