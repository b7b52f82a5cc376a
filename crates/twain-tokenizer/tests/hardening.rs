//! Hostile tokenizer inputs end in a typed error (or a valid tokenizer) within seconds and
//! bounded memory (issue #21, docs/reliability.md).

use std::time::{Duration, Instant};

use twain_tokenizer::{Tokenizer, TokenizerError};

/// A WordLevel tokenizer.json with the given (piece, id) entries.
fn word_level_json(entries: &[(&str, u64)]) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(t, id)| (t.to_string(), serde_json::json!(id)))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

#[test]
fn tokenizer_json_id_near_u32_max_is_a_typed_error() {
    let t = Instant::now();
    let json = word_level_json(&[("<unk>", 0), ("a", 1), ("huge", u64::from(u32::MAX - 7))]);
    let e = Tokenizer::from_json(&json).unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("\"huge\"") && msg.contains(&(u32::MAX - 7).to_string()),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn tokenizer_json_small_gaps_are_accepted() {
    // Ids within 2 * entries + ID_SLACK are fine (a few unused ids).
    let json = word_level_json(&[("<unk>", 0), ("a", 1), ("b", 900)]);
    let tok = Tokenizer::from_json(&json).unwrap();
    assert_eq!(tok.token_to_id("b"), Some(900));
    assert_eq!(tok.id_to_token(900).as_deref(), Some("b"));
}
