//! Two chat sessions over one loaded default model, each with its own LoRA
//! adapter, swapped between turns without reloading the base. Pass PEFT /
//! GGUF-LoRA / native adapter paths, or run without arguments for two random
//! rank-8 adapters (they change the answers, not improve them).
//!
//! Run: `cargo run --release -p twain-examples --example session_adapters [-- ADAPTER1 ADAPTER2]`

use std::sync::Arc;

use twain::adapters::LoraAdapter;
use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::GenerateOptions;
use twain_core::{LinearDelta, Transformer};

fn random_adapter(
    model: &Transformer,
    seed: u64,
) -> Result<LoraAdapter, Box<dyn std::error::Error>> {
    let mut rng = twain_convert::synthetic::SplitMix::new(seed);
    let mut a = LoraAdapter::new();
    for l in 0..model.config().n_layers {
        let name = format!("blk.{l}.ffn_down.weight");
        let Some((rows, cols)) = model.linear_shape(&name) else {
            continue;
        };
        let av = (0..8 * cols).map(|_| 0.1 * rng.uniform()).collect();
        let bv = (0..rows * 8).map(|_| 0.1 * rng.uniform()).collect();
        a.insert(&name, rows, cols, 8, 2.0, av, bv)?;
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::load(
        default_model_path(DEFAULT_PRESET, None)?,
        LoadOptions::default(),
    )?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let adapters: Vec<Arc<dyn LinearDelta>> = if args.len() == 2 {
        vec![
            engine.load_adapter(&args[0])?,
            engine.load_adapter(&args[1])?,
        ]
    } else {
        vec![
            Arc::new(random_adapter(engine.model(), 1)?),
            Arc::new(random_adapter(engine.model(), 2)?),
        ]
    };
    let mut sessions = [engine.session(), engine.session()];
    let opts = || GenerateOptions::default().max_tokens(24);
    for (turn, question) in ["Name a fruit.", "Name a color."].into_iter().enumerate() {
        for (i, s) in sessions.iter_mut().enumerate() {
            // Session i uses adapter (i + turn) % 2: the adapters swap between turns.
            s.set_adapter(Some(adapters[(i + turn) % 2].clone()))?;
            let (answer, _) = s.respond(question, opts())?.collect_text()?;
            println!(
                "session {i}, turn {turn}, adapter {}: {answer}",
                (i + turn) % 2
            );
        }
    }
    // And without any adapter: the base model.
    sessions[0].set_adapter(None)?;
    let (answer, _) = sessions[0]
        .respond("Name an animal.", opts())?
        .collect_text()?;
    println!("session 0, base model: {answer}");
    Ok(())
}
