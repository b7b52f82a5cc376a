//! Hugging Face layout: `config.json` + `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), tokenizer files, for Llama-family models.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::backing::Backing;
use twain_model::{ModelConfig, RopeLayout, RopeScaling};

use crate::model::LoadedModel;
use crate::{IoError, Tensor};

/// The canonical (GGUF-style) name of a Hugging Face Llama-family tensor name, or `None` when it
/// is not a tensor twain uses (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`).
pub fn canonical_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer_str, rest) = rest.split_once('.')?;
    let layer: usize = layer_str.parse().ok()?;
    if layer.to_string() != layer_str {
        return None; // "+1", "01"
    }
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

/// The fields of `config.json` twain reads.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
}

fn parse_config(path: &Path, text: &str, vocab_size: usize) -> Result<ModelConfig, IoError> {
    let c: HfConfig = serde_json::from_str(text)
        .map_err(|e| IoError::malformed(path, format!("invalid config.json: {e}")))?;
    let req = |v: Option<usize>, key: &str| v.ok_or_else(|| IoError::key(path, key, "missing"));
    let arch = c
        .model_type
        .clone()
        .ok_or_else(|| IoError::key(path, "model_type", "missing"))?;
    if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2" | "qwen3") {
        return Err(IoError::unsupported(
            path,
            format!("model_type {arch:?} (supported: llama, mistral, qwen2, qwen3)"),
        ));
    }
    if let Some(act) = &c.hidden_act {
        if act != "silu" {
            return Err(IoError::unsupported(
                path,
                format!("hidden_act {act:?} (only silu)"),
            ));
        }
    }
    if c.mlp_bias == Some(true) {
        return Err(IoError::unsupported(path, "mlp_bias"));
    }
    let d_model = req(c.hidden_size, "hidden_size")?;
    let n_heads = req(c.num_attention_heads, "num_attention_heads")?;
    if n_heads == 0 {
        return Err(IoError::key(path, "num_attention_heads", "is 0"));
    }
    let head_dim = match c.head_dim {
        Some(h) => h,
        None if d_model % n_heads == 0 => d_model / n_heads,
        None => {
            return Err(IoError::key(
                path,
                "num_attention_heads",
                format!("{n_heads} heads do not divide hidden_size {d_model}"),
            ))
        }
    };
    let rope_scaling = match &c.rope_scaling {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let ty = v
                .get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(|t| t.as_str());
            match ty {
                Some("default") => None,
                Some("llama3") => {
                    let num = |k: &str| {
                        v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| {
                            IoError::key(
                                path,
                                format!("rope_scaling.{k}"),
                                "missing or not a number",
                            )
                        })
                    };
                    let orig = num("original_max_position_embeddings")?;
                    if !(orig >= 1.0 && orig <= u32::MAX as f64 && orig.fract() == 0.0) {
                        return Err(IoError::key(
                            path,
                            "rope_scaling.original_max_position_embeddings",
                            format!("{orig} is not a positive integer"),
                        ));
                    }
                    Some(RopeScaling {
                        factor: num("factor")? as f32,
                        low_freq_factor: num("low_freq_factor")? as f32,
                        high_freq_factor: num("high_freq_factor")? as f32,
                        original_context: orig as usize,
                    })
                }
                other => {
                    return Err(IoError::unsupported(
                        path,
                        format!("rope_scaling type {other:?} (supported: llama3)"),
                    ))
                }
            }
        }
    };
    let n_layers = req(c.num_hidden_layers, "num_hidden_layers")?;
    if n_layers > 1 << 20 {
        return Err(IoError::key(
            path,
            "num_hidden_layers",
            format!("{n_layers} is absurd"),
        ));
    }
    Ok(ModelConfig {
        qkv_bias: arch == "qwen2" || c.attention_bias == Some(true),
        qk_norm: arch == "qwen3",
        arch,
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
        head_dim,
        ffn_hidden: req(c.intermediate_size, "intermediate_size")?,
        vocab_size,
        context_length: req(c.max_position_embeddings, "max_position_embeddings")?,
        rope_theta: c.rope_theta.unwrap_or(10_000.0) as f32,
        rope_scaling,
        rope_layout: RopeLayout::HalfSplit,
        rms_eps: c.rms_norm_eps.unwrap_or(1e-6) as f32,
        tied_embeddings: c.tie_word_embeddings.unwrap_or(false),
        kv_source: (0..n_layers).collect(),
    })
}

fn read_text(path: &Path) -> Result<Option<String>, IoError> {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| IoError::malformed(path, "invalid UTF-8")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IoError::os(path, e)),
    }
}

/// Converts every tensor of one safetensors file to f32 under canonical names.
fn read_shard(
    path: &Path,
    wanted: Option<&BTreeSet<String>>,
    out: &mut BTreeMap<String, Tensor>,
) -> Result<(), IoError> {
    let backing = Backing::map(path)?;
    let st = SafeTensors::deserialize(backing.bytes())
        .map_err(|e| IoError::malformed(path, format!("invalid safetensors file: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for hf in names {
        if let Some(w) = wanted {
            if !w.contains(&hf) {
                continue;
            }
        }
        if hf.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let canon = canonical_name(&hf).ok_or_else(|| {
            IoError::unsupported(
                path,
                format!("tensor {hf} (not part of a Llama-family decoder)"),
            )
        })?;
        let view = st
            .tensor(&hf)
            .map_err(|e| IoError::tensor(path, &hf, e.to_string()))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(IoError::tensor(
                    path,
                    &hf,
                    format!("dtype {other:?} (supported: F32, F16, BF16)"),
                ))
            }
        };
        let t = Tensor::from_f32(canon.clone(), view.shape().to_vec(), values)
            .map_err(|e| IoError::tensor(path, &hf, e.to_string()))?
            .with_source(path.to_path_buf());
        if out.insert(canon.clone(), t).is_some() {
            return Err(IoError::tensor(
                path,
                &hf,
                format!("a second tensor maps to {canon}"),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Loads a Hugging Face model directory; every tensor becomes owned f32.
pub(crate) fn load_hf_dir(dir: &Path) -> Result<LoadedModel, IoError> {
    let cfg_path = dir.join("config.json");
    let cfg_text = read_text(&cfg_path)?.ok_or_else(|| {
        IoError::malformed(dir, "no config.json: not a Hugging Face model directory")
    })?;
    let mut tensors = BTreeMap::new();
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    if single.is_file() {
        read_shard(&single, None, &mut tensors)?;
    } else if let Some(text) = read_text(&index_path)? {
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| IoError::malformed(&index_path, format!("invalid index: {e}")))?;
        let mut by_file: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (name, file) in &index.weight_map {
            let plain = !file.is_empty()
                && Path::new(file).file_name().and_then(|f| f.to_str()) == Some(file.as_str())
                && file != ".."
                && file != ".";
            if !plain {
                return Err(IoError::key(
                    &index_path,
                    name,
                    format!("shard file {file:?} is not a plain file name"),
                ));
            }
            by_file.entry(file).or_default().insert(name.clone());
        }
        for (file, names) in &by_file {
            let shard = dir.join(file);
            read_shard(&shard, Some(names), &mut tensors)?;
            for name in names {
                let found = name.ends_with("rotary_emb.inv_freq")
                    || canonical_name(name).is_some_and(|c| tensors.contains_key(&c));
                if !found {
                    return Err(IoError::MissingTensor {
                        path: shard,
                        tensor: name.clone(),
                    });
                }
            }
        }
    } else {
        return Err(IoError::malformed(
            dir,
            "no model.safetensors or model.safetensors.index.json",
        ));
    }
    let vocab_size = match tensors.get("token_embd.weight").map(|t| t.shape()) {
        Some([v, _]) => *v,
        Some(s) => {
            return Err(IoError::tensor(
                dir,
                "token_embd.weight",
                format!("shape {s:?} is not 2-D"),
            ))
        }
        None => {
            return Err(IoError::MissingTensor {
                path: dir.to_path_buf(),
                tensor: "token_embd.weight (model.embed_tokens.weight)".into(),
            })
        }
    };
    let config = parse_config(&cfg_path, &cfg_text, vocab_size)?;
    // Each layer has several tensors: more layers than tensors is absurd, and checking a
    // million missing layers one name at a time took seconds (found by fuzz/).
    if config.n_layers > tensors.len() {
        return Err(IoError::key(
            &cfg_path,
            "num_hidden_layers",
            format!(
                "{} layers but only {} tensors",
                config.n_layers,
                tensors.len()
            ),
        ));
    }
    if config.tied_embeddings {
        // Some tied checkpoints still store lm_head; it is the embedding table.
        tensors.remove("output.weight");
    }
    let tokenizer_json = read_text(&dir.join("tokenizer.json"))?;
    let mut chat_template = read_text(&dir.join("chat_template.jinja"))?;
    if chat_template.is_none() {
        let tc_path = dir.join("tokenizer_config.json");
        if let Some(text) = read_text(&tc_path)? {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| IoError::malformed(&tc_path, format!("invalid JSON: {e}")))?;
            chat_template = match v.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(list)) => {
                    let pick = list
                        .iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .or_else(|| list.first());
                    pick.and_then(|t| t.get("template"))
                        .and_then(|t| t.as_str())
                        .map(String::from)
                }
                Some(_) => {
                    return Err(IoError::key(
                        &tc_path,
                        "chat_template",
                        "not a string or a list",
                    ))
                }
            };
        }
    }
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer_json,
        chat_template,
        gguf: None,
        source: dir.to_path_buf(),
        provenance: BTreeMap::new(),
    })
}

/// The model directory a path inside a Hugging Face layout belongs to.
pub(crate) fn hf_dir_of(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return path
            .join("config.json")
            .is_file()
            .then(|| path.to_path_buf());
    }
    let parent = path.parent()?;
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    parent
        .join("config.json")
        .is_file()
        .then(|| parent.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[test]
    fn names_map_to_gguf_style() {
        let c = |s: &str| canonical_name(s);
        assert_eq!(
            c("model.layers.12.self_attn.q_proj.weight").as_deref(),
            Some("blk.12.attn_q.weight")
        );
        assert_eq!(
            c("model.layers.0.self_attn.v_proj.bias").as_deref(),
            Some("blk.0.attn_v.bias")
        );
        assert_eq!(
            c("model.layers.1.self_attn.k_norm.weight").as_deref(),
            Some("blk.1.attn_k_norm.weight")
        );
        assert_eq!(
            c("model.layers.1.mlp.down_proj.weight").as_deref(),
            Some("blk.1.ffn_down.weight")
        );
        assert_eq!(
            c("model.layers.1.post_attention_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(c("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(c("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(c("model.layers.+1.mlp.up_proj.weight"), None);
        assert_eq!(c("model.layers.1.mlp.up_proj.scales"), None);
        assert_eq!(c("vision.patch_embed.weight"), None);
    }
}
