//! The crate's error type.

use twain_model::TokenId;

/// What went wrong in constrained decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuideError {
    /// The tokenizer side could not be built (e.g. no stop token).
    #[error("vocabulary: {0}")]
    Vocabulary(String),
    /// The constraint does not compile (bad schema, regex or grammar).
    #[error("{kind} constraint does not compile: {message}")]
    Constraint {
        /// "JSON schema", "regex" or "Lark grammar".
        kind: &'static str,
        /// llguidance's explanation.
        message: String,
    },
    /// The token is not allowed at this point of the output.
    #[error("token {token} is not allowed here: {message}")]
    Rejected {
        /// The token.
        token: TokenId,
        /// Why.
        message: String,
    },
    /// The matcher failed (it stays in this error state).
    #[error("matcher: {0}")]
    Matcher(String),
    /// The mask does not cover the vocabulary.
    #[error("token mask covers {mask} tokens, the vocabulary has {vocab}")]
    MaskSize {
        /// Tokens the mask covers.
        mask: usize,
        /// Tokens of the vocabulary.
        vocab: usize,
    },
}
