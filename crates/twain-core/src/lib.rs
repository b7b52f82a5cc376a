//! twain-core: the transformer. Llama-family decoders (GQA, RoPE in both pair
//! layouts with Llama-3 scaling, RMSNorm, optional QK-norm and q/k/v bias,
//! SwiGLU, tied or untied LM head) over weights in any twain format, with a
//! **cross-layer KV-sharing plan**: layers that read an earlier layer's cache
//! hold no K/V weights and allocate no cache, and prefill runs the layers after
//! the last K/V-owning one on the last prompt token only.
//!
//! ```
//! use twain_core::{synthetic, Preset, Transformer, TransformerOptions};
//! use twain_model::Model;
//!
//! // A 4-layer random model where layers 2 and 3 read layer 1's cache.
//! let mut config = synthetic::tiny_config(4);
//! config.kv_source = twain_core::kv_share_plan(4, 1, 1).unwrap();
//! let loaded = synthetic::random_model(&config, Preset::F32, 7).unwrap();
//! let model = Transformer::from_loaded(loaded, TransformerOptions::default()).unwrap();
//! assert_eq!(model.kv_owning_layers(), 2);
//!
//! let mut state = model.new_state();
//! let mut logits = vec![0.0; model.info().vocab_size];
//! model.forward(&mut state, &[1, 2, 3], &mut logits).unwrap();
//! assert_eq!(model.position(&state), 3);
//! assert_eq!(state.kv_bytes(), 3 * model.kv_bytes_per_token());
//! ```
#![deny(missing_docs)]

mod convert;
mod error;
pub mod eval;
mod kv;
mod rope;
pub mod synthetic;
mod transformer;

pub use convert::{apply_plan, convert, kv_share_plan, ConvertOptions, Preset, Progress};
pub use error::CoreError;
pub use kv::KvDtype;
pub use transformer::{
    validate_config, LinearDelta, Observer, State, Transformer, TransformerOptions,
};
pub use twain_io::{LoadedModel, ModelConfig};
