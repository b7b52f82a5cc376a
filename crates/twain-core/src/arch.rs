//! What a [`ModelConfig`] means: the checks a config must pass and the
//! tensors (names and shapes) a model with it has. The file readers in
//! twain-io fill a `ModelConfig` in and check file-level facts only (that
//! the bytes are there, in a known type); everything about the architecture
//! is checked here, once, whatever the file format.

use std::collections::BTreeMap;

use twain_io::Tensor;

use crate::{CoreError, KvPlan, ModelConfig};

/// Largest size accepted for any hyperparameter (keeps products of two far
/// from overflow).
pub const MAX_DIM: usize = 1 << 24;

/// Check a config for the consistency the forward pass relies on (sizes
/// positive and bounded, GQA divisibility, even head size, finite positive
/// RoPE base and epsilon, a valid Llama-3 scaling, a valid KV plan) and
/// return its [`KvPlan`]. The error names the config key.
pub fn validate_config(c: &ModelConfig) -> Result<KvPlan, CoreError> {
    let bad = |key: &str, what: String| Err(CoreError::Config(format!("{key}: {what}")));
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
            return bad(key, format!("{v} is out of range (1..={MAX_DIM})"));
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
    KvPlan::from_sources(c.kv_source.clone()).map_err(|e| match e {
        CoreError::Config(m) => CoreError::Config(format!("kv_source: {m}")),
        e => e,
    })
}

/// Every tensor a model with `config` and its `plan` has, with its
/// row-major shape, under the canonical names `twain_io::LoadedModel`
/// documents. Layers that read another layer's K/V have no
/// `attn_k`/`attn_v` (nor their biases or k-norm).
pub fn expected_tensors(c: &ModelConfig, plan: &KvPlan) -> Vec<(String, Vec<usize>)> {
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
        let owns_kv = plan.owns(i);
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

/// Check that `tensors` are a model with `config`: the config is valid,
/// every tensor it needs is present with its shape, and layers that read
/// another layer's K/V have no K/V weights of their own. Other tensors
/// (GGUF `rope_freqs.weight`, `rotation.*`) are allowed. Returns the plan.
pub fn check_tensors(
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<KvPlan, CoreError> {
    check_tensors_except(config, tensors, &[])
}

/// [`check_tensors`] for a model that leaves out the tensors named in
/// `omitted` on purpose (a shipped pack whose embedding table the user's
/// conversion makes, `twain_io::OMITTED_KEY`). Each omitted name must be one
/// the config has, and absent.
pub fn check_tensors_except(
    config: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
    omitted: &[String],
) -> Result<KvPlan, CoreError> {
    let plan = validate_config(config)?;
    let tensor = |name: &str, problem: String| CoreError::Tensor {
        name: name.to_string(),
        problem,
    };
    // Each layer has several tensors: more layers than tensors is absurd
    // (and bounds the list made below).
    if config.n_layers > tensors.len() + omitted.len() {
        return Err(CoreError::Config(format!(
            "n_layers: {} layers but only {} tensors",
            config.n_layers,
            tensors.len()
        )));
    }
    let expected = expected_tensors(config, &plan);
    for name in omitted {
        if !expected.iter().any(|(n, _)| n == name) {
            return Err(tensor(
                name,
                "listed as omitted but not a tensor of this model".into(),
            ));
        }
        if tensors.contains_key(name) {
            return Err(tensor(name, "listed as omitted but present".into()));
        }
    }
    for l in (0..config.n_layers).filter(|&l| !plan.owns(l)) {
        for name in KvPlan::kv_tensor_names(l) {
            if tensors.contains_key(&name) {
                return Err(tensor(
                    &name,
                    format!(
                        "layer {l} reads the K/V cache of layer {} (kv_source) and must not have its own K/V weights",
                        plan.source(l)
                    ),
                ));
            }
        }
    }
    for (name, shape) in expected {
        if omitted.contains(&name) {
            continue;
        }
        let t = tensors.get(&name).ok_or_else(|| {
            tensor(
                &name,
                "missing from the model file (the config requires it)".into(),
            )
        })?;
        if t.shape() != shape.as_slice() {
            return Err(tensor(
                &name,
                format!("expected shape {shape:?}, file has {:?}", t.shape()),
            ));
        }
    }
    Ok(plan)
}
