//! One request's state machine.

use std::sync::Arc;

use twain_model::TokenId;
use twain_sample::TokenMask;

use crate::{GuideError, Vocabulary};

/// The state of one constrained output: which tokens may come next, what was
/// consumed. Create with [`Vocabulary::matcher`]; errors leave it in an
/// error state that every later call reports.
pub struct Matcher {
    inner: llguidance::Matcher,
    vocab: Arc<Vocabulary>,
    consumed: usize,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("consumed", &self.consumed)
            .field("stopped", &self.inner.is_stopped())
            .field("error", &self.inner.get_error())
            .finish()
    }
}

fn matcher_err(e: impl std::fmt::Display) -> GuideError {
    GuideError::Matcher(e.to_string())
}

impl Matcher {
    pub(crate) fn new(inner: llguidance::Matcher, vocab: Arc<Vocabulary>) -> Self {
        Self {
            inner,
            vocab,
            consumed: 0,
        }
    }

    /// The vocabulary this matcher works over.
    pub fn vocabulary(&self) -> &Arc<Vocabulary> {
        &self.vocab
    }

    /// Write the tokens allowed next into `mask` (which must cover the
    /// vocabulary). Stop tokens are allowed exactly when the output may end
    /// here; once the matcher [is stopped](Self::is_stopped) only they are.
    pub fn fill_mask(&mut self, mask: &mut TokenMask) -> Result<(), GuideError> {
        if mask.vocab_size() != self.vocab.vocab_size() {
            return Err(GuideError::MaskSize {
                mask: mask.vocab_size(),
                vocab: self.vocab.vocab_size(),
            });
        }
        let vob = self.inner.compute_mask_or_eos().map_err(matcher_err)?;
        let src = vob.as_slice();
        for (i, w) in mask.words_mut().iter_mut().enumerate() {
            let lo = src.get(2 * i).copied().unwrap_or(0) as u64;
            let hi = src.get(2 * i + 1).copied().unwrap_or(0) as u64;
            *w = lo | hi << 32;
        }
        Ok(())
    }

    /// The tokens allowed next, as a new mask.
    pub fn compute_mask(&mut self) -> Result<TokenMask, GuideError> {
        let mut mask = self.vocab.new_mask();
        self.fill_mask(&mut mask)?;
        Ok(mask)
    }

    /// Advance by one token. A token the grammar does not allow here is
    /// [`GuideError::Rejected`] and leaves the state unchanged. A stop token
    /// is accepted when the output may end.
    pub fn consume(&mut self, token: TokenId) -> Result<(), GuideError> {
        if token as usize >= self.vocab.vocab_size() {
            return Err(GuideError::Rejected {
                token,
                message: format!("past the vocabulary ({} tokens)", self.vocab.vocab_size()),
            });
        }
        if let Some(e) = self.inner.get_error() {
            return Err(GuideError::Matcher(e));
        }
        match self.inner.validate_tokens(&[token]) {
            Ok(1) => {}
            Ok(_) => {
                return Err(GuideError::Rejected {
                    token,
                    message: "the grammar does not allow it".into(),
                })
            }
            Err(e) => return Err(matcher_err(e)),
        }
        self.inner.consume_token(token).map_err(matcher_err)?;
        self.consumed += 1;
        Ok(())
    }

    /// Advance by several tokens (see [`consume`](Self::consume)); stops at
    /// the first rejected one, after consuming those before it.
    pub fn consume_all(&mut self, tokens: &[TokenId]) -> Result<(), GuideError> {
        tokens.iter().try_for_each(|&t| self.consume(t))
    }

    /// Tokens the grammar forces next (e.g. the rest of a fixed key), already
    /// tokenized canonically; empty when the next token is a real choice.
    /// They are not consumed: pass them to [`consume_all`](Self::consume_all).
    pub fn forced_tokens(&mut self) -> Vec<TokenId> {
        if self.inner.is_stopped() {
            return Vec::new();
        }
        self.inner.compute_ff_tokens()
    }

    /// Whether the output may end here (a stop token would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.inner.is_accepting().unwrap_or(false)
    }

    /// Whether nothing but a stop token can follow (the output is complete),
    /// or the matcher is in an error state.
    pub fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    /// The error this matcher is stuck in, if any.
    pub fn error(&self) -> Option<String> {
        self.inner.get_error()
    }

    /// Number of tokens consumed so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Undo the last `n` consumed tokens.
    pub fn rollback(&mut self, n: usize) -> Result<(), GuideError> {
        if n > self.consumed {
            return Err(GuideError::Matcher(format!(
                "cannot roll back {n} tokens: only {} consumed",
                self.consumed
            )));
        }
        self.inner.rollback(n).map_err(matcher_err)?;
        self.consumed -= n;
        Ok(())
    }

    /// Back to the start of the output.
    pub fn reset(&mut self) -> Result<(), GuideError> {
        self.inner.reset().map_err(matcher_err)?;
        self.consumed = 0;
        Ok(())
    }
}
