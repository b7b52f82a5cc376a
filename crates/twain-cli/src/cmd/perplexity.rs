//! `twain perplexity`: perplexity over a text file, and KL divergence and
//! top-1 agreement against a base model.

use std::path::PathBuf;

use anyhow::Context;
use twain::engine::Engine;
use twain_convert::eval::{perplexity, EvalReport};

use crate::common::{load_engine, progress_bar, KvCacheArg, ModelArgs, PresetArg};

#[derive(clap::Args)]
pub(crate) struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file.
    #[arg(long)]
    file: PathBuf,
    /// Window length.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Base model for KL divergence and top-1 agreement.
    #[arg(long)]
    kl_base: Option<PathBuf>,
    /// Preset for the base model (default f32).
    #[arg(long, default_value = "f32", hide_possible_values = true)]
    kl_base_preset: PresetArg,
    /// Only the first N windows.
    #[arg(long)]
    max_chunks: Option<usize>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: PerplexityArgs) -> anyhow::Result<()> {
    let engine = load_engine(&a.model, true)?;
    let base = match a.kl_base {
        Some(p) => Some(load_engine(
            &ModelArgs {
                model: Some(p),
                preset: Some(a.kl_base_preset),
                kv_share: None,
                kv_cache: KvCacheArg::F32,
                adapter: None,
                adapter_scale: 1.0,
            },
            true,
        )?),
        None => None,
    };
    let text = std::fs::read_to_string(&a.file).with_context(|| a.file.display().to_string())?;
    let r = evaluate(&engine, base.as_ref(), &text, a.ctx, a.max_chunks)?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        println!("{}", r.to_text());
    }
    Ok(())
}

struct Report {
    r: EvalReport,
    ctx: usize,
    tokens: usize,
}

impl Report {
    fn to_json(&self) -> String {
        serde_json::json!({
            "ctx": self.ctx, "tokens": self.tokens, "chunks": self.r.chunks, "scored": self.r.scored,
            "perplexity": self.r.perplexity, "mean_kld": self.r.mean_kld, "top1_agreement": self.r.top1_agreement,
            "base_perplexity": self.r.base_perplexity,
        })
        .to_string()
    }
    fn to_text(&self) -> String {
        let mut s = format!(
            "{} tokens, {} windows of {}, {} scored\nperplexity {:.4}",
            self.tokens, self.r.chunks, self.ctx, self.r.scored, self.r.perplexity
        );
        if let (Some(k), Some(a), Some(b)) = (
            self.r.mean_kld,
            self.r.top1_agreement,
            self.r.base_perplexity,
        ) {
            s.push_str(&format!(
                "\nbase perplexity {b:.4}\nmean KL divergence {k:.5}\nsame top-1 {:.2} %",
                100.0 * a
            ));
        }
        s
    }
}

/// Score `text` under `engine` (against `base` if given) in windows of `ctx`.
fn evaluate(
    engine: &Engine,
    base: Option<&Engine>,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
) -> anyhow::Result<Report> {
    let tokens = engine.tokenizer().0.encode(text, false)?;
    let mut pb = progress_bar("perplexity");
    let r = perplexity(
        engine.model(),
        base.map(|b| &**b.model()),
        &tokens,
        ctx,
        max_chunks,
        |d, t| {
            if t > 0 {
                pb.update(d, t, "")
            }
        },
    )?;
    pb.finish_and_clear();
    Ok(Report {
        r,
        ctx,
        tokens: tokens.len(),
    })
}
