//! Typed (guided) generation: ask the default model for a Rust value. The
//! type's JSON schema (doc comments become descriptions) constrains every
//! token, so the answer always deserializes.
//!
//! Run: `cargo run --release -p twain-examples --example typed -- "A hearty winter soup."`

use schemars::JsonSchema;
use serde::Deserialize;
use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::GuidedOptions;

/// A recipe.
#[derive(Debug, Deserialize, JsonSchema)]
struct Recipe {
    /// The dish.
    #[schemars(length(max = 40))]
    name: String,
    /// Two to five ingredients.
    #[schemars(length(min = 2, max = 5))]
    ingredients: Vec<Ingredient>,
    /// Preparation time in minutes.
    #[schemars(range(min = 1, max = 240))]
    minutes: u16,
    /// How hard it is.
    difficulty: Difficulty,
}

/// One ingredient.
#[derive(Debug, Deserialize, JsonSchema)]
struct Ingredient {
    /// What it is.
    #[schemars(length(max = 30))]
    name: String,
    /// How much, in grams.
    #[schemars(range(min = 1, max = 2000))]
    grams: u32,
}

/// Difficulty.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Difficulty {
    Easy,
    Medium,
    Hard,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "A hearty winter soup.".into());
    let engine = Engine::load(
        default_model_path(DEFAULT_PRESET, None)?,
        LoadOptions::default(),
    )?;
    let mut session = engine.session();
    let recipe: Recipe = session.respond_as(&prompt, GuidedOptions::default())?;
    println!(
        "{} ({:?}, {} min)",
        recipe.name, recipe.difficulty, recipe.minutes
    );
    for i in &recipe.ingredients {
        println!("  {} g {}", i.grams, i.name);
    }
    Ok(())
}
