//! Tool calling on the real default model (SmolLM2-135M-Instruct, fetched
//! into the cache on first use; the tests fail, saying why, when it cannot
//! be): two tools, one of which always fails.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use twain::engine::Engine;
use twain::tools::{
    tool_turn_schema, DynTool, Tool, ToolChoice, ToolError, ToolErrorPolicy, ToolOptions,
};
use twain::{GuidedError, Role};

fn engine() -> &'static Engine {
    common::shared_q8()
}

/// Arguments of the weather tool.
#[derive(Debug, Deserialize, JsonSchema)]
struct WeatherArgs {
    /// The city.
    #[schemars(length(min = 1, max = 30))]
    city: String,
    /// Temperature unit.
    unit: Unit,
}

/// Celsius or Fahrenheit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Unit {
    Celsius,
    Fahrenheit,
}

#[derive(Default)]
struct Weather {
    calls: AtomicUsize,
}

impl Tool for Weather {
    type Args = WeatherArgs;
    fn name(&self) -> &str {
        "get_weather"
    }
    fn description(&self) -> &str {
        "The current weather in a city."
    }
    fn call(&self, args: WeatherArgs) -> Result<String, ToolError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let t = match args.unit {
            Unit::Celsius => "21 C",
            Unit::Fahrenheit => "70 F",
        };
        Ok(format!("Sunny and {t} in {}.", args.city))
    }
}

/// Arguments of the stock tool.
#[derive(Debug, Deserialize, JsonSchema)]
struct StockArgs {
    /// Ticker symbol, like AAPL.
    #[schemars(regex(pattern = r"^[A-Z]{1,5}$"))]
    ticker: String,
}

#[derive(Default)]
struct StockPrice {
    calls: AtomicUsize,
}

impl Tool for StockPrice {
    type Args = StockArgs;
    fn name(&self) -> &str {
        "stock_price"
    }
    fn description(&self) -> &str {
        "The latest price of a stock."
    }
    fn call(&self, args: StockArgs) -> Result<String, ToolError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err(ToolError::new(format!(
            "the market data service is down, no price for {}",
            args.ticker
        )))
    }
}

fn validate(schema: &Value, instance: &Value) {
    let v = jsonschema::validator_for(schema).expect("valid schema");
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{instance}: {errors:?}");
}

fn opts() -> ToolOptions {
    let mut o = ToolOptions::default();
    o.guided.generate.max_tokens = 120;
    o.guided.max_string_length = Some(200);
    o
}

#[test]
fn a_successful_call_feeds_its_output_back_and_the_model_answers() {
    let (weather, stock) = (Weather::default(), StockPrice::default());
    let tools: [&dyn DynTool; 2] = [&weather, &stock];
    let mut s = engine().session();
    let r = s
        .respond_with_tools(
            "What is the weather in Paris?",
            &tools,
            opts()
                .first_choice(ToolChoice::Tool("get_weather".into()))
                .max_rounds(2)
                .answer_when_exhausted(true),
        )
        .unwrap();
    assert_eq!(r.calls[0].tool, "get_weather");
    validate(&weather.parameters(), &r.calls[0].arguments);
    assert!(r.calls[0].output.as_ref().unwrap().starts_with("Sunny"));
    assert_eq!(
        weather.calls.load(Ordering::Relaxed),
        r.calls.iter().filter(|c| c.tool == "get_weather").count()
    );
    // Transcript: user, assistant (call), tool (output), ..., assistant (answer).
    let t = s.transcript();
    assert_eq!(t[0].role, Role::User);
    assert_eq!(t[1].role, Role::Assistant);
    let call: Value = serde_json::from_str(&t[1].content).unwrap();
    assert_eq!(call["tool"], "get_weather");
    assert_eq!(t[2].role, Role::Tool);
    assert!(t[2].content.starts_with("Sunny"));
    let last: Value = serde_json::from_str(&t.last().unwrap().content).unwrap();
    assert_eq!(last["answer"].as_str(), Some(r.answer.as_str()));
    eprintln!("answer: {:?} after {:?}", r.answer, r.calls);
}

#[test]
fn a_failing_tool_is_reported_to_the_model_by_default() {
    let (weather, stock) = (Weather::default(), StockPrice::default());
    let tools: [&dyn DynTool; 2] = [&weather, &stock];
    let mut s = engine().session();
    let r = s
        .respond_with_tools(
            "What is Apple's stock price?",
            &tools,
            opts()
                .first_choice(ToolChoice::Tool("stock_price".into()))
                .max_rounds(2)
                .answer_when_exhausted(true),
        )
        .unwrap();
    assert_eq!(r.calls[0].tool, "stock_price");
    validate(&stock.parameters(), &r.calls[0].arguments);
    let err = r.calls[0].output.as_ref().unwrap_err();
    assert!(err.message.contains("market data service is down"));
    let tool_msg = &s.transcript()[2];
    assert_eq!(tool_msg.role, Role::Tool);
    assert!(
        tool_msg
            .content
            .starts_with("error: the market data service is down"),
        "{}",
        tool_msg.content
    );
    eprintln!("answer: {:?}", r.answer);
}

#[test]
fn a_failing_tool_is_a_typed_error_with_the_fail_policy() {
    let (weather, stock) = (Weather::default(), StockPrice::default());
    let tools: [&dyn DynTool; 2] = [&weather, &stock];
    let mut s = engine().session();
    match s.respond_with_tools(
        "What is Microsoft's stock price?",
        &tools,
        opts()
            .first_choice(ToolChoice::Tool("stock_price".into()))
            .on_error(ToolErrorPolicy::Fail),
    ) {
        Err(GuidedError::Tool { tool, error }) => {
            assert_eq!(tool, "stock_price");
            assert!(error.message.contains("no price for"));
        }
        other => panic!("expected a tool error, got {other:?}"),
    }
    assert_eq!(stock.calls.load(Ordering::Relaxed), 1);
    // The session is still usable.
    let (weather_ok, _) = (Weather::default(), ());
    let r = s
        .respond_with_tools(
            "And the weather in Rome?",
            &[&weather_ok as &dyn DynTool],
            opts().max_rounds(1).answer_when_exhausted(true),
        )
        .unwrap();
    assert!(r.calls.len() <= 1);
}

#[test]
fn rounds_are_bounded() {
    let (weather, stock) = (Weather::default(), StockPrice::default());
    let tools: [&dyn DynTool; 2] = [&weather, &stock];
    let mut s = engine().session();
    match s.respond_with_tools(
        "Weather in Oslo?",
        &tools,
        opts().first_choice(ToolChoice::Required).max_rounds(0),
    ) {
        Err(GuidedError::TooManyToolRounds { rounds: 0 }) => {}
        other => panic!("expected TooManyToolRounds, got {other:?}"),
    }
    // Free choice: whatever the model does, every call names a real tool with
    // valid arguments, and the turn ends in an answer or the round limit.
    for prompt in [
        "What's the weather like in Tokyo, in fahrenheit?",
        "Hello! How are you?",
    ] {
        let mut s = engine().session();
        match s.respond_with_tools(prompt, &tools, opts().max_rounds(2)) {
            Ok(r) => {
                for c in &r.calls {
                    let t = tools
                        .iter()
                        .find(|t| t.name() == c.tool)
                        .expect("a real tool");
                    validate(&t.parameters(), &c.arguments);
                }
                eprintln!("{prompt:?}: {:?} after {} calls", r.answer, r.calls.len());
            }
            Err(GuidedError::TooManyToolRounds { rounds: 2 }) => {
                eprintln!("{prompt:?}: round limit")
            }
            Err(e) => panic!("{prompt:?}: {e}"),
        }
    }
}

#[test]
fn the_turn_schema_is_valid_and_names_are_checked() {
    let (weather, stock) = (Weather::default(), StockPrice::default());
    let tools: [&dyn DynTool; 2] = [&weather, &stock];
    let schema = tool_turn_schema(&tools, &ToolChoice::Auto);
    jsonschema::validator_for(&schema).expect("a valid schema");
    validate(
        &schema,
        &serde_json::json!({"tool": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}),
    );
    validate(&schema, &serde_json::json!({"answer": "hi"}));
    assert!(jsonschema::validator_for(&schema)
        .unwrap()
        .iter_errors(&serde_json::json!({"tool": "nope", "arguments": {}}))
        .next()
        .is_some());
    let mut s = engine().session();
    let dup: [&dyn DynTool; 2] = [&weather, &weather];
    assert!(matches!(
        s.respond_with_tools("x", &dup, opts()),
        Err(GuidedError::Tools(_))
    ));
    assert!(matches!(
        s.respond_with_tools(
            "x",
            &tools,
            opts().first_choice(ToolChoice::Tool("nope".into()))
        ),
        Err(GuidedError::Tools(_))
    ));
    assert!(s.transcript().is_empty());
}
