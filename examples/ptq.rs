//! Post-training quantization stage by stage (docs/quality.md, "2-bit after
//! training"): each variant against the f32 model on a text the calibration
//! never saw — perplexity, mean KL divergence, same top-1 — with the
//! conversion time.
//!
//! Run: `cargo run --release -p twain-examples --example ptq -- GGUF EVAL.txt[,EVAL2.txt] [MAX_WINDOWS] [VARIANTS]`
//!
//! VARIANTS is `;`-separated, each `PRESET[+rot][+gptq|+act]` or
//! `PRESET+rec` (what `twain convert` does), e.g. `afm;afm+gptq;afm+rec`;
//! `+broad` calibrates on `calib::broad_calibration_tokens` (the default since issue 32), `+narrow` on the KJV + chat set before it (after `+rec`); `+rres`, `+rdown`, `+rheads` turn on one rotation each; `+dyn` re-chooses group scales inside the sweep and `+damp` (after the rounding stage) damps H by 0.1 instead of 0.01.
//! Every variant measures its own calibration statistics (conversion time
//! includes them); nearest rounding is weighted by them too.

use std::time::Instant;

use twain::Model;
use twain_convert::gptq::GptqOptions;
use twain_convert::ptq::{quantize_model, PtqOptions};
use twain_convert::rotate::RotateOptions;
use twain_convert::Preset;
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_examples::{argmax, log_softmax};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: ptq GGUF EVAL.txt[,EVAL2.txt,...] [MAX_WINDOWS] [VARIANTS]";
    let gguf = args.get(1).ok_or(usage)?;
    let texts: Vec<String> = args
        .get(2)
        .ok_or(usage)?
        .split(',')
        .map(str::to_string)
        .collect();
    let max_windows: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let specs: Vec<String> = args
        .get(4)
        .map_or("afm;afm+gptq;q4;q4+gptq", |s| s.as_str())
        .split(';')
        .map(str::to_string)
        .collect();
    let ctx = 512;

    let loaded = twain_io::load_model(gguf)?;
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&loaded)?;
    let base =
        Transformer::from_loaded(loaded, TransformerOptions::default().kv_dtype(KvDtype::F32))?;
    struct Variant {
        name: String,
        model: Transformer,
        seconds: f64,
        nll: f64,
        kld: f64,
        agree: usize,
    }
    let mut variants = Vec::new();
    for spec in &specs {
        let mut parts = spec.split('+');
        let preset = Preset::from_name(parts.next().unwrap_or(""))
            .ok_or_else(|| format!("{spec}: unknown preset"))?;
        let mut opts = PtqOptions::plain();
        opts.statistics = true;
        for p in parts {
            match p {
                "rec" => opts = PtqOptions::recommended(preset),
                "dyn" => {
                    if let Some(g) = opts.error_feedback.as_mut() {
                        g.dynamic_scales = true;
                    }
                }
                "damp" => {
                    if let Some(g) = opts.error_feedback.as_mut() {
                        g.damp = 0.1;
                    }
                }
                "broad" => {
                    opts.calibration =
                        Some(twain_convert::calib::broad_calibration_tokens(&tokenizer)?)
                }
                "narrow" => {
                    opts.calibration = Some(twain_convert::calib::kjv_chat_calibration_tokens(
                        &tokenizer,
                    )?)
                }
                "rot" => opts.rotate = Some(RotateOptions::default()),
                "rres" | "rdown" | "rheads" => {
                    let r = opts.rotate.get_or_insert(RotateOptions {
                        residual: false,
                        ffn_down: false,
                        heads: false,
                        ..Default::default()
                    });
                    match p {
                        "rres" => r.residual = true,
                        "rdown" => r.ffn_down = true,
                        _ => r.heads = true,
                    }
                }
                "gptq" => opts.error_feedback = Some(GptqOptions::default()),
                "act" => {
                    opts.error_feedback = Some(GptqOptions {
                        act_order: true,
                        ..Default::default()
                    })
                }
                other => return Err(format!("{spec}: unknown stage {other}").into()),
            }
        }
        let t = Instant::now();
        let m = quantize_model(twain_io::load_model(gguf)?, &tokenizer, preset, opts)?;
        let seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "{spec}: converted in {seconds:.1} s ({})",
            m.provenance.get("twain.ptq").map_or("", |s| s.as_str())
        );
        variants.push(Variant {
            name: spec.clone(),
            model: Transformer::from_loaded(m, TransformerOptions::default())?,
            seconds,
            nll: 0.0,
            kld: 0.0,
            agree: 0,
        });
    }
    for path in &texts {
        let tokens = tokenizer.encode(&std::fs::read_to_string(path)?, false)?;
        for var in &mut variants {
            (var.nll, var.kld, var.agree) = (0.0, 0.0, 0);
        }
        println!("\n{path}:");
        let v = base.info().vocab_size;
        let windows = (tokens.len() / ctx).min(max_windows);
        let (mut base_nll, mut scored) = (0.0f64, 0usize);
        for w in 0..windows {
            let window = &tokens[w * ctx..(w + 1) * ctx];
            let bl = base.forward_all(&mut base.new_state(), window)?;
            let rows: Vec<(Vec<f64>, usize)> = (ctx / 2..ctx - 1)
                .map(|j| {
                    let r = &bl[j * v..(j + 1) * v];
                    (log_softmax(r), argmax(r))
                })
                .collect();
            for (k, j) in (ctx / 2..ctx - 1).enumerate() {
                base_nll -= rows[k].0[window[j + 1] as usize];
            }
            scored += rows.len();
            for var in &mut variants {
                let l = var.model.forward_all(&mut var.model.new_state(), window)?;
                for (k, j) in (ctx / 2..ctx - 1).enumerate() {
                    let row = &l[j * v..(j + 1) * v];
                    let lq = log_softmax(row);
                    let (lp, top) = &rows[k];
                    var.nll -= lq[window[j + 1] as usize];
                    var.kld += lp
                        .iter()
                        .zip(&lq)
                        .map(|(&p, &q)| p.exp() * (p - q))
                        .sum::<f64>();
                    var.agree += usize::from(argmax(row) == *top);
                }
            }
            eprint!("\rwindow {}/{windows}", w + 1);
        }
        eprintln!();
        let n = scored as f64;
        println!("{windows} windows of {ctx} tokens, {scored} scored tokens\n");
        println!(
            "| variant | bits/weight (decoder, all-in) | PPL | mean KLD | same top-1 | conversion s |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        println!(
            "| f32 (base) | 32 | {:.3} | 0 | 100 % | |",
            (base_nll / n).exp()
        );
        for var in &variants {
            println!(
                "| {} | {:.3} | {:.3} | {:.4} | {:.1} % | {:.0} |",
                var.name,
                decoder_bits(&var.model),
                (var.nll / n).exp(),
                var.kld / n,
                100.0 * var.agree as f64 / n,
                var.seconds
            );
        }
    }
    Ok(())
}

/// Bits per weight of the decoder linears, every scale counted.
fn decoder_bits(m: &Transformer) -> f64 {
    let (bytes, weights) = m.linear_footprint();
    8.0 * bytes as f64 / weights as f64
}
