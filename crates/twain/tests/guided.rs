//! Guided (typed) generation on the real default model (SmolLM2-135M-Instruct,
//! fetched into the cache on first use; the tests fail, saying why, when it
//! cannot be). Every output must deserialize into its type and validate
//! against the type's schema with an independent validator (`jsonschema`).
#![allow(dead_code)] // the types' fields are read by serde and the validator

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use twain::engine::Engine;
use twain::guide::{extends, Constraint};
use twain::guided::{schema_of, GuidedOptions};
use twain::{EndReason, Event, GenerateOptions, GuidedError, Role, TypedEvent};

fn engine() -> &'static Engine {
    common::shared_q8()
}

/// A generous budget, and strings without a limit of their own capped at
/// 100 characters: the outputs are then bounded whatever a change in the
/// model's numerics makes greedy decoding repeat.
fn opts() -> GuidedOptions {
    GuidedOptions::max_tokens(400).max_string_length(Some(100))
}

/// The JSON text of the last answer.
fn last_answer(s: &twain::Session<std::sync::Arc<twain_core::Transformer>>) -> String {
    let m = s.transcript().last().expect("an answer");
    assert_eq!(m.role, Role::Assistant);
    m.content.clone()
}

fn validate(schema: &Value, instance: &Value, what: &str) {
    let validator = jsonschema::validator_for(schema)
        .unwrap_or_else(|e| panic!("{what}: the validator rejects the schema: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance} does not validate: {errors:?}"
    );
}

/// Generate a `T` for every prompt; each must parse, deserialize and validate
/// against schemars' own (unprepared) schema.
fn check<T: DeserializeOwned + JsonSchema + std::fmt::Debug>(prompts: &[&str]) -> Vec<T> {
    let name = std::any::type_name::<T>();
    let original = schemars::schema_for!(T).to_value();
    let prepared = schema_of::<T>();
    let mut out = Vec::new();
    for prompt in prompts {
        let mut s = engine().session();
        let t = Instant::now();
        let value: T = s
            .respond_as(prompt, opts())
            .unwrap_or_else(|e| panic!("{name} / {prompt:?}: {e}"));
        let text = last_answer(&s);
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name}: output is not JSON ({e}): {text}"));
        validate(&original, &json, name);
        validate(&prepared, &json, name);
        eprintln!("{name} ({:.2?}): {text}", t.elapsed());
        out.push(value);
    }
    out
}

// ---- the types -------------------------------------------------------------

/// A cat.
#[derive(Debug, Deserialize, JsonSchema)]
struct Cat {
    /// The cat's name.
    name: String,
    /// Age in years.
    age: u8,
    /// A nickname, if it has one.
    nickname: Option<String>,
}

/// How someone feels.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mood {
    Happy,
    Sad,
    Angry,
    Calm,
}

/// A diary entry.
#[derive(Debug, Deserialize, JsonSchema)]
struct Diary {
    /// One sentence about the day.
    #[schemars(length(max = 80))]
    summary: String,
    /// The writer's mood.
    mood: Mood,
}

/// A shopping list.
#[derive(Debug, Deserialize, JsonSchema)]
struct Shopping {
    /// Between two and four items to buy.
    #[schemars(length(min = 2, max = 4))]
    items: Vec<Item>,
}

/// One thing to buy.
#[derive(Debug, Deserialize, JsonSchema)]
struct Item {
    /// What to buy.
    #[schemars(length(min = 1, max = 30))]
    name: String,
    /// How many.
    #[schemars(range(min = 1, max = 12))]
    quantity: u32,
}

/// A username.
#[derive(Debug, Deserialize, JsonSchema)]
struct Account {
    /// Lowercase letters only, 3 to 12 of them.
    #[schemars(regex(pattern = r"^[a-z]{3,12}$"))]
    username: String,
    /// A flight code like ABC-123.
    #[schemars(regex(pattern = r"^[A-Z]{3}-[0-9]{3}$"))]
    code: String,
}

/// A review score.
#[derive(Debug, Deserialize, JsonSchema)]
struct Review {
    /// Stars from 1 to 5.
    #[schemars(range(min = 1, max = 5))]
    stars: i32,
    /// Confidence between 0 and 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    confidence: f64,
    /// Would recommend.
    recommend: bool,
}

/// A postal address.
#[derive(Debug, Deserialize, JsonSchema)]
struct Address {
    /// Street and number.
    #[schemars(length(max = 40))]
    street: String,
    /// City.
    #[schemars(length(max = 30))]
    city: String,
}

/// A person with a home and a work address (the same definition twice: `$ref`).
#[derive(Debug, Deserialize, JsonSchema)]
struct Person {
    /// Full name.
    #[schemars(length(max = 40))]
    name: String,
    /// Home address.
    home: Address,
    /// Work address, if any.
    work: Option<Address>,
}

/// A value that is a number or a word (`anyOf`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum NumberOrWord {
    Number(i64),
    Word(#[schemars(length(max = 20))] String),
}

/// An answer that may be a number or a word.
#[derive(Debug, Deserialize, JsonSchema)]
struct Answer {
    /// The answer.
    value: NumberOrWord,
}

/// A shape (internally tagged: `const` tags in a `oneOf`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Shape {
    Circle {
        /// Radius in cm.
        #[schemars(range(min = 0.0, max = 100.0))]
        radius: f64,
    },
    Square {
        /// Side in cm.
        #[schemars(range(min = 0.0, max = 100.0))]
        side: f64,
    },
}

/// A drawing.
#[derive(Debug, Deserialize, JsonSchema)]
struct Drawing {
    /// One to three shapes.
    #[schemars(length(min = 1, max = 3))]
    shapes: Vec<Shape>,
}

/// A command (externally tagged enum with data).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Command {
    Move {
        /// Steps, 1 to 9.
        #[schemars(range(min = 1, max = 9))]
        steps: u8,
    },
    Turn(Direction),
    Stop,
}

/// Left or right.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Direction {
    Left,
    Right,
}

/// A robot program.
#[derive(Debug, Deserialize, JsonSchema)]
struct Program {
    /// Up to three commands.
    #[schemars(length(max = 3))]
    commands: Vec<Command>,
}

/// A point (tuple struct: `prefixItems`).
#[derive(Debug, Deserialize, JsonSchema)]
struct Point(
    #[schemars(range(min = -100, max = 100))] i32,
    #[schemars(range(min = -100, max = 100))] i32,
);

/// A route.
#[derive(Debug, Deserialize, JsonSchema)]
struct Route {
    /// Start.
    from: Point,
    /// End.
    to: Point,
}

/// Word counts (a map: `additionalProperties`).
#[derive(Debug, Deserialize, JsonSchema)]
struct Inventory {
    /// Fruit name to count, at most three fruits (keys: `patternProperties`).
    #[schemars(extend(
        "maxProperties" = 3,
        "additionalProperties" = false,
        "patternProperties" = {"^[a-z]{1,20}$": {"type": "integer", "minimum": 0, "maximum": 65535}}
    ))]
    fruit: BTreeMap<String, u16>,
}

/// A settings block with defaults (optional members).
#[derive(Debug, Deserialize, JsonSchema)]
struct Settings {
    /// Dark mode.
    dark: bool,
    /// Font size in points.
    #[serde(default)]
    #[schemars(range(min = 8, max = 32))]
    font_size: Option<u8>,
    /// Language code.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[a-z]{2}$"))]
    language: Option<String>,
}

/// A single character and a small integer of every width.
#[derive(Debug, Deserialize, JsonSchema)]
struct Widths {
    /// An initial.
    initial: char,
    small: i8,
    unsigned: u16,
    wide: i64,
}

/// A book.
#[derive(Debug, Deserialize, JsonSchema)]
struct Book {
    /// Title.
    #[schemars(length(max = 60))]
    title: String,
    /// Authors, one or two.
    #[schemars(length(min = 1, max = 2))]
    authors: Vec<Author>,
    /// Year published.
    #[schemars(range(min = 1450, max = 2025))]
    year: u16,
    /// Genre.
    genre: Genre,
}

/// An author.
#[derive(Debug, Deserialize, JsonSchema)]
struct Author {
    /// Name.
    #[schemars(length(max = 40))]
    name: String,
}

/// A book genre.
#[derive(Debug, Deserialize, JsonSchema)]
enum Genre {
    Fiction,
    Science,
    History,
    Poetry,
}

/// Tags on a post.
#[derive(Debug, Deserialize, JsonSchema)]
struct Tags {
    /// Exactly three one-word tags.
    #[schemars(length(min = 3, max = 3))]
    tags: Vec<Tag>,
}

/// One lowercase word.
#[derive(Debug, Deserialize, JsonSchema)]
struct Tag(#[schemars(regex(pattern = r"^[a-z]{1,15}$"))] String);

/// A recipe step list with nested lists.
#[derive(Debug, Deserialize, JsonSchema)]
struct Recipe {
    /// Dish name.
    #[schemars(length(max = 40))]
    name: String,
    /// Ingredients, up to four.
    #[schemars(length(max = 4))]
    ingredients: Vec<Ingredient>,
    /// Minutes, 1 to 240.
    #[schemars(range(min = 1, max = 240))]
    minutes: u16,
}

/// An ingredient.
#[derive(Debug, Deserialize, JsonSchema)]
struct Ingredient {
    /// What.
    #[schemars(length(max = 30))]
    name: String,
    /// Grams.
    #[schemars(range(min = 0.0, max = 5000.0))]
    grams: f32,
}

/// A yes/no verdict with a reason.
#[derive(Debug, Deserialize, JsonSchema)]
struct Verdict {
    /// The verdict.
    answer: bool,
    /// Why, in a few words.
    #[schemars(length(max = 60))]
    reason: String,
}

/// A color as hex.
#[derive(Debug, Deserialize, JsonSchema)]
struct Color {
    /// Name.
    #[schemars(length(max = 20))]
    name: String,
    /// Hex code like #a1b2c3.
    #[schemars(regex(pattern = r"^#[0-9a-f]{6}$"))]
    hex: String,
}

/// An event on a calendar (string format `date`).
#[derive(Debug, Deserialize, JsonSchema)]
struct Meeting {
    /// Topic.
    #[schemars(length(max = 40))]
    topic: String,
    /// Day of the meeting.
    #[schemars(extend("format" = "date"))]
    day: String,
    /// People attending, at most three.
    #[schemars(length(max = 3))]
    people: Vec<Author>,
}

// ---- tests -----------------------------------------------------------------

#[test]
fn typed_generation_with_required_optional_and_descriptions() {
    let cats = check::<Cat>(&[
        "Invent a cat.",
        "Describe a cat named Tom who is 3 years old.",
        "Give me an old cat without a nickname.",
    ]);
    assert_eq!(cats.len(), 3);
    check::<Verdict>(&["Is water wet?", "Is the sun cold?"]);
    check::<Settings>(&[
        "Settings for a French user who likes dark screens.",
        "Default settings.",
    ]);
}

#[test]
fn enums_consts_and_tagged_variants() {
    check::<Diary>(&[
        "Write a diary entry for a rainy day.",
        "I won the lottery today!",
        "I lost my keys.",
    ]);
    check::<Drawing>(&["Draw a small circle.", "Two squares and a circle."]);
    check::<Program>(&["Move forward three steps and turn left.", "Stop the robot."]);
    check::<Book>(&["A famous novel.", "A book about the history of Rome."]);
}

#[test]
fn arrays_strings_patterns_and_ranges() {
    check::<Shopping>(&["Ingredients for pancakes.", "What do I need for a picnic?"]);
    check::<Account>(&[
        "Make an account for Alice on flight AFR-447.",
        "Create a user.",
    ]);
    check::<Review>(&["Review a great pizza place.", "A terrible movie."]);
    check::<Tags>(&[
        "Tag a post about cooking pasta.",
        "Tag a photo of a mountain.",
    ]);
    check::<Color>(&["The color of the sky.", "A deep red."]);
    check::<Widths>(&["Fill in some numbers.", "Anything."]);
}

#[test]
fn nested_refs_any_of_tuples_and_maps() {
    check::<Person>(&[
        "A person living in Paris.",
        "Someone who works in Berlin and lives in Potsdam.",
    ]);
    check::<Answer>(&["How many legs does a spider have?", "What color is grass?"]);
    check::<Route>(&["From the origin to (3, 4).", "A route going left."]);
    check::<Inventory>(&["I have three apples and two pears.", "An empty fruit bowl."]);
    check::<Recipe>(&["A recipe for an omelette.", "How to make tea."]);
    check::<Meeting>(&[
        "A team meeting on 2025-03-14 with Ann and Bob.",
        "Plan a lunch.",
    ]);
}

#[test]
fn raw_schemas_with_const_enum_any_of_and_exclusive_bounds() {
    let schemas = [
        json!({
            "type": "object",
            "properties": {
                "version": {"const": 2},
                "status": {"enum": ["ok", "warn", "fail", 7, null]},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100}
            },
            "required": ["version", "status", "ratio", "step"],
            "additionalProperties": false
        }),
        json!({
            "$defs": {"name": {"type": "string", "minLength": 2, "maxLength": 12, "pattern": "^[A-Z][a-z]+$"}},
            "anyOf": [
                {"type": "object", "properties": {"first": {"$ref": "#/$defs/name"}, "last": {"$ref": "#/$defs/name"}},
                 "required": ["first", "last"], "additionalProperties": false},
                {"type": "array", "items": {"$ref": "#/$defs/name"}, "minItems": 1, "maxItems": 3}
            ]
        }),
    ];
    for (i, schema) in schemas.iter().enumerate() {
        for prompt in ["Fill this in.", "Give an example."] {
            let mut s = engine().session();
            let v = s
                .respond_json(prompt, schema, opts())
                .unwrap_or_else(|e| panic!("schema {i} / {prompt:?}: {e}"));
            validate(schema, &v, &format!("raw schema {i}"));
            eprintln!("raw schema {i}: {v}");
        }
    }
}

#[test]
fn snapshots_grow_monotonically_and_end_in_the_final_value() {
    let mut s = engine().session();
    let mut snapshots: Vec<Value> = Vec::new();
    let mut last = None;
    for ev in s
        .stream_as::<Book>("A classic adventure novel.", opts())
        .unwrap()
    {
        match ev.unwrap() {
            TypedEvent::Partial(v) => snapshots.push(v),
            TypedEvent::Complete(b) => last = Some(b),
        }
    }
    let book = last.expect("a final value");
    assert!(snapshots.len() > 5, "{snapshots:?}");
    for w in snapshots.windows(2) {
        assert!(extends(&w[0], &w[1]), "{} then {}", w[0], w[1]);
        assert_ne!(w[0], w[1]);
    }
    let final_json: Value = serde_json::from_str(&last_answer(&s)).unwrap();
    assert_eq!(snapshots.last(), Some(&final_json));
    assert_eq!(final_json["title"], json!(book.title));
    // A partial snapshot reads into a type whose members are all optional.
    #[derive(Deserialize)]
    struct PartialBook {
        title: Option<String>,
        #[allow(dead_code)]
        year: Option<u16>,
    }
    let mid: PartialBook = serde_json::from_value(snapshots[snapshots.len() / 2].clone()).unwrap();
    assert!(mid.title.is_some_and(|t| book.title.starts_with(&t)));
}

#[test]
fn the_token_budget_running_out_is_a_typed_error_and_the_session_survives() {
    let mut s = engine().session();
    match s.respond_as::<Recipe>("A recipe for an omelette.", GuidedOptions::max_tokens(5)) {
        Err(GuidedError::Incomplete {
            reason: EndReason::MaxTokens,
            tokens,
            text,
        }) => {
            assert_eq!(tokens, 5);
            assert!(text.starts_with('{'), "{text}");
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
    let v: Verdict = s.respond_as("Is water wet?", opts()).unwrap();
    assert!(v.reason.chars().count() <= 60);
}

#[test]
fn regex_and_lark_constraints_stream_text() {
    let mut s = engine().session();
    let text = s
        .respond_constrained(
            "What is 12 times 12? Answer with digits.",
            &Constraint::regex("[0-9]{1,4}"),
            GenerateOptions::default(),
        )
        .unwrap()
        .complete_text()
        .unwrap();
    assert!(
        text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty(),
        "{text:?}"
    );
    let grammar = r#"
start: "The answer is " answer "."
answer: "yes" | "no" | "maybe"
"#;
    let mut g = s
        .respond_constrained(
            "Is the sky blue?",
            &Constraint::lark(grammar),
            GenerateOptions::default(),
        )
        .unwrap();
    let mut streamed = String::new();
    let mut end = None;
    for ev in g.by_ref() {
        match ev.unwrap() {
            Event::Text(t) => streamed.push_str(&t),
            Event::End(r) => end = Some(r),
            Event::Token(_) => {}
        }
    }
    drop(g);
    assert_eq!(end, Some(EndReason::EndOfTurn));
    assert!(
        [
            "The answer is yes.",
            "The answer is no.",
            "The answer is maybe."
        ]
        .contains(&streamed.as_str()),
        "{streamed:?}"
    );
    assert_eq!(s.transcript().last().unwrap().content, streamed);
    // A bad grammar is an error value.
    assert!(matches!(
        s.respond_constrained(
            "x",
            &Constraint::lark("start: ("),
            GenerateOptions::default()
        ),
        Err(GuidedError::Guide(_))
    ));
}
