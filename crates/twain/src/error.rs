use thiserror::Error;
use twain_model::{BoxError, ModelError};

/// Errors from sessions and generation. A failed call leaves the session as
/// it was before the call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The prompt (plus what is already in the session) does not fit the
    /// model's context window. The caller chooses what to drop.
    #[error("exceeded context window: {needed} tokens needed, the model holds {limit}")]
    ExceededContextWindow {
        /// Tokens the request needs.
        needed: usize,
        /// The model's context length.
        limit: usize,
    },
    /// The model failed.
    #[error("model: {0}")]
    Model(ModelError),
    /// Sampling failed (bad parameters, no allowed token, ...).
    #[error("sampling: {0}")]
    Sample(#[from] twain_sample::SampleError),
    /// Tokenizing or detokenizing failed; the source is the tokenizer's own
    /// error (for the bundled tokenizer a `twain_tokenizer::TokenizerError`).
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] BoxError),
    /// Rendering the chat template failed; the source is the chat format's
    /// own error (for model templates a `twain_tokenizer::TokenizerError`).
    #[error("chat template: {0}")]
    Template(#[source] BoxError),
    /// The prompt (the rendered transcript or the raw text) encodes to no
    /// tokens: there is nothing to continue.
    #[error("the prompt encodes to no tokens")]
    EmptyPrompt,
    /// Loading or converting a model, its tokenizer or an adapter failed.
    #[cfg(feature = "core")]
    #[error("loading model: {0}")]
    Load(#[from] LoadError),
}

/// Why loading a model, its tokenizer, its chat template or an adapter
/// failed: the failing crate's own error.
#[cfg(feature = "core")]
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading, writing or fetching a model file.
    #[error(transparent)]
    File(#[from] twain_io::IoError),
    /// A file system call on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Building the transformer (configuration, shapes, KV plan).
    #[error(transparent)]
    Model(#[from] twain_core::CoreError),
    /// Converting, quantizing or assembling shipped parameters.
    #[error(transparent)]
    Convert(#[from] twain_convert::ConvertError),
    /// The tokenizer or the chat template in the file.
    #[error(transparent)]
    Tokenizer(#[from] twain_tokenizer::TokenizerError),
    /// A LoRA adapter.
    #[error(transparent)]
    Adapter(#[from] twain_adapters::AdapterError),
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::ContextOverflow {
                position,
                new_tokens,
                context_length,
            } => Error::ExceededContextWindow {
                needed: position + new_tokens,
                limit: context_length,
            },
            other => Error::Model(other),
        }
    }
}
