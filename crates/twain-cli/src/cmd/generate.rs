//! `twain generate`: stream a completion of a prompt to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use twain::Event;
use twain_core::Transformer;

use crate::common::{gen_opts, load_engine, sampler, session_of, stream, ModelArgs, SampleArgs};

#[derive(clap::Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sample: SampleArgs,
    /// Feed the prompt as-is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Answer with JSON valid under the JSON Schema in FILE (guided generation).
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    schema: Option<PathBuf>,
    /// The prompt.
    prompt: String,
}

pub(crate) fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let engine = load_engine(&a.model, true)?;
    let mut session = session_of(&a.model, &engine)?;
    session.set_sampler(sampler(&a.sample)?);
    if let Some(file) = &a.schema {
        return generate_json(&mut session, file, &a.prompt, &a.sample);
    }
    let g = if a.raw {
        session.complete(&a.prompt, gen_opts(&a.sample))
    } else {
        session.respond(&a.prompt, gen_opts(&a.sample))
    }?;
    stream(g)
}

/// `twain generate --schema FILE`: stream JSON that the schema constrains.
fn generate_json(
    session: &mut twain::Session<Arc<Transformer>>,
    file: &Path,
    prompt: &str,
    sample: &SampleArgs,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    let opts = twain::GuidedOptions::default().generate(gen_opts(sample));
    let mut out = std::io::stdout().lock();
    let mut g = session.respond_json_stream(prompt, &schema, opts)?;
    let mut end = None;
    for ev in g.by_ref() {
        match ev? {
            Event::Text(t) => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Event::End(r) => end = Some(r),
            Event::Token(_) => {}
        }
    }
    let _ = out.write_all(b"\n");
    match end {
        Some(twain::EndReason::EndOfTurn) => Ok(()),
        other => bail!("the JSON is incomplete ({other:?}); raise --max-tokens"),
    }
}
