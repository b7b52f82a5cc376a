//! The loaded-model description shared by every reader: [`LoadedModel`], the canonical tensor
//! names, and the checks that a tensor set matches its [`ModelConfig`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{GgufFile, IoError, ModelConfig, RopeLayout, Tensor};

/// A model read from any supported file: config, tensors under canonical names, tokenizer.
///
/// Canonical (GGUF-style) tensor names: `token_embd.weight`, `output_norm.weight`,
/// `output.weight` (absent when `config.tied_embeddings`), and for each layer `i`:
/// `blk.{i}.attn_norm.weight`, `blk.{i}.attn_q.weight`, `blk.{i}.attn_k.weight`,
/// `blk.{i}.attn_v.weight`, `blk.{i}.attn_output.weight`, `blk.{i}.ffn_norm.weight`,
/// `blk.{i}.ffn_gate.weight`, `blk.{i}.ffn_up.weight`, `blk.{i}.ffn_down.weight`, with
/// `blk.{i}.attn_{q,k,v}.bias` when `config.qkv_bias` and `blk.{i}.attn_{q,k}_norm.weight`
/// when `config.qk_norm`. See [`expected_tensors`] for the shapes.
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

/// Every tensor a model with `config` needs, with its row-major shape.
///
/// Layers whose `kv_source[l] != l` need no `attn_k`/`attn_v` (nor their biases or k-norm).
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let c = config;
    let (d, q, kv, f) = (
        c.d_model,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.ffn_hidden,
    );
    let mut v = vec![
        ("token_embd.weight".to_string(), vec![c.vocab_size, d]),
        ("output_norm.weight".to_string(), vec![d]),
    ];
    if !c.tied_embeddings {
        v.push(("output.weight".to_string(), vec![c.vocab_size, d]));
    }
    for i in 0..c.n_layers {
        let owns_kv = c.kv_source.get(i).is_none_or(|&s| s == i);
        let mut t = |n: &str, s: Vec<usize>| v.push((format!("blk.{i}.{n}"), s));
        t("attn_norm.weight", vec![d]);
        t("attn_q.weight", vec![q, d]);
        if owns_kv {
            t("attn_k.weight", vec![kv, d]);
            t("attn_v.weight", vec![kv, d]);
        }
        t("attn_output.weight", vec![d, q]);
        t("ffn_norm.weight", vec![d]);
        t("ffn_gate.weight", vec![f, d]);
        t("ffn_up.weight", vec![f, d]);
        t("ffn_down.weight", vec![d, f]);
        if c.qkv_bias {
            t("attn_q.bias", vec![q]);
            if owns_kv {
                t("attn_k.bias", vec![kv]);
                t("attn_v.bias", vec![kv]);
            }
        }
        if c.qk_norm {
            t("attn_q_norm.weight", vec![c.head_dim]);
            if owns_kv {
                t("attn_k_norm.weight", vec![c.head_dim]);
            }
        }
    }
    v
}

/// Largest size accepted for any hyperparameter (keeps products of two far from overflow).
const MAX_DIM: usize = 1 << 24;

/// Checks the config's own consistency (positive sizes, GQA divisibility, KV plan).
pub fn check_config(config: &ModelConfig, path: &Path) -> Result<(), IoError> {
    let c = config;
    let bad = |key: &str, what: String| Err(IoError::key(path, key, what));
    for (key, v) in [
        ("n_layers", c.n_layers),
        ("d_model", c.d_model),
        ("n_heads", c.n_heads),
        ("n_kv_heads", c.n_kv_heads),
        ("head_dim", c.head_dim),
        ("ffn_hidden", c.ffn_hidden),
        ("vocab_size", c.vocab_size),
        ("context_length", c.context_length),
    ] {
        if v == 0 || v > MAX_DIM {
            return bad(key, format!("{v} is out of range"));
        }
    }
    if !c.n_heads.is_multiple_of(c.n_kv_heads) {
        return bad(
            "n_kv_heads",
            format!(
                "{} query heads are not a multiple of {} kv heads",
                c.n_heads, c.n_kv_heads
            ),
        );
    }
    if !c.head_dim.is_multiple_of(2) {
        return bad(
            "head_dim",
            format!("{} is odd (RoPE needs pairs)", c.head_dim),
        );
    }
    if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        return bad(
            "rope_theta",
            format!("{} is not a positive number", c.rope_theta),
        );
    }
    if !(c.rms_eps.is_finite() && c.rms_eps > 0.0) {
        return bad("rms_eps", format!("{} is not a positive number", c.rms_eps));
    }
    if let Some(s) = &c.rope_scaling {
        let ok = [s.factor, s.low_freq_factor, s.high_freq_factor]
            .iter()
            .all(|x| x.is_finite() && *x > 0.0)
            && s.high_freq_factor > s.low_freq_factor
            && s.original_context > 0;
        if !ok {
            return bad(
                "rope_scaling",
                format!("{s:?} is not a valid llama3 scaling"),
            );
        }
    }
    if c.kv_source.len() != c.n_layers {
        return bad(
            "kv_source",
            format!(
                "has {} entries for {} layers",
                c.kv_source.len(),
                c.n_layers
            ),
        );
    }
    for (l, &s) in c.kv_source.iter().enumerate() {
        if s > l || c.kv_source[s] != s {
            return bad(
                "kv_source",
                format!("layer {l} reads layer {s}, which is not an earlier layer owning its K/V"),
            );
        }
    }
    Ok(())
}

/// Checks that every tensor `config` needs is present with the right shape, and that layers
/// which read another layer's K/V (`kv_source[l] != l`) have no K/V weights of their own.
/// Other extra tensors (e.g. GGUF `rope_freqs.weight`) are allowed and kept.
pub fn check_tensors(
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<(), IoError> {
    check_tensors_except(config, tensors, path, &[])
}

/// [`check_tensors`] for a file that leaves out the tensors named in
/// `omitted` on purpose (a partial native file: shipped trained parameters
/// whose embedding table the user's conversion makes). Each omitted name
/// must be one the config expects, and absent.
pub fn check_tensors_except(
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
    omitted: &[String],
) -> Result<(), IoError> {
    check_config(config, path)?;
    let expected = expected_tensors(config);
    for name in omitted {
        if !expected.iter().any(|(n, _)| n == name) {
            return Err(IoError::tensor(
                path,
                name,
                "listed as omitted but not a tensor of this model",
            ));
        }
        if tensors.contains_key(name) {
            return Err(IoError::tensor(path, name, "listed as omitted but present"));
        }
    }
    for (l, &src) in config.kv_source.iter().enumerate() {
        if src == l {
            continue;
        }
        for n in [
            "attn_k.weight",
            "attn_v.weight",
            "attn_k.bias",
            "attn_v.bias",
            "attn_k_norm.weight",
        ] {
            let name = format!("blk.{l}.{n}");
            if tensors.contains_key(&name) {
                return Err(IoError::tensor(
                    path,
                    name,
                    format!("layer {l} reads layer {src}'s K/V cache (kv_source) and must not have K/V weights"),
                ));
            }
        }
    }
    for (name, shape) in expected {
        if omitted.contains(&name) {
            continue;
        }
        let t = tensors.get(&name).ok_or_else(|| IoError::MissingTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
        })?;
        if t.shape() != shape.as_slice() {
            return Err(IoError::tensor(
                path,
                &name,
                format!("expected shape {shape:?}, file has {:?}", t.shape()),
            ));
        }
    }
    Ok(())
}

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
    check_tensors(&config, &tensors, path)?;
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
