//! Shared by the integration tests: the real SmolLM2 tokenizer and the reference fixture.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use serde::Deserialize;
use twain_tokenizer::Tokenizer;

/// `tests/fixtures/smollm2_reference.json` (regenerate with `make_fixtures.py` beside it).
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub tokens: Vec<TokenCase>,
    pub next_token: Vec<PromptCase>,
}

/// Text -> ids, no special tokens added.
#[derive(Debug, Deserialize)]
pub struct TokenCase {
    pub text: String,
    pub ids: Vec<u32>,
    pub decoded: String,
}

/// A prompt as the reference model saw it.
#[derive(Debug, Deserialize)]
pub struct PromptCase {
    pub prompt: String,
    pub chat: bool,
    pub rendered: String,
    pub prompt_ids: Vec<u32>,
}

pub fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let text = include_str!("../fixtures/smollm2_reference.json");
        serde_json::from_str(text).expect("tests/fixtures/smollm2_reference.json does not parse")
    })
}

/// The real SmolLM2-135M-Instruct GGUF, fetched if missing. Fails loudly: these tests must not
/// pass by skipping.
pub fn gguf_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        twain_io::fetch::ensure_default_gguf().unwrap_or_else(|e| {
            panic!(
                "the SmolLM2-135M-Instruct GGUF is needed by these tests and could not be \
                 found or fetched: {e}"
            )
        })
    })
}

pub fn gguf() -> &'static twain_io::GgufFile {
    static GGUF: OnceLock<twain_io::GgufFile> = OnceLock::new();
    GGUF.get_or_init(|| {
        twain_io::GgufFile::open(gguf_path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", gguf_path().display()))
    })
}

/// The tokenizer built from the GGUF's `tokenizer.ggml.*` metadata.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf(gguf()).expect("tokenizer from GGUF metadata"))
}

/// The chat template text the GGUF ships.
pub fn chat_template_source() -> &'static str {
    gguf()
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .expect("the SmolLM2 GGUF has tokenizer.chat_template")
}
