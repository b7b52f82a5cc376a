//! Tool calling: the model picks a tool and its arguments under a JSON
//! schema (so both are always valid), the session runs it and feeds the
//! output back until the model answers. One of the two tools fails; by
//! default its error is reported to the model.
//!
//! Run: `cargo run --release -p twain-examples --example tools -- "What's the weather in Lisbon?"`

use schemars::JsonSchema;
use serde::Deserialize;
use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::tools::{DynTool, Tool, ToolError, ToolOptions};

/// Arguments of `get_weather`.
#[derive(Deserialize, JsonSchema)]
struct WeatherArgs {
    /// The city.
    #[schemars(length(min = 1, max = 40))]
    city: String,
}

struct Weather;

impl Tool for Weather {
    type Args = WeatherArgs;
    fn name(&self) -> &str {
        "get_weather"
    }
    fn description(&self) -> &str {
        "The current weather in a city."
    }
    fn call(&self, args: WeatherArgs) -> Result<String, ToolError> {
        Ok(format!("Sunny, 23 C in {}.", args.city))
    }
}

/// Arguments of `book_flight`.
#[derive(Deserialize, JsonSchema)]
struct FlightArgs {
    /// Destination airport code, like LIS.
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    to: String,
}

struct BookFlight;

impl Tool for BookFlight {
    type Args = FlightArgs;
    fn name(&self) -> &str {
        "book_flight"
    }
    fn description(&self) -> &str {
        "Book a flight to an airport."
    }
    fn call(&self, args: FlightArgs) -> Result<String, ToolError> {
        Err(ToolError::new(format!("no seats left to {}", args.to)))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What's the weather in Lisbon?".into());
    let engine = Engine::load(
        default_model_path(DEFAULT_PRESET, None)?,
        LoadOptions::default(),
    )?;
    let mut session = engine.session();
    let tools: [&dyn DynTool; 2] = [&Weather, &BookFlight];
    let response = session.respond_with_tools(
        &prompt,
        &tools,
        ToolOptions::default().answer_when_exhausted(true),
    )?;
    for call in &response.calls {
        println!(
            "called {}({}) -> {:?}",
            call.tool, call.arguments, call.output
        );
    }
    println!("answer: {}", response.answer);
    Ok(())
}
