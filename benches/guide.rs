//! Constrained decoding cost on the real SmolLM2 tokenizer (49 152 tokens):
//! building the vocabulary (once per tokenizer), compiling a matcher (once
//! per request), and the per-token mask + consume of guided generation,
//! replayed over realistic outputs (a mask computed at every token, none
//! skipped as forced, so this is the worst case per generated token).
//!
//! `cargo bench -p twain-benches --bench guide` runs criterion;
//! `cargo bench -p twain-benches --bench guide -- --table` prints the table
//! in docs/benchmarks.md (best of 15 replays).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use serde_json::{json, Value};
use twain::engine::TextTokenizer;
use twain::guide::{Constraint, Vocabulary};
use twain::Tokenize;

struct Case {
    name: &'static str,
    constraint: Constraint,
    output: &'static str,
}

fn book_schema() -> Value {
    json!({
        "$defs": {"Author": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}}, "required": ["name"], "additionalProperties": false}},
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "authors": {"type": "array", "items": {"$ref": "#/$defs/Author"}, "minItems": 1, "maxItems": 2},
            "year": {"type": "integer", "minimum": 1450, "maximum": 2025},
            "genre": {"enum": ["Fiction", "Science", "History", "Poetry"]},
            "summary": {"type": "string"},
            "rating": {"type": "number", "minimum": 0, "maximum": 5}
        },
        "required": ["title", "authors", "year", "genre", "summary"],
        "additionalProperties": false
    })
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "json_schema_book",
            constraint: Constraint::json_schema(book_schema()),
            output: r#"{"title": "The Old Man and the Sea", "authors": [{"name": "Ernest Hemingway"}], "year": 1952, "genre": "Fiction", "summary": "An aging Cuban fisherman struggles with a giant marlin far out in the Gulf Stream, and with himself.", "rating": 4.5}"#,
        },
        Case {
            name: "json_any_object",
            constraint: Constraint::json_schema(json!({"type": "object"})),
            output: r#"{"name": "Ada", "tags": ["math", "engines"], "born": 1815, "notes": {"first": true, "text": "Wrote the first published program."}}"#,
        },
        Case {
            name: "regex_date_list",
            constraint: Constraint::regex(r"([0-9]{4}-[0-9]{2}-[0-9]{2}, )*[0-9]{4}-[0-9]{2}-[0-9]{2}"),
            output: "2024-01-31, 2025-12-01, 1999-07-04",
        },
        Case {
            name: "lark_arithmetic",
            constraint: Constraint::lark(
                "start: expr\nexpr: term ((\"+\" | \"-\") term)*\nterm: factor ((\"*\" | \"/\") factor)*\nfactor: NUMBER | \"(\" expr \")\"\nNUMBER: /[0-9]+/\n",
            ),
            output: "(12+7)*3-42/(6+1)",
        },
    ]
}

fn setup() -> (Arc<Vocabulary>, Arc<dyn Tokenize>) {
    let path = twain_io::fetch::ensure_default_gguf()
        .unwrap_or_else(|e| panic!("this bench needs SmolLM2-135M-Instruct: {e}"));
    let loaded = twain_io::load_model(&path).expect("load the GGUF");
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&loaded).expect("tokenizer");
    let engine_vocab = tokenizer.vocab_size();
    let tokenizer: Arc<dyn Tokenize> = Arc::new(TextTokenizer(tokenizer));
    let t = Instant::now();
    let vocab =
        twain::guided::build_vocabulary(&tokenizer, engine_vocab, &[2]).expect("vocabulary");
    eprintln!(
        "vocabulary of {engine_vocab} tokens built in {:.1?}",
        t.elapsed()
    );
    (vocab, tokenizer)
}

/// Replay `tokens` through a fresh matcher, computing the mask at every step.
fn replay(
    vocab: &Arc<Vocabulary>,
    case: &Case,
    tokens: &[u32],
    mask: &mut twain::sample::TokenMask,
) {
    let mut m = vocab.matcher(&case.constraint).expect("compile");
    for &t in tokens {
        m.fill_mask(mask).expect("mask");
        debug_assert!(mask.is_allowed(t));
        m.consume(t).expect("consume");
    }
    m.fill_mask(mask).expect("final mask");
    assert!(m.is_accepting());
}

fn table(vocab: &Arc<Vocabulary>, tokenizer: &Arc<dyn Tokenize>) {
    println!("| constraint | tokens | compile | mask + consume per token (mean) | slowest step |");
    println!("|---|---:|---:|---:|---:|");
    let mut mask = vocab.new_mask();
    for case in cases() {
        let tokens = tokenizer.encode(case.output).expect("encode");
        let mut best_compile = Duration::MAX;
        let mut best_total = Duration::MAX;
        let mut best_max = Duration::MAX;
        for _ in 0..15 {
            let t = Instant::now();
            let mut m = vocab.matcher(&case.constraint).expect("compile");
            best_compile = best_compile.min(t.elapsed());
            let mut total = Duration::ZERO;
            let mut slowest = Duration::ZERO;
            for &tok in &tokens {
                let t = Instant::now();
                m.fill_mask(&mut mask).expect("mask");
                assert!(
                    mask.is_allowed(tok),
                    "{}: token {tok} not allowed",
                    case.name
                );
                m.consume(tok).expect("consume");
                let d = t.elapsed();
                total += d;
                slowest = slowest.max(d);
            }
            best_total = best_total.min(total);
            best_max = best_max.min(slowest);
        }
        println!(
            "| {} | {} | {:.0} us | {:.1} us | {:.0} us |",
            case.name,
            tokens.len(),
            best_compile.as_secs_f64() * 1e6,
            best_total.as_secs_f64() * 1e6 / tokens.len() as f64,
            best_max.as_secs_f64() * 1e6,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (vocab, tokenizer) = setup();
    if args.iter().any(|a| a == "--table") {
        table(&vocab, &tokenizer);
        return;
    }
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let mut mask = vocab.new_mask();
    for case in cases() {
        let tokens = tokenizer.encode(case.output).expect("encode");
        c.bench_function(&format!("guide/compile/{}", case.name), |b| {
            b.iter(|| black_box(vocab.matcher(&case.constraint).expect("compile")))
        });
        c.bench_function(
            &format!("guide/replay_{}_tokens/{}", tokens.len(), case.name),
            |b| b.iter(|| replay(&vocab, &case, black_box(&tokens), &mut mask)),
        );
    }
    c.final_summary();
}
