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
//! A tiny byte-level BPE tokenizer.json, inline so the example runs offline; a model's own
//! file loads the same way (`Tokenizer::from_gguf(&twain_io::GgufFile::open(path)?)` for a
//! GGUF, [`Tokenizer::from_loaded`] for any model twain loads).
//!
//! ```
//! use twain_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let special = |id: u32, text: &str| {
//!     serde_json::json!({"id": id, "content": text, "single_word": false, "lstrip": false,
//!                        "rstrip": false, "normalized": false, "special": true})
//! };
//! let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
//!                                     "trim_offsets": true, "use_regex": true});
//! let json = serde_json::json!({
//!     "version": "1.0",
//!     "added_tokens": [special(0, "<|im_start|>"), special(1, "<|im_end|>")],
//!     "pre_tokenizer": byte_level,
//!     "decoder": byte_level,
//!     "model": {
//!         "type": "BPE",
//!         "vocab": {"<|im_start|>": 0, "<|im_end|>": 1, "H": 2, "i": 3, "\u{0120}": 4,
//!                   "t": 5, "h": 6, "e": 7, "r": 8, "Hi": 9, "\u{0120}t": 10, "he": 11,
//!                   "\u{0120}the": 12, "re": 13, "\u{0120}there": 14},
//!         "merges": ["H i", "\u{0120} t", "h e", "\u{0120}t he", "r e", "\u{0120}the re"]
//!     }
//! });
//! let tokenizer = Tokenizer::from_json(&json.to_string())?;
//!
//! let ids = tokenizer.encode("<|im_start|>Hi there<|im_end|>", false)?;
//! assert_eq!(ids, [0, 9, 14, 1]); // special-token text maps to its single id
//! assert_eq!(tokenizer.decode(&ids[1..3], false)?, "Hi there");
//! assert_eq!(tokenizer.token_bytes(14)?, b" there");
//! assert_eq!(tokenizer.eot_id(), Some(1)); // <|im_end|> ends the turn
//! assert!(tokenizer.encode("Hi", false).is_ok());
//!
//! // No template in the file: ChatML.
//! let chat = ChatTemplate::for_tokenizer(None, &tokenizer)?;
//! let prompt = chat.render(&[ChatMessage::user("Hi there")], true)?;
//! assert_eq!(prompt, "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
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
