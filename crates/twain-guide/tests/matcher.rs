//! The matcher's state machine over a toy byte-level vocabulary (every byte a
//! token, plus a few multi-byte tokens and two stop tokens): masks, consume,
//! rollback, forced tokens, errors as values; and random walks through the
//! masks of JSON schemas that always end in valid JSON.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use twain_guide::{Constraint, GuideError, TokenBytes, TokenId, TokenMask, Vocabulary};

const EOS: TokenId = 256;
const EOT: TokenId = 257;

/// Bytes 0..=255, then `</s>` and `<|im_end|>` (stop), `<|im_start|>`
/// (special), then a few words.
fn vocab() -> Arc<Vocabulary> {
    let mut tokens: Vec<TokenBytes> = (0..=255u8).map(|b| TokenBytes::text(vec![b])).collect();
    tokens.push(TokenBytes::special("</s>"));
    tokens.push(TokenBytes::special("<|im_end|>"));
    tokens.push(TokenBytes::special("<|im_start|>"));
    for w in ["\"name\"", "true", "false", "null", ", ", ": ", "ab", "abc"] {
        tokens.push(TokenBytes::text(w.as_bytes().to_vec()));
    }
    let words: Vec<Vec<u8>> = tokens.iter().map(|t| t.bytes.clone()).collect();
    Vocabulary::new(tokens, &[EOS, EOT], move |s: &str| {
        // Greedy longest match over the words, else bytes.
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let best = (259..words.len())
                .filter(|&id| b[i..].starts_with(&words[id]))
                .max_by_key(|&id| words[id].len());
            match best {
                Some(id) => {
                    out.push(id as TokenId);
                    i += words[id].len();
                }
                None => {
                    out.push(b[i] as TokenId);
                    i += 1;
                }
            }
        }
        Ok(out)
    })
    .unwrap()
}

fn feed(m: &mut twain_guide::Matcher, text: &str) {
    for b in text.bytes() {
        m.consume(b as TokenId)
            .unwrap_or_else(|e| panic!("{text:?} at {:?}: {e}", b as char));
    }
}

#[test]
fn stop_tokens_are_allowed_exactly_when_the_output_may_end() {
    let v = vocab();
    let mut m = v.matcher(&Constraint::regex("a+")).unwrap();
    let mut mask = v.new_mask();
    m.fill_mask(&mut mask).unwrap();
    assert!(!mask.is_allowed(EOS) && !mask.is_allowed(EOT));
    assert!(!m.is_accepting());
    m.consume(b'a' as TokenId).unwrap();
    m.fill_mask(&mut mask).unwrap();
    assert!(mask.is_allowed(EOS) && mask.is_allowed(EOT) && mask.is_allowed(b'a' as TokenId));
    assert!(m.is_accepting() && !m.is_stopped());
    // Special tokens never appear in text.
    assert!(!mask.is_allowed(258));
    m.consume(EOS).unwrap();
    assert!(m.is_stopped());
}

#[test]
fn a_stop_token_before_the_end_is_rejected_and_the_state_kept() {
    let v = vocab();
    let mut m = v.matcher(&Constraint::regex("ab")).unwrap();
    m.consume(b'a' as TokenId).unwrap();
    assert!(matches!(
        m.consume(EOS),
        Err(GuideError::Rejected { token: EOS, .. })
    ));
    assert!(matches!(
        m.consume(b'x' as TokenId),
        Err(GuideError::Rejected { .. })
    ));
    assert!(matches!(
        m.consume(99_999),
        Err(GuideError::Rejected { .. })
    ));
    assert_eq!(m.error(), None);
    m.consume(b'b' as TokenId).unwrap();
    assert!(m.is_accepting());
}

#[test]
fn rollback_restores_the_mask() {
    let v = vocab();
    let schema =
        json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
    let mut m = v.matcher(&Constraint::json_schema(schema)).unwrap();
    feed(&mut m, "{\"name\": \"x");
    let before = m.compute_mask().unwrap();
    let n = m.consumed();
    feed(&mut m, "y\"}");
    assert!(m.is_accepting());
    m.rollback(3).unwrap();
    assert_eq!(m.consumed(), n);
    assert_eq!(m.compute_mask().unwrap(), before);
    assert!(m.rollback(n + 1).is_err());
    m.reset().unwrap();
    assert_eq!(m.consumed(), 0);
    let first = m.compute_mask().unwrap();
    assert_eq!(first.allowed().collect::<Vec<_>>(), vec![b'{' as TokenId]);
}

#[test]
fn forced_text_comes_back_as_canonical_tokens() {
    let v = vocab();
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"], "additionalProperties": false});
    let mut m = v.matcher(&Constraint::json_schema(schema)).unwrap();
    // `{"name": "` is all forced.
    let forced = m.forced_tokens();
    assert!(!forced.is_empty());
    m.consume_all(&forced).unwrap();
    let more = m.forced_tokens();
    m.consume_all(&more).unwrap();
    let all: Vec<TokenId> = forced.into_iter().chain(more).collect();
    assert!(all.contains(&259), "{all:?}"); // the `"name"` word
                                            // The opening quote is not forced: a longer token could start with it.
    feed(&mut m, "\"Ada\"}");
    assert!(m.is_accepting());
}

#[test]
fn errors_are_values() {
    let v = vocab();
    for bad in [
        Constraint::json_schema(json!({"type": "nonsense"})),
        Constraint::json_schema(json!({"type": "object", "propertyNames": {"maxLength": 3}})),
        Constraint::json_schema(json!({"$ref": "#/$defs/missing"})),
        Constraint::json_schema(json!({"type": "string", "pattern": "("})),
        Constraint::regex("(unclosed"),
        Constraint::lark("start: ("),
        Constraint::lark(""),
    ] {
        assert!(
            matches!(v.matcher(&bad), Err(GuideError::Constraint { .. })),
            "{bad:?}"
        );
    }
    let mut m = v.matcher(&Constraint::regex("a")).unwrap();
    let mut wrong = TokenMask::deny_all(10);
    assert!(matches!(
        m.fill_mask(&mut wrong),
        Err(GuideError::MaskSize { mask: 10, .. })
    ));
    // Vocabulary problems.
    let toks = || {
        (0..=255u8)
            .map(|b| TokenBytes::text(vec![b]))
            .collect::<Vec<_>>()
    };
    assert!(Vocabulary::new(toks(), &[], |_| Ok(vec![])).is_err());
    assert!(Vocabulary::new(toks(), &[300], |_| Ok(vec![])).is_err());
    assert!(Vocabulary::new(Vec::new(), &[0], |_| Ok(vec![])).is_err());
    // An encoder that fails falls back to the trie.
    let broken = Vocabulary::new(toks(), &[0], |_| Err("down".into())).unwrap();
    let mut m = broken.matcher(&Constraint::regex("abc")).unwrap();
    let f = m.forced_tokens();
    m.consume_all(&f).unwrap();
    assert!(m.is_accepting());
}

#[test]
fn lark_grammars_and_json_embeds() {
    let v = vocab();
    let g = r#"
start: "call " NAME "(" %json {"type": "integer", "minimum": 0, "maximum": 99} ")"
NAME: /[a-z]+/
"#;
    let mut m = v.matcher(&Constraint::lark(g)).unwrap();
    feed(&mut m, "call abc(42)");
    assert!(m.is_accepting());
    let mut m = v.matcher(&Constraint::lark(g)).unwrap();
    feed(&mut m, "call abc(");
    assert!(m.consume(b'-' as TokenId).is_err());
}

/// Walk the masks at random: pick an allowed token (stop tokens only at the
/// end, with probability), and check the finished text.
fn walk(v: &Arc<Vocabulary>, schema: &Value, choices: &[u16]) -> Option<String> {
    let mut m = v.matcher(&Constraint::json_schema(schema.clone())).unwrap();
    let mut mask = v.new_mask();
    let mut text = Vec::new();
    for (step, &c) in choices.iter().enumerate() {
        m.fill_mask(&mut mask).unwrap();
        let allowed: Vec<TokenId> = mask.allowed().collect();
        assert!(
            !allowed.is_empty(),
            "no token allowed after {:?}",
            String::from_utf8_lossy(&text)
        );
        let stop_ok = allowed.contains(&EOS);
        if stop_ok && (c % 3 == 0 || step + 40 > choices.len()) {
            return Some(String::from_utf8(text).unwrap());
        }
        // Near the end of the budget prefer closing characters.
        let closers: Vec<TokenId> = allowed
            .iter()
            .copied()
            .filter(|&t| t < 256 && b"\"}]0123456789".contains(&(t as u8)))
            .collect();
        let pool = if step + 40 > choices.len() && !closers.is_empty() {
            &closers
        } else {
            &allowed
        };
        let pool: Vec<TokenId> = pool
            .iter()
            .copied()
            .filter(|&t| t != EOS && t != EOT)
            .collect();
        if pool.is_empty() {
            return Some(String::from_utf8(text).unwrap());
        }
        let t = pool[c as usize % pool.len()];
        m.consume(t).unwrap();
        if t < 256 {
            text.push(t as u8);
        } else {
            text.extend_from_slice(match t {
                259 => b"\"name\"".as_slice(),
                260 => b"true",
                261 => b"false",
                262 => b"null",
                263 => b", ",
                264 => b": ",
                265 => b"ab",
                266 => b"abc",
                _ => unreachable!(),
            });
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_walks_end_in_valid_json(choices in prop::collection::vec(any::<u16>(), 200)) {
        let v = vocab();
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 8},
                "n": {"type": "integer", "minimum": -5, "maximum": 50},
                "tags": {"type": "array", "items": {"enum": ["a", "b", true]}, "maxItems": 3},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "n"],
            "additionalProperties": false
        });
        if let Some(text) = walk(&v, &schema, &choices) {
            let value: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert!(value["name"].as_str().is_some_and(|s| s.chars().count() <= 8), "{}", text);
            // JSON's integers include -0 (which serde_json reads as a float).
            let n = value["n"].as_f64().ok_or_else(|| TestCaseError::fail(format!("n in {text}")))?;
            prop_assert!(n.fract() == 0.0, "{}", text);
            prop_assert!((-5.0..=50.0).contains(&n), "{}", text);
            if let Some(tags) = value.get("tags") {
                prop_assert!(tags.as_array().unwrap().len() <= 3);
            }
        }
    }
}
