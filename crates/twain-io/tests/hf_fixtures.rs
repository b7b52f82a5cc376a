//! Hugging Face directories written by fixtures/make_fixtures.py (numpy + the `safetensors`
//! package, BF16 by hand), checked against the values the script recorded.

use std::path::PathBuf;
use twain_io::{canonical_name, load_model, IoError};
use twain_model::{RopeLayout, RopeScaling};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("hf_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every tensor recorded by the script is present under its canonical name with the same
/// shape, first values and sum.
fn check_values(dir: &str, key: &str) {
    let m = load_model(fixture(dir)).unwrap();
    let exp = expected();
    let exp = exp[key].as_object().unwrap();
    for (hf, e) in exp {
        let canon = canonical_name(hf).unwrap();
        if m.config.tied_embeddings && canon == "output.weight" {
            continue;
        }
        let t = m.tensor(&canon).unwrap();
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape.as_slice(), "{canon}");
        let v = t.to_f32().unwrap();
        for (i, w) in e["first"].as_array().unwrap().iter().enumerate() {
            assert_eq!(v[i], w.as_f64().unwrap() as f32, "{canon}[{i}]");
        }
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        let want = e["sum"].as_f64().unwrap();
        assert!((sum - want).abs() < 1e-4, "{canon}: sum {sum} vs {want}");
    }
}

#[test]
fn llama3_single_file() {
    let m = load_model(fixture("hf_llama")).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, "llama");
    assert_eq!(
        (
            c.n_layers,
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_hidden,
            c.vocab_size
        ),
        (2, 32, 4, 2, 8, 64, 96)
    );
    assert_eq!(c.context_length, 512);
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.rope_layout, RopeLayout::HalfSplit);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192
        })
    );
    assert!(!c.tied_embeddings && !c.qkv_bias && !c.qk_norm);
    assert_eq!(m.tensor("output.weight").unwrap().shape(), &[96, 32]);
    assert_eq!(m.tensor("blk.1.attn_k.weight").unwrap().shape(), &[16, 32]);
    assert!(m.tokenizer_json.as_deref().unwrap().contains("BPE"));
    assert_eq!(
        m.chat_template.as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
    assert!(m.gguf.is_none());
    check_values("hf_llama", "hf_llama");
    // A path to a file in the directory works too.
    let m2 = load_model(fixture("hf_llama/model.safetensors")).unwrap();
    assert_eq!(m2.config, m.config);
}

#[test]
fn sharded_equals_single() {
    let a = load_model(fixture("hf_llama")).unwrap();
    let b = load_model(fixture("hf_llama_sharded")).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, t) in &a.tensors {
        assert_eq!(
            t.to_f32().unwrap(),
            b.tensors[name].to_f32().unwrap(),
            "{name}"
        );
    }
    check_values("hf_llama_sharded", "hf_llama");
}

#[test]
fn qwen2_has_biases() {
    let m = load_model(fixture("hf_qwen2")).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, "qwen2");
    assert!(c.qkv_bias && !c.qk_norm && !c.tied_embeddings);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.rms_eps, 1e-6);
    assert_eq!(m.tensor("blk.0.attn_q.bias").unwrap().shape(), &[16]);
    assert_eq!(m.tensor("blk.0.attn_k.bias").unwrap().shape(), &[8]);
    check_values("hf_qwen2", "hf_qwen2");
}

#[test]
fn qwen3_has_qk_norm_and_explicit_head_dim() {
    let m = load_model(fixture("hf_qwen3")).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, "qwen3");
    assert!(c.qk_norm && !c.qkv_bias && c.tied_embeddings);
    assert_eq!((c.head_dim, c.n_heads, c.d_model), (12, 2, 16));
    assert_eq!(m.tensor("blk.0.attn_q.weight").unwrap().shape(), &[24, 16]);
    assert_eq!(
        m.tensor("blk.0.attn_output.weight").unwrap().shape(),
        &[16, 24]
    );
    assert_eq!(m.tensor("blk.0.attn_k_norm.weight").unwrap().shape(), &[12]);
    assert!(!m.tensors.contains_key("output.weight"));
    assert_eq!(
        m.chat_template.as_deref(),
        Some("{{ messages[0]['content'] }}\n")
    );
    check_values("hf_qwen3", "hf_qwen3");
}

/// Copies a fixture directory to a scratch place for mutation.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("twain-io-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn broken_directories_name_the_problem() {
    // Missing shard tensor.
    let d = scratch_copy("hf_llama_sharded", "missing");
    let idx = d.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&idx).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["weight_map"]["model.layers.9.mlp.up_proj.weight"] =
        "model-00001-of-00002.safetensors".into();
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = load_model(&d).unwrap_err();
    assert!(
        matches!(e, IoError::MissingTensor { .. })
            && e.to_string().contains("model.layers.9.mlp.up_proj.weight"),
        "{e}"
    );
    // Shard path escaping the directory.
    v["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "../x.safetensors".into();
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = load_model(&d).unwrap_err().to_string();
    assert!(e.contains("not a plain file name"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();

    // Wrong shape in config.
    let d = scratch_copy("hf_qwen2", "shape");
    let cfg = d.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"intermediate_size\": 32", "\"intermediate_size\": 48");
    std::fs::write(&cfg, text).unwrap();
    // The reader checks file-level facts only: that the tensors are not a
    // model of this config is twain-core's check (crates/twain-core/tests/arch.rs).
    assert_eq!(load_model(&d).unwrap().config.ffn_hidden, 48);
    // Unsupported rope scaling.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"rope_scaling\": null",
        "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}",
    );
    std::fs::write(&cfg, text).unwrap();
    let e = load_model(&d).unwrap_err().to_string();
    assert!(e.contains("yarn"), "{e}");
    // Truncated safetensors.
    std::fs::write(
        &cfg,
        std::fs::read(fixture("hf_qwen2/config.json")).unwrap(),
    )
    .unwrap();
    let st = d.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_model(&d).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // No weights at all.
    std::fs::remove_file(&st).unwrap();
    let e = load_model(&d).unwrap_err().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
