//! Guided generation: output constrained by a JSON Schema, a regex or a Lark
//! grammar, and typed generation into any `T: Deserialize + JsonSchema` with
//! streamed snapshots of the partially generated value.
//!
//! Every step, the constraint's matcher ([`twain_guide`], llguidance) masks
//! the logits so only tokens that keep the output valid can be sampled; stop
//! tokens are allowed only once the output is complete, and generation ends
//! as soon as the grammar is complete. The JSON therefore always parses, and
//! it deserializes into `T` unless the token budget runs out first (then
//! [`GuidedError::Incomplete`]).
//!
//! The tokenizer side of the matcher ([`Vocabulary`]) is built once per
//! tokenizer (it walks the whole vocabulary, ~0.1 s for 49k tokens) and
//! cached for as long as the tokenizer lives; see [`vocabulary_for`].
//!
//! Typed generation describes the schema in the prompt too (on by default,
//! [`GuidedOptions::describe_schema`]), as the reference framework does: the
//! constraint makes the output valid, the description (field names, doc
//! comments as `description`s) makes it sensible.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use twain_guide::{Constraint, GuideError, JsonFormat, Matcher, PartialJson, TokenBytes};
use twain_model::{Model, ModelInfo, TokenId};
use twain_sample::{Context, Dry, LogitsProcessor, Sampler, TokenMask};

use crate::generate::{EndReason, Event, GenerateOptions};
use crate::text::TextAssembler;
use crate::tokenize::{Message, Role, Tokenize};
use crate::{Error, Session};

pub use twain_guide::Vocabulary;

/// Errors of guided and typed generation (and tool calling).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuidedError {
    /// The session failed (model, tokenizer, template, context window, ...).
    #[error(transparent)]
    Session(#[from] Error),
    /// The constraint failed to compile, or the matcher failed.
    #[error("guide: {0}")]
    Guide(#[from] GuideError),
    /// The type's JSON schema could not be made (or a schema is not an object).
    #[error("schema: {0}")]
    Schema(String),
    /// Generation ended before the output was complete (token budget,
    /// cancellation); `text` is what was generated.
    #[error("output incomplete ({reason:?}) after {tokens} tokens: {text}")]
    Incomplete {
        /// Why generation ended.
        reason: EndReason,
        /// Tokens generated.
        tokens: usize,
        /// The text so far.
        text: String,
    },
    /// The complete output did not deserialize into the requested type
    /// (a schema feature serde reads differently); `text` is the output.
    #[error("output does not deserialize into {type_name}: {message}; output: {text}")]
    Decode {
        /// The requested type.
        type_name: &'static str,
        /// serde's message.
        message: String,
        /// The output.
        text: String,
    },
    /// A tool failed and [`ToolErrorPolicy::Fail`](crate::tools::ToolErrorPolicy::Fail)
    /// was chosen.
    #[error("tool {tool} failed: {error}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// Its error.
        error: crate::tools::ToolError,
    },
    /// The model kept calling tools past the allowed number of rounds.
    #[error("no final answer after {rounds} rounds of tool calls")]
    TooManyToolRounds {
        /// The limit.
        rounds: usize,
    },
    /// Tool set problem (e.g. two tools with one name).
    #[error("tools: {0}")]
    Tools(String),
}

/// Options of guided and typed generation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GuidedOptions {
    /// Token budget and cancellation (stop sequences are ignored: the
    /// grammar decides where the output ends). Default budget: 512 tokens.
    pub generate: GenerateOptions,
    /// Add the JSON schema to the prompt (default on).
    pub describe_schema: bool,
    /// Layout of generated JSON (default `{"a": 1, "b": [2, 3]}` style, no
    /// free whitespace).
    pub format: JsonFormat,
    /// Give every string without a `maxLength` (and without a `pattern`,
    /// `format`, `enum` or `const`) this `maxLength` in characters, so a
    /// small model stuck repeating itself inside a string still finishes
    /// within the token budget. Default
    /// `Some(`[`DEFAULT_MAX_STRING_LENGTH`]`)`; `None`: the schema as it is.
    pub max_string_length: Option<usize>,
    /// Likewise give every array without a `maxItems` this `maxItems` (a
    /// small model repeating one item forever still finishes). Default
    /// `None`.
    pub max_array_items: Option<usize>,
    /// A repeat penalty on the value's own tokens ([`Dry`]; its matches stop
    /// at the vocabulary's [structural tokens](Vocabulary::structural_tokens)
    /// besides any breakers it has): greedy decoding of a small model inside
    /// a free-form string otherwise repeats a phrase until the budget is
    /// gone. Default `Some(Dry::default())`; `None` turns it off.
    pub repetition: Option<Dry>,
}

impl Default for GuidedOptions {
    fn default() -> Self {
        Self {
            generate: GenerateOptions::default().max_tokens(512),
            describe_schema: true,
            format: JsonFormat::default(),
            max_string_length: Some(DEFAULT_MAX_STRING_LENGTH),
            max_array_items: None,
            repetition: Some(Dry::default()),
        }
    }
}

twain_model::setters!(GuidedOptions {
    generate: GenerateOptions,
    describe_schema: bool,
    format: JsonFormat,
    max_string_length: Option<usize>,
    max_array_items: Option<usize>,
    repetition: Option<Dry>,
});

/// [`GuidedOptions::max_string_length`]'s default, in characters: a
/// sentence or two, about 60 tokens of English.
pub const DEFAULT_MAX_STRING_LENGTH: usize = 256;

impl GuidedOptions {
    /// Default options with a budget of `max_tokens`.
    pub fn max_tokens(max_tokens: usize) -> Self {
        let mut o = Self::default();
        o.generate.max_tokens = max_tokens;
        o
    }
}

struct CachedVocabulary {
    tokenizer: Weak<dyn Tokenize>,
    vocab_size: usize,
    stops: Vec<TokenId>,
    vocabulary: Arc<Vocabulary>,
}

static VOCABULARIES: Mutex<Vec<CachedVocabulary>> = Mutex::new(Vec::new());

fn stop_tokens(info: &ModelInfo) -> Vec<TokenId> {
    info.special.stop_ids()
}

/// The constrained-decoding view of `tokenizer` for a model described by
/// `info` (its vocabulary size and stop tokens): built on first use, then
/// shared by every session using the same tokenizer (`Arc`) for as long as
/// it lives.
pub fn vocabulary_for(
    tokenizer: &Arc<dyn Tokenize>,
    info: &ModelInfo,
) -> Result<Arc<Vocabulary>, GuidedError> {
    let stops = stop_tokens(info);
    let mut cache = VOCABULARIES.lock().unwrap_or_else(|e| e.into_inner());
    cache.retain(|c| c.tokenizer.strong_count() > 0);
    for c in cache.iter() {
        if c.vocab_size == info.vocab_size
            && c.stops == stops
            && c.tokenizer
                .upgrade()
                .is_some_and(|t| Arc::ptr_eq(&t, tokenizer))
        {
            return Ok(c.vocabulary.clone());
        }
    }
    let vocabulary = build_vocabulary(tokenizer, info.vocab_size, &stops)?;
    cache.push(CachedVocabulary {
        tokenizer: Arc::downgrade(tokenizer),
        vocab_size: info.vocab_size,
        stops,
        vocabulary: vocabulary.clone(),
    });
    Ok(vocabulary)
}

/// Build a [`Vocabulary`] from any [`Tokenize`] (uncached; prefer
/// [`vocabulary_for`]). Ids the tokenizer does not know (a padded embedding
/// table) become placeholders that are never allowed.
pub fn build_vocabulary(
    tokenizer: &Arc<dyn Tokenize>,
    vocab_size: usize,
    stop_tokens: &[TokenId],
) -> Result<Arc<Vocabulary>, GuidedError> {
    let tokens = (0..vocab_size as TokenId)
        .map(|id| match tokenizer.token_bytes(id) {
            Ok(bytes) if !bytes.is_empty() => TokenBytes {
                bytes,
                special: tokenizer.is_special(id),
            },
            _ => TokenBytes::special(format!("<[{id}]>")),
        })
        .collect();
    let weak = Arc::downgrade(tokenizer);
    let encode = move |text: &str| match weak.upgrade() {
        Some(t) => t.encode(text).map_err(|e| e.to_string()),
        None => Err("the tokenizer was dropped".to_string()),
    };
    Ok(Vocabulary::new(tokens, stop_tokens, encode)?)
}

/// The JSON schema of `T` as schemars makes it (draft 2020-12, `$defs`),
/// prepared for generation: objects without `additionalProperties` get
/// `false` (no invented members), integer formats (`int32`, `uint8`, ...) get
/// their ranges so every generated number fits the Rust type (64-bit ones
/// the range JSON numbers carry exactly, +-(2^53 - 1)).
pub fn schema_of<T: JsonSchema>() -> Value {
    let schema = schemars::schema_for!(T);
    let mut v = schema.to_value();
    prepare_schema(&mut v);
    v
}

/// What [`schema_of`] does to a schemars schema, for any schema.
pub fn prepare_schema(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            let is_integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if is_integer {
                // 64-bit integers are limited to the range JSON numbers carry
                // exactly (+-(2^53 - 1)).
                const SAFE: i128 = (1 << 53) - 1;
                let range: Option<(i128, i128)> = match map.get("format").and_then(Value::as_str) {
                    Some("int8") => Some((i8::MIN.into(), i8::MAX.into())),
                    Some("int16") => Some((i16::MIN.into(), i16::MAX.into())),
                    Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
                    Some("int64" | "int" | "int128") => Some((-SAFE, SAFE)),
                    Some("uint8") => Some((0, u8::MAX.into())),
                    Some("uint16") => Some((0, u16::MAX.into())),
                    Some("uint32") => Some((0, u32::MAX.into())),
                    Some("uint64" | "uint" | "uint128") => Some((0, SAFE)),
                    _ => None,
                };
                if let Some((lo, hi)) = range {
                    let lo_now = map.get("minimum").and_then(Value::as_f64);
                    let hi_now = map.get("maximum").and_then(Value::as_f64);
                    if lo_now.is_none_or(|x| x < lo as f64) {
                        map.insert("minimum".into(), number_of(lo));
                    }
                    if hi_now.is_none_or(|x| x > hi as f64) {
                        map.insert("maximum".into(), number_of(hi));
                    }
                }
            }
            for (k, v) in map.iter_mut() {
                // Enum and const values are data, not schemas.
                if k != "enum" && k != "const" && k != "default" && k != "examples" {
                    prepare_schema(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(prepare_schema),
        _ => {}
    }
}

fn number_of(x: i128) -> Value {
    if let Ok(v) = i64::try_from(x) {
        Value::from(v)
    } else if let Ok(v) = u64::try_from(x) {
        Value::from(v)
    } else {
        Value::from(x as f64)
    }
}

/// Give strings without a length limit (or pattern, format, enum, const)
/// `maxLength: max` (see [`GuidedOptions::max_string_length`]).
pub fn limit_strings(schema: &mut Value, max: usize) {
    match schema {
        Value::Object(map) => {
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                _ => false,
            };
            let fixed = ["maxLength", "pattern", "format", "enum", "const"]
                .iter()
                .any(|k| map.contains_key(*k));
            if is_string && !fixed {
                map.insert("maxLength".into(), Value::from(max));
            }
            for (k, v) in map.iter_mut() {
                if k != "enum" && k != "const" && k != "default" && k != "examples" {
                    limit_strings(v, max);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| limit_strings(v, max)),
        _ => {}
    }
}

/// Give arrays without a `maxItems` `maxItems: max` (see
/// [`GuidedOptions::max_array_items`]).
pub fn limit_arrays(schema: &mut Value, max: usize) {
    match schema {
        Value::Object(map) => {
            let is_array = match map.get("type") {
                Some(Value::String(t)) => t == "array",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "array"),
                _ => map.contains_key("items") || map.contains_key("prefixItems"),
            };
            if is_array && !map.contains_key("maxItems") {
                let min = map.get("minItems").and_then(Value::as_u64).unwrap_or(0);
                map.insert("maxItems".into(), Value::from((max as u64).max(min)));
            }
            for (k, v) in map.iter_mut() {
                if k != "enum" && k != "const" && k != "default" && k != "examples" {
                    limit_arrays(v, max);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| limit_arrays(v, max)),
        _ => {}
    }
}

/// The constraint of a JSON request under `opts`.
pub(crate) fn json_constraint(schema: &Value, opts: &GuidedOptions) -> Constraint {
    let mut schema = schema.clone();
    if let Some(max) = opts.max_string_length {
        limit_strings(&mut schema, max);
    }
    if let Some(max) = opts.max_array_items {
        limit_arrays(&mut schema, max);
    }
    Constraint::JsonSchema {
        schema,
        format: opts.format.clone(),
    }
}

/// The prompt of a typed request: `prompt` plus a description of the
/// schema. An object schema is described member by member in words (name,
/// type, limits, the `description`); small models follow that better than
/// the JSON text of the schema, which other schemas get.
pub fn describe_schema(prompt: &str, schema: &Value) -> String {
    let root = schema;
    let props = schema.get("properties").and_then(Value::as_object);
    match props {
        Some(props) if !props.is_empty() => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut s = format!("{prompt}\n\nAnswer with a JSON object with these members:\n");
            for (name, p) in props {
                let optional = if required.contains(&name.as_str()) {
                    ""
                } else {
                    " (optional)"
                };
                s.push_str(&format!(
                    "- \"{name}\"{optional}: {}\n",
                    describe_type(root, p, 0)
                ));
            }
            s
        }
        _ => {
            let mut s = schema.clone();
            if let Value::Object(m) = &mut s {
                m.remove("$schema");
            }
            format!(
                "{prompt}\n\nAnswer with JSON that follows this JSON schema:\n{}",
                serde_json::to_string(&s).unwrap_or_default()
            )
        }
    }
}

/// A short description of the values `schema` allows, in words.
fn describe_type(root: &Value, schema: &Value, depth: usize) -> String {
    let mut schema = schema;
    let mut description = schema.get("description").and_then(Value::as_str);
    // Follow local references (keeping the referring member's description).
    for _ in 0..8 {
        let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            break;
        };
        schema = target;
        description = description.or(schema.get("description").and_then(Value::as_str));
    }
    let kind = describe_kind(root, schema, depth);
    match description {
        Some(d) if !d.is_empty() => format!("{kind}. {}", d.trim()),
        _ => kind,
    }
}

/// How many schema nodes one description may visit: `$ref` cycles through
/// arrays or members (`struct L(Vec<L>)`) and wide objects that refer back
/// to the root would otherwise recurse without end or multiply.
const DESCRIBE_BUDGET: usize = 256;

/// Deepest nesting a description goes into.
const DESCRIBE_DEPTH: usize = 6;

fn describe_kind(root: &Value, schema: &Value, depth: usize) -> String {
    let mut budget = DESCRIBE_BUDGET;
    describe_kind_within(root, schema, depth, &mut budget)
}

fn describe_kind_within(root: &Value, schema: &Value, depth: usize, budget: &mut usize) -> String {
    if depth > DESCRIBE_DEPTH || *budget == 0 {
        return "a value".into();
    }
    *budget -= 1;
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(c) = schema.get("const") {
        return format!("exactly {c}");
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let items: Vec<String> = e.iter().map(Value::to_string).collect();
        return format!("one of {}", items.join(", "));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = schema.get(key).and_then(Value::as_array) {
            if depth > 2 {
                return "one of several forms".into();
            }
            let alts: Vec<String> = alts
                .iter()
                .map(|a| describe_kind_within(root, resolve(root, a), depth + 1, budget))
                .collect();
            return format!("either {}", alts.join(", or "));
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::from("any value"),
    };
    let mut out = match ty.as_str() {
        "integer" | "number" => {
            let mut s = if ty == "integer" {
                "an integer"
            } else {
                "a number"
            }
            .to_string();
            match (num("minimum"), num("maximum")) {
                (Some(lo), Some(hi)) => s.push_str(&format!(" from {lo} to {hi}")),
                (Some(lo), None) => s.push_str(&format!(" of at least {lo}")),
                (None, Some(hi)) => s.push_str(&format!(" of at most {hi}")),
                _ => {}
            }
            s
        }
        "string" => {
            let mut s = String::from("a string");
            if let Some(f) = schema.get("format").and_then(Value::as_str) {
                s = format!("a {f} string");
            }
            if let Some(hi) = num("maxLength") {
                s.push_str(&format!(" of at most {hi} characters"));
            }
            s
        }
        "array" => {
            let item = schema
                .get("items")
                .map(|i| describe_kind_within(root, resolve(root, i), depth + 1, budget))
                .unwrap_or_else(|| "values".into());
            let count = match (num("minItems"), num("maxItems")) {
                (Some(lo), Some(hi)) if lo == hi => format!("{lo} "),
                (Some(lo), Some(hi)) => format!("{lo} to {hi} "),
                (None, Some(hi)) => format!("up to {hi} "),
                (Some(lo), None) => format!("at least {lo} "),
                _ => String::new(),
            };
            format!("a list of {count}items, each {item}")
        }
        "object" => match schema.get("properties").and_then(Value::as_object) {
            Some(p) if depth < 3 => {
                let members: Vec<String> = p
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "\"{k}\" ({})",
                            describe_kind_within(root, resolve(root, v), depth + 1, budget)
                        )
                    })
                    .collect();
                format!("an object with {}", members.join(", "))
            }
            _ => "an object".into(),
        },
        "boolean" => "true or false".into(),
        other => other.to_string(),
    };
    if matches!(schema.get("type"), Some(Value::Array(ts)) if ts.iter().any(|t| t == "null")) {
        out.push_str(", or null");
    }
    out
}

fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..8 {
        match schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p))
        {
            Some(t) => schema = t,
            None => break,
        }
    }
    schema
}

/// A running constrained generation: an iterator of [`Event`]s like
/// [`Generation`](crate::Generation), whose text always stays inside the
/// constraint. It ends with [`EndReason::EndOfTurn`] when the output is
/// complete. Dropping it early is fine (the text so far goes to the
/// transcript).
pub struct GuidedGeneration<'a, M: Model> {
    model: &'a M,
    state: &'a mut M::State,
    tokens: &'a mut Vec<TokenId>,
    logits: &'a mut Vec<f32>,
    tokenizer: &'a dyn Tokenize,
    sampler: &'a mut Sampler,
    transcript: Option<&'a mut Vec<Message>>,
    matcher: Matcher,
    mask: TokenMask,
    opts: GenerateOptions,
    asm: TextAssembler,
    queue: VecDeque<Event>,
    to_feed: Vec<TokenId>,
    produced: usize,
    text: String,
    finished: bool,
    scratch: Vec<f32>,
    /// Length of the last closing path found ([`Matcher::closing_path`]),
    /// `None` when none was found.
    close_est: Option<usize>,
    /// Steps since the closing path was last measured.
    since_check: usize,
    /// The repeat penalty, breakers included, and where the value's tokens
    /// start in `tokens`.
    repetition: Option<Dry>,
    value_start: usize,
}

/// Outside the closing window the closing path is measured every this many
/// steps.
const CLOSE_CHECK_EVERY: usize = 8;
/// The closing window: every step is checked once the budget left is at
/// most twice the closing path plus this many tokens.
const CLOSE_SLACK: usize = 32;

impl<M: Model> GuidedGeneration<'_, M> {
    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Tokens generated so far (forced ones included).
    pub fn generated_tokens(&self) -> usize {
        self.produced
    }

    /// Run to the end; the whole text, or [`GuidedError::Incomplete`] when
    /// the output was cut short.
    pub fn complete_text(mut self) -> Result<String, GuidedError> {
        let mut reason = EndReason::MaxTokens;
        for ev in self.by_ref() {
            if let Event::End(r) = ev? {
                reason = r;
            }
        }
        if reason == EndReason::EndOfTurn {
            Ok(self.text.clone())
        } else {
            Err(GuidedError::Incomplete {
                reason,
                tokens: self.produced,
                text: self.text.clone(),
            })
        }
    }

    fn finish(&mut self, reason: EndReason) {
        let rest = self.asm.finish();
        if !rest.is_empty() {
            self.text.push_str(&rest);
            self.queue.push_back(Event::Text(rest));
        }
        self.queue.push_back(Event::End(reason));
        self.finished = true;
        self.record();
    }

    fn record(&mut self) {
        if let Some(t) = self.transcript.take() {
            t.push(Message::new(Role::Assistant, self.text.clone()));
        }
    }

    fn emit(&mut self, tok: TokenId) -> Result<(), GuidedError> {
        self.produced += 1;
        self.queue.push_back(Event::Token(tok));
        let bytes = self.tokenizer.token_bytes(tok).map_err(Error::Tokenizer)?;
        let piece = self.asm.push(&bytes);
        if !piece.text.is_empty() {
            self.text.push_str(&piece.text);
            self.queue.push_back(Event::Text(piece.text));
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), GuidedError> {
        if !self.to_feed.is_empty() {
            let limit = self.model.info().context_length;
            let needed = self.tokens.len() + self.to_feed.len();
            if needed > limit {
                return Err(Error::ExceededContextWindow { needed, limit }.into());
            }
            self.model
                .forward(self.state, &self.to_feed, self.logits)
                .map_err(Error::from)?;
            self.tokens.extend_from_slice(&self.to_feed);
            self.to_feed.clear();
        }
        if self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            self.finish(EndReason::Cancelled);
            return Ok(());
        }
        if let Some(e) = self.matcher.error() {
            return Err(GuideError::Matcher(e).into());
        }
        if self.produced >= self.opts.max_tokens {
            // The budget is spent; a value that may end here is complete.
            let end = if self.matcher.is_accepting() {
                EndReason::EndOfTurn
            } else {
                EndReason::MaxTokens
            };
            self.finish(end);
            return Ok(());
        }
        // Budget-aware decoding: near the end of the budget, keep a way to
        // close the value within what is left ([`Matcher::closing_path`]).
        let room = self.opts.max_tokens - self.produced;
        self.since_check += 1;
        let in_window = self.close_est.is_some_and(|d| room <= 2 * d + CLOSE_SLACK);
        let mut fallback = None;
        if in_window || self.since_check >= CLOSE_CHECK_EVERY {
            self.since_check = 0;
            let path = self.matcher.closing_path(room)?;
            self.close_est = path.as_ref().map(Vec::len);
            if self.close_est.is_some_and(|d| room <= 2 * d + CLOSE_SLACK) {
                fallback = path.map(|p| p.first().copied());
            }
        }
        self.matcher.fill_mask(&mut self.mask)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(self.logits);
        if let Some(dry) = &mut self.repetition {
            dry.process(
                &mut self.scratch,
                &Context::new(&self.tokens[self.value_start..]),
            );
        }
        let mut tok = self
            .sampler
            .sample_masked(&mut self.scratch, self.tokens, &self.mask)
            .map_err(Error::from)?;
        if self.matcher.vocabulary().is_stop(tok) {
            self.finish(EndReason::EndOfTurn);
            return Ok(());
        }
        self.matcher.consume(tok)?;
        if let Some(first) = fallback.filter(|&f| f != Some(tok)) {
            // Keep the sampled token only if the value can still close in
            // the budget after it (it can when it is the path's own first
            // token); else take the closing path's first token (or end
            // here, when the value is already complete).
            if self.matcher.closing_path(room - 1)?.is_none() {
                self.matcher.rollback(1)?;
                match first {
                    Some(t) => {
                        self.matcher.consume(t)?;
                        tok = t;
                    }
                    None => {
                        self.finish(EndReason::EndOfTurn);
                        return Ok(());
                    }
                }
            }
        }
        self.emit(tok)?;
        self.to_feed.push(tok);
        // Text the grammar forces (the rest of a key, a separator) costs one
        // batched forward pass instead of a step per token.
        let forced = self.matcher.forced_tokens();
        let room = self.opts.max_tokens.saturating_sub(self.produced);
        for &f in forced.iter().take(room) {
            if self.matcher.vocabulary().is_stop(f) {
                break;
            }
            self.matcher.consume(f)?;
            self.emit(f)?;
            self.to_feed.push(f);
        }
        if self.matcher.is_stopped() {
            if let Some(e) = self.matcher.error() {
                return Err(GuideError::Matcher(e).into());
            }
            // Complete: nothing but the end can follow, no need to ask the model.
            self.finish(EndReason::EndOfTurn);
        }
        Ok(())
    }
}

impl<M: Model> Iterator for GuidedGeneration<'_, M> {
    type Item = Result<Event, GuidedError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(Ok(ev));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.step() {
                self.finished = true;
                self.record();
                return Some(Err(e));
            }
        }
    }
}

impl<M: Model> Drop for GuidedGeneration<'_, M> {
    fn drop(&mut self) {
        self.record();
    }
}

/// One event of a typed stream ([`Session::stream_as`]).
#[derive(Debug, Clone, PartialEq)]
pub enum TypedEvent<T> {
    /// The partially generated value so far: every member optional, strings
    /// growing; each snapshot extends the previous one
    /// ([`twain_guide::extends`]). Deserialize it into a type whose fields are
    /// all `Option` to read it typed.
    Partial(Value),
    /// The final value (the last event; the last `Partial` before it is the
    /// same value as JSON).
    Complete(T),
}

/// A typed generation in progress: an iterator of [`TypedEvent`]s ending in
/// [`TypedEvent::Complete`], or an error.
pub struct TypedStream<'a, M: Model, T> {
    inner: GuidedGeneration<'a, M>,
    partial: PartialJson,
    last: Option<Value>,
    pending_final: Option<T>,
    done: bool,
    _type: PhantomData<fn() -> T>,
}

impl<M: Model, T: DeserializeOwned> TypedStream<'_, M, T> {
    /// The JSON text so far.
    pub fn text(&self) -> &str {
        self.partial.text()
    }

    /// Run to the end and return the value.
    pub fn into_value(mut self) -> Result<T, GuidedError> {
        for ev in self.by_ref() {
            if let TypedEvent::Complete(v) = ev? {
                return Ok(v);
            }
        }
        Err(GuidedError::Incomplete {
            reason: EndReason::MaxTokens,
            tokens: self.inner.produced,
            text: self.partial.text().to_string(),
        })
    }

    fn decode(&self) -> Result<(T, Value), GuidedError> {
        let text = self.partial.text();
        let decode_err = |message: String| GuidedError::Decode {
            type_name: std::any::type_name::<T>(),
            message,
            text: text.to_string(),
        };
        let value: Value = serde_json::from_str(text).map_err(|e| decode_err(e.to_string()))?;
        let mut normalized = value.clone();
        normalize_negative_zero(&mut normalized);
        let typed = T::deserialize(&normalized).map_err(|e| decode_err(e.to_string()))?;
        Ok((typed, value))
    }
}

impl<M: Model, T: DeserializeOwned> Iterator for TypedStream<'_, M, T> {
    type Item = Result<TypedEvent<T>, GuidedError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(v) = self.pending_final.take() {
            self.done = true;
            return Some(Ok(TypedEvent::Complete(v)));
        }
        if self.done {
            return None;
        }
        loop {
            let ev = match self.inner.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Some(Ok(ev)) => ev,
            };
            match ev {
                Event::Token(_) => {}
                Event::Text(t) => {
                    self.partial.push(&t);
                    if let Some(snap) = self.partial.snapshot() {
                        if self.last.as_ref() != Some(&snap) {
                            self.last = Some(snap.clone());
                            return Some(Ok(TypedEvent::Partial(snap)));
                        }
                    }
                }
                Event::End(EndReason::EndOfTurn) => match self.decode() {
                    Ok((typed, value)) => {
                        if self.last.as_ref() != Some(&value) {
                            self.last = Some(value.clone());
                            self.pending_final = Some(typed);
                            return Some(Ok(TypedEvent::Partial(value)));
                        }
                        self.done = true;
                        return Some(Ok(TypedEvent::Complete(typed)));
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                Event::End(reason) => {
                    self.done = true;
                    return Some(Err(GuidedError::Incomplete {
                        reason,
                        tokens: self.inner.produced,
                        text: self.partial.text().to_string(),
                    }));
                }
            }
        }
    }
}

impl<M: Model> Session<M> {
    /// The constrained-decoding vocabulary of this session's tokenizer
    /// (built once per tokenizer, see [`vocabulary_for`]).
    pub fn guide_vocabulary(&self) -> Result<Arc<Vocabulary>, GuidedError> {
        vocabulary_for(&self.tokenizer, self.model.info())
    }

    /// Add a user message and stream an answer that stays inside
    /// `constraint` (the prompt is sent as given). The answer goes to the
    /// transcript when the generation ends or is dropped; on error the
    /// transcript is unchanged. The answer's own tokens get
    /// [`GuidedOptions`]' default repeat penalty.
    pub fn respond_constrained(
        &mut self,
        user: &str,
        constraint: &Constraint,
        opts: GenerateOptions,
    ) -> Result<GuidedGeneration<'_, M>, GuidedError> {
        self.constrained_turn(
            vec![Message::new(Role::User, user)],
            constraint,
            opts,
            Some(Dry::default()),
        )
    }

    /// Append `new` messages to the transcript and stream a constrained
    /// assistant answer.
    pub(crate) fn constrained_turn(
        &mut self,
        new: Vec<Message>,
        constraint: &Constraint,
        opts: GenerateOptions,
        repetition: Option<Dry>,
    ) -> Result<GuidedGeneration<'_, M>, GuidedError> {
        let vocabulary = self.guide_vocabulary()?;
        let repetition =
            repetition.map(|d| d.breakers(vocabulary.structural_tokens().iter().copied()));
        let matcher = vocabulary.matcher(constraint)?;
        let mut messages = self.transcript.clone();
        messages.extend(new);
        let text = self.chat.render(&messages, true).map_err(Error::Template)?;
        let prompt = self.tokenizer.encode(&text).map_err(Error::Tokenizer)?;
        self.prefill(&prompt)?;
        self.transcript = messages;
        let value_start = self.tokens.len();
        Ok(GuidedGeneration {
            model: &self.model,
            state: &mut self.state,
            tokens: &mut self.tokens,
            logits: &mut self.logits,
            tokenizer: &*self.tokenizer,
            sampler: &mut self.sampler,
            transcript: Some(&mut self.transcript),
            mask: vocabulary.new_mask(),
            matcher,
            opts,
            asm: TextAssembler::new(&[]),
            queue: VecDeque::new(),
            to_feed: Vec::new(),
            produced: 0,
            text: String::new(),
            finished: false,
            scratch: Vec::new(),
            close_est: None,
            since_check: CLOSE_CHECK_EVERY,
            repetition,
            value_start,
        })
    }

    /// Add a user message and answer with JSON valid under `schema`
    /// (described in the prompt unless `opts.describe_schema` is off).
    pub fn respond_json(
        &mut self,
        user: &str,
        schema: &Value,
        opts: GuidedOptions,
    ) -> Result<Value, GuidedError> {
        let text = self
            .respond_json_stream(user, schema, opts)?
            .complete_text()?;
        serde_json::from_str(&text).map_err(|e| GuidedError::Decode {
            type_name: "serde_json::Value",
            message: e.to_string(),
            text,
        })
    }

    /// [`respond_json`](Self::respond_json), streamed as text events.
    pub fn respond_json_stream(
        &mut self,
        user: &str,
        schema: &Value,
        opts: GuidedOptions,
    ) -> Result<GuidedGeneration<'_, M>, GuidedError> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err(GuidedError::Schema(
                "a JSON schema must be an object".into(),
            ));
        }
        let prompt = if opts.describe_schema {
            describe_schema(user, schema)
        } else {
            user.to_string()
        };
        let constraint = json_constraint(schema, &opts);
        self.constrained_turn(
            vec![Message::new(Role::User, prompt)],
            &constraint,
            opts.generate,
            opts.repetition,
        )
    }

    /// Add a user message and answer with a value of type `T`, generated
    /// under `T`'s JSON schema ([`schema_of`]): a `T` every time, or an
    /// error (the token budget ran out, the model failed, ...).
    ///
    /// Sampling uses the session's sampler (greedy by default) on the masked
    /// logits. The transcript records the prompt as sent (with the schema
    /// description) and the JSON answer, so later turns see both.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use twain::guided::GuidedOptions;
    ///
    /// /// A cat.
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Cat {
    ///     /// The cat's name.
    ///     name: String,
    ///     /// Age in years.
    ///     age: u8,
    /// }
    ///
    /// let path = twain::engine::default_model_path(twain::engine::DEFAULT_PRESET, None)?;
    /// let engine = twain::engine::Engine::load(path, Default::default())?;
    /// let mut session = engine.session();
    /// let cat: Cat = session.respond_as("Invent a cat.", GuidedOptions::default())?;
    /// println!("{} is {}", cat.name, cat.age);
    /// # Ok(()) }
    /// ```
    pub fn respond_as<T: DeserializeOwned + JsonSchema>(
        &mut self,
        user: &str,
        opts: GuidedOptions,
    ) -> Result<T, GuidedError> {
        self.stream_as::<T>(user, opts)?.into_value()
    }

    /// [`respond_as`](Self::respond_as), streamed: snapshots of the
    /// partially generated value, then the value.
    pub fn stream_as<T: DeserializeOwned + JsonSchema>(
        &mut self,
        user: &str,
        opts: GuidedOptions,
    ) -> Result<TypedStream<'_, M, T>, GuidedError> {
        let schema = schema_of::<T>();
        self.stream_schema(user, &schema, opts)
    }

    /// A typed stream under an explicit `schema` (which `T` must be able to
    /// read).
    pub fn stream_schema<T: DeserializeOwned>(
        &mut self,
        user: &str,
        schema: &Value,
        opts: GuidedOptions,
    ) -> Result<TypedStream<'_, M, T>, GuidedError> {
        let prompt = if opts.describe_schema {
            describe_schema(user, schema)
        } else {
            user.to_string()
        };
        let constraint = json_constraint(schema, &opts);
        let inner = self.constrained_turn(
            vec![Message::new(Role::User, prompt)],
            &constraint,
            opts.generate,
            opts.repetition,
        )?;
        Ok(TypedStream {
            inner,
            partial: PartialJson::new(),
            last: None,
            pending_final: None,
            done: false,
            _type: PhantomData,
        })
    }
}

/// JSON's integer `-0` (which the integer grammar allows) reads as the float
/// -0.0 in serde_json, which integer fields reject: make it the integer 0.
fn normalize_negative_zero(v: &mut Value) {
    match v {
        Value::Number(n) if n.as_f64() == Some(0.0) && n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.is_sign_negative() {
                    *v = Value::from(0);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_negative_zero),
        Value::Object(m) => m.values_mut().for_each(normalize_negative_zero),
        _ => {}
    }
}

/// Move the `$defs` of `schema` into `defs` under `prefix`-ed names,
/// rewriting its `#/$defs/...` references; returns the schema without them.
pub(crate) fn hoist_defs(mut schema: Value, prefix: &str, defs: &mut Map<String, Value>) -> Value {
    fn rewrite(v: &mut Value, prefix: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "$ref" {
                        if let Value::String(r) = x {
                            for root in ["#/$defs/", "#/definitions/"] {
                                if let Some(name) = r.strip_prefix(root) {
                                    *r = format!("#/$defs/{prefix}{name}");
                                    break;
                                }
                            }
                        }
                    } else if k != "enum" && k != "const" {
                        rewrite(x, prefix);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, prefix)),
            _ => {}
        }
    }
    rewrite(&mut schema, prefix);
    if let Value::Object(m) = &mut schema {
        m.remove("$schema");
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(d)) = m.remove(key) {
                for (name, def) in d {
                    defs.insert(format!("{prefix}{name}"), def);
                }
            }
        }
    }
    schema
}
