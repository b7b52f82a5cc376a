//! The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF), fetched into the cache by
//! `fetch::ensure_default_gguf` when missing. Fails (never skips) when it cannot be had.

use std::path::PathBuf;
use twain_io::{fetch, load_model, GgmlType, GgufFile};
use twain_model::RopeLayout;

fn model_path() -> PathBuf {
    match fetch::ensure_default_gguf() {
        Ok(p) => p,
        Err(e) => panic!(
            "the default model is needed for this test and could not be fetched: {e}\n\
             (set TWAIN_CACHE_DIR to a directory holding {} to run offline)",
            fetch::DEFAULT_GGUF_NAME
        ),
    }
}

#[test]
fn smollm2_loads_with_the_right_config() {
    let path = model_path();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    let count = |t: GgmlType| g.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::F32),
            count(GgmlType::Q8_0)
        ),
        (210, 61, 1)
    );
    assert_eq!(
        g.get("tokenizer.ggml.model").unwrap().as_str(),
        Some("gpt2")
    );
    assert_eq!(
        g.get("tokenizer.ggml.merges")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        48900
    );

    let m = load_model(&path).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, "llama");
    assert_eq!(c.n_layers, 30);
    assert_eq!(c.d_model, 576);
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!(c.ffn_hidden, 1536);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.context_length, 8192);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rms_eps, 1e-5);
    assert!(c.tied_embeddings);
    assert_eq!(c.rope_layout, RopeLayout::Interleaved);
    assert!(!c.qk_norm && !c.qkv_bias);
    assert_eq!(c.kv_source, (0..30).collect::<Vec<_>>());
    assert_eq!(m.tensors.len(), 272);
    assert!(m.chat_template.as_deref().unwrap().contains("<|im_start|>"));

    // Values dequantized by gguf-py (fixtures/make_fixtures.py) at sampled positions.
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_samples.json"),
    )
    .unwrap();
    let samples: serde_json::Value = serde_json::from_str(&text).unwrap();
    let samples = samples.as_object().unwrap();
    assert!(samples.len() >= 4);
    for (name, s) in samples {
        let t = m.tensor(name).unwrap();
        let cols = *t.shape().last().unwrap();
        let v = t.as_f32_slice().unwrap();
        for p in s["samples"].as_array().unwrap() {
            let (r, col, want) = (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
                p[2].as_f64().unwrap(),
            );
            let got = v[r * cols + col] as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{name}[{r},{col}]: twain {got}, gguf-py {want}"
            );
        }
    }
}
