//! Property tests on the real SmolLM2 tokenizer: any text survives encode -> decode, and the
//! tokens' bytes are exactly the text's UTF-8.

mod common;

use common::tokenizer;
use proptest::prelude::*;

fn texts() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,40}",
        "[a-zA-Z0-9 \t\n.,;:'\"!?()<>|_-]{0,80}",
        // Special-token text mixed with ordinary text.
        "(<\\|im_start\\|>|<\\|im_end\\|>|<\\|endoftext\\|>|[a-z ]{1,5}|\n){0,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(text in texts()) {
        let tok = tokenizer();
        let ids = tok.encode(&text, false).unwrap();
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn token_bytes_are_the_utf8_of_the_text(text in texts()) {
        let tok = tokenizer();
        let ids = tok.encode(&text, false).unwrap();
        let mut bytes = Vec::with_capacity(text.len());
        for id in ids {
            bytes.extend_from_slice(tok.token_bytes(id).unwrap());
        }
        prop_assert_eq!(bytes, text.as_bytes());
    }

    #[test]
    fn streaming_decode_equals_decode(text in texts()) {
        let tok = tokenizer();
        let ids = tok.encode(&text, false).unwrap();
        let mut stream = tok.decode_stream(false);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&stream.step(id).unwrap());
        }
        out.push_str(&stream.finish());
        prop_assert_eq!(out, text);
    }

    #[test]
    fn any_id_is_ok_or_a_typed_error(ids in proptest::collection::vec(any::<u32>(), 0..8)) {
        let tok = tokenizer();
        let n = tok.vocab_size() as u32;
        let all_known = ids.iter().all(|&id| id < n);
        prop_assert_eq!(tok.decode(&ids, false).is_ok(), all_known);
        prop_assert_eq!(tok.decode(&ids, true).is_ok(), all_known);
    }
}
