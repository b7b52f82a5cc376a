//! Streaming snapshots of a partially generated value: each event carries
//! the value so far (strings growing, members appearing), the last one the
//! typed result.
//!
//! Run: `cargo run --release -p twain-examples --example snapshots`

use schemars::JsonSchema;
use serde::Deserialize;
use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::{GuidedOptions, TypedEvent};

/// A fictional character.
#[derive(Debug, Deserialize, JsonSchema)]
struct Character {
    /// Full name.
    #[schemars(length(max = 40))]
    name: String,
    /// Age in years.
    #[schemars(range(min = 1, max = 120))]
    age: u8,
    /// Three character traits.
    #[schemars(length(min = 3, max = 3))]
    traits: Vec<String>,
    /// A one-sentence backstory.
    #[schemars(length(max = 160))]
    backstory: String,
}

/// The same with every member optional: what a snapshot can be read as.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct PartialCharacter {
    name: Option<String>,
    age: Option<u8>,
    traits: Option<Vec<String>>,
    backstory: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::load(
        default_model_path(DEFAULT_PRESET, None)?,
        LoadOptions::default(),
    )?;
    let mut session = engine.session();
    for event in
        session.stream_as::<Character>("Invent a pirate captain.", GuidedOptions::default())?
    {
        match event? {
            TypedEvent::Partial(snapshot) => {
                let partial: PartialCharacter = serde_json::from_value(snapshot)?;
                println!("{partial:?}");
            }
            TypedEvent::Complete(c) => println!(
                "\n{}, {}, {}: {}",
                c.name,
                c.age,
                c.traits.join(", "),
                c.backstory
            ),
        }
    }
    Ok(())
}
