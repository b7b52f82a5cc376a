//! Sessions and streaming over a scripted model: UTF-8-safe text pieces,
//! stop sequences that never leak, cache reuse across turns (counted), the
//! context-window error, cancellation and max tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use twain::{
    BoxError, CancelFlag, ChatMl, EndReason, Error, Event, GenerateOptions, Model, ModelError,
    ModelInfo, Role, Session, TokenId, Tokenize,
};

const EOT: TokenId = 1000;
const FIRST: TokenId = 256;

/// Answers every prompt with the script's tokens (ids 256..) then EOT, and
/// counts the tokens it runs forward over.
struct Scripted {
    info: ModelInfo,
    script_len: u32,
    processed: AtomicUsize,
}

impl Scripted {
    fn new(script_len: usize, context: usize) -> Self {
        let mut info = ModelInfo::new("scripted", 1024, context);
        info.special.eot = Some(EOT);
        Self {
            info,
            script_len: script_len as u32,
            processed: AtomicUsize::new(0),
        }
    }
    fn processed(&self) -> usize {
        self.processed.load(Ordering::SeqCst)
    }
}

impl Model for Scripted {
    type State = Vec<TokenId>;
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn new_state(&self) -> Self::State {
        Vec::new()
    }
    fn forward(
        &self,
        s: &mut Vec<TokenId>,
        t: &[TokenId],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        self.info.check_forward(s.len(), t, logits.len())?;
        self.processed.fetch_add(t.len(), Ordering::SeqCst);
        s.extend_from_slice(t);
        let last = *t.last().unwrap();
        let next = if last < FIRST {
            FIRST
        } else if last + 1 < FIRST + self.script_len {
            last + 1
        } else {
            EOT
        };
        logits.fill(0.0);
        logits[next as usize] = 5.0;
        Ok(())
    }
    fn position(&self, s: &Vec<TokenId>) -> usize {
        s.len()
    }
    fn truncate(&self, s: &mut Vec<TokenId>, len: usize) -> Result<(), ModelError> {
        if len > s.len() {
            return Err(ModelError::TruncateBeyondEnd {
                len,
                position: s.len(),
            });
        }
        s.truncate(len);
        Ok(())
    }
}

/// Bytes for text; ids 256.. stand for the script's byte chunks.
struct Chunks(Vec<Vec<u8>>);

impl Tokenize for Chunks {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, BoxError> {
        Ok(text.bytes().map(TokenId::from).collect())
    }
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, BoxError> {
        if id < FIRST {
            Ok(vec![id as u8])
        } else {
            self.0
                .get((id - FIRST) as usize)
                .cloned()
                .ok_or_else(|| format!("no token {id}").into())
        }
    }
}

fn session(chunks: Vec<Vec<u8>>, context: usize) -> Session<Arc<Scripted>> {
    let model = Arc::new(Scripted::new(chunks.len(), context));
    Session::new(model, Arc::new(Chunks(chunks)), Arc::new(ChatMl))
}

fn events(s: &mut Session<Arc<Scripted>>, msg: &str, opts: GenerateOptions) -> Vec<Event> {
    s.respond(msg, opts).unwrap().map(|e| e.unwrap()).collect()
}

fn texts(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| {
            if let Event::Text(t) = e {
                Some(t.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn text_pieces_are_valid_utf8_when_characters_span_tokens() {
    let answer = "héllo 👍🏽 日本";
    let chunks: Vec<Vec<u8>> = answer.as_bytes().chunks(1).map(|c| c.to_vec()).collect();
    let mut s = session(chunks, 4096);
    let ev = events(&mut s, "hi", GenerateOptions::default());
    let pieces = texts(&ev);
    // every piece is a whole string of characters (String guarantees UTF-8)
    assert!(pieces.len() > 5);
    assert_eq!(pieces.concat(), answer);
    assert_eq!(ev.last(), Some(&Event::End(EndReason::EndOfTurn)));
    assert_eq!(s.transcript().last().unwrap().content, answer);
}

#[test]
fn stop_sequence_spanning_tokens_never_leaks() {
    let chunks = vec![
        b"The answer".to_vec(),
        b" is 4".to_vec(),
        b"2.\nQ".to_vec(),
        b"uestion: more".to_vec(),
    ];
    let mut s = session(chunks, 4096);
    let opts = GenerateOptions::default().stop(vec!["\nQuestion:".into()]);
    let ev = events(&mut s, "q", opts);
    let text = texts(&ev).concat();
    assert_eq!(text, "The answer is 42.");
    assert_eq!(
        ev.last(),
        Some(&Event::End(EndReason::StopSequence("\nQuestion:".into())))
    );
    for t in texts(&ev) {
        assert!(!t.contains('Q'), "piece {t:?} leaks the stop sequence");
    }
}

#[test]
fn each_turn_prefills_only_new_tokens() {
    let chunks = vec![b"ok".to_vec()];
    let mut s = session(chunks, 4096);
    let model = s.model().clone();
    events(&mut s, "first question", GenerateOptions::default());
    let after_first = model.processed();
    let held_before = s.tokens().to_vec();
    // What the second turn's prompt will be:
    let rendered = twain::ChatFormat::render(
        &ChatMl,
        &[
            twain::Message::new(Role::User, "first question"),
            twain::Message::new(Role::Assistant, "ok"),
            twain::Message::new(Role::User, "second"),
        ],
        true,
    )
    .unwrap();
    let prompt2: Vec<TokenId> = rendered.bytes().map(TokenId::from).collect();
    let common = held_before
        .iter()
        .zip(&prompt2)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(common > 10, "the first turn's tokens must be reused");
    let mut g = s.respond("second", GenerateOptions::default()).unwrap();
    // prefill done: exactly the new tokens were processed
    assert_eq!(model.processed() - after_first, prompt2.len() - common);
    assert!(g.next().is_some());
    drop(g);
    assert_eq!(s.transcript().len(), 4);
}

#[test]
fn exceeding_the_context_window_is_a_typed_error_and_the_session_stays_usable() {
    let mut s = session(vec![b"fine".to_vec()], 200);
    events(&mut s, "short", GenerateOptions::default());
    let transcript = s.transcript().to_vec();
    let long = "x".repeat(300);
    match s.respond(&long, GenerateOptions::default()) {
        Err(Error::ExceededContextWindow { needed, limit: 200 }) => assert!(needed > 300),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("must fail"),
    }
    assert_eq!(s.transcript(), &transcript[..]);
    let ev = events(&mut s, "again", GenerateOptions::default());
    assert_eq!(texts(&ev).concat(), "fine");
}

#[test]
fn running_out_of_context_while_generating_is_an_error_not_a_panic() {
    let chunks: Vec<Vec<u8>> = (0..100).map(|_| b"a".to_vec()).collect();
    let mut s = session(chunks, 60);
    let g = s
        .respond("hi", GenerateOptions::default().max_tokens(1000))
        .unwrap();
    let results: Vec<_> = g.collect();
    assert!(matches!(
        results.last(),
        Some(Err(Error::ExceededContextWindow { .. }))
    ));
    // usable afterwards once the transcript is reset
    s.reset();
    assert!(s
        .respond("hi", GenerateOptions::default().max_tokens(3))
        .is_ok());
}

#[test]
fn max_tokens_and_cancel_end_the_stream() {
    let chunks: Vec<Vec<u8>> = (0..50).map(|i| format!("{i} ").into_bytes()).collect();
    let mut s = session(chunks, 4096);
    let ev = events(&mut s, "count", GenerateOptions::default().max_tokens(3));
    assert_eq!(texts(&ev).concat(), "0 1 2 ");
    assert_eq!(
        ev.iter().filter(|e| matches!(e, Event::Token(_))).count(),
        3
    );
    assert_eq!(ev.last(), Some(&Event::End(EndReason::MaxTokens)));

    let cancel = CancelFlag::new();
    let mut g = s
        .respond(
            "count",
            GenerateOptions::default()
                .max_tokens(100)
                .cancel(Some(cancel.clone())),
        )
        .unwrap();
    let mut n = 0;
    let mut reason = None;
    for e in g.by_ref() {
        match e.unwrap() {
            Event::Token(_) => {
                n += 1;
                if n == 5 {
                    cancel.cancel();
                }
            }
            Event::End(r) => reason = Some(r),
            Event::Text(_) => {}
        }
    }
    assert_eq!(n, 5);
    assert_eq!(reason, Some(EndReason::Cancelled));
}
