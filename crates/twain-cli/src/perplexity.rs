//! `twain perplexity`.

use twain::engine::Engine;
use twain_convert::eval::{perplexity, EvalReport};

use crate::{progress_bar, Res};

pub(crate) struct Report {
    pub r: EvalReport,
    pub ctx: usize,
    pub tokens: usize,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "ctx": self.ctx, "tokens": self.tokens, "chunks": self.r.chunks, "scored": self.r.scored,
            "perplexity": self.r.perplexity, "mean_kld": self.r.mean_kld, "top1_agreement": self.r.top1_agreement,
            "base_perplexity": self.r.base_perplexity,
        })
        .to_string()
    }
    pub fn to_text(&self) -> String {
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

pub(crate) fn run(
    engine: &Engine,
    base: Option<&Engine>,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
) -> Res<Report> {
    let tokens = engine
        .tokenizer
        .0
        .encode(text, false)
        .map_err(|e| e.to_string())?;
    let mut pb = progress_bar("perplexity");
    let r = perplexity(
        &engine.model,
        base.map(|b| &*b.model),
        &tokens,
        ctx,
        max_chunks,
        |d, t| {
            if t > 0 {
                pb.update(d, t, "")
            }
        },
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    Ok(Report {
        r,
        ctx,
        tokens: tokens.len(),
    })
}
