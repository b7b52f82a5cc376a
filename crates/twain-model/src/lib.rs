//! The small [`Model`] trait that everything above a model in twain is written
//! against: sampling, sessions, streaming, guided generation and the CLI only
//! need a model that can append tokens to a per-sequence state and report the
//! logits of the last position. Beside it, the [`Tokenize`] and
//! [`ChatFormat`] traits (with [`Message`] and [`Role`]) say what generation
//! needs from a tokenizer and a chat template, so a third-party tokenizer
//! depends on this crate only. [`ModelConfig`] is the plain description of a
//! Llama-family decoder's hyperparameters that the file readers fill in and
//! twain-core interprets. No model, file format or kernel lives here.
//!
//! A downstream app can implement [`Model`] for its own model and keep the rest
//! of the stack:
//!
//! ```
//! use twain_model::{Model, ModelError, ModelInfo, SpecialTokens, TokenId};
//!
//! /// Predicts "next id = last id + 1" with certainty.
//! struct Counter(ModelInfo);
//!
//! impl Model for Counter {
//!     type State = Vec<TokenId>;
//!     fn info(&self) -> &ModelInfo { &self.0 }
//!     fn new_state(&self) -> Self::State { Vec::new() }
//!     fn forward(&self, state: &mut Vec<TokenId>, tokens: &[TokenId], logits: &mut [f32])
//!         -> Result<(), ModelError> {
//!         self.0.check_forward(state.len(), tokens, logits.len())?;
//!         state.extend_from_slice(tokens);
//!         logits.fill(0.0);
//!         let last = *tokens.last().unwrap() as usize;
//!         logits[(last + 1) % self.0.vocab_size] = 10.0;
//!         Ok(())
//!     }
//!     fn position(&self, state: &Vec<TokenId>) -> usize { state.len() }
//!     fn truncate(&self, state: &mut Vec<TokenId>, len: usize) -> Result<(), ModelError> {
//!         if len > state.len() {
//!             return Err(ModelError::TruncateBeyondEnd { len, position: state.len() });
//!         }
//!         state.truncate(len);
//!         Ok(())
//!     }
//! }
//!
//! let model = Counter(ModelInfo::new("counter", 8, 16));
//! let mut state = model.new_state();
//! let mut logits = vec![0.0; 8];
//! model.forward(&mut state, &[3], &mut logits).unwrap();
//! assert_eq!(logits.iter().position(|&l| l == 10.0), Some(4));
//! ```
#![deny(missing_docs)]

use thiserror::Error;

mod config;
mod text;

pub use config::{ModelConfig, RopeLayout, RopeScaling};

/// By-value setters for an options struct's public fields, so callers
/// outside the crate build `#[non_exhaustive]` options as
/// `Options::default().field(value)`.
#[doc(hidden)]
#[macro_export]
macro_rules! setters {
    ($t:ident $(<$lt:lifetime>)? { $($f:ident : $ty:ty),* $(,)? }) => {
        impl$(<$lt>)? $t$(<$lt>)? {
            $(
                #[doc = concat!("Set `", stringify!($f), "`.")]
                #[must_use]
                pub fn $f(mut self, value: $ty) -> Self {
                    self.$f = value;
                    self
                }
            )*
        }
    };
}

pub use text::{BoxError, ChatFormat, ChatMl, Message, Role, Tokenize};

/// A token id in a model's vocabulary.
pub type TokenId = u32;

/// Token ids with a special meaning to generation: one type from the tokenizer
/// (which finds them) through the model file (which stores them, serialised) to
/// the generation loop (which stops at them). `None`: the vocabulary has no such
/// token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// Beginning of sequence, if the model uses one.
    pub bos: Option<TokenId>,
    /// End of sequence / end of text (for chat models often the end-of-turn token).
    pub eos: Option<TokenId>,
    /// End of turn (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3).
    pub eot: Option<TokenId>,
    /// End of message (Llama 3.1 `<|eom_id|>`: a tool call is pending).
    pub eom: Option<TokenId>,
    /// Unknown token.
    pub unk: Option<TokenId>,
    /// Padding.
    pub pad: Option<TokenId>,
    /// Further ids that end generation, e.g. the end marker a chat template
    /// writes when the file names another end-of-turn token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_stops: Vec<TokenId>,
}

impl SpecialTokens {
    /// True when `token` ends generation: end of sequence, of turn, of
    /// message, or one of [`extra_stops`](Self::extra_stops).
    pub fn is_stop(&self, token: TokenId) -> bool {
        [self.eos, self.eot, self.eom].contains(&Some(token)) || self.extra_stops.contains(&token)
    }

    /// Every id that ends generation, in the order eos, eot, eom, extras; no
    /// duplicates.
    pub fn stop_ids(&self) -> Vec<TokenId> {
        let mut ids = Vec::with_capacity(3 + self.extra_stops.len());
        let named = [self.eos, self.eot, self.eom].into_iter().flatten();
        for id in named.chain(self.extra_stops.iter().copied()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Every id this names, for range checks against a vocabulary.
    pub fn ids(&self) -> impl Iterator<Item = TokenId> + '_ {
        [self.bos, self.eos, self.eot, self.eom, self.unk, self.pad]
            .into_iter()
            .flatten()
            .chain(self.extra_stops.iter().copied())
    }
}

/// What a caller needs to know about a model to drive it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// A human-readable name.
    pub name: String,
    /// Number of logits `forward` writes.
    pub vocab_size: usize,
    /// Maximum number of positions a state can hold.
    pub context_length: usize,
    /// Special tokens.
    pub special: SpecialTokens,
}

impl ModelInfo {
    /// A `ModelInfo` with no special tokens.
    pub fn new(name: impl Into<String>, vocab_size: usize, context_length: usize) -> Self {
        Self {
            name: name.into(),
            vocab_size,
            context_length,
            special: SpecialTokens::default(),
        }
    }

    /// The checks every `forward` implementation must make before touching its
    /// state: non-empty input, token ids in range, a logits buffer of
    /// `vocab_size`, and no overflow of the context window.
    pub fn check_forward(
        &self,
        position: usize,
        tokens: &[TokenId],
        logits_len: usize,
    ) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        if logits_len != self.vocab_size {
            return Err(ModelError::LogitsLength {
                expected: self.vocab_size,
                got: logits_len,
            });
        }
        if let Some((index, &token)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.vocab_size)
        {
            return Err(ModelError::TokenOutOfRange {
                token,
                index,
                vocab_size: self.vocab_size,
            });
        }
        let needed = position + tokens.len();
        if needed > self.context_length {
            return Err(ModelError::ContextOverflow {
                position,
                new_tokens: tokens.len(),
                context_length: self.context_length,
            });
        }
        Ok(())
    }
}

/// Errors a [`Model`] reports. A failed call leaves the state as it was.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum ModelError {
    /// `forward` was called with no tokens.
    #[error("forward called with no tokens")]
    EmptyInput,
    /// A token id is not in the vocabulary.
    #[error("token id {token} at input index {index} is out of range (vocabulary has {vocab_size} tokens)")]
    TokenOutOfRange {
        /// The offending id.
        token: TokenId,
        /// Its index in the input slice.
        index: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Appending the tokens would pass the context window.
    #[error("context window exceeded: state holds {position} tokens, {new_tokens} more would pass the context length {context_length}")]
    ContextOverflow {
        /// Tokens already in the state.
        position: usize,
        /// Tokens the call tried to add.
        new_tokens: usize,
        /// The model's context length.
        context_length: usize,
    },
    /// The logits buffer has the wrong length.
    #[error("logits buffer holds {got} values, the model writes {expected}")]
    LogitsLength {
        /// `vocab_size`.
        expected: usize,
        /// The buffer's length.
        got: usize,
    },
    /// `truncate` asked for a length longer than the state.
    #[error("cannot truncate to {len} tokens: the state holds only {position}")]
    TruncateBeyondEnd {
        /// Requested length.
        len: usize,
        /// Current length.
        position: usize,
    },
    /// The state was made by another model or is otherwise unusable with this one.
    #[error("state does not belong to this model: {0}")]
    ForeignState(String),
    /// Anything else: the implementation's own error, which says what and
    /// where (for twain's transformer a `twain_core::CoreError`).
    #[error("{0}")]
    Other(#[source] SharedError),
}

impl ModelError {
    /// [`ModelError::Other`] holding `e` as its source.
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ModelError::Other(SharedError(std::sync::Arc::new(e)))
    }
}

/// An implementation's own error inside a [`ModelError`], shared so the
/// error stays `Clone`. It dereferences to the error itself, and
/// [`ModelError`]'s `source()` is that error, so `downcast_ref` reaches the
/// concrete type.
#[derive(Clone)]
pub struct SharedError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl std::ops::Deref for SharedError {
    type Target = dyn std::error::Error + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A language model that appends tokens to per-sequence states.
///
/// One loaded model serves many states (sessions), possibly from several
/// threads at once; all per-sequence data (KV cache, position, adapter choice)
/// lives in [`Model::State`].
pub trait Model: Send + Sync {
    /// Per-sequence state: KV cache, position, chosen adapter.
    type State: Send;

    /// Vocabulary size, context length, special tokens.
    fn info(&self) -> &ModelInfo;

    /// A fresh, empty state.
    fn new_state(&self) -> Self::State;

    /// Append `tokens` to the sequence and write the logits of the last
    /// position into `logits` (length `info().vocab_size`).
    ///
    /// On error the state is unchanged.
    fn forward(
        &self,
        state: &mut Self::State,
        tokens: &[TokenId],
        logits: &mut [f32],
    ) -> Result<(), ModelError>;

    /// Number of tokens the state holds.
    fn position(&self, state: &Self::State) -> usize;

    /// Roll the state back to its first `len` tokens.
    fn truncate(&self, state: &mut Self::State, len: usize) -> Result<(), ModelError>;
}

impl<M: Model + ?Sized> Model for &M {
    type State = M::State;
    fn info(&self) -> &ModelInfo {
        (**self).info()
    }
    fn new_state(&self) -> Self::State {
        (**self).new_state()
    }
    fn forward(
        &self,
        state: &mut Self::State,
        tokens: &[TokenId],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        (**self).forward(state, tokens, logits)
    }
    fn position(&self, state: &Self::State) -> usize {
        (**self).position(state)
    }
    fn truncate(&self, state: &mut Self::State, len: usize) -> Result<(), ModelError> {
        (**self).truncate(state, len)
    }
}

impl<M: Model + ?Sized> Model for std::sync::Arc<M> {
    type State = M::State;
    fn info(&self) -> &ModelInfo {
        (**self).info()
    }
    fn new_state(&self) -> Self::State {
        (**self).new_state()
    }
    fn forward(
        &self,
        state: &mut Self::State,
        tokens: &[TokenId],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        (**self).forward(state, tokens, logits)
    }
    fn position(&self, state: &Self::State) -> usize {
        (**self).position(state)
    }
    fn truncate(&self, state: &mut Self::State, len: usize) -> Result<(), ModelError> {
        (**self).truncate(state, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_forward_reports_each_problem() {
        let info = ModelInfo::new("t", 10, 4);
        assert!(matches!(
            info.check_forward(0, &[], 10),
            Err(ModelError::EmptyInput)
        ));
        assert!(matches!(
            info.check_forward(0, &[1, 10], 10),
            Err(ModelError::TokenOutOfRange {
                token: 10,
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            info.check_forward(3, &[1, 2], 10),
            Err(ModelError::ContextOverflow {
                position: 3,
                new_tokens: 2,
                ..
            })
        ));
        assert!(matches!(
            info.check_forward(0, &[1], 9),
            Err(ModelError::LogitsLength {
                expected: 10,
                got: 9
            })
        ));
        assert!(info.check_forward(2, &[1, 2], 10).is_ok());
    }

    #[test]
    fn other_keeps_its_typed_source() {
        use std::error::Error as _;
        let e = ModelError::other(std::io::Error::other("disk"));
        let copy = e.clone();
        assert_eq!(e.to_string(), "disk");
        let src = copy.source().expect("a source");
        assert!(src.downcast_ref::<std::io::Error>().is_some());
    }
}
