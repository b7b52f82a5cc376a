//! Small tokenizers built in the test: a tokenizer.json, a byte-level GGUF vocabulary with the
//! Llama 3 pre-tokenizer, a SentencePiece GGUF vocabulary, and malformed metadata.

use twain_tokenizer::gguf::{
    TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN,
    TOKEN_TYPE_USER_DEFINED,
};
use twain_tokenizer::{GgufVocab, Tokenizer, TokenizerError};

/// GPT-2's byte alphabet, in byte order.
fn byte_alphabet() -> Vec<String> {
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let c = if printable {
                u32::from(b)
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// Specials first, then the 256 byte pieces, then the merge results.
fn byte_level_vocab(specials: &[&str], merges: &[(&str, &str)]) -> Vec<String> {
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_alphabet());
    for (a, b) in merges {
        tokens.push(format!("{a}{b}"));
    }
    tokens
}

const MERGES: &[(&str, &str)] = &[
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "w"),
    ("Ġw", "o"),
];

fn tiny_json() -> String {
    let tokens = byte_level_vocab(&["<|endoftext|>", "<|im_end|>"], MERGES);
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, "<|endoftext|>"), added(1, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
    .to_string()
}

#[test]
fn tokenizers_and_templates_are_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Tokenizer>();
    check::<twain_tokenizer::ChatTemplate>();
}

#[test]
fn tiny_tokenizer_json() {
    let tok = Tokenizer::from_json(&tiny_json()).unwrap();
    let hello = tok.token_to_id("hello").unwrap();
    let wo = tok.token_to_id("Ġwo").unwrap();
    assert_eq!(tok.vocab_size(), 2 + 256 + MERGES.len());

    let ids = tok.encode("hello world<|im_end|>", true).unwrap();
    let r = tok.token_to_id("r").unwrap();
    let l = tok.token_to_id("l").unwrap();
    let d = tok.token_to_id("d").unwrap();
    assert_eq!(ids, [hello, wo, r, l, d, 1]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello world<|im_end|>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
    assert_eq!(tok.token_bytes(wo).unwrap(), b" wo");
    assert_eq!(tok.token_bytes(1).unwrap(), b"<|im_end|>");

    // Non-ASCII text goes through the byte pieces.
    let text = "héllo ✓";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&id| tok.token_bytes(id).unwrap().to_vec())
        .collect();
    assert_eq!(bytes, text.as_bytes());

    assert!(!tok.adds_bos());
    assert!(tok.is_special(0) && tok.is_special(1) && !tok.is_special(hello));
    assert_eq!(tok.eos_id(), Some(0)); // <|endoftext|>
    assert_eq!(tok.eot_id(), Some(1)); // <|im_end|>
    assert_eq!(tok.stop_ids(), vec![0, 1]);
    assert_eq!(tok.end_marker_of("{{ '<|im_end|>' }}"), Some(1));

    let bad = tok.vocab_size() as u32;
    assert!(matches!(
        tok.decode(&[hello, bad], false),
        Err(TokenizerError::UnknownId { .. })
    ));
    assert!(matches!(
        tok.token_bytes(bad),
        Err(TokenizerError::UnknownId { .. })
    ));

    let mut specials = tok.special_tokens().clone();
    specials.eos = Some(1);
    let mut tok2 = tok.clone();
    tok2.set_special_tokens(specials.clone()).unwrap();
    assert_eq!(tok2.stop_ids(), vec![1]);
    specials.extra_stops = vec![2, 1];
    tok2.set_special_tokens(specials.clone()).unwrap();
    assert_eq!(tok2.stop_ids(), vec![1, 2]);
    assert!(tok2.special_tokens().is_stop(2));
    specials.extra_stops = vec![bad];
    assert!(tok2.set_special_tokens(specials.clone()).is_err());
    assert_eq!(tok2.stop_ids(), vec![1, 2], "a refused set changes nothing");
    specials.extra_stops.clear();
    specials.eos = Some(bad);
    assert!(tok2.set_special_tokens(specials).is_err());

    assert!(matches!(
        Tokenizer::from_json("{not json"),
        Err(TokenizerError::Json(_))
    ));
}

fn llama3_style_vocab() -> GgufVocab {
    let specials = ["<|begin_of_text|>", "<|eot_id|>", "<tool>"];
    let tokens = byte_level_vocab(&specials, MERGES);
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    token_types[0] = TOKEN_TYPE_CONTROL;
    token_types[1] = TOKEN_TYPE_CONTROL;
    token_types[2] = TOKEN_TYPE_USER_DEFINED;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        merges: MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect(),
        tokens,
        token_types,
        bos: Some(0),
        eos: Some(1),
        ..GgufVocab::default()
    }
}

#[test]
fn byte_level_gguf_vocab_with_llama3_pre_tokenizer() {
    let v = llama3_style_vocab();
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    // llama-bpe adds BOS unless the file says otherwise.
    assert!(tok.adds_bos());
    let hello = tok.token_to_id("hello").unwrap();
    let ids = tok.encode("hello<tool>hello", true).unwrap();
    assert_eq!(ids, [0, hello, 2, hello]);
    assert_eq!(tok.encode("hello", false).unwrap(), [hello]);
    // User-defined tokens are matched but not special: decode(.., true) keeps them.
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello<tool>hello");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|begin_of_text|>hello<tool>hello"
    );
    assert_eq!(tok.eot_id(), Some(1));
    // Llama 3 splits digits in threes.
    let digits = tok.encode("12345", false).unwrap();
    assert_eq!(digits.len(), 5); // no digit merges in this vocab, but the text survives
    assert_eq!(tok.decode(&digits, false).unwrap(), "12345");

    // tokenizer.json keeps the BOS rule.
    let again = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
    assert!(again.adds_bos());
    assert_eq!(again.bos_id(), Some(0));
    assert_eq!(again.encode("hello<tool>hello", true).unwrap(), ids);

    // EOS after the text when the file asks for it.
    let with_eos = GgufVocab {
        add_eos: Some(true),
        ..llama3_style_vocab()
    };
    let tok_eos = Tokenizer::from_gguf_vocab(&with_eos).unwrap();
    assert_eq!(tok_eos.encode("hello", true).unwrap(), [0, hello, 1]);
    let again = Tokenizer::from_json(&tok_eos.to_json().unwrap()).unwrap();
    assert_eq!((again.bos_id(), again.eos_id()), (Some(0), Some(1)));
    assert_eq!(again.encode("hello", true).unwrap(), [0, hello, 1]);

    let no_bos = GgufVocab {
        add_bos: Some(false),
        ..llama3_style_vocab()
    };
    let tok = Tokenizer::from_gguf_vocab(&no_bos).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), [hello]);
}

fn sentencepiece_vocab() -> GgufVocab {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut token_types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        token_types.push(TOKEN_TYPE_BYTE);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "▁he", "▁hell", "▁hello", "▁w",
        "or", "▁wor", "▁world", "ld",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        token_types.push(TOKEN_TYPE_NORMAL);
        scores.push(-(i as f32));
    }
    GgufVocab {
        model: "llama".into(),
        tokens,
        token_types,
        scores,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        ..GgufVocab::default()
    }
}

#[test]
fn sentencepiece_gguf_vocab() {
    let tok = Tokenizer::from_gguf_vocab(&sentencepiece_vocab()).unwrap();
    assert!(tok.adds_bos());
    let hello = tok.token_to_id("▁hello").unwrap();
    let world = tok.token_to_id("▁world").unwrap();
    assert_eq!(tok.encode("hello world", false).unwrap(), [hello, world]);
    assert_eq!(tok.encode("hello world", true).unwrap(), [1, hello, world]);
    assert_eq!(tok.token_bytes(hello).unwrap(), b" hello");
    // Characters outside the vocabulary fall back to byte tokens.
    let ids = tok.encode("hello é", false).unwrap();
    let (c3, a9) = (
        tok.token_to_id("<0xC3>").unwrap(),
        tok.token_to_id("<0xA9>").unwrap(),
    );
    assert!(ids.ends_with(&[c3, a9]), "{ids:?}");
    assert_eq!(tok.token_bytes(c3).unwrap(), [0xC3]);
    // The prepended space is dropped again.
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello é");
    let with_bos = tok.encode("hello world", true).unwrap();
    assert_eq!(tok.decode(&with_bos, true).unwrap(), "hello world");
    // tokenizer.json keeps the normalizer, byte fallback and the leading-space rule.
    let again = Tokenizer::from_json(&tok.to_json().unwrap()).unwrap();
    assert!(again.adds_bos());
    assert_eq!(again.bos_id(), Some(1));
    assert_eq!(again.encode("hello é", false).unwrap(), ids);
    assert_eq!(again.decode(&ids, false).unwrap(), "hello é");
    assert_eq!(again.token_bytes(hello).unwrap(), b" hello");
    assert_eq!(again.token_bytes(c3).unwrap(), [0xC3]);

    let mut stream = tok.decode_stream(true);
    let mut out = String::new();
    for &id in &with_bos {
        out.push_str(&stream.step(id).unwrap());
    }
    out.push_str(&stream.finish());
    assert_eq!(out, "hello world");
}

#[test]
fn malformed_metadata_is_a_typed_error() {
    let bad_model = GgufVocab {
        model: "bert".into(),
        ..llama3_style_vocab()
    };
    assert!(
        matches!(Tokenizer::from_gguf_vocab(&bad_model), Err(TokenizerError::UnsupportedModel(m)) if m == "bert")
    );

    let bad_pre = GgufVocab {
        pre: Some("no-such-pre".into()),
        ..llama3_style_vocab()
    };
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&bad_pre),
        Err(TokenizerError::UnsupportedPreTokenizer(_))
    ));

    let mut short_types = llama3_style_vocab();
    short_types.token_types.pop();
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&short_types),
        Err(TokenizerError::BadMetadata { .. })
    ));

    let mut bad_merge = llama3_style_vocab();
    bad_merge.merges.push("nospace".into());
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&bad_merge),
        Err(TokenizerError::BadMetadata { .. })
    ));

    let mut unknown_merge = llama3_style_vocab();
    unknown_merge.merges.push("x yz".into());
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&unknown_merge),
        Err(TokenizerError::Backend(_))
    ));

    let empty = GgufVocab {
        model: "gpt2".into(),
        ..GgufVocab::default()
    };
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&empty),
        Err(TokenizerError::BadMetadata { .. })
    ));

    let no_bos = GgufVocab {
        bos: None,
        ..llama3_style_vocab()
    };
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&no_bos),
        Err(TokenizerError::BadMetadata { .. })
    ));

    let mut no_scores = sentencepiece_vocab();
    no_scores.scores.clear();
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&no_scores),
        Err(TokenizerError::MissingKey(_))
    ));
}
