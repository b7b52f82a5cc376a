//! Constrained decoding for twain: a JSON Schema, a regular expression or a
//! Lark grammar becomes, at every decoding step, the set of tokens that keep
//! the output inside the language ([`twain_sample::TokenMask`]).
//!
//! The engine is [`llguidance`] (the Earley parser + derivative-based lexer
//! that most inference servers use); this crate is the small, panic-free
//! state-machine API around it and the tokenizer side:
//!
//! - [`Vocabulary`] — built **once per tokenizer** from the bytes of every
//!   token id plus an encode function (so it works for any tokenizer, not
//!   only Hugging Face's), holding llguidance's token trie and the parser
//!   factory; share it as an `Arc`.
//! - [`Constraint`] — what the output must match.
//! - [`Matcher`] — one per request, cheap to create: [`Matcher::fill_mask`],
//!   [`Matcher::consume`], [`Matcher::is_accepting`], [`Matcher::is_stopped`],
//!   [`Matcher::rollback`]. A failure puts the matcher in an error state and
//!   comes back as a [`GuideError`] value; nothing panics.
//!
//! Stop tokens (end of turn / sequence) are the "end" the grammar allows once
//! the output is complete: the mask contains them exactly when
//! [`Matcher::is_accepting`] holds.
//!
//! # The tokenizer side
//!
//! llguidance sees a tokenizer through its `toktrie::TokenizerEnv` trait: a
//! trie of every token's bytes (special tokens marked so no text can produce
//! them) and an encode function used to tokenize text the grammar forces.
//! This crate implements that trait itself from [`TokenBytes`] per id plus a
//! closure, rather than through `toktrie_hf_tokenizers`, so that guided
//! generation works for any tokenizer (twain's `Tokenize` trait, a test's
//! byte tokenizer), and because that adapter turns on the `tokenizers`
//! crate's `unstable_wasm` feature for the whole workspace. Building the trie
//! and llguidance's parser factory walks the whole vocabulary (about 80 ms
//! for 49 152 tokens), so a [`Vocabulary`] is built once and shared; a
//! [`Matcher`] per request costs a fraction of a millisecond to compile, and
//! a mask about 5–15 µs per token (docs/benchmarks.md).
//!
//! ```
//! use twain_guide::{Constraint, TokenBytes, Vocabulary};
//!
//! // A toy vocabulary: one token per byte, plus an end-of-sequence token 256.
//! let mut tokens: Vec<TokenBytes> = (0..=255u8).map(|b| TokenBytes::text(vec![b])).collect();
//! tokens.push(TokenBytes::special("</s>"));
//! let vocab = Vocabulary::new(tokens, &[256], |s: &str| Ok(s.bytes().map(u32::from).collect()))?;
//!
//! let mut m = vocab.matcher(&Constraint::regex("(yes|no)"))?;
//! let mut mask = vocab.new_mask();
//! m.fill_mask(&mut mask)?;
//! assert!(mask.is_allowed(b'y' as u32) && mask.is_allowed(b'n' as u32));
//! assert!(!mask.is_allowed(b'x' as u32) && !mask.is_allowed(256));
//! for b in b"no" {
//!     m.consume(*b as u32)?;
//! }
//! assert!(m.is_accepting());
//! m.fill_mask(&mut mask)?;
//! assert!(mask.is_allowed(256)); // only the end is left
//! assert_eq!(mask.count_allowed(), 1);
//!
//! // A token outside the language is an error value, not a panic.
//! let mut m = vocab.matcher(&Constraint::regex("[0-9]+"))?;
//! assert!(m.consume(b'a' as u32).is_err());
//! # Ok::<(), twain_guide::GuideError>(())
//! ```
#![deny(missing_docs)]

mod constraint;
mod error;
mod matcher;
mod partial;
mod vocabulary;

pub use constraint::{Constraint, JsonFormat};
pub use error::GuideError;
pub use matcher::Matcher;
pub use partial::{complete_partial_json, extends, PartialJson};
pub use twain_model::TokenId;
pub use twain_sample::TokenMask;
pub use vocabulary::{TokenBytes, Vocabulary, CLOSERS, STRING_CLOSERS};
