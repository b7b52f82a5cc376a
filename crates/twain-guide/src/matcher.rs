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
    /// JSON lexical state after each consumed token (whether inside a
    /// string), for [`closing_path`](Self::closing_path)'s choices.
    lex: Vec<Lex>,
}

/// Where a JSON text is, lexically: inside a string, after a backslash.
#[derive(Clone, Copy, Default, Debug)]
struct Lex {
    in_string: bool,
    escaped: bool,
}

impl Lex {
    fn after(mut self, bytes: &[u8]) -> Lex {
        for &b in bytes {
            if !self.in_string {
                self.in_string = b == b'"';
            } else if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
        }
        self
    }
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
            lex: Vec::new(),
        }
    }

    fn lex_now(&self) -> Lex {
        self.lex.last().copied().unwrap_or_default()
    }

    /// Consume `token` in llguidance and track the lexical state.
    fn advance(&mut self, token: TokenId) -> Result<(), GuideError> {
        self.inner.consume_token(token).map_err(matcher_err)?;
        let next = self.lex_now().after(self.vocab.token_bytes(token));
        self.lex.push(next);
        Ok(())
    }

    /// Undo `n` tokens in llguidance and the lexical state.
    fn retreat(&mut self, n: usize) -> Result<(), GuideError> {
        self.inner.rollback(n).map_err(matcher_err)?;
        self.lex.truncate(self.lex.len().saturating_sub(n));
        Ok(())
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
        self.advance(token)?;
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

    /// A short way to finish from here: tokens which, consumed in order, reach
    /// a state where the output may end; `None` when none is found within
    /// `limit` tokens (or the constraint is stuck). The state is unchanged.
    ///
    /// The path is greedy, so its length is an upper bound on the fewest
    /// tokens that finish: at each state it takes the forced tokens, else the
    /// first allowed of the vocabulary's closers (`"}`, `"` inside a string, `}`, `]`,
    /// `0`, `null`, ... — see [`Vocabulary::closers`]), else the lowest allowed
    /// id. The same state always gives the same path, so following it
    /// shortens it by one token per step.
    pub fn closing_path(&mut self, limit: usize) -> Result<Option<Vec<TokenId>>, GuideError> {
        if let Some(e) = self.inner.get_error() {
            return Err(GuideError::Matcher(e));
        }
        let mut path = Vec::new();
        let found = self.walk_to_close(limit, &mut path);
        if !path.is_empty() {
            self.retreat(path.len())?;
        }
        Ok(found?.then_some(path))
    }

    /// [`closing_path`](Self::closing_path)'s walk; consumes what it pushes.
    fn walk_to_close(&mut self, limit: usize, path: &mut Vec<TokenId>) -> Result<bool, GuideError> {
        loop {
            if self.inner.is_accepting().map_err(matcher_err)? {
                return Ok(true);
            }
            if path.len() >= limit || self.inner.is_stopped() {
                return Ok(false);
            }
            let forced: Vec<TokenId> = self
                .inner
                .compute_ff_tokens()
                .into_iter()
                .take_while(|&t| !self.vocab.is_stop(t))
                .collect();
            let next = if forced.is_empty() {
                match self.pick_closer()? {
                    Some(t) => vec![t],
                    None => return Ok(false),
                }
            } else {
                forced
            };
            for t in next {
                if path.len() >= limit {
                    return Ok(false);
                }
                self.advance(t)?;
                path.push(t);
            }
        }
    }

    /// The first allowed closer, else the lowest allowed id that is not a
    /// stop token.
    fn pick_closer(&mut self) -> Result<Option<TokenId>, GuideError> {
        let in_string = self.lex_now().in_string;
        let vocab = self.vocab.clone();
        for c in vocab.closers(in_string) {
            if self.inner.validate_tokens(&[c]).map_err(matcher_err)? == 1 {
                return Ok(Some(c));
            }
        }
        let vob = self.inner.compute_mask().map_err(matcher_err)?;
        for (i, &w) in vob.as_slice().iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let t = (i * 32) as TokenId + w.trailing_zeros();
                if (t as usize) < self.vocab.vocab_size() && !self.vocab.is_stop(t) {
                    return Ok(Some(t));
                }
                w &= w - 1;
            }
        }
        Ok(None)
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
        self.retreat(n)?;
        self.consumed -= n;
        Ok(())
    }

    /// Back to the start of the output.
    pub fn reset(&mut self) -> Result<(), GuideError> {
        self.inner.reset().map_err(matcher_err)?;
        self.lex.clear();
        self.consumed = 0;
        Ok(())
    }
}
