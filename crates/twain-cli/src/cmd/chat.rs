//! `twain chat`: interactive multi-turn chat on stdin/stdout.

use std::io::BufRead;

use twain::Model;

use crate::common::{gen_opts, load_engine, sampler, session_of, stream, ModelArgs, SampleArgs};

#[derive(clap::Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sample: SampleArgs,
    /// System message.
    #[arg(long)]
    system: Option<String>,
}

pub(crate) fn run(a: ChatArgs) -> anyhow::Result<()> {
    let engine = load_engine(&a.model, true)?;
    let mut session = session_of(&a.model, &engine)?;
    if let Some(s) = a.system {
        session = session.with_system(s);
    }
    session.set_sampler(sampler(&a.sample)?);
    eprintln!(
        "twain chat: {} — type a message, an empty line or Ctrl-D ends.",
        engine.model().info().name
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            break;
        }
        match session.respond(line, gen_opts(&a.sample)) {
            Ok(g) => stream(g)?,
            Err(e) => eprintln!("twain: {e}"),
        }
    }
    Ok(())
}
