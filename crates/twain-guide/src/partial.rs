//! Snapshots of partially generated JSON: close what is open, drop what
//! cannot be shown yet.

use serde_json::{Map, Value};

/// JSON text that is still being generated, and the value it stands for so
/// far.
///
/// [`snapshot`](Self::snapshot) closes open strings, arrays and objects; it
/// drops a dangling key (no value yet), a number or `true`/`false`/`null`
/// that may still be cut short, and an unfinished escape. Strings grow
/// character by character. So, as the text grows, snapshots only grow:
/// members are added, strings extended, arrays lengthened — a value once
/// shown never changes into something else — and the snapshot of the
/// complete text is its value (except a bare top-level number, which is
/// never shown: it could always grow).
///
/// ```
/// use serde_json::json;
/// use twain_guide::PartialJson;
///
/// let mut p = PartialJson::new();
/// p.push(r#"{"name": "Ad"#);
/// assert_eq!(p.snapshot(), Some(json!({"name": "Ad"})));
/// p.push(r#"a", "age": 3"#);
/// assert_eq!(p.snapshot(), Some(json!({"name": "Ada"}))); // 3 may become 36
/// p.push(r#"6, "tags": ["x"#);
/// assert_eq!(p.snapshot(), Some(json!({"name": "Ada", "age": 36, "tags": ["x"]})));
/// p.push(r#""]}"#);
/// assert_eq!(p.snapshot(), Some(json!({"name": "Ada", "age": 36, "tags": ["x"]})));
/// assert!(p.is_complete());
/// ```
#[derive(Debug, Clone, Default)]
pub struct PartialJson {
    text: String,
}

impl PartialJson {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append generated text.
    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value so far, or `None` before anything can be shown.
    pub fn snapshot(&self) -> Option<Value> {
        complete_partial_json(&self.text)
    }

    /// Whether the text is one complete JSON value.
    pub fn is_complete(&self) -> bool {
        serde_json::from_str::<Value>(&self.text).is_ok()
    }
}

/// The value of the JSON prefix `text`, closed as [`PartialJson`] describes;
/// `None` when nothing can be shown yet.
pub fn complete_partial_json(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    p.ws();
    let (v, complete) = p.value();
    if complete {
        // A scalar at the top level is only final when nothing follows it.
        if let Ok(full) = serde_json::from_str::<Value>(text) {
            return Some(full);
        }
    }
    v
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 256;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// A value and whether it is complete. Incomplete values are `Some` only
    /// when showing them now cannot be contradicted later.
    fn value(&mut self) -> (Option<Value>, bool) {
        match self.peek() {
            None => (None, false),
            Some(b'{') if self.depth < MAX_DEPTH => {
                self.depth += 1;
                let r = self.object();
                self.depth -= 1;
                r
            }
            Some(b'[') if self.depth < MAX_DEPTH => {
                self.depth += 1;
                let r = self.array();
                self.depth -= 1;
                r
            }
            Some(b'"') => {
                let (s, complete) = self.string();
                (Some(Value::String(s)), complete)
            }
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => (None, false),
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> (Option<Value>, bool) {
        let rest = &self.s[self.i..];
        if rest.len() >= word.len() && &rest[..word.len()] == word.as_bytes() {
            self.i += word.len();
            (Some(v), true)
        } else {
            self.i = self.s.len();
            (None, false)
        }
    }

    fn number(&mut self) -> (Option<Value>, bool) {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.i += 1;
        }
        if self.i == self.s.len() {
            // It may go on.
            return (None, false);
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        match serde_json::from_str::<Value>(text) {
            Ok(v) => (Some(v), true),
            Err(_) => {
                self.i = self.s.len();
                (None, false)
            }
        }
    }

    /// A string (starting at its quote): its text so far and whether it closed.
    fn string(&mut self) -> (String, bool) {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(b'"') => {
                    self.i += 1;
                    return (String::from_utf8_lossy(&out).into_owned(), true);
                }
                Some(b'\\') => {
                    let Some(&e) = self.s.get(self.i + 1) else {
                        self.i = self.s.len();
                        break;
                    };
                    let simple = match e {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        self.i += 2;
                        continue;
                    }
                    if e != b'u' {
                        self.i = self.s.len();
                        break;
                    }
                    // \uXXXX, maybe a surrogate pair \uXXXX\uXXXX.
                    let hex = |at: usize| -> Option<u32> {
                        let h = self.s.get(at..at + 4)?;
                        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                    };
                    let Some(hi) = hex(self.i + 2) else {
                        self.i = self.s.len();
                        break;
                    };
                    let mut used = 6;
                    let c = if (0xD800..0xDC00).contains(&hi) {
                        if self.s.get(self.i + 6..self.i + 8) != Some(b"\\u".as_slice()) {
                            if self.i + 8 > self.s.len() {
                                self.i = self.s.len();
                                break;
                            }
                            Some('\u{FFFD}')
                        } else {
                            match hex(self.i + 8) {
                                None => {
                                    self.i = self.s.len();
                                    break;
                                }
                                Some(lo) => {
                                    used = 12;
                                    char::from_u32(
                                        0x10000
                                            + ((hi - 0xD800) << 10)
                                            + (lo.wrapping_sub(0xDC00) & 0x3FF),
                                    )
                                }
                            }
                        }
                    } else {
                        char::from_u32(hi)
                    };
                    let c = c.unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    self.i += used;
                }
                Some(b) => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
        // Unclosed: drop a trailing incomplete UTF-8 sequence.
        let valid = match std::str::from_utf8(&out) {
            Ok(_) => out.len(),
            Err(e) => e.valid_up_to(),
        };
        out.truncate(valid);
        (String::from_utf8_lossy(&out).into_owned(), false)
    }

    fn object(&mut self) -> (Option<Value>, bool) {
        self.i += 1;
        let mut map = Map::new();
        loop {
            self.ws();
            match self.peek() {
                None => return (Some(Value::Object(map)), false),
                Some(b'}') => {
                    self.i += 1;
                    return (Some(Value::Object(map)), true);
                }
                Some(b',') => {
                    self.i += 1;
                    continue;
                }
                Some(b'"') => {}
                Some(_) => {
                    self.i = self.s.len();
                    return (Some(Value::Object(map)), false);
                }
            }
            let (key, closed) = self.string();
            if !closed {
                return (Some(Value::Object(map)), false);
            }
            self.ws();
            if self.peek() != Some(b':') {
                self.i = self.s.len();
                return (Some(Value::Object(map)), false);
            }
            self.i += 1;
            self.ws();
            let (v, complete) = self.value();
            if let Some(v) = v {
                map.insert(key, v);
            }
            if !complete {
                return (Some(Value::Object(map)), false);
            }
        }
    }

    fn array(&mut self) -> (Option<Value>, bool) {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                None => return (Some(Value::Array(items)), false),
                Some(b']') => {
                    self.i += 1;
                    return (Some(Value::Array(items)), true);
                }
                Some(b',') => {
                    self.i += 1;
                    continue;
                }
                Some(_) => {}
            }
            let (v, complete) = self.value();
            if let Some(v) = v {
                items.push(v);
            }
            if !complete {
                return (Some(Value::Array(items)), false);
            }
        }
    }
}

/// Whether `next` extends `prev`: the same kind of value, strings extended,
/// arrays lengthened with their items extended, objects with more members
/// whose values extend the earlier ones; numbers, booleans and null equal.
pub fn extends(prev: &Value, next: &Value) -> bool {
    match (prev, next) {
        (Value::String(a), Value::String(b)) => b.starts_with(a.as_str()),
        (Value::Array(a), Value::Array(b)) => {
            a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| extends(x, y))
        }
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| extends(v, w))),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_prefixes(text: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for (i, _) in text.char_indices().chain([(text.len(), ' ')]) {
            if let Some(v) = complete_partial_json(&text[..i]) {
                out.push(v);
            }
        }
        out
    }

    #[test]
    fn every_prefix_extends_the_previous_one_and_ends_in_the_value() {
        let texts = [
            r#"{"a": "x\"y\\z\u00e9\ud83d\ude00", "b": [1, 22, -3.5e2, true, null, {"c": []}], "d": {"e": false}}"#,
            r#"[{"k": "v"}, "s", 10]"#,
            r#"{ "spaced" : [ 1 , 2 ] , "n" : 12 }"#,
            r#""top""#,
            r#"{"emoji": "😀 ok"}"#,
        ];
        for t in texts {
            let snaps = all_prefixes(t);
            for w in snaps.windows(2) {
                assert!(extends(&w[0], &w[1]), "{} then {} in {t}", w[0], w[1]);
            }
            let full: Value = serde_json::from_str(t).unwrap();
            assert_eq!(snaps.last(), Some(&full), "{t}");
        }
    }

    #[test]
    fn dangling_keys_and_open_scalars_are_dropped() {
        assert_eq!(
            complete_partial_json(r#"{"a": 1, "b"#),
            Some(json!({"a": 1}))
        );
        assert_eq!(
            complete_partial_json(r#"{"a": 1, "b":"#),
            Some(json!({"a": 1}))
        );
        assert_eq!(complete_partial_json(r#"{"a": tr"#), Some(json!({})));
        assert_eq!(
            complete_partial_json(r#"{"a": "x\"#),
            Some(json!({"a": "x"}))
        );
        assert_eq!(
            complete_partial_json(r#"{"a": "x\u00"#),
            Some(json!({"a": "x"}))
        );
        assert_eq!(complete_partial_json(r#"[1, 2"#), Some(json!([1])));
        // A number at the top level may still grow.
        assert_eq!(complete_partial_json("12"), None);
        assert_eq!(complete_partial_json(""), None);
        assert_eq!(complete_partial_json("  "), None);
    }

    #[test]
    fn garbage_never_panics() {
        for t in [
            "}",
            "{]",
            "[}",
            "{\"a\" 1}",
            "\"\\q",
            "-",
            "{\"a\":-}",
            "\u{0}",
        ] {
            let _ = complete_partial_json(t);
        }
        let deep = "[".repeat(10_000);
        let _ = complete_partial_json(&deep);
    }
}
