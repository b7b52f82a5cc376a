//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`) rendered with
//! `minijinja` the way Hugging Face `transformers` renders it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TokenizerError};
use crate::tokenizer::Tokenizer;

/// ChatML, the template used when a model ships none (SmolLM2, Qwen and many others use it).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat_template";

/// Instructions a render may run before it fails: a template from a model
/// file runs on the user's machine, and nested loops or recursive macros must
/// end in an error, not a hang. Real templates use a few dozen instructions
/// per message.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// Bytes a render may write, on top of [`OUTPUT_PER_INPUT_BYTE`] per byte of
/// input: a prompt is text for a context window of at most some hundred
/// thousand tokens.
pub const TEMPLATE_OUTPUT_LIMIT: usize = 16 << 20;

/// Further bytes a render may write per byte of input.
pub const OUTPUT_PER_INPUT_BYTE: usize = 4;

/// Largest `indent` `tojson` accepts (characters per level).
pub const MAX_TOJSON_INDENT: usize = 64;

/// One message of a conversation.
///
/// `role` is `"system"`, `"user"`, `"assistant"` or `"tool"` (templates may know others).
/// Fields a template reads beyond role and content (`tool_calls`, `name`, `tool_call_id`, ...)
/// go in `extra`; they are passed to the template as fields of the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: String,
    /// What is said.
    pub content: String,
    /// Further fields, flattened into the message object.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        Self::new("system", content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        Self::new("user", content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        Self::new("assistant", content)
    }
    /// A tool result message.
    pub fn tool(content: impl Into<String>) -> ChatMessage {
        Self::new("tool", content)
    }
    /// The message with one more field (e.g. `"tool_calls"`, `"tool_call_id"`).
    pub fn with_field(mut self, key: impl Into<String>, value: serde_json::Value) -> ChatMessage {
        self.extra.insert(key.into(), value);
        self
    }
}

/// What a template sees besides the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    /// Tool definitions (JSON schema list), passed as `tools`; `None` passes `none`.
    pub tools: Option<serde_json::Value>,
    /// Further variables (e.g. `"enable_thinking": false`), passed as they are.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template.
///
/// Rendered like `transformers` does: `trim_blocks` and `lstrip_blocks` on, the variables
/// `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`, and the helpers
/// `raise_exception(msg)`, `strftime_now(format)` (UTC), a Python-compatible `tojson` filter,
/// loop controls and Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, ...).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compile `source`; `bos_token` / `eos_token` are the texts the template may insert.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// ChatML ([`CHATML_TEMPLATE`]).
    pub fn chatml(bos_token: &str, eos_token: &str) -> ChatTemplate {
        // The constant compiles (tested); fall back to an empty template rather than panic.
        Self::new(CHATML_TEMPLATE, bos_token, eos_token).unwrap_or_else(|_| ChatTemplate {
            env: Environment::new(),
            source: String::new(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The template of a model (`template`, e.g. GGUF `tokenizer.chat_template`), or ChatML
    /// when it has none, with BOS/EOS texts from its tokenizer.
    pub fn for_tokenizer(template: Option<&str>, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let bos = tokenizer.bos_token().unwrap_or_default();
        let eos = tokenizer.eos_token().unwrap_or_default();
        match template {
            Some(src) => Self::new(src, &bos, &eos),
            None => Ok(Self::chatml(&bos, &eos)),
        }
    }

    /// The template of a loaded model (its `chat_template`, else the GGUF key
    /// `tokenizer.chat_template`, else ChatML).
    pub fn from_loaded(
        model: &twain_io::LoadedModel,
        tokenizer: &Tokenizer,
    ) -> Result<ChatTemplate> {
        let template = model.chat_template.as_deref().or_else(|| {
            model
                .gguf
                .as_ref()
                .and_then(|g| g.get("tokenizer.chat_template"))
                .and_then(|v| v.as_str())
        });
        Self::for_tokenizer(template, tokenizer)
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation; `add_generation_prompt` appends the start of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &RenderOptions::default())
    }

    /// Render with tools and further template variables.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        options: &RenderOptions,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        ctx.insert(
            "tools".into(),
            options
                .tools
                .as_ref()
                .map_or(Value::from(()), Value::from_serialize),
        );
        ctx.insert("documents".into(), Value::from(()));
        for (k, v) in &options.extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        // Limits that grow with the input, so that long conversations fit.
        let input: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len() + json_len(&m.extra) + 16)
            .sum::<usize>()
            + options.tools.as_ref().map_or(0, json_len)
            + options.extra.values().map(json_len).sum::<usize>();
        let limit =
            TEMPLATE_OUTPUT_LIMIT.saturating_add(input.saturating_mul(OUTPUT_PER_INPUT_BYTE));
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let mut out = Limited {
            buf: Vec::new(),
            limit,
        };
        let rendered = template
            .render_captured_to(Value::from_iter(ctx), &mut out)
            .map(drop);
        match rendered {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WriteFailure && out.buf.len() >= limit => {
                return Err(TokenizerError::Template(format!(
                    "chat template output exceeds {limit} bytes"
                )));
            }
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(TokenizerError::Template(format!(
                    "chat template ran out of fuel after {TEMPLATE_FUEL} instructions (a loop too long or without end)"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        String::from_utf8(out.buf)
            .map_err(|_| TokenizerError::Template("chat template output is not UTF-8".into()))
    }
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

/// An output buffer that refuses to grow past `limit` bytes.
struct Limited {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Limited {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.buf
                .extend_from_slice(&data[..self.limit - self.buf.len()]);
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Where a rendered prompt stops for [`render_with`](Self::render_with) (for tests and
    /// callers that budget memory): the output limit for `input_bytes` of input.
    pub fn output_limit(input_bytes: usize) -> usize {
        TEMPLATE_OUTPUT_LIMIT.saturating_add(input_bytes.saturating_mul(OUTPUT_PER_INPUT_BYTE))
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Python's `strftime` for the common directives, on a UTC Unix time (unknown directives are
/// copied as written; `%-d` style drops leading zeros as glibc does).
pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let num = |v: i64, width: usize| {
            if no_pad {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
        let piece = match d {
            'Y' => year.to_string(),
            'y' => num(year.rem_euclid(100), 2),
            'm' => num(month, 2),
            'd' => num(day, 2),
            'e' => format!("{day:2}"),
            'H' => num(hour, 2),
            'I' => num(hour12, 2),
            'M' => num(minute, 2),
            'S' => num(second, 2),
            'j' => num(day_of_year, 3),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            'B' => month_name.to_owned(),
            'b' | 'h' => month_name[..3].to_owned(),
            'A' => WEEKDAYS[weekday].to_owned(),
            'a' => WEEKDAYS[weekday][..3].to_owned(),
            'w' => weekday.to_string(),
            'F' => format!("{year}-{month:02}-{day:02}"),
            'T' => format!("{hour:02}:{minute:02}:{second:02}"),
            'Z' => "UTC".to_owned(),
            'z' => "+0000".to_owned(),
            '%' => "%".to_owned(),
            other => {
                let mut s = String::from('%');
                if no_pad {
                    s.push('-');
                }
                s.push(other);
                s
            }
        };
        out.push_str(&piece);
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson` as `transformers` defines it: Python's `json.dumps` with `ensure_ascii=False`
/// (", " and ": " separators, keys in their order), accepting `indent`, `separators`,
/// `sort_keys` and `ensure_ascii`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.kind() {
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
            _ => Some(" ".repeat(usize::try_from(v).unwrap_or(0).min(MAX_TOJSON_INDENT + 1))),
        },
    };
    if indent
        .as_ref()
        .is_some_and(|i| i.chars().count() > MAX_TOJSON_INDENT)
    {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent longer than {MAX_TOJSON_INDENT} characters"),
        ));
    }
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    // Templates print JSON into prompts; it must not be HTML-escaped.
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn item_sep(&self) -> &str {
        if self.indent.is_some() {
            self.item_sep.trim_end_matches(' ')
        } else {
            &self.item_sep
        }
    }

    fn write_str(&self, s: &str, out: &mut String) {
        let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }

    fn write(&self, v: &Value, depth: usize, out: &mut String) -> std::result::Result<(), Error> {
        if out.len() > TEMPLATE_OUTPUT_LIMIT {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: output longer than {TEMPLATE_OUTPUT_LIMIT} bytes"),
            ));
        }
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                let s = serde_json::to_string(v)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
                // Python prints non-finite floats as NaN / Infinity; serde_json gives null.
                out.push_str(&s);
            }
            ValueKind::String => self.write_str(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep());
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep());
                    }
                    self.newline(depth + 1, out);
                    match key.as_str() {
                        Some(s) => self.write_str(s, out),
                        None => self.write_str(&key.to_string(), out),
                    }
                    out.push_str(&self.key_sep);
                    self.write(&v.get_item(key)?, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push('}');
            }
            _ => self.write_str(&v.to_string(), out),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        let s = t
            .render(
                &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
                true,
            )
            .unwrap();
        assert_eq!(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(ChatTemplate::chatml("", "").source(), CHATML_TEMPLATE);
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok", "", "")
            .unwrap();
        assert_eq!(t.render(&[ChatMessage::user("x")], false).unwrap(), "ok");
        let err = t.render(&[ChatMessage::assistant("x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn python_methods_loops_and_namespaces() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ loop.index }}:{{ m.content.strip().upper() }}{% if m.content.startswith(' a') %}!{% endif %}{% if not loop.last %},{% endif %}{% endfor %}|{{ ns.n }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msgs = [
            ChatMessage::user(" a "),
            ChatMessage::new("skip", "x"),
            ChatMessage::assistant("b"),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "1:A!,3:B|2");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = ChatTemplate::new(
            "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ messages[0] | tojson }}",
            "",
            "",
        )
        .unwrap();
        // Keys in sorted order, so the result is the same with or without serde_json's
        // preserve_order feature somewhere in the build.
        let tools = serde_json::json!([{"a_list": [1, "é"], "b_n": 1.5, "c_name": "f<x>", "d_none": null, "e_ok": true}]);
        let opts = RenderOptions {
            tools: Some(tools),
            ..Default::default()
        };
        let msg = ChatMessage::assistant("").with_field("tool_calls", serde_json::json!([]));
        let s = t.render_with(&[msg], false, &opts).unwrap();
        assert_eq!(
            s,
            "[{\"a_list\": [1, \"é\"], \"b_n\": 1.5, \"c_name\": \"f<x>\", \"d_none\": null, \"e_ok\": true}]|{\n  \"a_list\": [\n    1,\n    \"é\"\n  ],\n  \"b_n\": 1.5,\n  \"c_name\": \"f<x>\",\n  \"d_none\": null,\n  \"e_ok\": true\n}|{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": []}"
        );
    }

    #[test]
    fn tools_none_and_extra_variables() {
        let t = ChatTemplate::new("{% if tools is none %}none{% endif %}{% if tools %}tools{% endif %}{{ enable_thinking }}", "", "").unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), serde_json::Value::Bool(false));
        let opts = RenderOptions { tools: None, extra };
        assert_eq!(t.render_with(&[], false, &opts).unwrap(), "noneFalse"); // booleans print like Python's
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
                .unwrap(),
            "    a\n    b\n"
        );
    }

    #[test]
    fn strftime_directives() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %a %B %j %-d %I%p %%", t),
            "2024-02-29 13:05:09 Thursday Thu February 060 29 01PM %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        let t = ChatTemplate::new("{{ strftime_now('%Y') | length }}", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "4");
    }

    /// The constructs tool-calling templates of the Qwen family use: reversed slices,
    /// namespaces, `is string`, `.split()[-1].lstrip()`, tool calls as message fields.
    #[test]
    fn a_tool_calling_template() {
        let src = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and message.content is string and ns.last_query_index == messages|length - 1 %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "system" and tools %}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
        {{- '<|im_start|>assistant\n' + content }}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
{{- ns.last_query_index }}"##;
        let t = ChatTemplate::new(src, "", "<|im_end|>").unwrap();
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let call = serde_json::json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]);
        let messages = [
            ChatMessage::system("Be brief."),
            ChatMessage::user("Weather in Paris?"),
            ChatMessage::assistant("<think>x</think>\nLet me check.")
                .with_field("tool_calls", call),
            ChatMessage::tool("{\"temp\": 21}"),
        ];
        let opts = RenderOptions {
            tools: Some(tools),
            ..Default::default()
        };
        let s = t.render_with(&messages, true, &opts).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n\
             {\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}\n</tools><|im_end|>\n\
             <|im_start|>user\nWeather in Paris?<|im_end|>\n\
             <|im_start|>assistant\nLet me check.<tool_call>\n\
             {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n1"
        );
    }

    #[test]
    fn syntax_errors_are_typed() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(TokenizerError::Template(_))
        ));
    }

    /// Templates from model files are programs: each way a hostile one can
    /// hang or exhaust memory ends in a typed error, quickly.
    #[test]
    fn hostile_templates_fail_with_typed_errors() {
        let msgs = [ChatMessage::user("hi")];
        let render = |src: &str| {
            ChatTemplate::new(src, "", "")
                .unwrap()
                .render(&msgs, true)
                .unwrap_err()
        };
        // Nested loops of 10^10 iterations: out of fuel.
        let e = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        );
        assert!(
            matches!(&e, TokenizerError::Template(m) if m.contains("fuel")),
            "{e}"
        );
        // A macro that calls itself: minijinja's recursion limit.
        let e = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        assert!(matches!(e, TokenizerError::Template(_)), "{e}");
        // Output doubled until it is gigabytes: the output limit.
        let e = render(
            "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{{ ns.s }}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        );
        assert!(
            matches!(&e, TokenizerError::Template(m) if m.contains("exceeds")),
            "{e}"
        );
        // An indent of a billion spaces at every level.
        let e = render("{{ messages | tojson(indent=1000000000) }}");
        assert!(
            matches!(&e, TokenizerError::Template(m) if m.contains("indent")),
            "{e}"
        );
        // Output that is many copies of a large repeat: the output limit.
        let e = render("{% for i in range(1000) %}{{ 'x' * 1000000 }}{% endfor %}");
        assert!(
            matches!(&e, TokenizerError::Template(m) if m.contains("exceeds")),
            "{e}"
        );
        // A long, honest conversation still renders.
        let long: Vec<ChatMessage> = (0..5000)
            .map(|i| ChatMessage::user(format!("message {i}")))
            .collect();
        let chatml = ChatTemplate::chatml("", "");
        let out = chatml.render(&long, true).unwrap();
        assert!(out.contains("message 4999"));
        // A message longer than the fixed limit still renders: the limit grows with the input.
        let big = [ChatMessage::user("y".repeat(TEMPLATE_OUTPUT_LIMIT + 10))];
        assert!(chatml.render(&big, true).unwrap().len() > TEMPLATE_OUTPUT_LIMIT);
    }
}
