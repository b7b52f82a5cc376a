//! `twain bench`: measure prefill and decode speed, of a model file or of
//! random weights at a reference shape.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use twain::Model;
use twain_convert::Preset;
use twain_core::{KvDtype, LinearDelta, Transformer};

use crate::common::{adapter_of, load_engine, ModelArgs};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Run every layer on every prompt token (no KV-sharing prefill skip).
    #[arg(long)]
    no_skip: bool,
    /// Instead of a model file, random weights at a reference shape:
    /// `afm` (56 layers, 35 own K/V, d 2048, 2-bit weights, 4-bit
    /// embeddings) or `afm-unshared` (the same without KV sharing), or a
    /// native file written by `--save` (memory-mapped: its load time).
    #[arg(long)]
    synthetic: Option<String>,
    /// With `--synthetic afm|afm-unshared`: also write the random model to
    /// this native file.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Apply a random LoRA adapter of this rank to every linear layer
    /// (alpha 16), to measure the cost of an unmerged adapter.
    #[arg(long)]
    random_adapter: Option<usize>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn synthetic_model(
    name: &str,
    skip: bool,
    kv_dtype: KvDtype,
    save: Option<&Path>,
) -> anyhow::Result<Transformer> {
    let mut config = twain_convert::synthetic::afm_config();
    let loaded = match name {
        "afm" | "afm-unshared" => {
            if name == "afm-unshared" {
                config.kv_source = (0..config.n_layers).collect();
            }
            eprintln!(
                "building random weights at the {name} shape (2-bit linears, 4-bit embeddings)..."
            );
            let m = twain_convert::synthetic::random_model(&config, Preset::Afm, 1)?;
            if let Some(out) = save {
                twain_io::write_native(out, &twain_io::NativeModel::from_loaded(&m), &mut |_| {})?;
                eprintln!("wrote {}", out.display());
            }
            m
        }
        path if Path::new(path).is_file() => {
            if save.is_some() {
                bail!("--save goes with --synthetic afm or afm-unshared");
            }
            twain_io::load_model(path)?
        }
        other => {
            bail!("unknown --synthetic {other:?} (afm, afm-unshared, or a file written by --save)")
        }
    };
    Ok(Transformer::from_loaded(
        loaded,
        twain_core::TransformerOptions::default()
            .kv_dtype(kv_dtype)
            .skip_shared_prefill(skip),
    )?)
}

/// A random rank-`rank` LoRA adapter on every linear layer of `model` (alpha 16), for benchmarks.
fn random_adapter(model: &Transformer, rank: usize) -> anyhow::Result<Arc<dyn LinearDelta>> {
    let mut a = twain::adapters::LoraAdapter::new();
    let mut rng = twain_convert::synthetic::SplitMix::new(7);
    for l in 0..model.config().n_layers {
        for m in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let name = format!("blk.{l}.{m}.weight");
            let Some((rows, cols)) = model.linear_shape(&name) else {
                continue;
            };
            let av: Vec<f32> = (0..rank * cols).map(|_| 0.01 * rng.uniform()).collect();
            let bv: Vec<f32> = (0..rows * rank).map(|_| 0.01 * rng.uniform()).collect();
            a.insert(&name, rows, cols, rank, 16.0 / rank as f32, av, bv)?;
        }
    }
    Ok(Arc::new(a))
}

pub(crate) fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.save.is_some() && a.synthetic.is_none() {
        bail!("--save needs --synthetic afm or afm-unshared");
    }
    let (prompt_tokens, gen_tokens, reps, skip, json) =
        (a.prompt_tokens, a.gen_tokens, a.reps, !a.no_skip, a.json);
    let t0 = Instant::now();
    let (model, adapter) = match &a.synthetic {
        Some(name) => (
            Arc::new(synthetic_model(
                name,
                skip,
                a.model.kv_cache.into(),
                a.save.as_deref(),
            )?),
            None,
        ),
        None => {
            let engine = load_engine(&a.model, skip)?;
            let adapter = adapter_of(&a.model, &engine)?;
            (engine.model().clone(), adapter)
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let adapter = match a.random_adapter {
        Some(r) => Some(random_adapter(&model, r)?),
        None => adapter,
    };
    let model = &model;
    let new_state = || -> anyhow::Result<twain_core::State> {
        let mut s = model.new_state();
        if adapter.is_some() {
            model.set_adapter(&mut s, adapter.clone())?;
        }
        Ok(s)
    };
    let vocab = model.info().vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut logits = vec![0.0f32; vocab as usize];
    let (mut best_pp, mut best_tg) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps.max(1) {
        let mut state = new_state()?;
        let t = Instant::now();
        model.forward(&mut state, &prompt, &mut logits)?;
        best_pp = best_pp.min(t.elapsed().as_secs_f64());
        let mut state = new_state()?;
        model.forward(&mut state, &prompt[..1], &mut logits)?;
        let t = Instant::now();
        let mut tok = 1u32;
        for _ in 0..gen_tokens {
            model.forward(&mut state, &[tok], &mut logits)?;
            tok = twain_sample::argmax(&logits).unwrap_or(1);
        }
        best_tg = best_tg.min(t.elapsed().as_secs_f64());
    }
    let threads = rayon::current_num_threads();
    let pp = prompt_tokens as f64 / best_pp;
    let tg = gen_tokens as f64 / best_tg;
    let wbytes = model.weight_bytes();
    let rss = peak_rss_mib().unwrap_or(0.0);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": model.info().name, "threads": threads, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                "prefill_tok_s": pp, "decode_tok_s": tg, "ttft_ms": best_pp * 1e3, "load_s": load_s,
                "peak_rss_mib": rss, "weight_bytes": wbytes, "decode_weight_gb_s": wbytes as f64 * tg / 1e9,
                "kv_bytes_per_token": model.kv_bytes_per_token(), "skip_shared_prefill": skip, "kernels": twain_quant::backend_name(), "adapter": adapter.is_some(),
            })
        );
    } else {
        println!(
            "threads {threads} | kernels {}",
            twain_quant::backend_name()
        );
        println!(
            "prefill {prompt_tokens} tokens: {pp:.1} tok/s (time to first token {:.1} ms)",
            best_pp * 1e3
        );
        println!(
            "decode {gen_tokens} tokens: {tg:.1} tok/s ({:.1} GB/s of weights)",
            wbytes as f64 * tg / 1e9
        );
        println!(
            "load {load_s:.2} s | peak RSS {rss:.0} MiB | weights {:.1} MiB | KV {} B/token",
            wbytes as f64 / 1048576.0,
            model.kv_bytes_per_token()
        );
    }
    Ok(())
}
