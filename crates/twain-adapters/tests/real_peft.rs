//! An adapter made by the real PEFT library (0.21) over a tiny random Llama
//! saved by transformers (5.24), against transformers' fp32 logits with and
//! without it. Fixtures: tests/fixtures/real_peft, written by
//! tests/fixtures/make_real_peft.py.

use std::path::PathBuf;
use std::sync::Arc;

use twain_adapters::LoraAdapter;
use twain_core::{KvDtype, LinearDelta, Transformer, TransformerOptions};
use twain_model::Model;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real_peft")
        .join(p)
}

fn logits(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn real_peft_adapter_matches_transformers_logits() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let ids: Vec<u32> = expected["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let base_logits = logits(&expected["base_logits"]);
    let adapted_logits = logits(&expected["adapted_logits"]);

    let loaded = twain_io::load_model(fixture("base")).expect("load the transformers checkpoint");
    let config = loaded.config.clone();
    let model =
        Transformer::from_loaded(loaded, TransformerOptions::default().kv_dtype(KvDtype::F32))
            .expect("build");

    let mut s = model.new_state();
    let base = model.forward_all(&mut s, &ids).unwrap();
    let d_base = max_diff(&base, &base_logits);
    assert!(
        d_base < 1e-4,
        "base logits differ from transformers by {d_base}"
    );

    let lora = LoraAdapter::load_for(fixture("adapter"), &config).expect("load the PEFT adapter");
    // The same adapter in llama.cpp's GGUF-LoRA form must give the same numbers.
    let gguf_bytes = lora.to_gguf_bytes(&config).unwrap();
    let gguf = twain_io::GgufFile::from_bytes("real_peft.lora.gguf", &gguf_bytes).unwrap();
    let mut from_gguf = LoraAdapter::from_gguf(&gguf).unwrap();
    from_gguf.adapt_to(&config).unwrap();
    let adapter: Arc<dyn LinearDelta> = Arc::new(lora);
    let mut s = model.new_state();
    model.set_adapter(&mut s, Some(adapter)).unwrap();
    let adapted = model.forward_all(&mut s, &ids).unwrap();
    let d_adapted = max_diff(&adapted, &adapted_logits);
    eprintln!("max |logit diff| vs transformers: base {d_base:.2e}, with the PEFT adapter {d_adapted:.2e}");
    assert!(
        d_adapted < 1e-4,
        "adapted logits differ from transformers+peft by {d_adapted}"
    );
    let mut s = model.new_state();
    model
        .set_adapter(&mut s, Some(Arc::new(from_gguf)))
        .unwrap();
    let via_gguf = model.forward_all(&mut s, &ids).unwrap();
    let d_gguf = max_diff(&via_gguf, &adapted_logits);
    assert!(
        d_gguf < 1e-4,
        "GGUF-LoRA form differs from transformers+peft by {d_gguf}"
    );
    // The adapter really changes the model.
    assert!(max_diff(&adapted_logits, &base_logits) > 1e-2);
}
