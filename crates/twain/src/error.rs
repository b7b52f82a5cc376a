use thiserror::Error;
use twain_model::ModelError;

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
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Rendering the chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// Loading or converting a model failed.
    #[error("loading model: {0}")]
    Load(String),
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
