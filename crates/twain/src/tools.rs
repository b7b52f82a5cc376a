//! Tool calling through constrained decoding.
//!
//! A [`Tool`] is a Rust value with a name, a description and an argument
//! type (`Deserialize + JsonSchema`). In [`Session::respond_with_tools`] every
//! model turn is constrained by one JSON schema, an `anyOf` of
//! `{"tool": <const name>, "arguments": <that tool's argument schema>}` for
//! each tool and `{"answer": <string>}` — so the tool name always exists and
//! the arguments always deserialize. The session runs the called tool, adds
//! the call (assistant message) and its output (a [`Role::Tool`] message,
//! rendered by the chat template) to the transcript, and asks again, until
//! the model answers or [`ToolOptions::max_rounds`] tool calls have been made
//! ([`GuidedError::TooManyToolRounds`]).
//!
//! A tool that fails ([`ToolError`]) is, by default, reported back to the
//! model as the tool message `error: <message>` so it can recover
//! ([`ToolErrorPolicy::ReportToModel`]); with [`ToolErrorPolicy::Fail`] the
//! call returns [`GuidedError::Tool`] to the caller instead (the transcript
//! keeps the failed call).
//!
//! A call that fails leaves the transcript holding every tool call made so
//! far and its output: a tool runs for real (it may have side effects), so
//! its output is never dropped, even when the next round cannot start (say
//! the output does not fit the context window, or the prompt cannot be
//! rendered). The model state then holds the transcript up to the call, and
//! the next turn feeds the rest. (An output too long for the context keeps
//! the next turns failing with [`crate::Error::ExceededContextWindow`] until
//! [`Session::reset`].) A failure before any tool ran leaves the session as
//! it was.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use twain_model::Model;

use crate::guided::{
    hoist_defs, json_constraint, prepare_schema, schema_of, GuidedError, GuidedOptions,
};
use crate::tokenize::{Message, Role};
use crate::Session;

/// Why a tool failed; its message goes to the model or to the caller (see
/// [`ToolErrorPolicy`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    /// What went wrong, in words the model can use.
    pub message: String,
}

impl ToolError {
    /// A tool error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A function the model may call.
///
/// ```
/// use twain::tools::{Tool, ToolError};
///
/// /// Arguments of `add`.
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct AddArgs {
///     /// First term.
///     a: i64,
///     /// Second term.
///     b: i64,
/// }
///
/// struct Add;
/// impl Tool for Add {
///     type Args = AddArgs;
///     fn name(&self) -> &str { "add" }
///     fn description(&self) -> &str { "Add two integers." }
///     fn call(&self, args: AddArgs) -> Result<String, ToolError> {
///         args.a.checked_add(args.b).map(|s| s.to_string()).ok_or(ToolError::new("overflow"))
///     }
/// }
/// ```
pub trait Tool: Send + Sync {
    /// The arguments; their JSON schema (doc comments included) is what the
    /// model sees and is constrained by.
    type Args: DeserializeOwned + JsonSchema;
    /// The name the model calls it by (unique in a tool set).
    fn name(&self) -> &str;
    /// What it does, for the model.
    fn description(&self) -> &str;
    /// Run it; the output text goes back to the model.
    fn call(&self, args: Self::Args) -> Result<String, ToolError>;
}

/// The object-safe form of [`Tool`] (every `Tool` is one), to put tools of
/// different argument types in one list.
pub trait DynTool: Send + Sync {
    /// The name.
    fn name(&self) -> &str;
    /// The description.
    fn description(&self) -> &str;
    /// The JSON schema of the arguments.
    fn parameters(&self) -> Value;
    /// Run with JSON arguments.
    fn call_json(&self, arguments: Value) -> Result<String, ToolError>;
}

impl<T: Tool> DynTool for T {
    fn name(&self) -> &str {
        Tool::name(self)
    }
    fn description(&self) -> &str {
        Tool::description(self)
    }
    fn parameters(&self) -> Value {
        schema_of::<T::Args>()
    }
    fn call_json(&self, arguments: Value) -> Result<String, ToolError> {
        let args = serde_json::from_value::<T::Args>(arguments)
            .map_err(|e| ToolError::new(format!("bad arguments: {e}")))?;
        self.call(args)
    }
}

/// What happens when a tool fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolErrorPolicy {
    /// Tell the model (`error: <message>` as the tool's output) and go on.
    #[default]
    ReportToModel,
    /// Stop and return [`GuidedError::Tool`].
    Fail,
}

/// Which outputs the model may choose on its first turn.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// A tool call or an answer.
    #[default]
    Auto,
    /// Some tool call.
    Required,
    /// A call of this tool.
    Tool(String),
}

/// Options of [`Session::respond_with_tools`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ToolOptions {
    /// Most tool calls before the model must have answered (default 4).
    pub max_rounds: usize,
    /// What a failing tool does (default: report it to the model).
    pub on_error: ToolErrorPolicy,
    /// Constraint on the first turn (default [`ToolChoice::Auto`]); later
    /// turns are always `Auto`.
    pub first_choice: ToolChoice,
    /// When the rounds are used up, ask for an answer only (instead of
    /// failing with [`GuidedError::TooManyToolRounds`]). Default off.
    pub answer_when_exhausted: bool,
    /// Per-turn generation options; `describe_schema` describes the tools
    /// in the first user message (default on).
    pub guided: GuidedOptions,
}

impl Default for ToolOptions {
    fn default() -> Self {
        Self {
            max_rounds: 4,
            on_error: ToolErrorPolicy::default(),
            first_choice: ToolChoice::default(),
            answer_when_exhausted: false,
            guided: GuidedOptions::max_tokens(256),
        }
    }
}

twain_model::setters!(ToolOptions {
    max_rounds: usize,
    on_error: ToolErrorPolicy,
    first_choice: ToolChoice,
    answer_when_exhausted: bool,
    guided: GuidedOptions,
});

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool's name.
    pub tool: String,
    /// The arguments it was called with.
    pub arguments: Value,
    /// What it returned.
    pub output: Result<String, ToolError>,
}

/// The end of a tool-using turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResponse {
    /// The model's final answer.
    pub answer: String,
    /// The tool calls made on the way, in order.
    pub calls: Vec<ToolCall>,
}

/// The JSON schema of one model turn: a call of one of `tools` (restricted
/// by `choice`) or, unless `choice` requires a call, `{"answer": string}`.
pub fn tool_turn_schema(tools: &[&dyn DynTool], choice: &ToolChoice) -> Value {
    let mut defs = Map::new();
    let mut alternatives = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if let ToolChoice::Tool(name) = choice {
            if t.name() != name {
                continue;
            }
        }
        let args = hoist_defs(t.parameters(), &format!("t{i}_"), &mut defs);
        alternatives.push(json!({
            "type": "object",
            "properties": {"tool": {"const": t.name()}, "arguments": args},
            "required": ["tool", "arguments"],
        }));
    }
    if *choice == ToolChoice::Auto || alternatives.is_empty() {
        alternatives.push(json!({
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        }));
    }
    let mut schema = json!({ "anyOf": alternatives });
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    prepare_schema(&mut schema);
    schema
}

fn describe_tools(user: &str, tools: &[&dyn DynTool]) -> String {
    let mut s = String::from("You can call these tools:\n");
    for t in tools {
        let mut p = t.parameters();
        if let Value::Object(m) = &mut p {
            m.remove("$schema");
            m.remove("title");
        }
        s.push_str(&format!(
            "- {}: {} Arguments: {}\n",
            t.name(),
            t.description(),
            serde_json::to_string(&p).unwrap_or_default()
        ));
    }
    s.push_str(
        "To call a tool, reply {\"tool\": \"<name>\", \"arguments\": {...}}. \
         When you can answer, reply {\"answer\": \"<your answer>\"}.\n\n",
    );
    s.push_str(user);
    s
}

impl<M: Model> Session<M> {
    /// Add a user message and let the model call `tools` until it answers
    /// (see the [module docs](crate::tools)).
    pub fn respond_with_tools(
        &mut self,
        user: &str,
        tools: &[&dyn DynTool],
        opts: ToolOptions,
    ) -> Result<ToolResponse, GuidedError> {
        for (i, t) in tools.iter().enumerate() {
            if tools[..i].iter().any(|u| u.name() == t.name()) {
                return Err(GuidedError::Tools(format!(
                    "two tools are named {:?}",
                    t.name()
                )));
            }
        }
        if let ToolChoice::Tool(name) = &opts.first_choice {
            if !tools.iter().any(|t| t.name() == name) {
                return Err(GuidedError::Tools(format!("no tool is named {name:?}")));
            }
        }
        let first = if opts.guided.describe_schema {
            describe_tools(user, tools)
        } else {
            user.to_string()
        };
        let mut next = vec![Message::new(Role::User, first)];
        let mut calls = Vec::new();
        let mut choice = opts.first_choice.clone();
        loop {
            let exhausted = calls.len() >= opts.max_rounds;
            let schema = if exhausted && opts.answer_when_exhausted {
                tool_turn_schema(&[], &ToolChoice::Auto)
            } else {
                tool_turn_schema(tools, &choice)
            };
            let constraint = json_constraint(&schema, &opts.guided);
            let round = std::mem::take(&mut next);
            let mut started = false;
            let text = self
                .constrained_turn(
                    round.clone(),
                    &constraint,
                    opts.guided.generate.clone(),
                    opts.guided.repetition.clone(),
                )
                .and_then(|turn| {
                    started = true;
                    turn.complete_text()
                });
            let text = match text {
                Ok(text) => text,
                Err(e) => {
                    // The round did not start, but its tool already ran: keep
                    // the output (see the module docs). A failed first round
                    // leaves the session as it was.
                    if !started && !calls.is_empty() {
                        self.transcript.extend(round);
                    }
                    return Err(e);
                }
            };
            let reply: Value = serde_json::from_str(&text).map_err(|e| GuidedError::Decode {
                type_name: "tool call",
                message: e.to_string(),
                text: text.clone(),
            })?;
            if let Some(answer) = reply.get("answer").and_then(Value::as_str) {
                return Ok(ToolResponse {
                    answer: answer.to_string(),
                    calls,
                });
            }
            if exhausted {
                return Err(GuidedError::TooManyToolRounds {
                    rounds: opts.max_rounds,
                });
            }
            let name = reply
                .get("tool")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let arguments = reply.get("arguments").cloned().unwrap_or(Value::Null);
            let tool = tools
                .iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| GuidedError::Tools(format!("the model called {name:?}")))?;
            let output = tool.call_json(arguments.clone());
            let content = match &output {
                Ok(out) => out.clone(),
                Err(e) => format!("error: {e}"),
            };
            calls.push(ToolCall {
                tool: name.clone(),
                arguments,
                output: output.clone(),
            });
            if let (Err(error), ToolErrorPolicy::Fail) = (&output, opts.on_error) {
                return Err(GuidedError::Tool {
                    tool: name,
                    error: error.clone(),
                });
            }
            next.push(Message::new(Role::Tool, content));
            choice = ToolChoice::Auto;
        }
    }
}
