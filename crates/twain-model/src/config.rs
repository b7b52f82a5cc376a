//! The hyperparameters of a Llama-family decoder as plain data: what every
//! file reader (twain-io: GGUF, Hugging Face, native) fills in and twain-core
//! interprets. It lives here, below both, because the readers produce it and
//! twain-core (above twain-io) owns its meaning: `twain_core::validate_config`,
//! `KvPlan` (the one interpreter of `kv_source`) and the list of tensors a
//! config needs (`twain_core::expected_tensors`).

use serde::{Deserialize, Serialize};

/// How RoPE pairs are laid out in the stored q/k projection rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// Pairs are adjacent `(x[2i], x[2i+1])`: llama.cpp's permuted q/k for arch `llama`.
    Interleaved,
    /// Pairs are `(x[i], x[i + d/2])`: Hugging Face checkpoints, GGUF qwen2/qwen3.
    HalfSplit,
}

/// Llama-3 style RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `factor`.
    pub factor: f32,
    /// `low_freq_factor`.
    pub low_freq_factor: f32,
    /// `high_freq_factor`.
    pub high_freq_factor: f32,
    /// `original_max_position_embeddings`.
    pub original_context: usize,
}

/// Hyperparameters of a Llama-family decoder, plus its KV-sharing plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Architecture name as found in the source (`llama`, `qwen2`, `qwen3`, ...).
    pub arch: String,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// SwiGLU hidden size.
    pub ffn_hidden: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Maximum context length.
    pub context_length: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Optional Llama-3 frequency scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Pair layout of the stored q/k weights.
    pub rope_layout: RopeLayout,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// LM head is the embedding table.
    pub tied_embeddings: bool,
    /// RMSNorm over each q and k head (Qwen3, AFM).
    pub qk_norm: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// For each layer, the layer whose K/V cache it attends to: `kv_source[l] == l`
    /// means layer l owns K/V projections and a cache; otherwise it is an earlier
    /// owning layer (the AFM plan: block-2 layers read block 1's last layer).
    pub kv_source: Vec<usize>,
}
