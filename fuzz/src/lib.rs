//! Fuzz targets for twain's parsers (issue #21 item 10, docs/reliability.md).
//!
//! Each target takes arbitrary bytes and runs one parser on them, the way a
//! hostile file would reach it, then uses what it built a little. A target
//! never panics, hangs or allocates without bound: any of those is a bug in
//! the crate that owns the parser. `tests/replay.rs` replays the committed
//! corpus (`corpus/<target>/`) through every target on each test run and then
//! mutates it for a bounded, seeded number of rounds; `src/bin/make_corpus.rs`
//! wrote the corpus (valid seeds from [`seeds`] plus mutations of them).
//!
//! Targets that read two files (a config and a safetensors file) split their
//! input at the first [`SPLIT`]; the part after it is the second file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use twain::guided::GuidedOptions;
use twain::{BoxError, ChatMl, Model, ModelError, ModelInfo, Session, TokenId, Tokenize};
use twain_adapters::LoraAdapter;
use twain_core::{Transformer, TransformerOptions};
use twain_io::{GgufFile, LoadedModel};
use twain_tokenizer::{ChatMessage, ChatTemplate, RenderOptions, Tokenizer};

pub mod mutate;
pub mod seeds;

/// Separator between the two files of a two-file input.
pub const SPLIT: &[u8] = b"\n--twain-fuzz-split--\n";

/// A fuzz target: a name (its corpus folder) and the function.
pub struct Target {
    /// Name, also the folder under `corpus/`.
    pub name: &'static str,
    /// Runs the parser on the bytes.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "hf_folder",
        run: hf_folder,
    },
    Target {
        name: "peft_adapter",
        run: peft_adapter,
    },
    Target {
        name: "gguf_lora",
        run: gguf_lora,
    },
    Target {
        name: "tokenizer_json",
        run: tokenizer_json,
    },
    Target {
        name: "gguf_tokenizer",
        run: gguf_tokenizer,
    },
    Target {
        name: "chat_template",
        run: chat_template,
    },
    Target {
        name: "json_schema",
        run: json_schema,
    },
    Target {
        name: "gguf_model",
        run: gguf_model,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Splits a two-file input at the first [`SPLIT`] (no separator: all of it is the first file
/// and the second is empty).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(SPLIT.len()).position(|w| w == SPLIT) {
        Some(i) => (&data[..i], &data[i + SPLIT.len()..]),
        None => (data, &[]),
    }
}

/// Joins two files into a two-file input.
pub fn join(first: &[u8], second: &[u8]) -> Vec<u8> {
    [first, SPLIT, second].concat()
}

/// A fresh directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Option<TempDir> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("twain-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        Some(TempDir(dir))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Option<PathBuf> {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).ok()?;
        Some(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Context cap for transformers built from fuzzed files (keeps the KV cache small).
const FUZZ_CONTEXT: usize = 32;

/// Builds a transformer from a loaded model and runs a short prompt and a decode step.
fn exercise_model(m: LoadedModel) {
    let opts = TransformerOptions::default().context_length(Some(FUZZ_CONTEXT));
    let Ok(t) = Transformer::from_loaded(m, opts) else {
        return;
    };
    let vocab = t.info().vocab_size;
    let mut logits = vec![0.0f32; vocab];
    let mut state = t.new_state();
    let last = vocab.saturating_sub(1) as TokenId;
    if t.forward(&mut state, &[0, last, 0], &mut logits).is_ok() {
        let _ = t.forward(&mut state, &[last], &mut logits);
        let _ = t.truncate(&mut state, 1);
        let _ = t.forward(&mut state, &[0], &mut logits);
    }
}

/// Hugging Face folder: `config.json`, then `model.safetensors`; loaded with
/// `twain_io::load_model` and, when that succeeds, built into a transformer.
pub fn hf_folder(data: &[u8]) {
    let (config, weights) = split(data);
    let Some(dir) = TempDir::new() else { return };
    if dir.write("config.json", config).is_none()
        || dir.write("model.safetensors", weights).is_none()
    {
        return;
    }
    if let Ok(m) = twain_io::load_model(dir.path()) {
        exercise_model(m);
    }
}

/// The config of the tiny model the adapter targets are checked against.
fn base_config() -> &'static twain_core::ModelConfig {
    static C: OnceLock<twain_core::ModelConfig> = OnceLock::new();
    C.get_or_init(|| seeds::tiny_config().clone())
}

/// Uses a loaded adapter: adapt it to the tiny base, check it against the base's shapes.
fn exercise_adapter(mut a: LoraAdapter) {
    let _ = a.len();
    let _ = a.bytes();
    let cfg = base_config();
    let _ = a.check(&|name| seeds::tiny_shape(cfg, name));
    let _ = a.adapt_to(cfg);
    for name in a.targets().map(str::to_string).collect::<Vec<_>>() {
        if let Some(t) = a.target(&name) {
            let (rows, cols) = t.shape();
            // The delta is rows x cols, which a small file can make large (rank 1 of
            // 10^5 x 10^5): only form it when it is small.
            if rows.saturating_mul(cols) <= 1 << 16 {
                let _ = a.delta(&name);
            }
        }
    }
}

/// PEFT adapter folder: `adapter_config.json`, then `adapter_model.safetensors`.
pub fn peft_adapter(data: &[u8]) {
    let (config, weights) = split(data);
    let Some(dir) = TempDir::new() else { return };
    if dir.write("adapter_config.json", config).is_none()
        || dir.write("adapter_model.safetensors", weights).is_none()
    {
        return;
    }
    if let Ok(a) = LoraAdapter::load_peft(dir.path()) {
        exercise_adapter(a);
    }
}

/// llama.cpp GGUF LoRA adapter bytes.
pub fn gguf_lora(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes("fuzz-lora.gguf", data) else {
        return;
    };
    if let Ok(a) = LoraAdapter::from_gguf(&g) {
        exercise_adapter(a);
    }
}

/// Text every tokenizer target encodes.
const SAMPLE_TEXT: &str = "Hello, wörld! <|im_start|>user\n  12345 ▁tab\there \u{1F600}";

/// Encodes and decodes [`SAMPLE_TEXT`] and reads a few token pieces.
fn exercise_tokenizer(tok: &Tokenizer) {
    if let Ok(ids) = tok.encode(SAMPLE_TEXT, true) {
        let _ = tok.decode(&ids, false);
        let _ = tok.decode(&ids, true);
        let mut stream = tok.decode_stream(false);
        for &id in &ids {
            let _ = stream.step(id);
        }
        let _ = stream.finish();
    }
    let n = tok.vocab_size().min(512) as u32;
    for id in (0..n).chain([u32::MAX, tok.vocab_size() as u32]) {
        let _ = tok.token_bytes(id);
        let _ = tok.id_to_token(id);
        let _ = tok.is_special(id);
    }
    let _ = tok.decode(&[0, 1, 2, u32::MAX], false);
    let _ = tok.stop_ids();
    let _ = tok.end_marker_of("{{ '<|im_end|>' }}");
}

/// `tokenizer.json` text (invalid UTF-8 is replaced).
pub fn tokenizer_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(tok) = Tokenizer::from_json(&text) {
        exercise_tokenizer(&tok);
    }
}

/// A GGUF file's `tokenizer.ggml.*` metadata.
pub fn gguf_tokenizer(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes("fuzz-tokenizer.gguf", data) else {
        return;
    };
    if let Ok(tok) = Tokenizer::from_gguf(&g) {
        exercise_tokenizer(&tok);
        if let Some(src) = g.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            render_conversation(src);
        }
    }
}

/// The fixed conversation chat templates render.
fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("What is 2 + 2?"),
        ChatMessage::assistant("4").with_field(
            "tool_calls",
            serde_json::json!([{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]),
        ),
        ChatMessage::tool("{\"sum\": 4}"),
        ChatMessage::user("Thanks. <|im_end|>{{ not a template }}"),
    ]
}

fn render_conversation(src: &str) {
    let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") else {
        return;
    };
    let messages = conversation();
    let _ = t.render(&messages, true);
    let tools = serde_json::json!([{
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two numbers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}
        }
    }]);
    let mut extra = serde_json::Map::new();
    extra.insert("enable_thinking".into(), serde_json::Value::Bool(false));
    let _ = t.render_with(
        &messages[..2],
        false,
        &RenderOptions {
            tools: Some(tools),
            extra,
        },
    );
}

/// A chat template's source (invalid UTF-8 is replaced), rendered over a fixed conversation.
pub fn chat_template(data: &[u8]) {
    render_conversation(&String::from_utf8_lossy(data));
}

/// End-of-turn token of the byte-level toy model the schema target generates with.
const TOY_EOT: TokenId = 256;

/// Logits that prefer a token by a fixed hash of the position (not flat, so the grammar is
/// walked through different branches), over 256 bytes + end of turn.
struct Toy(ModelInfo);

impl Model for Toy {
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
        for (i, x) in l.iter_mut().enumerate() {
            let h = (i as u64 ^ (*s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            *x = (h >> 40) as f32 / (1u64 << 24) as f32;
        }
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

/// Bytes as tokens, plus `<|im_end|>`.
struct ByteTokens;

impl Tokenize for ByteTokens {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, BoxError> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, BoxError> {
        match id {
            0..=255 => Ok(vec![id as u8]),
            TOY_EOT => Ok(b"<|im_end|>".to_vec()),
            _ => Err(format!("no token {id}").into()),
        }
    }
    fn is_special(&self, id: TokenId) -> bool {
        id == TOY_EOT
    }
}

/// A session over the byte-level toy model (the tokenizer is shared, so the guided
/// vocabulary is built once).
fn toy_session() -> Session<Toy> {
    static TOK: OnceLock<Arc<dyn Tokenize>> = OnceLock::new();
    let tok = TOK.get_or_init(|| Arc::new(ByteTokens)).clone();
    let mut info = ModelInfo::new("toy", 257, 4096);
    info.special.eot = Some(TOY_EOT);
    Session::new(Toy(info), tok, Arc::new(ChatMl))
}

/// A JSON schema, compiled the way `generate --schema` and `Session::respond_json` do
/// (described into the prompt, string/array limits, llguidance), and a short generation
/// under it with a toy model.
pub fn json_schema(data: &[u8]) {
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = twain::guided::describe_schema("Answer.", &schema);
    let mut opts = GuidedOptions::max_tokens(24);
    opts.max_string_length = Some(4);
    opts.max_array_items = Some(3);
    let mut s = toy_session();
    let _ = s.respond_json("Answer.", &schema, opts);
    // Second turn on the same session (the first may have failed half-way).
    let _ = s.respond_json("Again.", &schema, GuidedOptions::max_tokens(8));
}

/// A GGUF model file: parsed, turned into a loaded model and built into a transformer.
pub fn gguf_model(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes("fuzz-model.gguf", data) else {
        return;
    };
    if let Ok(m) = twain_io::model_from_gguf(g) {
        exercise_model(m);
    }
}

/// Parses a valid seed of target `name` the way the target does and says why it failed (the
/// corpus generator and the replay test check that every seed still parses, so the
/// mutations start from inputs that reach deep into the parsers).
pub fn check_seed(name: &str, data: &[u8]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    match name {
        "hf_folder" => {
            let (config, weights) = split(data);
            let dir = TempDir::new().ok_or("no temp dir")?;
            dir.write("config.json", config).ok_or("write")?;
            dir.write("model.safetensors", weights).ok_or("write")?;
            let m = twain_io::load_model(dir.path()).map_err(|x| e(&x))?;
            build(m).map(|_| ())
        }
        "peft_adapter" => {
            let (config, weights) = split(data);
            let dir = TempDir::new().ok_or("no temp dir")?;
            dir.write("adapter_config.json", config).ok_or("write")?;
            dir.write("adapter_model.safetensors", weights)
                .ok_or("write")?;
            let a = LoraAdapter::load_peft(dir.path()).map_err(|x| e(&x))?;
            a.check(&|n| seeds::tiny_shape(base_config(), n))
                .map_err(|x| e(&x))
        }
        "gguf_lora" => {
            let g = GgufFile::from_bytes("seed.gguf", data).map_err(|x| e(&x))?;
            let a = LoraAdapter::from_gguf(&g).map_err(|x| e(&x))?;
            a.check(&|n| seeds::tiny_shape(base_config(), n))
                .map_err(|x| e(&x))
        }
        "tokenizer_json" => {
            let tok = Tokenizer::from_json(std::str::from_utf8(data).map_err(|x| e(&x))?)
                .map_err(|x| e(&x))?;
            tok.encode(SAMPLE_TEXT, true).map(|_| ()).map_err(|x| e(&x))
        }
        "gguf_tokenizer" => {
            let g = GgufFile::from_bytes("seed.gguf", data).map_err(|x| e(&x))?;
            let tok = Tokenizer::from_gguf(&g).map_err(|x| e(&x))?;
            tok.encode(SAMPLE_TEXT, true).map(|_| ()).map_err(|x| e(&x))
        }
        "chat_template" => {
            let src = std::str::from_utf8(data).map_err(|x| e(&x))?;
            let t = ChatTemplate::new(src, "<s>", "</s>").map_err(|x| e(&x))?;
            // A template may refuse the conversation on purpose (raise_exception).
            match t.render(&conversation(), true) {
                Ok(_) => Ok(()),
                Err(x) if x.to_string().contains("only one message") => Ok(()),
                Err(x) => Err(e(&x)),
            }
        }
        "json_schema" => {
            let schema: serde_json::Value = serde_json::from_slice(data).map_err(|x| e(&x))?;
            let mut opts = GuidedOptions::max_tokens(24);
            opts.max_string_length = Some(4);
            opts.max_array_items = Some(3);
            match toy_session().respond_json("Answer.", &schema, opts) {
                Ok(_) => Ok(()),
                // The toy model may not finish within the budget; the schema compiled.
                Err(twain::GuidedError::Incomplete { .. }) => Ok(()),
                Err(x) => Err(e(&x)),
            }
        }
        "gguf_model" => {
            let g = GgufFile::from_bytes("seed.gguf", data).map_err(|x| e(&x))?;
            let m = twain_io::model_from_gguf(g).map_err(|x| e(&x))?;
            build(m).map(|_| ())
        }
        _ => Err(format!("no target {name}")),
    }
}

/// A transformer from a loaded model, with one forward pass.
fn build(m: LoadedModel) -> Result<Transformer, String> {
    let opts = TransformerOptions::default().context_length(Some(FUZZ_CONTEXT));
    let t = Transformer::from_loaded(m, opts).map_err(|e| e.to_string())?;
    let mut logits = vec![0.0f32; t.info().vocab_size];
    let mut state = t.new_state();
    t.forward(&mut state, &[0, 1], &mut logits)
        .map_err(|e| e.to_string())?;
    Ok(t)
}
