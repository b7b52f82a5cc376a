//! twain-adapters: LoRA adapters over one frozen base, the way Apple's on-device model swaps
//! feature adapters at run time.
//!
//! - [`LoraAdapter`]: per target weight `W` (canonical name such as `blk.3.attn_q.weight`)
//!   a pair A (r x cols), B (rows x r) and a scaling (alpha / r); `y += scaling * B (A x)`.
//!   It implements [`twain_core::LinearDelta`], so a `Transformer` runs it unmerged, per
//!   state: `Transformer::set_adapter(&mut state, Some(Arc::new(adapter)))`.
//! - Loaders: Hugging Face PEFT directories ([`LoraAdapter::load_peft`]), llama.cpp GGUF LoRA
//!   ([`LoraAdapter::from_gguf`]) and twain's native safetensors form
//!   ([`LoraAdapter::write_native`] / [`LoraAdapter::load_native`]); [`LoraAdapter::load`]
//!   picks by path. PEFT adapters are in the Hugging Face RoPE layout: [`LoraAdapter::adapt_to`]
//!   (or [`LoraAdapter::load_for`]) permutes their q/k deltas for an interleaved GGUF llama base.
//! - [`merge_into`]: bake an adapter into a model's f32 weights (for export).
//!
//! Every malformed input is an [`AdapterError`] naming the file and the tensor.
//!
//! ```
//! use std::sync::Arc;
//! use twain_adapters::LoraAdapter;
//! use twain_convert::{synthetic, Preset};
//! use twain_core::{Transformer, TransformerOptions};
//! use twain_model::Model;
//!
//! let config = synthetic::tiny_config(2);
//! let base = synthetic::random_model(&config, Preset::F32, 1).unwrap();
//! let model = Transformer::from_loaded(base, TransformerOptions::default()).unwrap();
//!
//! // A rank-2 adapter on layer 0's query projection (64 x 64), alpha 4.
//! let (rows, cols, r) = (64, 64, 2);
//! let mut lora = LoraAdapter::new();
//! let a: Vec<f32> = (0..r * cols).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
//! let b: Vec<f32> = (0..rows * r).map(|i| (i as f32 * 0.71).cos() * 0.1).collect();
//! lora.insert("blk.0.attn_q.weight", rows, cols, r, 4.0 / r as f32, a, b).unwrap();
//! let lora = Arc::new(lora.with_scale(1.0));
//!
//! let mut plain = model.new_state();
//! let mut tuned = model.new_state();
//! model.set_adapter(&mut tuned, Some(lora)).unwrap();
//! let mut l0 = vec![0.0; model.info().vocab_size];
//! let mut l1 = l0.clone();
//! model.forward(&mut plain, &[1, 2, 3], &mut l0).unwrap();
//! model.forward(&mut tuned, &[1, 2, 3], &mut l1).unwrap();
//! assert!(l0.iter().zip(&l1).any(|(x, y)| (x - y).abs() > 1e-4));
//!
//! // A target the model lacks is a typed error.
//! let mut bad = LoraAdapter::new();
//! bad.insert("blk.7.ffn_up.weight", 128, 64, 1, 1.0, vec![0.0; 64], vec![0.0; 128]).unwrap();
//! assert!(model.set_adapter(&mut plain, Some(Arc::new(bad))).is_err());
//! ```
#![deny(missing_docs)]

mod error;
mod load;
mod lora;

pub use error::AdapterError;
pub use load::NATIVE_FORMAT;
pub use lora::{merge_into, parse_target, LoraAdapter, LoraTarget, MODULES};
