//! Guided generation over a toy model (no model file): bytes as tokens and a
//! model whose logits are flat, so greedy decoding takes the lowest allowed
//! token id — the grammar alone decides the output. A space sorts before
//! the closing quote, so free strings run to their length limit: these tests
//! give every string one (`max_string_length`) and turn the repeat penalty
//! off (`repetition(None)`) except where it is what they test.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use twain::guide::{extends, Constraint};
use twain::guided::{describe_schema, schema_of, GuidedOptions};
use twain::tools::{DynTool, Tool, ToolChoice, ToolError, ToolOptions};
use twain::{
    BoxError, ChatMl, EndReason, Error, GenerateOptions, GuidedError, Model, ModelError, ModelInfo,
    Session, TokenId, Tokenize, TypedEvent,
};

const EOT: TokenId = 256;

/// Flat logits over 257 tokens (256 bytes + end of turn).
struct Flat(ModelInfo);

impl Model for Flat {
    type State = usize;
    fn info(&self) -> &ModelInfo {
        &self.0
    }
    fn new_state(&self) -> usize {
        0
    }
    fn forward(&self, s: &mut usize, t: &[TokenId], l: &mut [f32]) -> Result<(), ModelError> {
        self.0.check_forward(*s, t, l.len())?;
        *s += t.len();
        l.fill(0.0);
        Ok(())
    }
    fn position(&self, s: &usize) -> usize {
        *s
    }
    fn truncate(&self, s: &mut usize, n: usize) -> Result<(), ModelError> {
        *s = n.min(*s);
        Ok(())
    }
}

struct Bytes;

impl Tokenize for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, BoxError> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, BoxError> {
        match id {
            0..=255 => Ok(vec![id as u8]),
            EOT => Ok(b"<|im_end|>".to_vec()),
            _ => Err(format!("no token {id}").into()),
        }
    }
    fn is_special(&self, id: TokenId) -> bool {
        id == EOT
    }
}

fn opts() -> GuidedOptions {
    GuidedOptions::default()
        .repetition(None)
        .max_string_length(Some(4))
}

fn session() -> Session<Flat> {
    let mut info = ModelInfo::new("flat", 257, 1 << 16);
    info.special.eot = Some(EOT);
    Session::new(Flat(info), Arc::new(Bytes), Arc::new(ChatMl))
}

/// A thing.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Thing {
    /// Its name.
    #[schemars(length(min = 2, max = 4))]
    name: String,
    /// A count.
    count: i32,
    /// Flags.
    #[schemars(length(min = 1, max = 2))]
    flags: Vec<bool>,
    kind: Kind,
    note: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
enum Kind {
    Small,
    Large,
}

#[test]
fn the_grammar_alone_yields_a_valid_value() {
    let mut s = session();
    let thing: Thing = s.respond_as("Make a thing.", opts()).unwrap();
    // Lowest bytes everywhere: strings of spaces, "-0" for the integer (read
    // as 0), "," before "]" and "}" (arrays and optional members as long as
    // allowed).
    assert_eq!(
        thing,
        Thing {
            name: "    ".into(),
            count: 0,
            flags: vec![false, false],
            kind: Kind::Large,
            note: Some("    ".into())
        }
    );
    let answer = &s.transcript().last().unwrap().content;
    assert_eq!(
        answer,
        r#"{"name": "    ", "count": -0, "flags": [false, false], "kind": "Large", "note": "    "}"#
    );
    // The prompt described the schema.
    assert!(s.transcript()[0].content.contains("\"count\""));
    // The state holds what the transcript says (the next turn reuses it).
    assert!(!s.tokens().is_empty());
}

#[test]
fn snapshots_extend_each_other_and_end_in_the_value() {
    let mut s = session();
    let mut snaps: Vec<Value> = Vec::new();
    let mut done = None;
    for ev in s.stream_as::<Thing>("x", opts()).unwrap() {
        match ev.unwrap() {
            TypedEvent::Partial(v) => snaps.push(v),
            TypedEvent::Complete(t) => done = Some(t),
        }
    }
    assert!(done.is_some());
    assert_eq!(snaps.first(), Some(&json!({})));
    for w in snaps.windows(2) {
        assert!(extends(&w[0], &w[1]), "{} -> {}", w[0], w[1]);
    }
    let last: Value = serde_json::from_str(&s.transcript().last().unwrap().content).unwrap();
    assert_eq!(snaps.last(), Some(&last));
}

#[test]
fn budget_cancel_and_context_errors_are_typed() {
    let mut s = session();
    let r = s.respond_as::<Thing>(
        "x",
        GuidedOptions::max_tokens(3)
            .repetition(None)
            .max_string_length(Some(4)),
    );
    assert!(
        matches!(
            r,
            Err(GuidedError::Incomplete {
                reason: EndReason::MaxTokens,
                ..
            })
        ),
        "{r:?}"
    );
    let cancel = twain::CancelFlag::new();
    cancel.cancel();
    let mut o = opts();
    o.generate.cancel = Some(cancel);
    let r = s.respond_as::<Thing>("x", o);
    assert!(
        matches!(
            r,
            Err(GuidedError::Incomplete {
                reason: EndReason::Cancelled,
                ..
            })
        ),
        "{r:?}"
    );
    let mut info = ModelInfo::new("tiny", 257, 40);
    info.special.eot = Some(EOT);
    let mut tiny = Session::new(Flat(info), Arc::new(Bytes), Arc::new(ChatMl));
    let r = tiny.respond_constrained(
        "hi",
        &Constraint::regex("a{100}"),
        GenerateOptions::default(),
    );
    let r = r.and_then(|g| g.complete_text());
    assert!(
        matches!(
            r,
            Err(GuidedError::Session(Error::ExceededContextWindow { .. }))
        ),
        "{r:?}"
    );
}

#[test]
fn schemas_are_prepared_for_rust_types() {
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Ints {
        a: u8,
        b: i64,
        c: u64,
        d: i16,
    }
    let s = schema_of::<Ints>();
    assert_eq!(s["additionalProperties"], json!(false));
    let p = &s["properties"];
    assert_eq!(
        (p["a"]["minimum"].clone(), p["a"]["maximum"].clone()),
        (json!(0), json!(255))
    );
    assert_eq!(p["b"]["maximum"], json!(9007199254740991i64));
    assert_eq!(p["b"]["minimum"], json!(-9007199254740991i64));
    assert_eq!(p["c"]["minimum"], json!(0));
    assert_eq!(p["d"]["minimum"], json!(-32768));
    let d = describe_schema("Q", &s);
    assert!(
        d.starts_with("Q\n\n") && d.contains("\"a\": an integer from 0 to 255"),
        "{d}"
    );
    // A schema that is not an object is described as JSON.
    assert!(describe_schema("Q", &json!({"type": "integer"})).contains("{\"type\":\"integer\"}"));
}

#[test]
fn max_string_length_bounds_free_strings() {
    #[derive(Debug, Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Free {
        text: String,
    }
    let mut s = session();
    let o = GuidedOptions::default()
        .repetition(None)
        .max_string_length(Some(5));
    let v = s.respond_json("x", &schema_of::<Free>(), o).unwrap();
    assert_eq!(v, json!({"text": "     "}));
    // A string with only a minimum length is capped too.
    let schema = json!({"type": "object", "properties": {"t": {"type": "string", "minLength": 3}},
                        "required": ["t"], "additionalProperties": false});
    let o = GuidedOptions::default()
        .repetition(None)
        .max_string_length(Some(5));
    let v = s.respond_json("x", &schema, o).unwrap();
    assert_eq!(v, json!({"t": "     "}));
    // Without the cap the string runs until the budget, and budget-aware
    // decoding closes it there.
    let v = s
        .respond_json("x", &schema, GuidedOptions::max_tokens(64).repetition(None))
        .unwrap();
    let t = v["t"].as_str().unwrap();
    assert!(t.len() >= 3 && t.trim().is_empty(), "{v}");
    let answer = &s.transcript().last().unwrap().content;
    assert!(answer.len() <= 64 && answer.len() + 2 >= 64, "{answer}");
}

struct Echo;

/// Arguments of echo.
#[derive(Deserialize, JsonSchema)]
struct EchoArgs {
    /// Text.
    #[schemars(length(max = 3))]
    text: String,
}

impl Tool for Echo {
    type Args = EchoArgs;
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "Echo."
    }
    fn call(&self, args: EchoArgs) -> Result<String, ToolError> {
        if args.text.trim().is_empty() {
            Err(ToolError::new("empty"))
        } else {
            Ok(args.text)
        }
    }
}

#[test]
fn tool_rounds_over_the_toy_model() {
    // Flat logits always pick the lowest bytes: `{"answer"` sorts before
    // `{"tool"`, so Auto answers at once; Required calls echo first, with
    // blank text, which fails and is reported to the model.
    let tool_opts = || ToolOptions::default().guided(opts());
    let mut s = session();
    let tools: [&dyn DynTool; 1] = [&Echo];
    let r = s.respond_with_tools("x", &tools, tool_opts()).unwrap();
    assert!(r.calls.is_empty());
    assert_eq!(r.answer, "    ");
    let mut s = session();
    let r = s
        .respond_with_tools("x", &tools, tool_opts().first_choice(ToolChoice::Required))
        .unwrap();
    assert_eq!(r.calls.len(), 1);
    assert_eq!(r.calls[0].output, Err(ToolError::new("empty")));
    assert_eq!(r.calls[0].arguments, json!({"text": "   "}));
    assert_eq!(
        s.transcript()[1].content,
        r#"{"tool": "echo", "arguments": {"text": "   "}}"#
    );
    assert_eq!(s.transcript()[2].content, "error: empty");
    assert_eq!(s.transcript()[2].role, twain::Role::Tool);
}

/// A tool whose output is longer than the toy context window.
struct Flood;

impl Tool for Flood {
    type Args = EchoArgs;
    fn name(&self) -> &str {
        "flood"
    }
    fn description(&self) -> &str {
        "Flood."
    }
    fn call(&self, _args: EchoArgs) -> Result<String, ToolError> {
        Ok("y".repeat(4000))
    }
}

#[test]
fn a_tool_output_survives_a_failed_next_round() {
    // The call fits a 1024-token context, its 4000-byte output does not:
    // the next round's prefill fails, and the transcript keeps the call and
    // the output (the tool ran).
    let mut info = ModelInfo::new("small", 257, 1024);
    info.special.eot = Some(EOT);
    let mut s = Session::new(Flat(info), Arc::new(Bytes), Arc::new(ChatMl));
    let tools: [&dyn DynTool; 1] = [&Flood];
    let r = s.respond_with_tools(
        "x",
        &tools,
        ToolOptions::default()
            .first_choice(ToolChoice::Required)
            .guided(opts()),
    );
    assert!(
        matches!(
            r,
            Err(GuidedError::Session(Error::ExceededContextWindow { .. }))
        ),
        "{r:?}"
    );
    let t = s.transcript();
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!(t[0].role, twain::Role::User);
    assert_eq!(t[1].role, twain::Role::Assistant);
    assert_eq!(
        t[1].content,
        r#"{"tool": "flood", "arguments": {"text": "   "}}"#
    );
    assert_eq!(t[2].role, twain::Role::Tool);
    assert_eq!(t[2].content, "y".repeat(4000));
    // The state still holds the conversation up to the call.
    assert_eq!(s.model().position(s.state()), s.tokens().len());
    assert!(!s.tokens().is_empty());
    // A failure before any tool ran leaves the session as it was.
    let mut info = ModelInfo::new("tiny", 257, 40);
    info.special.eot = Some(EOT);
    let mut tiny = Session::new(Flat(info), Arc::new(Bytes), Arc::new(ChatMl));
    let r = tiny.respond_with_tools("x", &tools, ToolOptions::default());
    assert!(r.is_err());
    assert!(tiny.transcript().is_empty() && tiny.tokens().is_empty());
}

#[test]
fn max_array_items_bounds_free_arrays() {
    #[derive(Debug, Deserialize, JsonSchema)]
    struct Lists {
        free: Vec<u8>,
        #[schemars(length(min = 3))]
        at_least_three: Vec<u8>,
    }
    let mut s = session();
    let o = opts().max_array_items(Some(2));
    let v: Lists = s.respond_as("x", o).unwrap();
    // "0" sorts before "]": items go on up to the cap (the minimum wins over it).
    assert_eq!(v.free, vec![0, 0]);
    assert_eq!(v.at_least_three, vec![0, 0, 0]);
}

/// A list of itself: its schema's `$ref` loops through `items`.
#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)]
struct Nest(Vec<Nest>);

/// A member that is a list of its own type.
#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)]
struct Tree {
    #[schemars(length(max = 2))]
    kids: Vec<Tree>,
}

#[test]
fn recursive_schemas_are_described_and_generated_in_bounded_time() {
    // A reference that loops through array items used to recurse without
    // end (stack overflow, which aborts the process: this test would not
    // report, it would kill the test binary).
    let looped = json!({
        "type": "object",
        "properties": {"x": {"type": "array", "items": {"$ref": "#"}}},
    });
    let d = describe_schema("Q", &looped);
    assert!(
        d.contains("a list of items, each an object with \"x\"") && d.len() < 4096,
        "{d}"
    );
    // Wide objects whose members all refer back to the root multiplied:
    // 200 members at three levels are 8 million descriptions.
    let mut props = serde_json::Map::new();
    for i in 0..200 {
        props.insert(format!("p{i}"), json!({"$ref": "#"}));
    }
    let wide = json!({"type": "object", "properties": props});
    let d = describe_schema("Q", &wide);
    assert!(d.len() < 8 << 20, "{} bytes", d.len());
    // Types whose schemas refer to themselves, through the typed path.
    let mut s = session();
    let r = s.respond_as::<Nest>("x", GuidedOptions::max_tokens(48).repetition(None));
    assert!(
        matches!(r, Ok(_) | Err(GuidedError::Incomplete { .. })),
        "{r:?}"
    );
    let o = GuidedOptions::max_tokens(64)
        .repetition(None)
        .max_array_items(Some(2));
    let r = s.respond_as::<Tree>("x", o);
    assert!(
        matches!(r, Ok(_) | Err(GuidedError::Incomplete { .. })),
        "{r:?}"
    );
}

/// The flat model never closes a free string (a space sorts before the
/// quote) nor an array (a comma sorts before the bracket): without
/// budget-aware decoding every budget ends in `MaxTokens`. With it, every
/// budget from the shortest value's length up gives a valid, finished value,
/// and a budget below it is a typed `Incomplete`.
#[test]
fn every_budget_that_fits_the_shortest_value_gives_a_finished_value() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "integer"}},
            "note": {"type": "string"}
        },
        "required": ["name", "tags", "note"],
        "additionalProperties": false
    });
    let shortest = r#"{"name": "", "tags": [], "note": ""}"#.len();
    let loose = || {
        GuidedOptions::default()
            .repetition(None)
            .describe_schema(false)
    };
    for budget in shortest..shortest + 40 {
        let mut s = session();
        let mut o = loose();
        o.generate.max_tokens = budget;
        let v = s
            .respond_json("x", &schema, o)
            .unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        let obj = v.as_object().unwrap();
        assert!(obj["name"].is_string() && obj["note"].is_string(), "{v}");
        assert!(
            obj["tags"].as_array().unwrap().iter().all(Value::is_i64),
            "{v}"
        );
        // The whole budget is used: the free parts run until they must close.
        let answer = &s.transcript().last().unwrap().content;
        assert!(answer.len() <= budget, "{budget}: {answer}");
        assert!(answer.len() + 2 >= budget, "{budget}: {answer}");
    }
    let mut s = session();
    let mut o = loose();
    o.generate.max_tokens = shortest - 1;
    let r = s.respond_json("x", &schema, o);
    assert!(
        matches!(
            r,
            Err(GuidedError::Incomplete {
                reason: EndReason::MaxTokens,
                ..
            })
        ),
        "{r:?}"
    );
}

/// Prefers to continue "ab" inside a string forever: `a` after `b` and `b`
/// after anything else score 5, the closing quote 1, the rest 0.
struct Looper(ModelInfo);

impl Model for Looper {
    type State = Vec<TokenId>;
    fn info(&self) -> &ModelInfo {
        &self.0
    }
    fn new_state(&self) -> Vec<TokenId> {
        Vec::new()
    }
    fn forward(
        &self,
        s: &mut Vec<TokenId>,
        t: &[TokenId],
        l: &mut [f32],
    ) -> Result<(), ModelError> {
        self.0.check_forward(s.len(), t, l.len())?;
        s.extend_from_slice(t);
        l.fill(0.0);
        let next = if s.last() == Some(&u32::from(b'a')) {
            b'b'
        } else {
            b'a'
        };
        l[usize::from(next)] = 5.0;
        l[usize::from(b'"')] = 1.0;
        Ok(())
    }
    fn position(&self, s: &Vec<TokenId>) -> usize {
        s.len()
    }
    fn truncate(&self, s: &mut Vec<TokenId>, n: usize) -> Result<(), ModelError> {
        s.truncate(n);
        Ok(())
    }
}

/// Greedy decoding of a model that loops inside a free string: without a
/// repeat penalty or a length cap the string runs until the budget (the
/// value is only finished by budget-aware decoding, at its very end); the
/// default options (DRY on the value's tokens) close it after a few
/// characters, and the default length cap alone closes it at 256.
#[test]
fn a_looping_model_finishes_free_strings_under_the_defaults() {
    let mut info = ModelInfo::new("looper", 257, 1 << 16);
    info.special.eot = Some(EOT);
    let session = || Session::new(Looper(info.clone()), Arc::new(Bytes), Arc::new(ChatMl));
    let schema = json!({"type": "object", "properties": {"note": {"type": "string"}},
                        "required": ["note"], "additionalProperties": false});
    let base = || GuidedOptions::max_tokens(400).describe_schema(false);

    let off = base().repetition(None).max_string_length(None);
    let v = session().respond_json("x", &schema, off).unwrap();
    let note = v["note"].as_str().unwrap();
    assert!(note.len() > 350 && note.starts_with("ababab"), "{v}");

    let mut s = session();
    let v = s.respond_json("x", &schema, base()).unwrap();
    // The k-th character repeats the k-2 before it; DRY's defaults take
    // 0.8 * 1.75^(k-2-2) off the loop's next token, which falls below the
    // quote's 1 (from 5) first at k = 8 (0.8 * 1.75^3 = 4.29): 7 characters.
    assert_eq!(v["note"], "abababa", "{v}");

    let capped = base().repetition(None);
    let v = session().respond_json("x", &schema, capped).unwrap();
    assert_eq!(
        v["note"].as_str().unwrap().len(),
        twain::guided::DEFAULT_MAX_STRING_LENGTH
    );

    // The penalty stops at structure: keys and separators may recur.
    let list = json!({"type": "array", "items": {"type": "object",
        "properties": {"k": {"type": "integer"}}, "required": ["k"], "additionalProperties": false},
        "minItems": 4, "maxItems": 4});
    let v = session().respond_json("x", &list, base()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
}
