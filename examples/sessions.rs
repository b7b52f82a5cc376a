//! Aggregate decode throughput of several sessions over one shared model,
//! each on its own thread (issue #21 item 8, docs/benchmarks.md): total
//! tokens per second of wall time, and the CPU time the process used.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo run --release -p twain-examples --example sessions -- [MODEL|-] [SESSIONS] [TOKENS]`
//!
//! MODEL `-` (the default) is the default model at the default preset.

use std::time::Instant;

use twain::engine::{default_model_path, Engine, LoadOptions, DEFAULT_PRESET};
use twain::{Event, GenerateOptions};

/// User plus system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = f.get(11..13).map_or(0.0, |t| {
        t.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).map_or("-", String::as_str);
    let sessions: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let tokens: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let path = if model == "-" {
        default_model_path(DEFAULT_PRESET, None)?
    } else {
        model.into()
    };
    let engine = Engine::load(&path, LoadOptions::default())?;
    let topics = [
        "a dragon", "the sea", "a city", "a robot", "a garden", "winter", "a train", "music",
    ];
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..sessions)
            .map(|i| {
                let engine = &engine;
                let topic = topics[i % topics.len()];
                s.spawn(move || -> Result<usize, twain::Error> {
                    let mut session = engine.session();
                    let mut n = 0;
                    for event in session.respond(
                        &format!("Write a long story about {topic}."),
                        GenerateOptions::default().max_tokens(tokens),
                    )? {
                        if let Event::Token(_) = event? {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("session thread"))
            .collect::<Result<Vec<usize>, _>>()
    })?;
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let total: usize = counts.iter().sum();
    println!(
        "sessions {sessions}: {total} tokens in {wall:.2} s = {:.1} tok/s aggregate; CPU {cpu:.2} s ({:.2} cores)",
        total as f64 / wall,
        cpu / wall
    );
    Ok(())
}
