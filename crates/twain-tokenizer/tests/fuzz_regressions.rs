//! Inputs the fuzz harness (fuzz/, issue #21 item 10) found to panic, now typed errors.

use twain_tokenizer::{Tokenizer, TokenizerError};

#[test]
fn tokenizer_json_with_a_truncated_decoder_is_a_typed_error() {
    // `tokenizers` 0.21 deserializes `decoder` with `.expect("Helper")`: a syntax error
    // inside it panicked instead of failing.
    let json = r#"{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "decoder": {"type": "ByteLevel", "add_prefix_space": tr"#;
    let e = Tokenizer::from_json(json).unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)), "{e:?}");
    let json = r#"{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "decoder": {"type": "Strip", "content": "a", "start": 1e999, "stop": 0}}"#;
    let e = Tokenizer::from_json(json).unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)), "{e:?}");
}

#[test]
fn bpe_prefix_longer_than_a_merge_piece_is_a_typed_error() {
    // `tokenizers` slices `&b[prefix.len()..]` for every merge "a b": a panic before.
    let json = r#"{"version": "1.0", "model": {"type": "BPE", "continuing_subword_prefix": "-1",
        "vocab": {"h": 0, "e": 1, "he": 2}, "merges": ["h e"]}}"#;
    let e = Tokenizer::from_json(json).unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)), "{e:?}");
    assert!(e.to_string().contains("continuing_subword_prefix"), "{e}");
    // A prefix every merge's second piece carries is fine.
    let json = r###"{"version": "1.0", "model": {"type": "BPE", "continuing_subword_prefix": "##",
        "vocab": {"h": 0, "##e": 1, "he": 2}, "merges": ["h ##e"]}}"###;
    Tokenizer::from_json(json).unwrap();
}
