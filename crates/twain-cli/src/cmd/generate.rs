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
    /// With --schema: cap strings without a maxLength at N characters (0: no cap).
    #[arg(long, value_name = "N", default_value_t = twain::guided::DEFAULT_MAX_STRING_LENGTH, requires = "schema")]
    max_string_length: usize,
    /// With --schema: no DRY repeat penalty on the value's tokens.
    #[arg(long, requires = "schema")]
    no_repeat_penalty: bool,
    /// The prompt.
    prompt: String,
}

pub(crate) fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let engine = load_engine(&a.model, true)?;
    let mut session = session_of(&a.model, &engine)?;
    session.set_sampler(sampler(&a.sample)?);
    if let Some(file) = &a.schema {
        let opts = twain::GuidedOptions::default()
            .generate(gen_opts(&a.sample))
            .max_string_length((a.max_string_length > 0).then_some(a.max_string_length))
            .repetition((!a.no_repeat_penalty).then(twain::sample::Dry::default));
        return generate_json(&mut session, file, &a.prompt, opts);
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
    opts: twain::GuidedOptions,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
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
