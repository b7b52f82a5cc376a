//! twain: run small language models on-device.
//!
//! This facade holds what an app talks to — [`Session`] (a chat transcript
//! over one model state, reusing its KV cache turn after turn), the streaming
//! generation loop ([`Generation`], an iterator of [`Event`]s whose text is
//! always valid UTF-8 and never leaks a stop sequence) — written against the
//! small [`Model`] trait, so any model, tokenizer and chat format plug in.
//! With the default `core` feature it also loads twain's transformer and the
//! default model ([`engine`]).
//!
//! Guided generation ([`guided`]): `session.respond_as::<T>(prompt, opts)`
//! returns a `T: Deserialize + JsonSchema` generated under `T`'s JSON schema
//! (constrained decoding, [`guide`]), `stream_as` streams snapshots of the
//! partially generated value, and `respond_constrained` takes any JSON
//! schema, regex or Lark grammar. Tool calling ([`tools`]):
//! `session.respond_with_tools(prompt, &tools, opts)` runs [`Tool`]s the
//! model calls with always-valid arguments until it answers.
//!
//! ```
//! use std::sync::Arc;
//! use twain::{ChatMl, GenerateOptions, Model, ModelError, ModelInfo, Session, TokenId, Tokenize};
//!
//! // A model that always answers "ab" and then ends its turn.
//! struct Ab(ModelInfo);
//! impl Model for Ab {
//!     type State = usize;
//!     fn info(&self) -> &ModelInfo { &self.0 }
//!     fn new_state(&self) -> usize { 0 }
//!     fn forward(&self, s: &mut usize, t: &[TokenId], l: &mut [f32]) -> Result<(), ModelError> {
//!         self.0.check_forward(*s, t, l.len())?;
//!         *s += t.len();
//!         l.fill(0.0);
//!         let next = match t.last() { Some(&97) => 98, Some(&98) => 2, _ => 97 };
//!         l[next] = 1.0;
//!         Ok(())
//!     }
//!     fn position(&self, s: &usize) -> usize { *s }
//!     fn truncate(&self, s: &mut usize, n: usize) -> Result<(), ModelError> { *s = n.min(*s); Ok(()) }
//! }
//! // Bytes as tokens.
//! struct Bytes;
//! impl Tokenize for Bytes {
//!     fn encode(&self, text: &str) -> Result<Vec<TokenId>, twain::BoxError> {
//!         Ok(text.bytes().map(u32::from).collect())
//!     }
//!     fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, twain::BoxError> { Ok(vec![id as u8]) }
//! }
//!
//! let mut info = ModelInfo::new("ab", 256, 1024);
//! info.special.eot = Some(2);
//! let mut session = Session::new(Ab(info), Arc::new(Bytes), Arc::new(ChatMl));
//! let (text, _) = session.respond("hi", GenerateOptions::default()).unwrap().collect_text().unwrap();
//! assert_eq!(text, "ab");
//! assert_eq!(session.transcript().len(), 2);
//! ```
#![deny(missing_docs)]

#[cfg(feature = "core")]
pub mod engine;
mod error;
mod generate;
pub mod guided;
mod session;
mod text;
mod tokenize;
pub mod tools;

pub use error::Error;
#[cfg(feature = "core")]
pub use error::LoadError;
pub use generate::{CancelFlag, EndReason, Event, GenerateOptions, Generation};
pub use guided::{GuidedError, GuidedOptions, TypedEvent};
pub use session::Session;
pub use text::{Piece, TextAssembler};
pub use tokenize::{BoxError, ChatFormat, ChatMl, Message, Role, Tokenize};
pub use tools::{Tool, ToolError};
#[cfg(feature = "core")]
pub use twain_adapters as adapters;
pub use twain_guide as guide;
pub use twain_model::{Model, ModelError, ModelInfo, SharedError, SpecialTokens, TokenId};
pub use twain_sample as sample;
pub use twain_sample::Sampler;
