//! Text the model writes itself, seeded: chat-formatted prompts of many
//! kinds and the model's sampled answers, in the chat template's own
//! rendering. Used as calibration data and as a second evaluation text
//! (with a different seed), so no outside text is ever needed: the data
//! files in crates/twain-convert/data were made with it (commands in
//! docs/quality.md).
//!
//! Run: `cargo run --release -p twain-examples --example selfgen -- GGUF calib|eval SEED TOKENS OUT.txt`
//! (the model runs at f32, with an f32 KV cache: the teacher itself).
//! `calib` draws subjects from the even entries of the list, `eval` from the
//! odd ones, so the two sets share no prompt.

use std::io::Write;

use twain::engine::{Engine, LoadOptions};
use twain::{Event, GenerateOptions, Sampler};
use twain_convert::synthetic::SplitMix;
use twain_convert::Preset;

const TASKS: &[&str] = &[
    "Explain in simple words",
    "Write a short story about",
    "Give three facts about",
    "Write a short poem about",
    "Summarize what you know about",
    "List the steps to learn about",
    "Describe a day in the life of someone who studies",
    "What are the pros and cons of",
    "Write a friendly email to a colleague about",
    "Answer as a teacher would: why does it matter to understand",
    "Write a dialogue between two friends about",
    "Give advice to a beginner interested in",
];

const SUBJECTS: &[&str] = &[
    "the ocean",
    "volcanoes",
    "bread baking",
    "the moon",
    "honey bees",
    "computers",
    "rivers",
    "chess",
    "gardening",
    "the weather",
    "music",
    "mountains",
    "trains",
    "the human heart",
    "forests",
    "recycling",
    "electricity",
    "birds",
    "mathematics",
    "a small village",
    "the desert",
    "friendship",
    "saving money",
    "cooking rice",
    "the solar system",
    "learning a language",
    "painting",
    "bicycles",
    "sleep",
    "water",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: selfgen GGUF calib|eval SEED TOKENS OUT.txt";
    let gguf = args.get(1).ok_or(usage)?;
    let parity = match args.get(2).map(String::as_str) {
        Some("calib") => 0,
        Some("eval") => 1,
        _ => return Err(usage.into()),
    };
    let seed: u64 = args.get(3).ok_or(usage)?.parse()?;
    let budget: usize = args.get(4).ok_or(usage)?.parse()?;
    let out_path = args.get(5).ok_or(usage)?;
    let subjects: Vec<&str> = SUBJECTS.iter().copied().skip(parity).step_by(2).collect();
    let engine = Engine::load(
        gguf,
        LoadOptions::default()
            .preset(Some(Preset::F32))
            .kv_dtype(twain_core::KvDtype::F32),
    )?;
    let mut rng = SplitMix::new(seed);
    let mut out = String::new();
    let mut tokens = 0usize;
    let mut turn = 0u64;
    while tokens < budget {
        let task = TASKS[(rng.next_u64() % TASKS.len() as u64) as usize];
        let subject = subjects[(rng.next_u64() % subjects.len() as u64) as usize];
        let prompt = format!("{task} {subject}.");
        let mut session = engine.session();
        session.set_sampler(
            Sampler::builder()
                .temperature(0.8)
                .top_p(0.95)
                .seed(seed.wrapping_mul(1000).wrapping_add(turn))
                .build()?,
        );
        let mut answer = String::new();
        for event in session.respond(&prompt, GenerateOptions::default().max_tokens(256))? {
            if let Event::Text(t) = event? {
                answer.push_str(&t);
            }
        }
        let rendered = format!(
            "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n",
            answer.trim()
        );
        tokens += engine.tokenizer().0.encode(&rendered, false)?.len();
        out.push_str(&rendered);
        turn += 1;
        eprint!("\r{tokens}/{budget} tokens, {turn} answers");
    }
    eprintln!();
    std::fs::File::create(out_path)?.write_all(out.as_bytes())?;
    Ok(())
}
