//! Calibration data and the statistics measured on it.
//!
//! The built-in calibration is two texts: Exodus 1-20 (King James Version,
//! public domain; `../shared/corpus`) and chat transcripts that
//! SmolLM2-135M-Instruct wrote itself at f32 (seed 1; `examples/selfgen.rs`
//! `calib` makes them). Neither is evaluation text: quality figures are
//! measured on Genesis and on a second self-written set (seed 2026, prompts
//! on other subjects) that calibration never saw.

use std::collections::BTreeMap;
use std::path::Path;

use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_tokenizer::Tokenizer;

use crate::ConvertError;

/// Default calibration text: Exodus 1-20 (King James Version, public
/// domain), disjoint from the evaluation text (Genesis).
pub const CALIBRATION_TEXT: &str = include_str!("../data/kjv-exodus-1-20.txt");

/// Chat transcripts the model wrote itself (seed 1, `examples/selfgen.rs calib`).
pub const SELF_TEXT: &str = include_str!("../data/selfgen-calib-seed1.txt");

/// What the built-in calibration is, for provenance.
pub const CALIBRATION_NAME: &str = "kjv-exodus-1-20 + selfgen-calib-seed1 + train-python-tutorial-head + train-python-code-head + train-rust-code-head (first 8192 tokens of each), windows of 512";

/// What the calibration before issue 32 was (the shipped `afm` pack's
/// statistics, `examples/ship.rs`): [`kjv_chat_calibration_tokens`].
pub const KJV_CHAT_CALIBRATION_NAME: &str =
    "kjv-exodus-1-20 (first 8192 tokens) + selfgen-calib-seed1 (first 8192 tokens), windows of 512";

/// Tokens taken from each built-in calibration text.
pub const CALIBRATION_TOKENS: usize = 8192;

/// Window length of calibration forward passes.
pub const CALIBRATION_WINDOW: usize = 512;

/// The first ~40 kB (cut at a line) of each technical training file of
/// `../shared/corpus` — the Python tutorial (technical prose), Python
/// standard-library code, `serde_json` source — so calibration sees the kinds
/// of text the evaluation files hold without ever reading them (those are
/// `eval-*`: other HOWTOs, other modules, another crate).
pub const TECHNICAL_TEXTS: [(&str, &str); 3] = [
    (
        "train-python-tutorial",
        include_str!("../data/train-python-tutorial-head.txt"),
    ),
    (
        "train-python-code",
        include_str!("../data/train-python-code-head.txt"),
    ),
    (
        "train-rust-code",
        include_str!("../data/train-rust-code-head.txt"),
    ),
];

/// The built-in calibration set ([`CALIBRATION_NAME`]): the first
/// [`CALIBRATION_TOKENS`] tokens of [`CALIBRATION_TEXT`], of [`SELF_TEXT`]
/// and of each of [`TECHNICAL_TEXTS`] (archaic prose, the model's own chat
/// answers, technical prose, Python and Rust code), each cut to whole
/// windows of [`CALIBRATION_WINDOW`] so no window spans two texts.
/// docs/quality.md, "Broad calibration", measures it against
/// [`kjv_chat_calibration_tokens`]: held-out code and technical prose lose
/// 30-37 % of `q4`'s KL and half of `afm`'s.
pub fn calibration_tokens(tokenizer: &Tokenizer) -> Result<Vec<u32>, ConvertError> {
    let mut texts = vec![CALIBRATION_TEXT, SELF_TEXT];
    texts.extend(TECHNICAL_TEXTS.iter().map(|(_, t)| *t));
    windows_of(tokenizer, &texts)
}

/// The same as [`calibration_tokens`] (the name the comparison used).
pub fn broad_calibration_tokens(tokenizer: &Tokenizer) -> Result<Vec<u32>, ConvertError> {
    calibration_tokens(tokenizer)
}

/// The calibration set before issue 32 ([`KJV_CHAT_CALIBRATION_NAME`]):
/// only [`CALIBRATION_TEXT`] and [`SELF_TEXT`].
pub fn kjv_chat_calibration_tokens(tokenizer: &Tokenizer) -> Result<Vec<u32>, ConvertError> {
    windows_of(tokenizer, &[CALIBRATION_TEXT, SELF_TEXT])
}

fn windows_of(tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<u32>, ConvertError> {
    let mut all = Vec::new();
    for &text in texts {
        let mut tokens = tokenizer.encode(text, false)?;
        let n = tokens.len().min(CALIBRATION_TOKENS);
        let n = if n >= CALIBRATION_WINDOW {
            n - n % CALIBRATION_WINDOW
        } else {
            n
        };
        tokens.truncate(n);
        all.extend(tokens);
    }
    Ok(all)
}

/// Every token of [`CALIBRATION_TEXT`] and [`SELF_TEXT`]: the built-in
/// training data of accuracy recovery (twain-train). Evaluation texts are
/// never part of it.
pub fn training_tokens(tokenizer: &Tokenizer) -> Result<Vec<u32>, ConvertError> {
    let mut all = tokenizer.encode(CALIBRATION_TEXT, false)?;
    all.extend(tokenizer.encode(SELF_TEXT, false)?);
    Ok(all)
}

/// The model at `path` at full precision (f32 weights as read, f32 KV cache):
/// the teacher that calibration and evaluation measure against.
pub fn load_reference(path: &Path) -> Result<Transformer, ConvertError> {
    let loaded = twain_io::load_model(path)?;
    Ok(Transformer::from_loaded(
        loaded,
        TransformerOptions::default().kv_dtype(KvDtype::F32),
    )?)
}

/// Per-column importance of every linear layer of the model at `path`
/// (mean squared input activation), measured at full precision on the
/// built-in calibration text.
pub fn importance_of_file(
    path: &Path,
    tokenizer: &Tokenizer,
) -> Result<BTreeMap<String, Vec<f32>>, ConvertError> {
    let model = load_reference(path)?;
    let tokens = calibration_tokens(tokenizer)?;
    crate::eval::calibrate(&model, &tokens, CALIBRATION_WINDOW, |_, _| {})
}
