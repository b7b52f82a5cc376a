//! The crate's error type.

use thiserror::Error;
use twain_model::TokenId;

/// Everything that can go wrong while configuring a sampler or sampling.
///
/// Sampling never panics on bad input: empty or all-`-inf`/NaN logits, a mask
/// of the wrong size and out-of-range token ids are reported here.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SampleError {
    /// The logits slice is empty.
    #[error("logits are empty")]
    EmptyLogits,
    /// No allowed token has a finite logit (all are `-inf` or NaN).
    #[error("none of the {allowed} allowed logits is finite (all are -inf or NaN)")]
    NoFiniteLogits {
        /// Number of tokens the mask allowed (the vocabulary size without a mask).
        allowed: usize,
    },
    /// The token mask allows no token at all.
    #[error("the token mask allows none of its {vocab_size} tokens")]
    EmptyMask {
        /// The mask's vocabulary size.
        vocab_size: usize,
    },
    /// The token mask and the logits cover vocabularies of different sizes.
    #[error("token mask covers {mask} tokens but the logits hold {logits}")]
    MaskSizeMismatch {
        /// The mask's vocabulary size.
        mask: usize,
        /// The length of the logits (or of the other mask).
        logits: usize,
    },
    /// A token id is not in the vocabulary.
    #[error("{what}: token id {token} is out of range (vocabulary has {vocab_size} tokens)")]
    TokenOutOfRange {
        /// Where the id came from: "history", "logit bias", "token mask".
        what: &'static str,
        /// The offending id.
        token: TokenId,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A sampling parameter has a value outside its domain.
    #[error("{name} = {value}: expected {expected}")]
    InvalidParameter {
        /// The parameter, as named by the builder method that sets it.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the parameter accepts.
        expected: &'static str,
    },
}
