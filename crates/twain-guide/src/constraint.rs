//! What the output must match.

use serde_json::Value;

/// How JSON output is laid out between tokens of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonFormat {
    /// Between array items and object members (default `", "`).
    pub item_separator: String,
    /// Between a key and its value (default `": "`).
    pub key_separator: String,
    /// Allow any whitespace around separators (default off: small models
    /// otherwise tend to run away in whitespace).
    pub whitespace_flexible: bool,
    /// Ignore schema keywords llguidance does not implement instead of
    /// failing (default off).
    pub lenient: bool,
}

impl Default for JsonFormat {
    fn default() -> Self {
        Self {
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            whitespace_flexible: false,
            lenient: false,
        }
    }
}

/// What the generated text must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// JSON that validates against a JSON Schema (draft 2020-12 or 7:
    /// `type`, `properties` generated in declaration order, `required`,
    /// `additionalProperties`, `enum`, `const`, `items`/`prefixItems`,
    /// `minItems`/`maxItems`, `minLength`/`maxLength`, `pattern`, `format`,
    /// `minimum`/`maximum` (exclusive too), `multipleOf`, `anyOf`, `oneOf`,
    /// `allOf`, `$ref` into `$defs`/`definitions`).
    JsonSchema {
        /// The schema.
        schema: Value,
        /// Layout of the JSON text.
        format: JsonFormat,
    },
    /// Text matching a regular expression (Rust `regex` syntax), anchored at
    /// both ends.
    Regex(String),
    /// Text in the language of a Lark grammar (llguidance's dialect:
    /// `start: ...`, `/regex/` terminals, `%json { schema }` embeds).
    Lark(String),
}

impl Constraint {
    /// JSON valid under `schema`, in the default [`JsonFormat`].
    pub fn json_schema(schema: Value) -> Self {
        Constraint::JsonSchema {
            schema,
            format: JsonFormat::default(),
        }
    }

    /// Text matching `pattern` as a whole.
    pub fn regex(pattern: impl Into<String>) -> Self {
        Constraint::Regex(pattern.into())
    }

    /// Text in the language of a Lark grammar.
    pub fn lark(grammar: impl Into<String>) -> Self {
        Constraint::Lark(grammar.into())
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema { .. } => "JSON schema",
            Constraint::Regex(_) => "regex",
            Constraint::Lark(_) => "Lark grammar",
        }
    }

    /// The llguidance grammar.
    pub(crate) fn to_grammar(&self) -> llguidance::api::TopLevelGrammar {
        use llguidance::api::TopLevelGrammar;
        match self {
            Constraint::JsonSchema { schema, format } => {
                let mut schema = schema.clone();
                if let Value::Object(map) = &mut schema {
                    if !map.contains_key("x-guidance") {
                        map.insert(
                            "x-guidance".into(),
                            serde_json::json!({
                                "item_separator": format.item_separator,
                                "key_separator": format.key_separator,
                                "whitespace_flexible": format.whitespace_flexible,
                                "lenient": format.lenient,
                            }),
                        );
                    }
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}
