//! Valid inputs for every target, built in code (the corpus generator writes them and
//! mutations of them; the replay test checks the valid ones still parse).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use twain_adapters::LoraAdapter;
use twain_core::{ModelConfig, RopeLayout};
use twain_io::gguf::{write_gguf, GgufTensorData};
use twain_io::{GgmlType, MetaValue};

use crate::join;

/// A one-layer llama: d 8, 2 heads of 4, 1 KV head, SwiGLU 16, 24 tokens, context 64.
pub fn tiny_config() -> &'static ModelConfig {
    static C: OnceLock<ModelConfig> = OnceLock::new();
    C.get_or_init(|| ModelConfig {
        arch: "llama".into(),
        n_layers: 1,
        d_model: 8,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        ffn_hidden: 16,
        vocab_size: 24,
        context_length: 64,
        rope_theta: 10000.0,
        rope_scaling: None,
        rope_layout: RopeLayout::HalfSplit,
        rms_eps: 1e-5,
        tied_embeddings: true,
        qk_norm: false,
        qkv_bias: false,
        kv_source: vec![0],
    })
}

/// Every tensor of a model with `cfg` (a valid config), with its shape.
fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let plan = twain_core::validate_config(cfg).expect("the seed configs are valid");
    twain_core::expected_tensors(cfg, &plan)
}

/// (rows, cols) of a 2-D tensor of a model with `cfg`, `None` when it has none by that name.
pub fn tiny_shape(cfg: &ModelConfig, name: &str) -> Option<(usize, usize)> {
    expected_tensors(cfg)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, s)| match s[..] {
            [r, c] => Some((r, c)),
            _ => None,
        })
}

/// Deterministic small weights.
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ salt) % 1000) as f32 / 2000.0 - 0.25)
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

/// Hugging Face name of a canonical (GGUF-style) tensor name.
fn hf_name(canon: &str) -> String {
    if let Some(rest) = canon.strip_prefix("blk.") {
        let (layer, t) = rest.split_once('.').unwrap_or((rest, ""));
        let module = match t {
            "attn_norm.weight" => "input_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            other => other,
        };
        return format!("model.layers.{layer}.{module}");
    }
    match canon {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        other => other.into(),
    }
}

/// A safetensors file of `(name, dtype, shape, bytes)`.
fn safetensors_file(
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    meta: Option<std::collections::HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("consistent seed tensor"),
            )
        })
        .collect();
    safetensors::serialize(views, meta).expect("serializable seed")
}

/// A Hugging Face `config.json` for `cfg`.
fn hf_config_json(cfg: &ModelConfig, dtype: &str) -> String {
    let v = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": cfg.arch,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tied_embeddings,
        "torch_dtype": dtype,
    });
    serde_json::to_string_pretty(&v).expect("json")
}

/// Hugging Face folder inputs: F32 tied, BF16 untied with Llama-3 RoPE scaling, F16.
pub fn hf_folder() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, dtype, tied) in [
        ("llama_f32_tied", Dtype::F32, true),
        ("llama_bf16_untied", Dtype::BF16, false),
        ("llama_f16_tied", Dtype::F16, true),
    ] {
        let mut cfg = tiny_config().clone();
        cfg.tied_embeddings = tied;
        let tensors: Vec<_> = expected_tensors(&cfg)
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| {
                let v = values(s.iter().product(), i as u32);
                let bytes = match dtype {
                    Dtype::F32 => f32_bytes(&v),
                    Dtype::F16 => f16_bytes(&v),
                    _ => bf16_bytes(&v),
                };
                (hf_name(&n), dtype, s, bytes)
            })
            .collect();
        let mut config: serde_json::Value =
            serde_json::from_str(&hf_config_json(&cfg, &format!("{dtype:?}").to_lowercase()))
                .expect("json");
        if !tied {
            config["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32
            });
        }
        let config = serde_json::to_string_pretty(&config).expect("json");
        out.push((
            name.to_string(),
            join(config.as_bytes(), &safetensors_file(&tensors, None)),
        ));
    }
    out
}

/// PEFT adapter folders over [`tiny_config`]: rank 2 on q/v in F32, rank 1 on every module
/// in BF16 with a rank pattern and RSLoRA.
pub fn peft_adapter() -> Vec<(String, Vec<u8>)> {
    let cfg = tiny_config();
    let mut out = Vec::new();
    let cases: [(&str, &[&str], usize, Dtype, &str); 2] = [
        (
            "qv_rank2_f32",
            &["attn_q", "attn_v"],
            2,
            Dtype::F32,
            r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "bias": "none", "fan_in_fan_out": false}"#,
        ),
        (
            "all_rank1_bf16",
            &[
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ],
            1,
            Dtype::BF16,
            r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "use_rslora": true, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "rank_pattern": {"model.layers.0.mlp.down_proj": 1}, "alpha_pattern": {"model.layers.0.self_attn.q_proj": 8}}"#,
        ),
    ];
    for (name, modules, r, dtype, config) in cases {
        let mut tensors = Vec::new();
        for (i, m) in modules.iter().enumerate() {
            let canon = format!("blk.0.{m}.weight");
            let (rows, cols) = tiny_shape(cfg, &canon).expect("tiny target");
            let hf = hf_name(&canon);
            let stem = hf.strip_suffix(".weight").expect("weight");
            for (part, shape) in [("lora_A", vec![r, cols]), ("lora_B", vec![rows, r])] {
                let v = values(shape.iter().product(), (i * 2) as u32);
                let bytes = match dtype {
                    Dtype::F32 => f32_bytes(&v),
                    _ => bf16_bytes(&v),
                };
                tensors.push((
                    format!("base_model.model.{stem}.{part}.weight"),
                    dtype,
                    shape,
                    bytes,
                ));
            }
        }
        out.push((
            name.to_string(),
            join(config.as_bytes(), &safetensors_file(&tensors, None)),
        ));
    }
    out
}

/// An adapter over [`tiny_config`] with rank-2 targets on `modules`.
fn tiny_adapter(modules: &[&str]) -> LoraAdapter {
    let cfg = tiny_config();
    let mut a = LoraAdapter::new();
    for (i, m) in modules.iter().enumerate() {
        let canon = format!("blk.0.{m}.weight");
        let (rows, cols) = tiny_shape(cfg, &canon).expect("tiny target");
        a.insert(
            &canon,
            rows,
            cols,
            2,
            0.5,
            values(2 * cols, i as u32),
            values(rows * 2, i as u32 + 7),
        )
        .expect("valid adapter");
    }
    a
}

/// llama.cpp GGUF LoRA adapters over [`tiny_config`].
pub fn gguf_lora() -> Vec<(String, Vec<u8>)> {
    let cfg = tiny_config();
    let mut out = Vec::new();
    for (name, modules) in [
        ("q_v", &["attn_q", "attn_v"][..]),
        ("mlp", &["ffn_gate", "ffn_up", "ffn_down"][..]),
    ] {
        let bytes = tiny_adapter(modules)
            .to_gguf_bytes(cfg)
            .expect("adapter to GGUF");
        out.push((name.to_string(), bytes));
    }
    out
}

/// tokenizer.json texts: WordLevel, BPE with merges, byte-level BPE with added special
/// tokens, and a minimal BPE.
pub fn tokenizer_json() -> Vec<(String, Vec<u8>)> {
    let word_level = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, ",": 2, "!": 3}, "unk_token": "<unk>"}
    });
    let mut vocab = serde_json::Map::new();
    let pieces = [
        "H", "e", "l", "o", ",", "Ġ", "w", "r", "d", "!", "he", "ll", "llo", "Ġw", "1", "2", "3",
        "h",
    ];
    for (i, p) in pieces.iter().enumerate() {
        vocab.insert((*p).to_string(), serde_json::json!(i));
    }
    let byte_level = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 18, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 19, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": ["h e", "l l", "ll o", "Ġ w"]}
    });
    let minimal =
        r#"{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}"#;
    vec![
        ("word_level".into(), word_level.to_string().into_bytes()),
        (
            "byte_level_bpe".into(),
            serde_json::to_string_pretty(&byte_level)
                .expect("json")
                .into_bytes(),
        ),
        ("minimal_bpe".into(), minimal.as_bytes().to_vec()),
    ]
}

fn strings(v: &[&str]) -> MetaValue {
    MetaValue::Array(v.iter().map(|s| MetaValue::String((*s).into())).collect())
}

/// GPT-2 style tokenizer metadata (byte-level BPE).
fn gpt2_metadata() -> Vec<(&'static str, MetaValue)> {
    let tokens = [
        "H",
        "e",
        "l",
        "o",
        ",",
        "Ġ",
        "w",
        "r",
        "d",
        "!",
        "he",
        "ll",
        "llo",
        "Ġw",
        "<|im_start|>",
        "<|im_end|>",
        "1",
        "2",
        "3",
        "Ã",
        "¶",
        "h",
        "Ċ",
        "<|endoftext|>",
    ];
    let types: Vec<MetaValue> = tokens
        .iter()
        .map(|t| MetaValue::I32(if t.starts_with("<|") { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", MetaValue::Array(types)),
        (
            "tokenizer.ggml.merges",
            strings(&["h e", "l l", "ll o", "Ġ w"]),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(14)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(15)),
        ("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
        (
            "tokenizer.chat_template",
            MetaValue::String(CHATML.to_string()),
        ),
    ]
}

/// SentencePiece (`llama`) tokenizer metadata with byte fallback tokens.
fn spm_metadata() -> Vec<(&'static str, MetaValue)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..16u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for p in ["▁", "a", "b", "ab", "▁a", "▁ab", "He", "llo", "▁Hello"] {
        tokens.push(p.into());
        types.push(1);
    }
    let scores: Vec<MetaValue> = (0..tokens.len())
        .map(|i| MetaValue::F32(-(i as f32)))
        .collect();
    vec![
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
        ),
        ("tokenizer.ggml.scores", MetaValue::Array(scores)),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
        ("tokenizer.ggml.add_space_prefix", MetaValue::Bool(true)),
    ]
}

/// GGUF files with tokenizer metadata only (GPT-2 BPE, SentencePiece).
pub fn gguf_tokenizer() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "gpt2".into(),
            write_gguf(&gpt2_metadata(), &[]).expect("gguf"),
        ),
        (
            "spm".into(),
            write_gguf(&spm_metadata(), &[]).expect("gguf"),
        ),
    ]
}

/// A GGUF model of [`tiny_config`] (with `tied` embeddings or an output matrix) whose matrices
/// are stored as `ty` (F32 or F16), with GPT-2 tokenizer metadata.
fn gguf_model_bytes(tied: bool, ty: GgmlType) -> Vec<u8> {
    let mut cfg = tiny_config().clone();
    cfg.tied_embeddings = tied;
    // The GPT-2 seed vocabulary has 24 tokens, the model's size.
    let shapes = expected_tensors(&cfg);
    let data: BTreeMap<String, Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let v = values(s.iter().product(), i as u32 + 100);
            let bytes = if s.len() == 2 && ty == GgmlType::F16 {
                f16_bytes(&v)
            } else {
                f32_bytes(&v)
            };
            (n.clone(), bytes)
        })
        .collect();
    let tensors: Vec<GgufTensorData<'_>> = shapes
        .iter()
        .map(|(n, s)| GgufTensorData {
            name: n,
            ggml_type: if s.len() == 2 { ty } else { GgmlType::F32 },
            dims: s.iter().rev().map(|&d| d as u64).collect(),
            data: &data[n],
        })
        .collect();
    let mut meta = vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("llama.block_count", MetaValue::U32(cfg.n_layers as u32)),
        (
            "llama.context_length",
            MetaValue::U32(cfg.context_length as u32),
        ),
        ("llama.embedding_length", MetaValue::U32(cfg.d_model as u32)),
        (
            "llama.feed_forward_length",
            MetaValue::U32(cfg.ffn_hidden as u32),
        ),
        (
            "llama.attention.head_count",
            MetaValue::U32(cfg.n_heads as u32),
        ),
        (
            "llama.attention.head_count_kv",
            MetaValue::U32(cfg.n_kv_heads as u32),
        ),
        ("llama.rope.freq_base", MetaValue::F32(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(cfg.rms_eps),
        ),
    ];
    meta.extend(gpt2_metadata());
    write_gguf(&meta, &tensors).expect("gguf")
}

/// GGUF model files: F32 tied, F16 with an output matrix.
pub fn gguf_model() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "tiny_f32_tied".into(),
            gguf_model_bytes(true, GgmlType::F32),
        ),
        (
            "tiny_f16_untied".into(),
            gguf_model_bytes(false, GgmlType::F16),
        ),
    ]
}

/// ChatML as twain ships it.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Chat templates in the styles model files use.
pub fn chat_template() -> Vec<(String, Vec<u8>)> {
    let llama3 = r#"{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Tools:\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls is defined %}
        {%- for call in message.tool_calls %}
            {{- '{"name": "' + call.function.name + '", "parameters": ' + call.function.arguments | tojson + '}' }}
        {%- endfor %}
    {%- elif message.role == 'tool' %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" + message.content | string }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;
    let qwen = r#"{%- macro render(m) -%}
<|im_start|>{{ m.role }}
{{ m.content.strip() }}<|im_end|>
{% endmacro -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
{%- if loop.index0 > ns.last_user and m.role == 'assistant' and not enable_thinking | default(true) -%}
<think>

</think>
{%- endif -%}
{{ render(m) }}
{%- if loop.last and m.role == 'tool' -%}{{ raise_exception('tool last') if false }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}
{{ strftime_now('%Y-%m-%d')[:0] }}{{ messages | length }}{{ (messages | map(attribute='role') | join(','))[:3] }}
{%- for k, v in {'a': 1, 'b': [1, 2]}.items() %}{{ k }}={{ v | tojson }}{% endfor -%}
{{ "x".startswith("x") }}{{ range(3) | list }}{{ "%s-%d" | format("a", 1) }}"#;
    vec![
        ("chatml".into(), CHATML.as_bytes().to_vec()),
        ("llama3_tools".into(), llama3.as_bytes().to_vec()),
        ("qwen_macros".into(), qwen.as_bytes().to_vec()),
        (
            "raise".into(),
            b"{% if messages | length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
                .to_vec(),
        ),
    ]
}

/// JSON schemas: objects with every kind of member, `$ref` recursion, `anyOf`, patterns,
/// numbers with bounds, enums and `true`.
pub fn json_schema() -> Vec<(String, Vec<u8>)> {
    let thing = serde_json::json!({
        "type": "object",
        "description": "A thing.",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 3},
            "count": {"type": "integer", "minimum": -5, "maximum": 500},
            "ratio": {"type": "number"},
            "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2},
            "kind": {"enum": ["Small", "Large", 3, null]},
            "note": {"type": ["string", "null"]},
            "fixed": {"const": "x"}
        },
        "required": ["name", "count", "kind"],
        "additionalProperties": false
    });
    let recursive = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                },
                "required": ["value"]
            }
        }
    });
    let any_of = serde_json::json!({
        "anyOf": [
            {"type": "string", "pattern": "^[a-c]{1,3}$"},
            {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
            {"type": "array", "items": [{"type": "integer"}, {"type": "string"}]},
            {"oneOf": [{"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.5}, {"type": "boolean"}]}
        ]
    });
    let all_of = serde_json::json!({
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]}
        ],
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": {"type": "number"}
    });
    vec![
        (
            "thing".into(),
            serde_json::to_string_pretty(&thing)
                .expect("json")
                .into_bytes(),
        ),
        (
            "recursive".into(),
            serde_json::to_string_pretty(&recursive)
                .expect("json")
                .into_bytes(),
        ),
        ("any_of".into(), any_of.to_string().into_bytes()),
        ("all_of".into(), all_of.to_string().into_bytes()),
        ("true".into(), b"true".to_vec()),
        (
            "string".into(),
            br#"{"type": "string", "maxLength": 2}"#.to_vec(),
        ),
    ]
}

/// The valid seeds of the target called `name`.
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    match name {
        "hf_folder" => hf_folder(),
        "peft_adapter" => peft_adapter(),
        "gguf_lora" => gguf_lora(),
        "tokenizer_json" => tokenizer_json(),
        "gguf_tokenizer" => gguf_tokenizer(),
        "chat_template" => chat_template(),
        "json_schema" => json_schema(),
        "gguf_model" => gguf_model(),
        _ => Vec::new(),
    }
}
