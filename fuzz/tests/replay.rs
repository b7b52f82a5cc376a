//! Replays `corpus/<target>/` through every fuzz target, then runs a seeded mutation loop
//! over the corpus, byte-wise and as JSON / GGUF-metadata trees (issue #21 item 10, docs/reliability.md). A panic, an input slower than
//! [`HANG`] or an allocation above [`HUGE`] fails the test, names the target and writes the
//! input to `target/fuzz-failures/`; add it to the corpus once the owning crate is fixed.
//!
//! `TWAIN_FUZZ_ITERS=<n>` changes the number of mutated inputs per target (default
//! [`DEFAULT_ITERS`]); `TWAIN_FUZZ_SEED=<n>` the mutation seed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twain_fuzz::mutate::{mutate_structured, Rng};
use twain_fuzz::{check_seed, seeds, target, TARGETS};

/// One input may take at most this long.
const HANG: Duration = Duration::from_secs(2);
/// No single allocation may ask for more (the inputs are a few KB).
const HUGE: usize = 1 << 30;
/// An input still running after this long is saved and the process exits (a real hang would
/// otherwise stall the test run forever).
const STUCK: Duration = Duration::from_secs(30);
/// Mutated inputs per target.
const DEFAULT_ITERS: usize = 1500;

/// Refuses (returns null for) any allocation above [`HUGE`] and records it, so a fallible
/// reservation fails and an infallible one aborts (with the input already saved).
struct Guard;

static HUGE_SEEN: AtomicUsize = AtomicUsize::new(0);
static ANY_HUGE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The input the current thread runs: (pointer, length, target-name pointer, length).
    static CURRENT: Cell<(usize, usize, usize, usize)> = const { Cell::new((0, 0, 0, 0)) };
}

// SAFETY: forwards every call to the system allocator; only refuses oversized requests.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HUGE {
            return huge(layout.size());
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HUGE {
            return huge(layout.size());
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HUGE {
            return huge(new_size);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Guard = Guard;

/// Records an oversized request and saves the current input (the process may abort next).
fn huge(size: usize) -> *mut u8 {
    HUGE_SEEN.store(size, Ordering::SeqCst);
    if !ANY_HUGE.swap(true, Ordering::SeqCst) {
        let (p, n, tp, tn) = CURRENT.with(Cell::get);
        if p != 0 {
            // SAFETY: `run_one` keeps the input and the target name alive while it runs
            // and clears CURRENT before they go.
            let (data, name) = unsafe {
                (
                    std::slice::from_raw_parts(p as *const u8, n),
                    std::str::from_utf8_unchecked(std::slice::from_raw_parts(tp as *const u8, tn)),
                )
            };
            let path = save_failure(name, "huge-alloc", data);
            eprintln!(
                "fuzz target {name}: allocation of {size} bytes; input saved to {}",
                path.display()
            );
        } else {
            eprintln!("fuzz: allocation of {size} bytes on a thread without an input");
        }
    }
    std::ptr::null_mut()
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/fuzz-failures")
        .to_path_buf()
}

/// Writes a failing input to `target/fuzz-failures/<target>-<kind>-<hash>` and returns the path.
fn save_failure(name: &str, kind: &str, data: &[u8]) -> PathBuf {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let dir = failures_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}-{kind}-{h:016x}"));
    let _ = std::fs::write(&path, data);
    path
}

/// The input a target runs now, for the watchdog.
type Running = Arc<Mutex<Option<(Instant, Vec<u8>, String)>>>;

/// Watches `running` until `done`: an input running longer than [`STUCK`] is saved and the
/// test process exits with a message naming it.
fn watchdog(name: &'static str, running: Running, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            let guard = running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, data, origin)) = guard.as_ref() {
                if t.elapsed() > STUCK {
                    let path = save_failure(name, "hang", data);
                    eprintln!(
                        "fuzz target {name}: {origin} still runs after {STUCK:?}; input saved to {}",
                        path.display()
                    );
                    std::process::exit(101);
                }
            }
        }
    });
}

/// Runs one input through a target: Err names what went wrong and where the input went.
fn run_one(
    name: &'static str,
    run: fn(&[u8]),
    data: &[u8],
    origin: &str,
    running: &Running,
) -> Result<(), String> {
    *running.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((Instant::now(), data.to_vec(), origin.to_string()));
    CURRENT.with(|c| {
        c.set((
            data.as_ptr() as usize,
            data.len(),
            name.as_ptr() as usize,
            name.len(),
        ))
    });
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| run(data)));
    let took = t.elapsed();
    CURRENT.with(|c| c.set((0, 0, 0, 0)));
    *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let kind = if r.is_err() {
        "panic"
    } else if ANY_HUGE.swap(false, Ordering::SeqCst) {
        "huge-alloc"
    } else if took > HANG {
        "hang"
    } else {
        return Ok(());
    };
    let path = save_failure(name, kind, data);
    Err(format!(
        "fuzz target {name}: {kind} on {origin} ({} bytes, {took:?}{}); input saved to {}",
        data.len(),
        if kind == "huge-alloc" {
            format!(", {} bytes asked", HUGE_SEEN.load(Ordering::SeqCst))
        } else {
            String::new()
        },
        path.display()
    ))
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Replays the corpus of `name` and fuzzes it; panics with every failure found.
fn fuzz(name: &'static str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let files = corpus(name);
    assert!(!files.is_empty(), "corpus/{name} is empty");
    let running: Running = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    watchdog(name, running.clone(), done.clone());
    let mut failures = Vec::new();
    for (file, data) in &files {
        if let Err(e) = run_one(
            name,
            t.run,
            data,
            &format!("corpus/{name}/{file}"),
            &running,
        ) {
            failures.push(e);
        }
    }
    let iters = env_usize("TWAIN_FUZZ_ITERS", DEFAULT_ITERS);
    let seed = env_usize("TWAIN_FUZZ_SEED", 0x5eed) as u64;
    let mut rng = Rng::new(
        seed ^ name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)),
    );
    let started = Instant::now();
    // Half of the mutations start from a valid seed (so tree mutations apply), half from
    // any corpus file.
    let valid: Vec<(String, Vec<u8>)> = seeds::seeds(name);
    for i in 0..iters {
        let (file, base) = if rng.one_in(2) && !valid.is_empty() {
            &valid[rng.below(valid.len())]
        } else {
            &files[rng.below(files.len())]
        };
        let (_, other) = &files[rng.below(files.len())];
        let input = mutate_structured(&mut rng, base, other);
        if let Err(e) = run_one(
            name,
            t.run,
            &input,
            &format!("mutation {i} of {file}"),
            &running,
        ) {
            failures.push(e);
            if failures.len() >= 8 {
                break;
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    eprintln!(
        "{name}: {} corpus files, {iters} mutations in {:?}",
        files.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_target_has_a_corpus_and_its_seeds_still_parse() {
    for t in TARGETS {
        let files = corpus(t.name);
        for (name, data) in seeds::seeds(t.name) {
            check_seed(t.name, &data).unwrap_or_else(|e| panic!("seed {}/{name}: {e}", t.name));
            // The committed seed is the generated one (rerun make_corpus after changing seeds).
            let committed = files.iter().find(|(f, _)| *f == name);
            assert!(
                committed.is_some_and(|(_, d)| *d == data),
                "corpus/{}/{name} differs from the generated seed: \
                 run `cargo run -p twain-fuzz --bin make_corpus`",
                t.name
            );
        }
    }
}

#[test]
fn fuzz_hf_folder() {
    fuzz("hf_folder");
}

#[test]
fn fuzz_peft_adapter() {
    fuzz("peft_adapter");
}

#[test]
fn fuzz_gguf_lora() {
    fuzz("gguf_lora");
}

#[test]
fn fuzz_tokenizer_json() {
    fuzz("tokenizer_json");
}

#[test]
fn fuzz_gguf_tokenizer() {
    fuzz("gguf_tokenizer");
}

#[test]
fn fuzz_chat_template() {
    fuzz("chat_template");
}

#[test]
fn fuzz_json_schema() {
    fuzz("json_schema");
}

#[test]
fn fuzz_gguf_model() {
    fuzz("gguf_model");
}
