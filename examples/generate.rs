//! Generate from the default model (SmolLM2-135M-Instruct, fetched and
//! converted on first use) through the library API, streaming the text.
//!
//! Run: `cargo run --release -p twain-examples --example generate -- "Why is the sky blue?"`

use std::io::Write;

use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::{Event, GenerateOptions, Sampler};

fn main() -> Result<(), twain::Error> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Why is the sky blue?".into());
    let path = default_model_path(DEFAULT_PRESET, None)?;
    let engine = Engine::load(&path, LoadOptions::default())?;
    let mut session = engine.session().with_system("You are a concise assistant.");
    session.set_sampler(
        Sampler::builder()
            .temperature(0.7)
            .top_p(0.9)
            .seed(1)
            .build()?,
    );
    let mut out = std::io::stdout().lock();
    for event in session.respond(&prompt, GenerateOptions::default().max_tokens(128))? {
        if let Event::Text(t) = event? {
            write!(out, "{t}").ok();
            out.flush().ok();
        }
    }
    writeln!(out).ok();
    Ok(())
}
