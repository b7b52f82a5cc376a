//! The `twain` command line: generate, chat, convert, inspect, bench, perplexity.
//!
//! One module per command under [`cmd`], each with its `clap::Args` and its
//! `run`; what they share (model and sampling flags, loading, progress) is
//! in [`common`]. This file holds the top-level parser and the dispatch.

use clap::{Parser, Subcommand};

mod cmd;
mod common;

#[derive(Parser)]
#[command(
    name = "twain",
    version,
    about = "Run small language models on-device (2-bit weights, int8 KV cache, KV sharing)"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a completion of PROMPT to stdout (as a user message unless --raw).
    Generate(cmd::generate::GenerateArgs),
    /// Interactive multi-turn chat on stdin/stdout.
    Chat(cmd::chat::ChatArgs),
    /// Convert a GGUF / Hugging Face / native model into a twain native file.
    Convert(cmd::convert::ConvertArgs),
    /// Describe a model file: formats, sizes, bits per weight, KV plan.
    Inspect(cmd::inspect::InspectArgs),
    /// Measure prefill and decode speed.
    Bench(cmd::bench::BenchArgs),
    /// Recover a converted model's accuracy by distillation from its f32
    /// source (quantization-aware training of the 2-bit matrices).
    Recover(cmd::recover::RecoverArgs),
    /// Perplexity over a text file (and KL divergence against a base model).
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Fetch and convert the default model; print its path.
    Fetch(cmd::fetch::FetchArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("twain: cannot set {n} threads: {e}");
            std::process::exit(2);
        }
    }
    let result = match cli.command {
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Recover(a) => cmd::recover::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
    };
    if let Err(e) = result {
        eprintln!("twain: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// `{:#}` of `e`, the whole chain on one line, without the causes a link
/// already spells out: the library errors print their source in their own
/// message (`"{path}: {source}"`), which `{:#}` would repeat.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut last: Option<String> = None;
    for cause in e.chain() {
        let s = cause.to_string();
        if !last.as_ref().is_some_and(|l| l.ends_with(&s)) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&s);
        }
        last = Some(s);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "model.gguf: {}", self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        let io = std::io::Error::other("no such file");
        let e = anyhow::Error::new(Outer(io)).context("loading");
        assert_eq!(
            format!("{e:#}"),
            "loading: model.gguf: no such file: no such file"
        );
        assert_eq!(one_line(&e), "loading: model.gguf: no such file");
        assert_eq!(one_line(&anyhow::anyhow!("plain")), "plain");
    }
}
