//! The tokenizer side: llguidance's token trie and parser factory, built once
//! per tokenizer from the bytes of every token and an encode function.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::ParserFactory;
use twain_model::TokenId;
use twain_sample::TokenMask;

use crate::{Constraint, GuideError, Matcher};

/// What one token id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBytes {
    /// The raw bytes (for a special token: its text, e.g. `<|im_end|>`).
    pub bytes: Vec<u8>,
    /// A control token (never part of generated text; stop tokens are
    /// always treated as special).
    pub special: bool,
}

impl TokenBytes {
    /// An ordinary token standing for `bytes`.
    pub fn text(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            special: false,
        }
    }

    /// A control token named `name` (e.g. `<|im_end|>`).
    pub fn special(name: impl Into<String>) -> Self {
        Self {
            bytes: name.into().into_bytes(),
            special: true,
        }
    }
}

/// Texts that finish a JSON value soonest outside a string, best first:
/// close a container, the shortest scalars and empty containers, then what
/// opens or continues one. [`Matcher::closing_path`] tries them in order.
pub const CLOSERS: &[&str] = &[
    "}", "]", "0", "\"\"", "[]", "{}", "null", "false", "true", "1", "\"", ",", ":", "[", "{", "a",
    "-", ".", " ",
];

/// The same inside a string: close it (and its container), tried before
/// [`CLOSERS`].
pub const STRING_CLOSERS: &[&str] = &["\"}", "\"]", "\""];

/// Bytes of JSON's structure: a token holding one of them is a
/// [`Vocabulary::structural_tokens`] entry.
pub const STRUCTURAL_BYTES: &[u8] = b"\"{}[],:\n";

/// The ids of `texts` in `words` (special tokens carry a marker byte and
/// never match), in the order of `texts`.
fn ids_of(texts: &[&str], words: &[Vec<u8>]) -> Vec<TokenId> {
    let mut ids: Vec<Option<TokenId>> = vec![None; texts.len()];
    for (id, w) in words.iter().enumerate() {
        if let Some(k) = texts.iter().position(|c| c.as_bytes() == w.as_slice()) {
            ids[k].get_or_insert(id as TokenId);
        }
    }
    ids.into_iter().flatten().collect()
}

type EncodeFn = dyn Fn(&str) -> Result<Vec<TokenId>, String> + Send + Sync;

/// llguidance's view of the tokenizer: the trie plus the encode function
/// (used to tokenize text the grammar forces, canonically).
struct TokenizerAdapter {
    trie: TokTrie,
    encode: Box<EncodeFn>,
}

impl TokenizerEnv for TokenizerAdapter {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            (self.encode)(text).unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// A tokenizer as constrained decoding sees it: built once (it walks the
/// whole vocabulary), shared as an `Arc` by every [`Matcher`].
pub struct Vocabulary {
    factory: ParserFactory,
    vocab_size: usize,
    stop_tokens: Vec<TokenId>,
    closers: Vec<TokenId>,
    string_closers: Vec<TokenId>,
    structural: Vec<TokenId>,
    env: TokEnv,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("vocab_size", &self.vocab_size)
            .field("stop_tokens", &self.stop_tokens)
            .finish()
    }
}

impl Vocabulary {
    /// Build from what every token id stands for (`tokens[id]`; the length is
    /// the vocabulary size, which must equal the model's logits length — pad
    /// with [`TokenBytes::special`] placeholders), the tokens that end the
    /// output (at least one), and the tokenizer's encode function (text to
    /// ids, no special tokens added; used for text the grammar forces).
    pub fn new(
        tokens: Vec<TokenBytes>,
        stop_tokens: &[TokenId],
        encode: impl Fn(&str) -> Result<Vec<TokenId>, String> + Send + Sync + 'static,
    ) -> Result<Arc<Vocabulary>, GuideError> {
        let vocab_size = tokens.len();
        if vocab_size == 0 || vocab_size > u32::MAX as usize / 2 {
            return Err(GuideError::Vocabulary(format!(
                "vocabulary size {vocab_size} is out of range"
            )));
        }
        if stop_tokens.is_empty() {
            return Err(GuideError::Vocabulary(
                "no stop token: the output could never end".into(),
            ));
        }
        if let Some(&bad) = stop_tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(GuideError::Vocabulary(format!(
                "stop token {bad} is past the vocabulary ({vocab_size} tokens)"
            )));
        }
        let words: Vec<Vec<u8>> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                let special = t.special || stop_tokens.contains(&(id as TokenId));
                if special || t.bytes.is_empty() {
                    let name = if t.bytes.is_empty() {
                        format!("<[{id}]>").into_bytes()
                    } else {
                        t.bytes
                    };
                    let mut w = Vec::with_capacity(name.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(&name);
                    w
                } else {
                    t.bytes
                }
            })
            .collect();
        let closers = ids_of(CLOSERS, &words);
        let string_closers = ids_of(STRING_CLOSERS, &words);
        let structural = words
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                w.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER)
                    || w.iter().any(|b| STRUCTURAL_BYTES.contains(b))
            })
            .map(|(id, _)| id as TokenId)
            .collect();
        let mut stops = stop_tokens.to_vec();
        stops.dedup();
        let info = TokRxInfo::new(vocab_size as u32, stops[0]);
        let built = catch_unwind(AssertUnwindSafe(|| {
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&stops);
            let env: TokEnv = Arc::new(TokenizerAdapter {
                trie,
                encode: Box::new(encode),
            });
            ParserFactory::new_simple(&env).map(|f| (f, env))
        }));
        let (mut factory, env) = match built {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return Err(GuideError::Vocabulary(e.to_string())),
            Err(_) => {
                return Err(GuideError::Vocabulary(
                    "llguidance failed to build the token trie".into(),
                ))
            }
        };
        factory.quiet();
        Ok(Arc::new(Vocabulary {
            factory,
            vocab_size,
            stop_tokens: stops,
            closers,
            string_closers,
            structural,
            env,
        }))
    }

    /// Number of token ids (the length of every mask).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The tokens that end the output.
    pub fn stop_tokens(&self) -> &[TokenId] {
        &self.stop_tokens
    }

    /// The tokens [`Matcher::closing_path`] tries, in order: the ids of
    /// [`STRING_CLOSERS`] (inside a JSON string only), then of [`CLOSERS`]
    /// (those the vocabulary has).
    pub fn closers(&self, in_string: bool) -> impl Iterator<Item = TokenId> + '_ {
        let first: &[TokenId] = if in_string { &self.string_closers } else { &[] };
        first.iter().chain(&self.closers).copied()
    }

    /// The tokens that hold a byte of JSON's structure (a quote, bracket, brace, comma, colon or newline)
    /// or are special, in id order: where a repeat penalty's matches stop
    /// (keys and separators must recur).
    pub fn structural_tokens(&self) -> &[TokenId] {
        &self.structural
    }

    /// The bytes of `token` (special tokens: a marker byte and their name).
    pub(crate) fn token_bytes(&self, token: TokenId) -> &[u8] {
        self.env.tok_trie().token(token)
    }

    /// Whether `token` ends the output.
    pub fn is_stop(&self, token: TokenId) -> bool {
        self.stop_tokens.contains(&token)
    }

    /// A mask over this vocabulary (all denied), to reuse with
    /// [`Matcher::fill_mask`].
    pub fn new_mask(&self) -> TokenMask {
        TokenMask::deny_all(self.vocab_size)
    }

    /// Compile `constraint` into a fresh matcher. Compiling a JSON schema or
    /// grammar costs from well under a millisecond to a few for large schemas;
    /// the vocabulary work is shared.
    pub fn matcher(self: &Arc<Self>, constraint: &Constraint) -> Result<Matcher, GuideError> {
        let grammar = constraint.to_grammar();
        let parser = catch_unwind(AssertUnwindSafe(|| self.factory.create_parser(grammar)));
        let parser = match parser {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(GuideError::Constraint {
                    kind: constraint.kind(),
                    message: e.to_string(),
                })
            }
            Err(_) => {
                return Err(GuideError::Constraint {
                    kind: constraint.kind(),
                    message: "llguidance panicked while compiling".into(),
                })
            }
        };
        let inner = llguidance::Matcher::new(Ok(parser));
        if let Some(e) = inner.get_error() {
            return Err(GuideError::Constraint {
                kind: constraint.kind(),
                message: e,
            });
        }
        Ok(Matcher::new(inner, self.clone()))
    }
}
