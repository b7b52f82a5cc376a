//! twain-tokenizer: text <-> token ids, and chat templates, for the models twain runs.
//!
//! - [`Tokenizer`] wraps a Hugging Face `tokenizers` pipeline built from a GGUF file's
//!   `tokenizer.ggml.*` metadata (byte-level BPE `"gpt2"` with the pre-tokenizer named by
//!   `tokenizer.ggml.pre`, or SentencePiece `"llama"` with byte fallback) or from a
//!   tokenizer.json. Special-token text in the input (`<|im_start|>`) maps to its single id;
//!   [`Tokenizer::token_bytes`] gives the raw bytes of every token for UTF-8-safe streaming
//!   ([`DecodeStream`]) and constrained decoding; bad ids are errors, never panics.
//! - [`ChatTemplate`] renders the Jinja chat template a model ships (`tokenizer.chat_template`)
//!   with `minijinja`, the way `transformers` does, falling back to ChatML.
//!
//! # Example
//!
//! ```
//! use twain_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // SmolLM2-135M-Instruct, fetched into the cache on first use.
//! let path = twain_io::fetch::ensure_default_gguf()?;
//! let gguf = twain_io::GgufFile::open(&path)?;
//! let tokenizer = Tokenizer::from_gguf(&gguf)?;
//!
//! let ids = tokenizer.encode("Hello, world!", false)?;
//! assert_eq!(ids, [19556, 28, 905, 17]);
//! assert_eq!(tokenizer.decode(&ids, false)?, "Hello, world!");
//! assert_eq!(tokenizer.token_bytes(905)?, b" world");
//!
//! let template = gguf.get("tokenizer.chat_template").and_then(|v| v.as_str());
//! let chat = ChatTemplate::for_tokenizer(template, &tokenizer)?;
//! let prompt = chat.render(&[ChatMessage::user("What is 2 + 2?")], true)?;
//! assert!(prompt.ends_with("<|im_start|>assistant\n"));
//! let prompt_ids = tokenizer.encode(&prompt, true)?;
//! assert_eq!(prompt_ids[0], 1); // <|im_start|>
//! assert_eq!(tokenizer.eot_id(), Some(2)); // <|im_end|> ends the turn
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod byte_level;
mod chat;
mod error;
pub mod gguf;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, RenderOptions, CHATML_TEMPLATE};
pub use error::{Result, TokenizerError};
pub use gguf::GgufVocab;
pub use tokenizer::{DecodeStream, SpecialTokens, Tokenizer};
