//! One model in memory, several independent sessions, each with its own
//! transcript and KV cache, used from two threads at once.
//!
//! Run: `cargo run --release -p twain-examples --example chat_sessions`

use std::thread;

use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::GenerateOptions;

fn main() -> Result<(), twain::Error> {
    let engine = Engine::load(
        default_model_path(DEFAULT_PRESET, None)?,
        LoadOptions::default(),
    )?;
    let handles: Vec<_> = ["What is 2 + 2?", "Name a color of the rainbow."]
        .into_iter()
        .map(|question| {
            let engine = engine.clone();
            thread::spawn(move || -> Result<String, twain::Error> {
                let mut s = engine.session();
                let (first, _) = s
                    .respond(question, GenerateOptions::default().max_tokens(40))?
                    .collect_text()?;
                let (second, _) = s
                    .respond(
                        "Say it again in one word.",
                        GenerateOptions::default().max_tokens(20),
                    )?
                    .collect_text()?;
                Ok(format!(
                    "Q: {question}\nA: {first}\nA2: {second}\n(cache: {} tokens, {} bytes)",
                    s.tokens().len(),
                    s.state().kv_bytes()
                ))
            })
        })
        .collect();
    for h in handles {
        println!("{}\n", h.join().expect("thread")?);
    }
    Ok(())
}
