//! The loaded-model description shared by every reader: [`LoadedModel`] and the canonical
//! tensor names. Whether a tensor set is a model of its [`ModelConfig`] is twain-core's
//! check (`twain_core::check_tensors`), not the readers'.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use twain_model::{ModelConfig, RopeLayout};

use crate::{GgufFile, IoError, Tensor};

/// A model read from any supported file: config, tensors under canonical names, tokenizer.
///
/// Canonical (GGUF-style) tensor names: `token_embd.weight`, `output_norm.weight`,
/// `output.weight` (absent when `config.tied_embeddings`), and for each layer `i`:
/// `blk.{i}.attn_norm.weight`, `blk.{i}.attn_q.weight`, `blk.{i}.attn_k.weight`,
/// `blk.{i}.attn_v.weight`, `blk.{i}.attn_output.weight`, `blk.{i}.ffn_norm.weight`,
/// `blk.{i}.ffn_gate.weight`, `blk.{i}.ffn_up.weight`, `blk.{i}.ffn_down.weight`, with
/// `blk.{i}.attn_{q,k,v}.bias` when `config.qkv_bias` and `blk.{i}.attn_{q,k}_norm.weight`
/// when `config.qk_norm`. `twain_core::expected_tensors` lists them with their shapes.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// Hyperparameters.
    pub config: ModelConfig,
    /// Tensors by canonical name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Hugging Face `tokenizer.json` text (HF directories, native files).
    pub tokenizer_json: Option<String>,
    /// Jinja chat template (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`'s
    /// `chat_template` or `chat_template.jinja`, native files).
    pub chat_template: Option<String>,
    /// The parsed GGUF file when loaded from one (the tokenizer reads `tokenizer.ggml.*`).
    pub gguf: Option<Arc<GgufFile>>,
    /// The file or directory loaded.
    pub source: PathBuf,
    /// Free-form provenance (`twain.*` entries of a native file, e.g. `twain.preset`).
    pub provenance: BTreeMap<String, String>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<LoadedModel>();
};

impl LoadedModel {
    /// The tensor called `name`; the error names the missing tensor and the file.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, IoError> {
        self.tensors
            .get(name)
            .ok_or_else(|| IoError::MissingTensor {
                path: self.source.clone(),
                tensor: name.to_string(),
            })
    }
}

/// Largest size accepted for any hyperparameter read from a file (keeps
/// products of two far from overflow; twain-core checks the same bound).
const MAX_DIM: usize = 1 << 24;

/// Reads the hyperparameters of a GGUF model (arch `llama`, `qwen2` or `qwen3`).
pub(crate) fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, IoError> {
    let path = g.path();
    let arch = g
        .get("general.architecture")
        .ok_or_else(|| IoError::key(path, "general.architecture", "missing"))?
        .as_str()
        .ok_or_else(|| IoError::key(path, "general.architecture", "not a string"))?
        .to_string();
    let rope_layout = match arch.as_str() {
        "llama" => RopeLayout::Interleaved,
        "qwen2" | "qwen3" => RopeLayout::HalfSplit,
        other => {
            return Err(IoError::unsupported(
                path,
                format!("architecture {other:?} (supported: llama, qwen2, qwen3)"),
            ))
        }
    };
    let k = |s: &str| format!("{arch}.{s}");
    let usize_key = |key: String| -> Result<usize, IoError> {
        let v = g.require_u64(&key)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0 && v <= MAX_DIM)
            .ok_or_else(|| IoError::key(path, &key, format!("{v} is out of range")))
    };
    let n_layers = usize_key(k("block_count"))?;
    // Each layer has several tensors: a larger count is absurd, and bounds the kv_source allocation.
    if n_layers > g.tensors().len() {
        return Err(IoError::key(
            path,
            k("block_count"),
            format!("{n_layers} layers but only {} tensors", g.tensors().len()),
        ));
    }
    let d_model = usize_key(k("embedding_length"))?;
    let n_heads = usize_key(k("attention.head_count"))?;
    let n_kv_heads = match g.get(&k("attention.head_count_kv")) {
        None => n_heads,
        Some(_) => usize_key(k("attention.head_count_kv"))?,
    };
    let head_dim = match g.get(&k("attention.key_length")) {
        Some(_) => usize_key(k("attention.key_length"))?,
        None => {
            if d_model % n_heads != 0 {
                return Err(IoError::key(
                    path,
                    k("attention.head_count"),
                    format!("{n_heads} heads do not divide embedding length {d_model}"),
                ));
            }
            d_model / n_heads
        }
    };
    if let Some(v) = g.get(&k("rope.dimension_count")) {
        if v.as_u64() != Some(head_dim as u64) {
            return Err(IoError::unsupported(
                path,
                format!(
                    "{}: {v:?} (partial rotary; twain rotates the whole head of {head_dim})",
                    k("rope.dimension_count")
                ),
            ));
        }
    }
    let ffn_hidden = usize_key(k("feed_forward_length"))?;
    let context_length = usize_key(k("context_length"))?;
    let rope_theta = g.opt_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0) as f32;
    let rms_eps = g
        .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| IoError::key(path, k("attention.layer_norm_rms_epsilon"), "missing"))?
        as f32;
    if let Some(t) = g.get(&k("rope.scaling.type")) {
        if !matches!(t.as_str(), Some("none") | Some("")) {
            return Err(IoError::unsupported(
                path,
                format!("{}: {t:?}", k("rope.scaling.type")),
            ));
        }
    }
    let embd = g
        .tensor_info("token_embd.weight")
        .ok_or_else(|| IoError::MissingTensor {
            path: path.to_path_buf(),
            tensor: "token_embd.weight".into(),
        })?;
    let vocab_size = match embd.shape().as_slice() {
        [v, _] => *v,
        s => {
            return Err(IoError::tensor(
                path,
                "token_embd.weight",
                format!("shape {s:?} is not 2-D"),
            ))
        }
    };
    let has = |n: &str| g.tensor_info(n).is_some();
    Ok(ModelConfig {
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_hidden,
        vocab_size,
        context_length,
        rope_theta,
        rope_scaling: None,
        rope_layout,
        rms_eps,
        tied_embeddings: !has("output.weight"),
        qk_norm: has("blk.0.attn_q_norm.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        kv_source: (0..n_layers).collect(),
    })
}

/// Builds a model from a parsed GGUF file, dequantizing every tensor to owned f32
/// ([`load_model`](crate::load_model) does this for a GGUF path).
pub fn model_from_gguf(g: GgufFile) -> Result<LoadedModel, IoError> {
    let path = &g.path().to_path_buf();
    let config = config_from_gguf(&g)?;
    let mut tensors = BTreeMap::new();
    for info in g.tensors() {
        let data = g.dequantize_info(info)?;
        let t = Tensor::from_f32(info.name.clone(), info.shape(), data)?
            .with_source(path.to_path_buf());
        tensors.insert(info.name.clone(), t);
    }
    let chat_template = match g.get("tokenizer.chat_template") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| IoError::key(path, "tokenizer.chat_template", "not a string"))?
                .to_string(),
        ),
    };
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer_json: None,
        chat_template,
        gguf: Some(Arc::new(g)),
        source: path.to_path_buf(),
        provenance: BTreeMap::new(),
    })
}
