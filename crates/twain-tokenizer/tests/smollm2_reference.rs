//! The tokenizer built from the real SmolLM2 GGUF against the reference token ids
//! (Hugging Face transformers, cross-checked with llama.cpp).

mod common;

use common::{chat_template_source, gguf, gguf_path, reference, tokenizer};
use twain_tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

fn check_all_token_cases(tok: &Tokenizer, origin: &str) {
    for case in &reference().tokens {
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "{origin}: ids of {:?}", case.text);
        let decoded = tok.decode(&case.ids, false).unwrap();
        assert_eq!(decoded, case.decoded, "{origin}: decode of {:?}", case.text);
        assert_eq!(
            decoded, case.text,
            "{origin}: round trip of {:?}",
            case.text
        );
    }
}

#[test]
fn every_reference_string_has_the_reference_ids() {
    check_all_token_cases(tokenizer(), "GGUF");
}

#[test]
fn token_bytes_concatenate_to_the_text() {
    let tok = tokenizer();
    for case in &reference().tokens {
        let mut bytes = Vec::new();
        for &id in &case.ids {
            bytes.extend_from_slice(tok.token_bytes(id).unwrap());
        }
        assert_eq!(bytes, case.text.as_bytes(), "bytes of {:?}", case.text);
    }
    assert_eq!(tok.token_bytes(905).unwrap(), b" world");
    assert_eq!(tok.token_bytes(2).unwrap(), b"<|im_end|>");
    // A piece that is only part of a UTF-8 character (from the emoji case).
    assert_eq!(tok.token_bytes(235).unwrap().len(), 1);
}

#[test]
fn every_reference_prompt_has_the_reference_ids() {
    let tok = tokenizer();
    let template = ChatTemplate::for_tokenizer(Some(chat_template_source()), tok).unwrap();
    for case in &reference().next_token {
        let text = if case.chat {
            let rendered = template
                .render(&[ChatMessage::user(case.prompt.as_str())], true)
                .unwrap();
            assert_eq!(
                rendered, case.rendered,
                "rendered chat prompt for {:?}",
                case.prompt
            );
            rendered
        } else {
            assert_eq!(case.rendered, case.prompt);
            case.prompt.clone()
        };
        // add_special = true: SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token = false).
        assert_eq!(
            tok.encode(&text, true).unwrap(),
            case.prompt_ids,
            "prompt ids of {:?}",
            case.prompt
        );
        assert_eq!(tok.decode(&case.prompt_ids, false).unwrap(), text);
    }
}

#[test]
fn special_tokens_of_smollm2() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!tok.adds_bos());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.eot_id(), Some(2));
    assert_eq!(tok.stop_ids(), vec![2]);
    assert_eq!(tok.special_tokens().unk, Some(0));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("Ġworld"), Some(905));
    assert_eq!(tok.id_to_token(905).as_deref(), Some("Ġworld"));
    assert_eq!(tok.bos_token().as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token().as_deref(), Some("<|im_end|>"));
    for id in 0..=16 {
        assert!(tok.is_special(id), "id {id} is a control token");
    }
    assert!(!tok.is_special(17));
    let ids = [1, 4093, 198, 26843, 665, 2, 198];
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi there\n");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>user\nHi there<|im_end|>\n"
    );
}

#[test]
fn bad_ids_are_errors() {
    let tok = tokenizer();
    for id in [49152, 100_000, u32::MAX] {
        assert!(
            matches!(tok.decode(&[17, id], false), Err(TokenizerError::UnknownId { id: i, vocab_size: 49152 }) if i == id)
        );
        assert!(matches!(
            tok.token_bytes(id),
            Err(TokenizerError::UnknownId { .. })
        ));
        assert!(tok.decode_stream(false).step(id).is_err());
        assert!(!tok.is_special(id));
        assert_eq!(tok.id_to_token(id), None);
    }
    assert_eq!(tok.token_to_id("no such piece"), None);
    assert_eq!(tok.encode("", false).unwrap(), Vec::<u32>::new());
    assert_eq!(tok.decode(&[], false).unwrap(), "");
}

#[test]
fn tokenizer_json_round_trip_gives_the_same_tokenizer() {
    let json = tokenizer().to_json().unwrap();
    let again = Tokenizer::from_json(&json).unwrap();
    check_all_token_cases(&again, "tokenizer.json from to_json");
    assert_eq!(again.vocab_size(), 49152);
    assert!(!again.adds_bos());
    for case in &reference().tokens {
        for &id in &case.ids {
            assert_eq!(
                again.token_bytes(id).unwrap(),
                tokenizer().token_bytes(id).unwrap(),
                "bytes of id {id}"
            );
        }
    }
    for id in 0..=16 {
        assert!(again.is_special(id));
    }
    assert_eq!(again.eot_id(), Some(2));

    // A tokenizer.json cannot name BOS/EOS; the special ids travel separately.
    let specials = serde_json::to_string(tokenizer().special_tokens()).unwrap();
    let mut again = again;
    again
        .set_special_tokens(serde_json::from_str(&specials).unwrap())
        .unwrap();
    assert_eq!(again.special_tokens(), tokenizer().special_tokens());
    assert_eq!(again.stop_ids(), vec![2]);
}

#[test]
fn streaming_decode_never_splits_a_character() {
    let tok = tokenizer();
    for case in &reference().tokens {
        let mut stream = tok.decode_stream(false);
        let mut text = String::new();
        for &id in &case.ids {
            let piece = stream.step(id).unwrap();
            assert!(
                !piece.contains(char::REPLACEMENT_CHARACTER),
                "{:?}: piece {piece:?}",
                case.text
            );
            text.push_str(&piece);
        }
        text.push_str(&stream.finish());
        assert_eq!(text, case.text);
    }
    // A cut inside a character is held back, then flushed as U+FFFD.
    let ids = tok.encode("👍", false).unwrap();
    assert!(ids.len() > 1);
    let mut stream = tok.decode_stream(false);
    assert_eq!(stream.step(ids[0]).unwrap(), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}

#[test]
fn from_loaded_uses_the_gguf_tokenizer_and_template() {
    let model = twain_io::load_model(gguf_path()).unwrap();
    let tok = Tokenizer::from_loaded(&model).unwrap();
    check_all_token_cases(&tok, "from_loaded");
    assert_eq!(tok.eot_id(), Some(2));
    let template = ChatTemplate::from_loaded(&model, &tok).unwrap();
    assert_eq!(template.source(), chat_template_source());

    // With a tokenizer.json (as a native file carries it) the JSON wins; the GGUF's special
    // ids still apply.
    let mut with_json = model.clone();
    with_json.tokenizer_json = Some(tokenizer().to_json().unwrap());
    let tok = Tokenizer::from_loaded(&with_json).unwrap();
    check_all_token_cases(&tok, "from_loaded with tokenizer.json");
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.eot_id()),
        (Some(1), Some(2), Some(2))
    );

    // Neither: a typed error.
    let mut bare = model;
    bare.tokenizer_json = None;
    bare.gguf = None;
    assert!(matches!(
        Tokenizer::from_loaded(&bare),
        Err(TokenizerError::NoTokenizer)
    ));
    let _ = gguf();
}

#[test]
fn gguf_metadata_is_read() {
    let v = twain_tokenizer::GgufVocab::from_metadata(gguf()).unwrap();
    assert_eq!(v.model, "gpt2");
    assert_eq!(v.pre.as_deref(), Some("smollm"));
    assert_eq!(v.tokens.len(), 49152);
    assert_eq!(v.token_types.len(), 49152);
    assert_eq!(v.merges.len(), 48900);
    assert_eq!(
        (v.bos, v.eos, v.unk, v.pad),
        (Some(1), Some(2), Some(0), Some(2))
    );
    assert_eq!(v.add_bos, Some(false));
}
