//! Sessions over the real default model (SmolLM2-135M-Instruct, fetched into
//! the cache on first use; the test fails, saying why, when it cannot be).

mod common;

use twain::engine::Engine;
use twain::{EndReason, Error, GenerateOptions, Model};

fn engine(context: Option<usize>) -> Engine {
    common::load_q8(context)
}

#[test]
fn multi_turn_chat_reuses_the_cache_and_answers() {
    let engine = engine(None);
    let mut s = engine.session();
    let (a1, why) = s
        .respond(
            "What is the capital of France? Answer in one sentence.",
            GenerateOptions::default().max_tokens(24),
        )
        .unwrap()
        .collect_text()
        .unwrap();
    assert!(a1.contains("Paris"), "{a1:?}");
    assert!(matches!(why, EndReason::EndOfTurn | EndReason::MaxTokens));
    let before = s.state().tokens_processed();
    let held = s.tokens().len();
    let g = s
        .respond("And of Italy?", GenerateOptions::default().max_tokens(16))
        .unwrap();
    drop(g);
    let new_tokens = s.tokens().len() - held;
    let processed = s.state().tokens_processed() - before;
    // Only the tokens after the common prefix were run: at most the new turn
    // plus the re-tokenized tail of the previous answer.
    assert!(
        processed < 40,
        "processed {processed} tokens for a {new_tokens}-token turn"
    );
    assert!(held > 30);
    assert_eq!(s.transcript().len(), 4);
}

#[test]
fn passing_the_context_window_is_a_typed_error_and_the_session_survives() {
    let engine = engine(Some(64));
    assert_eq!(engine.model().info().context_length, 64);
    let mut s = engine.session();
    let long = "word ".repeat(80);
    match s.respond(&long, GenerateOptions::default()) {
        Err(Error::ExceededContextWindow { needed, limit: 64 }) => assert!(needed > 64),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a prompt of 80+ tokens must not fit 64"),
    }
    assert!(s.transcript().is_empty());
    let (text, _) = s
        .respond("Hi", GenerateOptions::default().max_tokens(5))
        .unwrap()
        .collect_text()
        .unwrap();
    assert!(!text.is_empty());
}

#[test]
fn a_session_swaps_adapters_over_one_base() {
    let engine = engine(None);
    let lora = common::random_ffn_down_lora(&engine, 1);
    let q = "What is the capital of France?";
    let opts = || GenerateOptions::default().max_tokens(12);
    let mut plain = engine.session();
    let (base_answer, _) = plain.respond(q, opts()).unwrap().collect_text().unwrap();

    let mut s = engine.session();
    s.set_adapter(Some(lora.clone())).unwrap();
    let (adapted, _) = s.respond(q, opts()).unwrap().collect_text().unwrap();
    assert_ne!(
        adapted, base_answer,
        "a strong adapter must change the answer"
    );
    // `reset` forgets the conversation, not the adapter.
    s.reset();
    assert!(s.state().adapter().is_some());
    let (after_reset, _) = s.respond(q, opts()).unwrap().collect_text().unwrap();
    assert_eq!(after_reset, adapted);
    // Switch back to the base between turns: the cache is rebuilt, the answer is the base's.
    s.set_adapter(None).unwrap();
    s.reset();
    let (again, _) = s.respond(q, opts()).unwrap().collect_text().unwrap();
    assert_eq!(again, base_answer);
    // The other session was never affected.
    assert!(plain.state().adapter().is_none());
}
