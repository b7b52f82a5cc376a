//! Soak test (issue #21 item 11): 16 sessions on 8 threads over one shared
//! model (`Arc<Transformer>`, the real default model SmolLM2-135M-Instruct,
//! fetched into the cache on first use; the test fails, saying why, when it
//! cannot be), for a bounded time.
//!
//! Every session runs a script of short turns mixing plain chat, typed
//! answers (`respond_as`), tool calls (`respond_with_tools`), cancellations
//! (a `CancelFlag` set from the event loop mid-generation), LoRA adapter
//! swaps (`Session::set_adapter`) and prompts that overflow the context.
//!
//! What can fail:
//! 1. each turn's greedy outcome (text, end reason, typed value, tool calls,
//!    error) and the transcript and tokens at the end of each round equal
//!    those of the same script run alone, single-threaded, on a fresh
//!    session (computed first);
//! 2. a failed turn (context overflow) is a typed error and leaves the
//!    transcript, the tokens and the model state exactly as they were, and
//!    the turns after a failed or cancelled one still equal the alone run;
//! 3. (Linux) the process RSS after all rounds exceeds that after the
//!    warm-up round by less than a bound derived from the KV caches.

mod common;

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use twain::engine::Engine;
use twain::guided::GuidedOptions;
use twain::tools::{DynTool, Tool, ToolChoice, ToolError, ToolOptions};
use twain::{
    CancelFlag, EndReason, Error, Event, GenerateOptions, GuidedError, Message, Session, TokenId,
    TypedEvent,
};
use twain_core::{LinearDelta, Transformer};

/// Sessions running at once.
const SESSIONS: usize = 16;
/// Threads they run on (each owns `SESSIONS / THREADS` sessions and
/// interleaves their turns).
const THREADS: usize = 8;
/// Distinct scripts; session `i` runs script `i % SCRIPTS`, so every script
/// runs in several sessions on different threads at the same time.
const SCRIPTS: usize = 4;
/// The context window the model is loaded with.
const CONTEXT: usize = 1024;
/// Rounds after the warm-up round: at least this many...
const MIN_ROUNDS: usize = 1;
/// ...and more while the soak time (from the start of the warm-up round)
/// lasts.
const SOAK_TIME: Duration = Duration::from_secs(25);
/// Memory slack on top of the KV bound: allocator arenas of 8 threads,
/// per-thread scratch, the guided matchers' state.
const RSS_SLACK: usize = 64 << 20;

type S = Session<Arc<Transformer>>;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| common::load_q8(Some(CONTEXT)))
}

/// A LoRA on every layer's `ffn_down`, strong enough to change answers
/// (as in `real_model.rs::a_session_swaps_adapters_over_one_base`).
fn adapter(engine: &Engine, seed: u64) -> Arc<dyn LinearDelta> {
    common::random_ffn_down_lora(engine, seed)
}

/// A city.
#[derive(Debug, Deserialize, JsonSchema)]
#[allow(dead_code)] // read through Debug
struct City {
    /// The city's name.
    name: String,
    /// The country it is in.
    country: String,
}

/// Arguments of `add`.
#[derive(Debug, Deserialize, JsonSchema)]
struct AddArgs {
    /// First term.
    a: i64,
    /// Second term.
    b: i64,
}

struct Add;

impl Tool for Add {
    type Args = AddArgs;
    fn name(&self) -> &str {
        "add"
    }
    fn description(&self) -> &str {
        "Add two integers."
    }
    fn call(&self, args: AddArgs) -> Result<String, ToolError> {
        args.a
            .checked_add(args.b)
            .map(|s| s.to_string())
            .ok_or(ToolError::new("overflow"))
    }
}

/// Which entry point an overflowing prompt goes through.
#[derive(Debug, Clone, Copy)]
enum Via {
    Chat,
    Typed,
    Tools,
}

#[derive(Debug, Clone)]
enum Turn {
    /// `respond` with a token budget.
    Chat(&'static str, usize),
    /// `respond_as::<City>`.
    Typed(&'static str),
    /// `respond_with_tools` with `add`.
    Tools(&'static str, ToolChoice),
    /// `respond`, cancelled from the event loop after this many tokens.
    CancelChat(&'static str, usize),
    /// `stream_as::<City>`, cancelled at the first partial value.
    CancelTyped(&'static str),
    /// A prompt longer than the context.
    Overflow(Via),
    /// `set_adapter` (index into the adapters, or none).
    Adapter(Option<usize>),
}

const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Name a primary color.",
    "What do bees make?",
    "How many legs does a spider have?",
];
const CITIES: [&str; 4] = [
    "A large city in Japan.",
    "The capital of Italy.",
    "A city in Brazil.",
    "A port city in Germany.",
];
const SUMS: [&str; 4] = [
    "What is 2 plus 3?",
    "Add 10 and 32.",
    "What is 7 + 8?",
    "Compute 100 plus 1.",
];

fn script(k: usize) -> Vec<Turn> {
    let vias = [Via::Chat, Via::Typed, Via::Tools];
    let choice = if k.is_multiple_of(2) {
        ToolChoice::Tool("add".into())
    } else {
        ToolChoice::Required
    };
    let mut body = vec![
        Turn::Chat(QUESTIONS[k % 4], 8),
        Turn::Overflow(vias[k % 3]),
        Turn::Typed(CITIES[k % 4]),
        Turn::CancelChat("Tell me a long story about a dragon.", 3),
        Turn::Tools(SUMS[k % 4], choice),
        Turn::Adapter(match k % 3 {
            0 => Some(0),
            1 => Some(1),
            _ => None,
        }),
        Turn::Overflow(vias[(k + 1) % 3]),
        Turn::Chat("Thanks. Say it in one word.", 6),
        Turn::CancelTyped(CITIES[(k + 1) % 4]),
        Turn::Chat("Goodbye.", 5),
    ];
    body.rotate_left(k % 3);
    let mut s = vec![Turn::Adapter(match k % 3 {
        0 => None,
        1 => Some(0),
        _ => Some(1),
    })];
    s.extend(body);
    s
}

fn guided_opts(max_tokens: usize) -> GuidedOptions {
    let mut o = GuidedOptions::max_tokens(max_tokens);
    o.max_string_length = Some(16);
    o
}

fn tool_opts(choice: ToolChoice) -> ToolOptions {
    let mut o = ToolOptions::default()
        .max_rounds(1)
        .first_choice(choice)
        .answer_when_exhausted(true);
    o.guided = guided_opts(40);
    o
}

/// What a session holds; a failed turn must leave all of it as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    transcript: Vec<Message>,
    tokens: Vec<TokenId>,
    position: usize,
    kv_bytes: usize,
    adapter: bool,
}

fn snapshot(s: &S) -> Snapshot {
    Snapshot {
        transcript: s.transcript().to_vec(),
        tokens: s.tokens().to_vec(),
        position: s.state().position(),
        kv_bytes: s.state().kv_bytes(),
        adapter: s.state().adapter().is_some(),
    }
}

fn is_overflow(e: &GuidedError) -> bool {
    matches!(
        e,
        GuidedError::Session(Error::ExceededContextWindow { limit: CONTEXT, .. })
    )
}

/// Run one turn; its outcome as text (every field that could differ).
fn run_turn(s: &mut S, turn: &Turn, adapters: &[Arc<dyn LinearDelta>]) -> String {
    match turn {
        Turn::Chat(q, n) => {
            let opts = GenerateOptions::default().max_tokens(*n);
            let (text, why) = s.respond(q, opts).unwrap().collect_text().unwrap();
            format!("chat {text:?} {why:?}")
        }
        Turn::Typed(q) => match s.respond_as::<City>(q, guided_opts(40)) {
            Ok(c) => format!("typed {c:?}"),
            Err(e) => format!("typed error {e}"),
        },
        Turn::Tools(q, choice) => {
            let tools: [&dyn DynTool; 1] = [&Add];
            match s.respond_with_tools(q, &tools, tool_opts(choice.clone())) {
                Ok(r) => format!("tools {r:?}"),
                Err(e) => format!("tools error {e}"),
            }
        }
        Turn::CancelChat(q, n) => {
            let cancel = CancelFlag::new();
            let opts = GenerateOptions::default()
                .max_tokens(64)
                .cancel(Some(cancel.clone()));
            let mut tokens = 0;
            let mut text = String::new();
            let mut why = None;
            for ev in s.respond(q, opts).unwrap() {
                match ev.unwrap() {
                    Event::Token(_) => {
                        tokens += 1;
                        if tokens == *n {
                            cancel.cancel();
                        }
                    }
                    Event::Text(t) => text.push_str(&t),
                    Event::End(r) => why = Some(r),
                }
            }
            assert_eq!(why, Some(EndReason::Cancelled), "{text:?}");
            assert_eq!(tokens, *n);
            format!("cancelled chat {text:?}")
        }
        Turn::CancelTyped(q) => {
            let cancel = CancelFlag::new();
            let mut opts = guided_opts(40);
            opts.generate.cancel = Some(cancel.clone());
            let mut partials = Vec::new();
            let mut end = None;
            for ev in s.stream_as::<City>(q, opts).unwrap() {
                match ev {
                    Ok(TypedEvent::Partial(v)) => {
                        partials.push(v);
                        cancel.cancel();
                    }
                    Ok(TypedEvent::Complete(c)) => end = Some(format!("complete {c:?}")),
                    Err(e) => end = Some(format!("{e}")),
                }
            }
            let end = end.unwrap();
            assert!(
                end.contains("Cancelled"),
                "the cancel flag must end the typed stream: {end}"
            );
            format!("cancelled typed {partials:?} {end}")
        }
        Turn::Overflow(via) => {
            let before = snapshot(s);
            let long = "word ".repeat(CONTEXT + 100);
            let err: GuidedError = match via {
                Via::Chat => match s.respond(&long, GenerateOptions::default()) {
                    Ok(_) => panic!("a prompt past the context must fail"),
                    Err(e) => e.into(),
                },
                Via::Typed => s.respond_as::<City>(&long, guided_opts(40)).unwrap_err(),
                Via::Tools => {
                    let tools: [&dyn DynTool; 1] = [&Add];
                    s.respond_with_tools(&long, &tools, tool_opts(ToolChoice::Auto))
                        .unwrap_err()
                }
            };
            assert!(is_overflow(&err), "{via:?}: wrong error {err}");
            // (2) A failed call leaves the session as it was.
            assert_eq!(snapshot(s), before, "{via:?} overflow changed the session");
            format!("overflow {via:?} {err}")
        }
        Turn::Adapter(a) => {
            s.set_adapter(a.map(|i| adapters[i].clone())).unwrap();
            format!("adapter {a:?}")
        }
    }
}

/// What one round of a script gives: every turn's outcome, then the
/// transcript and tokens it ends with.
#[derive(Debug, PartialEq)]
struct Round {
    outcomes: Vec<String>,
    transcript: Vec<Message>,
    tokens: Vec<TokenId>,
}

/// Resident set size in bytes.
#[cfg(target_os = "linux")]
fn rss_bytes() -> usize {
    // statm's fields are in pages; VmRSS in /proc/self/status is the same
    // number in kB, which needs no page size.
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    assert!(pages > 0);
    kb * 1024
}

/// Where the threads meet after the warm-up round, so RSS is measured
/// with every session warm. A thread that panics opens it for everyone
/// (no thread waits forever on one that failed).
#[derive(Default)]
struct Gate {
    /// (threads done with the warm-up, RSS measured, a thread panicked)
    state: Mutex<(usize, bool, bool)>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// A worker: warm-up done; wait until measured. False if another failed.
    fn arrive(&self) -> bool {
        let mut g = self.lock();
        g.0 += 1;
        self.cv.notify_all();
        while !g.1 && !g.2 {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        !g.2
    }
    /// The main thread: wait for every worker (or a failure).
    fn wait_all(&self, n: usize) {
        let mut g = self.lock();
        while g.0 < n && !g.2 {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
    fn measured(&self) {
        self.lock().1 = true;
        self.cv.notify_all();
    }
}

/// Opens the gate when its thread unwinds.
struct OnPanic<'a>(&'a Gate);

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().2 = true;
            self.0.cv.notify_all();
        }
    }
}

#[test]
fn sixteen_sessions_on_eight_threads_match_their_alone_runs() {
    let t0 = Instant::now();
    let engine = engine();
    let adapters = [adapter(engine, 1), adapter(engine, 2)];
    let scripts: Vec<Vec<Turn>> = (0..SCRIPTS).map(script).collect();
    let loaded = t0.elapsed();

    // The alone runs: each script on a fresh session, one at a time.
    let run_round = |s: &mut S, script: &[Turn]| Round {
        outcomes: script.iter().map(|t| run_turn(s, t, &adapters)).collect(),
        transcript: s.transcript().to_vec(),
        tokens: s.tokens().to_vec(),
    };
    let expected: Vec<Round> = scripts
        .iter()
        .map(|sc| run_round(&mut engine.session(), sc))
        .collect();
    let alone = t0.elapsed() - loaded;
    let mut longest = 0;
    for (k, r) in expected.iter().enumerate() {
        println!("script {k}: {} tokens held at the end", r.tokens.len());
        for o in &r.outcomes {
            println!("  {o}");
        }
        longest = longest.max(r.tokens.len());
    }
    // The scripts cover what they claim to: tool calls that ran, typed
    // values, adapters that change answers.
    let all: Vec<&String> = expected.iter().flat_map(|r| &r.outcomes).collect();
    assert!(all
        .iter()
        .any(|o| o.starts_with("tools ToolResponse") && o.contains("output: Ok(")));
    assert!(all.iter().any(|o| o.starts_with("typed City")));
    // Only the overflow prompts pass the context.
    assert!(longest + 64 < CONTEXT, "the scripts hold {longest} tokens");

    // 16 sessions on 8 threads: a warm-up round, then rounds until the soak
    // time is up; every round checked against the alone runs.
    let per_thread = SESSIONS / THREADS;
    let gate = Gate::default();
    let soak_start = Instant::now();
    let deadline = soak_start + SOAK_TIME;
    let (rss_warm, rss_end, rounds) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (gate, scripts, expected, adapters) = (&gate, &scripts, &expected, &adapters);
                scope.spawn(move || {
                    let _guard = OnPanic(gate);
                    let ids: Vec<usize> = (t * per_thread..(t + 1) * per_thread).collect();
                    let mut sessions: Vec<S> = ids.iter().map(|_| engine.session()).collect();
                    let mut round = 0;
                    loop {
                        // Interleave this thread's sessions turn by turn.
                        let mut outcomes = vec![Vec::new(); ids.len()];
                        let len = scripts[0].len();
                        for turn in 0..len {
                            for (j, &id) in ids.iter().enumerate() {
                                let sc = &scripts[id % SCRIPTS];
                                outcomes[j].push(run_turn(&mut sessions[j], &sc[turn], adapters));
                            }
                        }
                        for (j, &id) in ids.iter().enumerate() {
                            let got = Round {
                                outcomes: std::mem::take(&mut outcomes[j]),
                                transcript: sessions[j].transcript().to_vec(),
                                tokens: sessions[j].tokens().to_vec(),
                            };
                            let want = &expected[id % SCRIPTS];
                            for (turn, (g, w)) in
                                got.outcomes.iter().zip(&want.outcomes).enumerate()
                            {
                                assert_eq!(
                                    g,
                                    w,
                                    "session {id} (script {}), round {round}, turn {turn}: \
                                     differs from the alone run",
                                    id % SCRIPTS
                                );
                            }
                            assert_eq!(&got, want, "session {id}, round {round}");
                            sessions[j].reset();
                        }
                        round += 1;
                        if round == 1 && !gate.arrive() {
                            break round; // another thread failed; its panic is reported
                        }
                        if round > MIN_ROUNDS && Instant::now() >= deadline {
                            break round;
                        }
                    }
                })
            })
            .collect();
        gate.wait_all(THREADS);
        #[cfg(target_os = "linux")]
        let warm = rss_bytes();
        #[cfg(not(target_os = "linux"))]
        let warm = 0;
        gate.measured();
        let rounds: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        #[cfg(target_os = "linux")]
        let end = rss_bytes();
        #[cfg(not(target_os = "linux"))]
        let end = 0;
        (warm, end, rounds)
    });
    let soak = soak_start.elapsed();
    println!(
        "load {loaded:.1?}, alone runs {alone:.1?} ({SCRIPTS} scripts of {} turns), \
         soak {soak:.1?}: rounds per thread {rounds:?}",
        scripts[0].len()
    );

    // (3) Memory does not grow after the warm-up round: the caches are
    // allocated by then and reused after `reset`. The bound lets every
    // session's cache grow once more to the whole context, plus a slack.
    let kv_per_token = engine.model().kv_bytes_per_token();
    let bound = SESSIONS * CONTEXT * kv_per_token + RSS_SLACK;
    let growth = rss_end.saturating_sub(rss_warm);
    println!(
        "RSS after warm-up {:.1} MiB, after {} rounds {:.1} MiB, growth {:.1} MiB; \
         bound {:.1} MiB = {SESSIONS} sessions x {CONTEXT} tokens x {kv_per_token} B + {} MiB",
        rss_warm as f64 / 1048576.0,
        rounds.iter().min().unwrap(),
        rss_end as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        bound as f64 / 1048576.0,
        RSS_SLACK >> 20,
    );
    #[cfg(target_os = "linux")]
    assert!(
        growth < bound,
        "RSS grew by {growth} bytes after the warm-up round (bound {bound})"
    );
    #[cfg(not(target_os = "linux"))]
    println!("RSS is read from /proc on Linux only: the memory bound was not checked");
}
