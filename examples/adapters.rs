//! One frozen base in memory, two states each running its own LoRA adapter, the adapters
//! swapped between turns (the way feature adapters share one on-device base model).
//!
//! Run: `cargo run --release -p twain-examples --example adapters`
//! (a random 2-bit base with random adapters), or with your own files:
//! `cargo run --release -p twain-examples --example adapters -- MODEL ADAPTER1 ADAPTER2`
//! where MODEL is a GGUF / Hugging Face / native model and each ADAPTER a PEFT directory,
//! a GGUF LoRA or a native twain adapter.

use std::error::Error;
use std::sync::Arc;

use twain::Model;
use twain_adapters::{LoraAdapter, MODULES};
use twain_convert::synthetic::{self, SplitMix};
use twain_convert::Preset;
use twain_core::{LinearDelta, LoadedModel, State, Transformer, TransformerOptions};

/// A random rank-`r` adapter on Q, O and the FFN of every layer (like the reference
/// system's adapters on a KV-sharing block), alpha = 2r.
fn random_adapter(model: &Transformer, r: usize, seed: u64) -> Result<LoraAdapter, Box<dyn Error>> {
    let mut rng = SplitMix::new(seed);
    let mut ad = LoraAdapter::new();
    for l in 0..model.config().n_layers {
        for module in MODULES
            .iter()
            .filter(|m| !matches!(**m, "attn_k" | "attn_v"))
        {
            let name = format!("blk.{l}.{module}.weight");
            let Some((rows, cols)) = model.linear_shape(&name) else {
                continue;
            };
            let a = (0..r * cols)
                .map(|_| rng.uniform() / (cols as f32).sqrt())
                .collect();
            let b = (0..rows * r).map(|_| 0.5 * rng.uniform()).collect();
            ad.insert(&name, rows, cols, r, 2.0, a, b)?;
        }
    }
    Ok(ad)
}

fn greedy(
    model: &Transformer,
    state: &mut State,
    prompt: &[u32],
    n: usize,
) -> Result<Vec<u32>, Box<dyn Error>> {
    let mut logits = vec![0.0; model.info().vocab_size];
    model.forward(state, prompt, &mut logits)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0);
        out.push(next);
        model.forward(state, &[next], &mut logits)?;
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, adapters): (Transformer, [LoraAdapter; 2]) = if let [m, a1, a2] = &args[..] {
        let loaded: LoadedModel = twain_io::load_model(m)?;
        let config = loaded.config.clone();
        let model = Transformer::from_loaded(loaded, TransformerOptions::default())?;
        let a1 = LoraAdapter::load_for(a1, &config)?;
        let a2 = LoraAdapter::load_for(a2, &config)?;
        (model, [a1, a2])
    } else {
        // A 2-bit base with the reference system's KV-sharing plan (layers 5..8 read layer 4's cache).
        let mut config = synthetic::tiny_config(8);
        config.kv_source = twain_core::KvPlan::shared(8, 5, 3)?.sources().to_vec();
        let base = synthetic::random_model(&config, Preset::Afm, 7)?;
        let model = Transformer::from_loaded(base, TransformerOptions::default())?;
        let a1 = random_adapter(&model, 4, 1)?;
        let a2 = random_adapter(&model, 8, 2)?;
        // Round-trip one through twain's native adapter file.
        let path =
            std::env::temp_dir().join(format!("twain-example-{}.safetensors", std::process::id()));
        a2.write_native(&path)?;
        let a2 = LoraAdapter::load(&path)?;
        std::fs::remove_file(&path)?;
        (model, [a1, a2])
    };
    for (i, a) in adapters.iter().enumerate() {
        println!(
            "adapter {}: {} targets, {:.1} KiB, from {}",
            i + 1,
            a.len(),
            a.bytes() as f64 / 1024.0,
            if a.source().as_os_str().is_empty() {
                "memory".into()
            } else {
                a.source().display().to_string()
            }
        );
    }
    let adapters: [Arc<dyn LinearDelta>; 2] = adapters.map(|a| Arc::new(a) as Arc<dyn LinearDelta>);

    let prompt = [1u32, 2, 3, 4];
    let mut states = [model.new_state(), model.new_state()];
    let mut transcripts = [prompt.to_vec(), prompt.to_vec()];
    for turn in 0..3 {
        for (s, (state, transcript)) in states.iter_mut().zip(transcripts.iter_mut()).enumerate() {
            // Swap the adapters every turn: state 0 runs adapter 1 on even turns, 2 on odd ones.
            let which = (s + turn) % 2;
            // Setting an adapter clears the cache (it was computed with the other adapter's
            // projections), so the transcript is prefilled again.
            model.set_adapter(state, Some(adapters[which].clone()))?;
            let reply = greedy(&model, state, transcript, 6)?;
            println!(
                "turn {turn} state {s} adapter {}: {:?} (position {}, KV {} bytes)",
                which + 1,
                reply,
                state.position(),
                state.kv_bytes()
            );
            transcript.extend_from_slice(&reply);
        }
    }
    // The base alone, for comparison.
    let mut plain = model.new_state();
    println!("no adapter: {:?}", greedy(&model, &mut plain, &prompt, 6)?);
    Ok(())
}
