//! Models with random weights, for tests and benchmarks at any shape.

use std::collections::BTreeMap;
use std::path::PathBuf;

use twain_core::{ModelConfig, RopeLayout};
use twain_io::{LoadedModel, Tensor};
use twain_quant::{quantize, QuantFormat, QuantizeOptions};

use crate::ConvertError;
use crate::Preset;

/// A small deterministic generator (SplitMix64), so tests need no RNG crate.
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A small Llama-style config for tests.
pub fn tiny_config(n_layers: usize) -> ModelConfig {
    ModelConfig {
        arch: "llama".into(),
        n_layers,
        d_model: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_hidden: 128,
        vocab_size: 96,
        context_length: 256,
        rope_theta: 10000.0,
        rope_scaling: None,
        rope_layout: RopeLayout::HalfSplit,
        rms_eps: 1e-5,
        tied_embeddings: true,
        qk_norm: false,
        qkv_bias: false,
        kv_source: (0..n_layers).collect(),
    }
}

/// The reference system's shape (56 layers, 35 + 21 KV-sharing).
pub fn afm_config() -> ModelConfig {
    ModelConfig {
        arch: "afm".into(),
        n_layers: 56,
        d_model: 2048,
        n_heads: 16,
        n_kv_heads: 2,
        head_dim: 128,
        ffn_hidden: 6656,
        vocab_size: 153_600,
        context_length: 4096,
        rope_theta: 500_000.0,
        rope_scaling: None,
        rope_layout: RopeLayout::HalfSplit,
        rms_eps: 1e-5,
        tied_embeddings: true,
        qk_norm: true,
        qkv_bias: false,
        kv_source: (0..56).map(|l| if l < 35 { l } else { 34 }).collect(),
    }
}

/// Random weights for `config` (with its KV plan), each tensor stored in the
/// format `preset` gives it. Linear weights are scaled like a trained model's
/// (std ~ 1/sqrt(cols)) so activations stay in range.
pub fn random_model(
    config: &ModelConfig,
    preset: Preset,
    seed: u64,
) -> Result<LoadedModel, ConvertError> {
    twain_core::validate_config(config)?;
    let c = config;
    let (d, hd) = (c.d_model, c.head_dim);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![c.vocab_size, d]),
        ("output_norm.weight".into(), vec![d]),
    ];
    if !c.tied_embeddings {
        shapes.push(("output.weight".into(), vec![c.vocab_size, d]));
    }
    for l in 0..c.n_layers {
        let p = format!("blk.{l}.");
        let owns = c.kv_source[l] == l;
        shapes.push((format!("{p}attn_norm.weight"), vec![d]));
        shapes.push((format!("{p}ffn_norm.weight"), vec![d]));
        shapes.push((format!("{p}attn_q.weight"), vec![c.n_heads * hd, d]));
        if owns {
            shapes.push((format!("{p}attn_k.weight"), vec![c.n_kv_heads * hd, d]));
            shapes.push((format!("{p}attn_v.weight"), vec![c.n_kv_heads * hd, d]));
        }
        shapes.push((format!("{p}attn_output.weight"), vec![d, c.n_heads * hd]));
        shapes.push((format!("{p}ffn_gate.weight"), vec![c.ffn_hidden, d]));
        shapes.push((format!("{p}ffn_up.weight"), vec![c.ffn_hidden, d]));
        shapes.push((format!("{p}ffn_down.weight"), vec![d, c.ffn_hidden]));
        if c.qkv_bias {
            shapes.push((format!("{p}attn_q.bias"), vec![c.n_heads * hd]));
            if owns {
                shapes.push((format!("{p}attn_k.bias"), vec![c.n_kv_heads * hd]));
                shapes.push((format!("{p}attn_v.bias"), vec![c.n_kv_heads * hd]));
            }
        }
        if c.qk_norm {
            shapes.push((format!("{p}attn_q_norm.weight"), vec![hd]));
            if owns {
                shapes.push((format!("{p}attn_k_norm.weight"), vec![hd]));
            }
        }
    }
    let mut tensors = BTreeMap::new();
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        let mut rng = SplitMix::new(seed.wrapping_mul(1000003).wrapping_add(i as u64));
        let numel: usize = shape.iter().product();
        let data: Vec<f32> = if name.contains("norm") {
            (0..numel).map(|_| 1.0 + 0.1 * rng.uniform()).collect()
        } else if name.ends_with(".bias") {
            (0..numel).map(|_| 0.1 * rng.uniform()).collect()
        } else {
            let s = if name == "token_embd.weight" || name == "output.weight" {
                1.0
            } else {
                1.7 / (shape[1] as f32).sqrt()
            };
            (0..numel).map(|_| s * rng.uniform()).collect()
        };
        let format = preset.format_for(&name, &shape);
        let t = if format == QuantFormat::F32 {
            Tensor::from_f32(name.clone(), shape, data)?
        } else {
            let m = quantize(
                format,
                shape[0],
                shape[1],
                &data,
                &QuantizeOptions {
                    importance: None,
                    no_clip_search: true,
                },
            )?;
            Tensor::from_qmatrix(name.clone(), shape, m)?
        };
        tensors.insert(name, t);
    }
    Ok(LoadedModel {
        config: c.clone(),
        tensors,
        tokenizer_json: None,
        chat_template: None,
        gguf: None,
        source: PathBuf::from("<random>"),
        provenance: BTreeMap::new(),
    })
}
