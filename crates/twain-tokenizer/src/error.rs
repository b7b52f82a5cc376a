//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong while building a tokenizer, encoding, decoding or rendering a
/// chat template.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A GGUF metadata key the tokenizer needs is absent.
    #[error("GGUF metadata: missing key {0}")]
    MissingKey(String),
    /// A GGUF metadata key has the wrong type or an impossible value.
    #[error("GGUF metadata: key {key}: {what}")]
    BadMetadata {
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        what: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family twain does not build.
    #[error("unsupported tokenizer model {0:?} (tokenizer.ggml.model); supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer twain does not know.
    #[error("unsupported pre-tokenizer {0:?} (tokenizer.ggml.pre)")]
    UnsupportedPreTokenizer(String),
    /// A token id outside the vocabulary, or an id with no token.
    #[error("token id {id} is not in the vocabulary ({vocab_size} ids)")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// Number of ids in the vocabulary.
        vocab_size: usize,
    },
    /// The model carries neither a tokenizer.json nor GGUF tokenizer metadata.
    #[error(
        "the model has no tokenizer: neither a tokenizer.json nor GGUF tokenizer.ggml.* metadata"
    )]
    NoTokenizer,
    /// A tokenizer.json that does not parse.
    #[error("tokenizer.json: {0}")]
    Json(String),
    /// The `tokenizers` crate refused to build or run the pipeline.
    #[error("tokenizers: {0}")]
    Backend(String),
    /// A chat template failed to compile or render (includes `raise_exception` from the template).
    #[error("chat template: {0}")]
    Template(String),
}

impl TokenizerError {
    pub(crate) fn bad(key: impl Into<String>, what: impl Into<String>) -> Self {
        TokenizerError::BadMetadata {
            key: key.into(),
            what: what.into(),
        }
    }
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        TokenizerError::Backend(e.to_string())
    }
}

impl From<minijinja::Error> for TokenizerError {
    fn from(e: minijinja::Error) -> Self {
        // minijinja's Display already carries the detail and "(in template:line)".
        TokenizerError::Template(e.to_string())
    }
}

/// This crate's result type.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
