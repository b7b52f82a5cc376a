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

/// A SentencePiece (`"llama"`) vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then
/// `pieces` (normal, scored by position).
fn sentencepiece_vocab(pieces: Vec<String>) -> twain_tokenizer::GgufVocab {
    use twain_tokenizer::gguf::{TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL};
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut token_types = vec![2, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        token_types.push(TOKEN_TYPE_BYTE);
    }
    for p in pieces {
        tokens.push(p);
        token_types.push(TOKEN_TYPE_NORMAL);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    twain_tokenizer::GgufVocab {
        model: "llama".into(),
        tokens,
        token_types,
        scores,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        ..Default::default()
    }
}

#[test]
fn sentencepiece_vocab_with_a_10_mb_piece_loads_in_seconds() {
    // Building the merges hashed both halves at every split of every piece: O(L^2) for a piece
    // of L bytes, so this 10 MB piece took hours.
    let mut pieces: Vec<String> = ["▁", "a", "b", "▁a", "ab", "▁ab"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pieces.push(format!("▁{}", "a".repeat(10 << 20)));
    let v = sentencepiece_vocab(pieces);
    let t = Instant::now();
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    let ab = tok.token_to_id("▁ab").unwrap();
    assert_eq!(tok.encode("ab", false).unwrap(), [ab]);
}

#[test]
fn sentencepiece_merges_quadratic_in_a_vocabulary_are_a_typed_error() {
    // Every length of one letter up to 4000: every split of every piece is a merge, about
    // 10^10 bytes of merges from 8 MB of pieces. The merge budget stops it.
    let pieces: Vec<String> = (1..=4000).map(|n| "a".repeat(n)).collect();
    let v = sentencepiece_vocab(pieces);
    let t = Instant::now();
    let e = Tokenizer::from_gguf_vocab(&v).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(matches!(e, TokenizerError::BadMetadata { .. }), "{e:?}");
    assert!(e.to_string().contains("merges"), "{e}");
    // A few hundred lengths fit the budget and build.
    let pieces: Vec<String> = (1..=300).map(|n| "a".repeat(n)).collect();
    let tok = Tokenizer::from_gguf_vocab(&sentencepiece_vocab(pieces)).unwrap();
    assert!(tok.token_to_id(&"a".repeat(300)).is_some());
}
