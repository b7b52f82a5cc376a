//! twain-core: the transformer. Llama-family decoders (GQA, RoPE in both pair
//! layouts with Llama-3 scaling, RMSNorm, optional QK-norm and q/k/v bias,
//! SwiGLU, tied or untied LM head) over weights in any twain format, with a
//! **cross-layer KV-sharing plan** ([`KvPlan`]): layers that read an earlier
//! layer's cache hold no K/V weights and allocate no cache, and prefill runs
//! the layers after the last K/V-owning one on the last prompt token only.
//!
//! It holds the architecture: what a [`ModelConfig`] means ([`arch`]: the
//! config check and the tensors it needs), the plan, loading each layer
//! from a tensor set, the forward pass and the KV cache. It does not convert
//! or calibrate models, evaluate them or make random ones: that offline work
//! is in `twain-convert`.
//!
//! ```
//! use twain_convert::{synthetic, Preset};
//! use twain_core::{KvPlan, Transformer, TransformerOptions};
//! use twain_model::Model;
//!
//! // A 4-layer random model where layers 2 and 3 read layer 1's cache.
//! let mut config = synthetic::tiny_config(4);
//! config.kv_source = KvPlan::shared(4, 1, 1).unwrap().sources().to_vec();
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

pub mod arch;
mod error;
mod kv;
mod plan;
pub mod rope;
mod transformer;

pub use arch::{check_tensors, check_tensors_except, expected_tensors, validate_config};
pub use error::CoreError;
pub use kv::KvDtype;
pub use plan::KvPlan;
pub use transformer::{LinearDelta, Observer, State, Transformer, TransformerOptions};
pub use twain_io::LoadedModel;
/// The error type a [`LinearDelta`] returns (any error, boxed).
pub use twain_model::BoxError;
pub use twain_model::{ModelConfig, RopeLayout, RopeScaling};
