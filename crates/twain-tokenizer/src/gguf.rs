//! Building a tokenizer from GGUF `tokenizer.ggml.*` metadata.
//!
//! Two families are supported, both built through the `tokenizers` crate's components:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE (vocab + merges). The text is first split
//!   by the regexes of the pre-tokenizer named in `tokenizer.ggml.pre` (the same splitting
//!   llama.cpp does, one `Split` per regex, each applied to the pieces of the previous one), then
//!   mapped to the GPT-2 byte alphabet (`ByteLevel` without its own regex).
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE: spaces become `▁`, an optional `▁` is
//!   prepended, pieces are merged by their score (`tokenizer.ggml.scores`), characters outside the
//!   vocabulary fall back to `<0xXX>` byte tokens.
//!
//! Tokens of type 3 (control) become special added tokens, type 4 (user-defined) non-special
//! added tokens; both are matched verbatim in the input text.

use std::collections::{HashMap, HashSet};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::error::{Result, TokenizerError};

/// GGUF token type: an ordinary vocabulary piece.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF token type: the unknown token.
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// GGUF token type: a control token (`<s>`, `<|im_end|>`, ...), never produced from plain text.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type: a user-defined token, matched verbatim in the text.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// GGUF token type: an unused slot.
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// GGUF token type: a SentencePiece byte token `<0xXX>`.
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// The tokenizer facts a GGUF file carries in its `tokenizer.ggml.*` keys, read into plain
/// Rust values. [`GgufVocab::from_metadata`] reads them from a file;
/// [`crate::Tokenizer::from_gguf_vocab`] builds the tokenizer. Build one by hand to make a small
/// test tokenizer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`"smollm"`, `"llama-bpe"`, `"qwen2"`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the piece of every id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty: every token is normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities; empty for BPE).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (absent: the family's default, as llama.cpp decides it).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; absent: true).
    pub add_space_prefix: Option<bool>,
}

/// A view of GGUF metadata: anything that can look a key up.
pub(crate) trait MetaLookup {
    fn meta(&self, key: &str) -> Option<&twain_io::MetaValue>;
}

impl MetaLookup for twain_io::GgufFile {
    fn meta(&self, key: &str) -> Option<&twain_io::MetaValue> {
        self.get(key)
    }
}

impl GgufVocab {
    /// Read the `tokenizer.ggml.*` keys of a GGUF file.
    ///
    /// Fails with [`TokenizerError::MissingKey`] when `tokenizer.ggml.model` or
    /// `tokenizer.ggml.tokens` is absent and with [`TokenizerError::BadMetadata`] when a key has
    /// the wrong type or its array length disagrees with the token list.
    pub fn from_metadata(gguf: &twain_io::GgufFile) -> Result<GgufVocab> {
        Self::from_lookup(gguf)
    }

    pub(crate) fn from_lookup(m: &impl MetaLookup) -> Result<GgufVocab> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let model = match m.meta(MODEL) {
            None => return Err(TokenizerError::MissingKey(MODEL.into())),
            Some(v) => v
                .as_str()
                .ok_or_else(|| {
                    TokenizerError::bad(
                        MODEL,
                        format!("expected a string, found {}", v.type_name()),
                    )
                })?
                .to_owned(),
        };
        let pre = opt_str(m, "tokenizer.ggml.pre")?;
        let tokens = match m.meta(TOKENS) {
            None => return Err(TokenizerError::MissingKey(TOKENS.into())),
            Some(_) => str_array(m, TOKENS)?,
        };
        let n = tokens.len();
        let token_types = int_array(m, "tokenizer.ggml.token_type", n)?;
        let scores = float_array(m, "tokenizer.ggml.scores", n)?;
        let merges = if m.meta("tokenizer.ggml.merges").is_some() {
            str_array(m, "tokenizer.ggml.merges")?
        } else {
            Vec::new()
        };
        Ok(GgufVocab {
            model,
            pre,
            token_types,
            scores,
            merges,
            bos: opt_id(m, "tokenizer.ggml.bos_token_id", n)?,
            eos: opt_id(m, "tokenizer.ggml.eos_token_id", n)?,
            eot: opt_id(m, "tokenizer.ggml.eot_token_id", n)?,
            eom: opt_id(m, "tokenizer.ggml.eom_token_id", n)?,
            unk: opt_id(m, "tokenizer.ggml.unknown_token_id", n)?,
            pad: opt_id(m, "tokenizer.ggml.padding_token_id", n)?,
            add_bos: opt_bool(m, "tokenizer.ggml.add_bos_token")?,
            add_eos: opt_bool(m, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: opt_bool(m, "tokenizer.ggml.add_space_prefix")?,
            tokens,
        })
    }

    /// The GGUF type of token `id` (normal when the file has no type list).
    pub(crate) fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .get(id)
            .copied()
            .unwrap_or(TOKEN_TYPE_NORMAL)
    }
}

fn type_err(key: &str, expected: &str, v: &twain_io::MetaValue) -> TokenizerError {
    TokenizerError::bad(key, format!("expected {expected}, found {}", v.type_name()))
}

fn opt_str(m: &impl MetaLookup, key: &str) -> Result<Option<String>> {
    match m.meta(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| type_err(key, "a string", v)),
    }
}

fn opt_bool(m: &impl MetaLookup, key: &str) -> Result<Option<bool>> {
    match m.meta(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| type_err(key, "a bool", v)),
    }
}

/// A token id key; llama.cpp ignores ids outside the vocabulary (with a warning), so do we.
fn opt_id(m: &impl MetaLookup, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    match m.meta(key) {
        None => Ok(None),
        Some(v) => {
            let id = v
                .as_u64()
                .ok_or_else(|| type_err(key, "an unsigned integer", v))?;
            Ok(u32::try_from(id)
                .ok()
                .filter(|&id| (id as usize) < n_tokens))
        }
    }
}

fn array<'a>(m: &'a impl MetaLookup, key: &str) -> Result<Option<&'a [twain_io::MetaValue]>> {
    match m.meta(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(Some)
            .ok_or_else(|| type_err(key, "an array", v)),
    }
}

fn str_array(m: &impl MetaLookup, key: &str) -> Result<Vec<String>> {
    let Some(items) = array(m, key)? else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_owned).ok_or_else(|| {
                TokenizerError::bad(
                    key,
                    format!("element {i}: expected a string, found {}", v.type_name()),
                )
            })
        })
        .collect()
}

fn check_len(key: &str, len: usize, n_tokens: usize) -> Result<()> {
    if len != n_tokens {
        return Err(TokenizerError::bad(
            key,
            format!("has {len} entries, tokenizer.ggml.tokens has {n_tokens}"),
        ));
    }
    Ok(())
}

fn int_array(m: &impl MetaLookup, key: &str, n_tokens: usize) -> Result<Vec<i32>> {
    let Some(items) = array(m, key)? else {
        return Ok(Vec::new());
    };
    check_len(key, items.len(), n_tokens)?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(|| {
                    TokenizerError::bad(
                        key,
                        format!("element {i}: expected a 32-bit integer, found {v:?}"),
                    )
                })
        })
        .collect()
}

fn float_array(m: &impl MetaLookup, key: &str, n_tokens: usize) -> Result<Vec<f32>> {
    let Some(items) = array(m, key)? else {
        return Ok(Vec::new());
    };
    check_len(key, items.len(), n_tokens)?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64().map(|x| x as f32).ok_or_else(|| {
                TokenizerError::bad(
                    key,
                    format!("element {i}: expected a number, found {}", v.type_name()),
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer regexes. These are the splitting rules of the model families (the regexes of
// their tokenizer.json files, grouped the way llama.cpp groups `tokenizer.ggml.pre` names);
// Oniguruma runs them as written.

/// GPT-2's word splitter.
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3 (tiktoken cl100k style): digits in groups of up to three.
const RE_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: like Llama 3 but every digit alone.
const RE_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Seed-Coder: like Qwen2 with line breaks kept out of punctuation runs.
const RE_SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral Tekken: case-aware words.
const RE_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o (o200k) / Llama 4.
const RE_GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// BLOOM / Poro: words up to whitespace or punctuation.
const RE_BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// How a named pre-tokenizer splits text, and the flags llama.cpp attaches to the name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreTokenizerSpec {
    /// Regexes applied in order, each to the pieces the previous one produced.
    pub regexes: &'static [&'static str],
    /// A word that is itself a vocabulary entry is taken whole, without merges (Llama 3).
    pub ignore_merges: bool,
    /// Whether BOS is added when the file does not say (`tokenizer.ggml.add_bos_token`).
    pub add_bos_default: bool,
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` name (`None`: the key is absent).
pub(crate) fn pre_tokenizer_spec(name: Option<&str>) -> Result<PreTokenizerSpec> {
    const DEFAULT: &[&str] = &[
        r"[\p{P}\$\+<=>\^~\|]+",
        RE_GPT2,
        r"\p{N}+",
        r"[0-9][0-9][0-9]",
    ];
    const GPT2: &[&str] = &[RE_GPT2];
    const DIGITS_GPT2: &[&str] = &[r"\p{N}", RE_GPT2];
    const LLAMA3: &[&str] = &[RE_LLAMA3];
    const QWEN2: &[&str] = &[RE_QWEN2];
    const FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", RE_GPT2, r"[0-9][0-9][0-9]"];
    const TEKKEN: &[&str] = &[RE_TEKKEN];
    const GPT4O: &[&str] = &[RE_GPT4O];
    const BLOOM: &[&str] = &[RE_BLOOM];
    const VIKING: &[&str] = &[RE_BLOOM, r"\p{N}"];
    const SEED_CODER: &[&str] = &[RE_SEED_CODER];

    let plain = |regexes| {
        Ok(PreTokenizerSpec {
            regexes,
            ignore_merges: false,
            add_bos_default: false,
        })
    };
    let Some(name) = name else {
        return plain(DEFAULT);
    };
    match name {
        "default" => plain(DEFAULT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => Ok(PreTokenizerSpec {
            regexes: LLAMA3,
            ignore_merges: true,
            add_bos_default: true,
        }),
        "tekken" => Ok(PreTokenizerSpec {
            regexes: TEKKEN,
            ignore_merges: true,
            add_bos_default: true,
        }),
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => plain(LLAMA3),
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "exaone4" => plain(GPT2),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            plain(DIGITS_GPT2)
        }
        "qwen2" | "qwen2.5" | "qwen-2.5" | "deepseek-r1-qwen" | "kormo" | "stablelm2"
        | "megrez" | "hunyuan" | "grok-2" => plain(QWEN2),
        "seed-coder" => plain(SEED_CODER),
        "falcon" => plain(FALCON),
        "gpt-4o" | "llama4" | "minimax-m2" => plain(GPT4O),
        "bloom" | "poro-chat" | "gpt3-finnish" => plain(BLOOM),
        "viking" => plain(VIKING),
        other => Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
    }
}

// ---------------------------------------------------------------------------------------------
// Building

/// What [`build`] hands back besides the `tokenizers` pipeline.
pub(crate) struct BuiltGguf {
    pub inner: tokenizers::Tokenizer,
    pub add_bos: bool,
    pub add_eos: bool,
    /// SentencePiece with a prepended `▁` (the decoder strips one leading space).
    pub strip_leading_space: bool,
}

/// Build the `tokenizers` pipeline for a GGUF vocabulary.
pub(crate) fn build(v: &GgufVocab) -> Result<BuiltGguf> {
    if v.tokens.is_empty() {
        return Err(TokenizerError::bad(
            "tokenizer.ggml.tokens",
            "the token list is empty",
        ));
    }
    if u32::try_from(v.tokens.len()).is_err() {
        return Err(TokenizerError::bad(
            "tokenizer.ggml.tokens",
            "more than 2^32 tokens",
        ));
    }
    if !v.token_types.is_empty() {
        check_len(
            "tokenizer.ggml.token_type",
            v.token_types.len(),
            v.tokens.len(),
        )?;
    }
    if !v.scores.is_empty() {
        check_len("tokenizer.ggml.scores", v.scores.len(), v.tokens.len())?;
    }
    // First id of every piece (llama.cpp keeps the last; duplicates are broken files anyway).
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(v.tokens.len());
    for (id, tok) in v.tokens.iter().enumerate() {
        vocab.entry(tok.clone()).or_insert(id as u32);
    }
    let first_of_its_piece: Vec<bool> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(id, tok)| vocab.get(tok) == Some(&(id as u32)))
        .collect();
    let mut built = match v.model.as_str() {
        "gpt2" => build_byte_level(v, vocab)?,
        "llama" => build_sentencepiece(v, vocab)?,
        other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
    };

    // Control tokens are special (skipped by `decode(.., true)`), user-defined ones are not; both
    // are matched verbatim in the input text.
    let mut added = Vec::new();
    for (id, tok) in v.tokens.iter().enumerate() {
        let ty = v.token_type(id);
        if (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            && !tok.is_empty()
            && first_of_its_piece[id]
        {
            added.push(AddedToken::from(tok.clone(), ty == TOKEN_TYPE_CONTROL).normalized(false));
        }
    }
    built.inner.add_special_tokens(&added);

    let bos = v.bos.filter(|_| built.add_bos);
    let eos = v.eos.filter(|_| built.add_eos);
    if built.add_bos && bos.is_none() {
        return Err(TokenizerError::bad(
            "tokenizer.ggml.bos_token_id",
            "BOS must be added (tokenizer.ggml.add_bos_token or the family default) but there is no BOS id",
        ));
    }
    if built.add_eos && eos.is_none() {
        return Err(TokenizerError::bad(
            "tokenizer.ggml.eos_token_id",
            "EOS must be added (tokenizer.ggml.add_eos_token) but there is no EOS id",
        ));
    }
    if bos.is_some() || eos.is_some() {
        let piece = |id: u32| v.tokens[id as usize].clone();
        let processor =
            post_processor(bos.map(|id| (id, piece(id))), eos.map(|id| (id, piece(id))))?;
        built.inner.with_post_processor(Some(processor));
    }
    Ok(built)
}

fn build_byte_level(v: &GgufVocab, vocab: HashMap<String, u32>) -> Result<BuiltGguf> {
    let spec = pre_tokenizer_spec(v.pre.as_deref())?;
    let mut merges = Vec::with_capacity(v.merges.len());
    for (i, m) in v.merges.iter().enumerate() {
        // Split at the first space after the first character, as llama.cpp does.
        let split = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at);
        let Some(at) = split else {
            return Err(TokenizerError::bad(
                "tokenizer.ggml.merges",
                format!("entry {i} ({m:?}) is not \"left right\""),
            ));
        };
        merges.push((m[..at].to_owned(), m[at + 1..].to_owned()));
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<BpeVocab>(), merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| TokenizerError::Backend(format!("byte-level BPE from GGUF: {e}")))?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.regexes.len() + 1);
    for re in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Backend(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());

    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(PreTokenizerSequence::new(steps)));
    inner.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(BuiltGguf {
        inner,
        add_bos: v.add_bos.unwrap_or(spec.add_bos_default),
        add_eos: v.add_eos.unwrap_or(false),
        strip_leading_space: false,
    })
}

fn build_sentencepiece(v: &GgufVocab, vocab: HashMap<String, u32>) -> Result<BuiltGguf> {
    if v.scores.is_empty() {
        return Err(TokenizerError::MissingKey("tokenizer.ggml.scores".into()));
    }
    let merges = sentencepiece_merges(v, &vocab)?;
    let unk = v
        .unk
        .or_else(|| {
            (0..v.tokens.len())
                .find(|&i| v.token_type(i) == TOKEN_TYPE_UNKNOWN)
                .map(|i| i as u32)
        })
        .map(|id| v.tokens[id as usize].clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<BpeVocab>(), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let model = builder
        .build()
        .map_err(|e| TokenizerError::Backend(format!("SentencePiece BPE from GGUF: {e}")))?;

    let add_space_prefix = v.add_space_prefix.unwrap_or(true);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to)
            .map_err(|e| TokenizerError::Backend(format!("replace {from:?}: {e}")))
    };
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norm.push(Prepend::new("▁".into()).into());
    }
    norm.push(replace(" ", "▁")?.into());
    let mut dec: Vec<DecoderWrapper> = vec![
        replace("▁", " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_normalizer(Some(NormalizerSequence::new(norm)));
    inner.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(BuiltGguf {
        inner,
        add_bos: v.add_bos.unwrap_or(true),
        add_eos: v.add_eos.unwrap_or(false),
        strip_leading_space: add_space_prefix,
    })
}

/// Bytes the SentencePiece merge list (both halves of every merge) may hold: this many times
/// the bytes of all pieces, plus [`SP_MERGE_BYTES_SLACK`]. Real vocabularies need a few times
/// their own bytes; a vocabulary of every length of one repeated letter would need bytes
/// quadratic in its longest piece, and fails with [`TokenizerError::BadMetadata`] instead.
pub const SP_MERGE_BYTES_PER_PIECE_BYTE: usize = 16;
/// See [`SP_MERGE_BYTES_PER_PIECE_BYTE`].
pub const SP_MERGE_BYTES_SLACK: usize = 64 << 20;

/// Polynomial hashing of byte strings modulo the Mersenne prime 2^61 - 1, so the hash of every
/// prefix of a piece comes in one pass and that of a suffix in O(1) from the whole's.
const HASH_MOD: u64 = (1 << 61) - 1;
const HASH_BASE: u64 = 0x1f35_a3c7_9b2d_4e61 % HASH_MOD;

fn hash_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    let r = (p >> 61) as u64 + (p as u64 & HASH_MOD);
    let r = if r >= HASH_MOD { r - HASH_MOD } else { r };
    if r >= HASH_MOD {
        r - HASH_MOD
    } else {
        r
    }
}

fn hash_push(h: u64, byte: u8) -> u64 {
    let r = hash_mul(h, HASH_BASE) + u64::from(byte) + 1;
    if r >= HASH_MOD {
        r - HASH_MOD
    } else {
        r
    }
}

fn hash_pow(mut e: usize) -> u64 {
    let (mut acc, mut b) = (1u64, HASH_BASE);
    while e > 0 {
        if e & 1 == 1 {
            acc = hash_mul(acc, b);
        }
        b = hash_mul(b, b);
        e >>= 1;
    }
    acc
}

fn hash_of(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |h, &b| hash_push(h, b))
}

/// BPE merges equivalent to SentencePiece's score-driven merging: every split of a normal piece
/// into two normal pieces, ordered by the merged piece's score (highest first), ties by the
/// ids of the halves.
///
/// Linear in the vocabulary's bytes plus the merges' bytes: a split is looked up only where
/// both halves have the length of some normal piece and their (length, hash) pair is a normal
/// piece's, hashed in one pass over the piece (the old code hashed both halves at every split,
/// quadratic in a piece's length, so one 10 MB piece hung the load). The merges' bytes are
/// bounded by [`SP_MERGE_BYTES_PER_PIECE_BYTE`].
fn sentencepiece_merges(
    v: &GgufVocab,
    vocab: &HashMap<String, u32>,
) -> Result<Vec<(String, String)>> {
    let normal = |id: u32| v.token_type(id as usize) == TOKEN_TYPE_NORMAL;
    // The normal pieces that own their id in `vocab`: only these can be halves.
    let owned =
        |id: usize, piece: &str| normal(id as u32) && vocab.get(piece) == Some(&(id as u32));
    let mut keys: HashSet<(usize, u64)> = HashSet::new();
    let mut lengths: Vec<usize> = Vec::new();
    let mut piece_bytes = 0usize;
    for (id, piece) in v.tokens.iter().enumerate() {
        piece_bytes = piece_bytes.saturating_add(piece.len());
        if owned(id, piece) {
            keys.insert((piece.len(), hash_of(piece.as_bytes())));
            lengths.push(piece.len());
        }
    }
    lengths.sort_unstable();
    lengths.dedup();
    let max_len = lengths.last().copied().unwrap_or(0);
    let mut is_length = vec![false; max_len + 1];
    let mut pow_of_length: HashMap<usize, u64> = HashMap::with_capacity(lengths.len());
    for &n in &lengths {
        is_length[n] = true;
        pow_of_length.insert(n, hash_pow(n));
    }
    let budget = piece_bytes
        .saturating_mul(SP_MERGE_BYTES_PER_PIECE_BYTE)
        .saturating_add(SP_MERGE_BYTES_SLACK);
    let mut used = 0usize;
    let mut all: Vec<(f32, u32, u32, u32)> = Vec::new(); // (score, merged, left, right)
    let mut prefixes: Vec<(usize, u64)> = Vec::new();
    for (id, piece) in v.tokens.iter().enumerate() {
        if !owned(id, piece) {
            continue;
        }
        let score = v.scores[id];
        let bytes = piece.as_bytes();
        let n = bytes.len();
        // Hashes of the prefixes whose length is a normal piece's.
        prefixes.clear();
        let mut h = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            if i > 0 && is_length[i] && piece.is_char_boundary(i) {
                prefixes.push((i, h));
            }
            h = hash_push(h, b);
        }
        for &(at, left_hash) in &prefixes {
            let rest = n - at;
            let Some(&pow) = pow_of_length.get(&rest) else {
                continue;
            };
            let right_hash = (h + HASH_MOD - hash_mul(left_hash, pow)) % HASH_MOD;
            if !keys.contains(&(at, left_hash)) || !keys.contains(&(rest, right_hash)) {
                continue;
            }
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                if normal(li) && normal(ri) {
                    used = used.saturating_add(n);
                    if used > budget {
                        return Err(TokenizerError::bad(
                            "tokenizer.ggml.tokens",
                            format!(
                                "the SentencePiece merges of these pieces exceed {budget} bytes \
                                 ({SP_MERGE_BYTES_PER_PIECE_BYTE} x the pieces' {piece_bytes} \
                                 bytes + {SP_MERGE_BYTES_SLACK}); piece {id} alone has {} bytes",
                                n
                            ),
                        ));
                    }
                    all.push((score, id as u32, li, ri));
                }
            }
        }
    }
    all.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then((a.2, a.3).cmp(&(b.2, b.3)))
    });
    Ok(all
        .into_iter()
        .map(|(_, _, l, r)| (v.tokens[l as usize].clone(), v.tokens[r as usize].clone()))
        .collect())
}

/// A post-processor adding BOS in front and/or EOS behind (`add_special = true`).
fn post_processor(
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
) -> Result<TemplateProcessing> {
    // Template keys are whitespace-separated and may carry ":type_id", so use a safe key when
    // the piece itself would not parse.
    let key = |piece: &str, fallback: &str| {
        if piece.is_empty() || piece.contains([' ', ':']) || piece.starts_with('$') {
            fallback.to_owned()
        } else {
            piece.to_owned()
        }
    };
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    if let Some((id, piece)) = &bos {
        let k = key(piece, "[BOS]");
        specials.push(
            SpecialToken::new(k.clone(), vec![*id], vec![piece.clone()])
                .map_err(TokenizerError::backend)?,
        );
        single.push(k.clone());
        pair.push(k);
    }
    single.push("$A".to_owned());
    pair.push("$A".to_owned());
    if let Some((id, piece)) = &eos {
        let k = key(piece, "[EOS]");
        specials.push(
            SpecialToken::new(k.clone(), vec![*id], vec![piece.clone()])
                .map_err(TokenizerError::backend)?,
        );
        single.push(k.clone());
        pair.push(k);
    }
    if let Some((_, piece)) = &bos {
        pair.push(format!("{}:1", key(piece, "[BOS]")));
    }
    pair.push("$B:1".to_owned());
    if let Some((_, piece)) = &eos {
        pair.push(format!("{}:1", key(piece, "[EOS]")));
    }
    TemplateProcessing::builder()
        .try_single(single)
        .map_err(TokenizerError::backend)?
        .try_pair(pair)
        .map_err(TokenizerError::backend)?
        .special_tokens(specials)
        .build()
        .map_err(TokenizerError::backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quadratic construction the hashed one replaced.
    fn naive_merges(v: &GgufVocab, vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
        let normal = |id: u32| v.token_type(id as usize) == TOKEN_TYPE_NORMAL;
        let mut all: Vec<(f32, u32, u32, u32)> = Vec::new();
        for (id, piece) in v.tokens.iter().enumerate() {
            let id = id as u32;
            if !normal(id) || vocab.get(piece) != Some(&id) {
                continue;
            }
            for (at, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(at);
                if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                    if normal(li) && normal(ri) {
                        all.push((v.scores[id as usize], id, li, ri));
                    }
                }
            }
        }
        all.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then((a.2, a.3).cmp(&(b.2, b.3)))
        });
        all.into_iter()
            .map(|(_, _, l, r)| (v.tokens[l as usize].clone(), v.tokens[r as usize].clone()))
            .collect()
    }

    #[test]
    fn hashed_sentencepiece_merges_equal_the_naive_ones() {
        let alphabet = ["a", "b", "▁", "é", "ab"];
        let mut x = 12345u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        for round in 0..20 {
            let mut tokens: Vec<String> = Vec::new();
            let mut token_types = Vec::new();
            for i in 0..300 {
                let len = 1 + next() % 7;
                tokens.push(
                    (0..len)
                        .map(|_| alphabet[next() % alphabet.len()])
                        .collect(),
                );
                // Some duplicates and some non-normal pieces.
                token_types.push(if i % 17 == 3 {
                    TOKEN_TYPE_CONTROL
                } else {
                    TOKEN_TYPE_NORMAL
                });
            }
            let scores = (0..tokens.len())
                .map(|i| {
                    if round % 2 == 0 {
                        -(i as f32)
                    } else {
                        (i % 5) as f32
                    }
                })
                .collect();
            let v = GgufVocab {
                model: "llama".into(),
                tokens,
                token_types,
                scores,
                ..GgufVocab::default()
            };
            let mut vocab = HashMap::new();
            for (i, t) in v.tokens.iter().enumerate() {
                vocab.entry(t.clone()).or_insert(i as u32);
            }
            let fast = sentencepiece_merges(&v, &vocab).unwrap();
            assert!(!fast.is_empty());
            assert_eq!(fast, naive_merges(&v, &vocab), "round {round}");
        }
    }

    #[test]
    fn every_known_pre_tokenizer_regex_compiles() {
        for name in [
            "default",
            "llama-bpe",
            "tekken",
            "dbrx",
            "gpt-2",
            "smollm",
            "qwen2",
            "seed-coder",
            "falcon",
            "gpt-4o",
            "bloom",
            "viking",
        ] {
            let spec = pre_tokenizer_spec(Some(name)).unwrap();
            for re in spec.regexes {
                Split::new(
                    SplitPattern::Regex((*re).to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap_or_else(|e| panic!("{name}: {re}: {e}"));
            }
        }
        assert!(matches!(
            pre_tokenizer_spec(Some("no-such-pre")),
            Err(TokenizerError::UnsupportedPreTokenizer(_))
        ));
    }

    #[test]
    fn bos_post_processor_builds() {
        post_processor(Some((1, "<s>".into())), None).unwrap();
        post_processor(Some((1, "odd bos".into())), Some((2, "</s>".into()))).unwrap();
    }
}
