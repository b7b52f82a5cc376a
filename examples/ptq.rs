//! Post-training quantization stage by stage (docs/quality.md, "2-bit after
//! training"): each variant against the f32 model on a text the calibration
//! never saw — perplexity, mean KL divergence, same top-1 — with the
//! conversion time.
//!
//! Run: `cargo run --release -p twain-examples --example ptq -- GGUF EVAL.txt [MAX_WINDOWS] [VARIANTS]`
//!
//! VARIANTS is `;`-separated, each `PRESET[+gptq][+act]` (e.g.
//! `afm;afm+gptq;q4+gptq`); the default runs afm and q4 with and without
//! error feedback.

use std::time::Instant;

use twain::Model;
use twain_convert::gptq::GptqOptions;
use twain_convert::rotate::{rotate, RotateOptions};
use twain_convert::{calib, convert, hessian, ConvertOptions, Preset};
use twain_core::{KvDtype, Transformer, TransformerOptions};

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    l.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(l: &[f32]) -> usize {
    (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: ptq GGUF EVAL.txt [MAX_WINDOWS] [VARIANTS]";
    let gguf = args.get(1).ok_or(usage)?;
    let text = std::fs::read_to_string(args.get(2).ok_or(usage)?)?;
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
    let tokens = tokenizer.encode(&text, false)?;
    let base = Transformer::from_loaded(
        loaded,
        TransformerOptions {
            kv_dtype: KvDtype::F32,
            ..Default::default()
        },
    )?;
    let calib_tokens = calib::calibration_tokens(&tokenizer)?;
    // The (optionally rotated) f32 source and its second moments, made once each.
    let mut sources: Vec<Option<(twain_io::LoadedModel, Stats, f64)>> = vec![None, None];
    type Stats = std::collections::BTreeMap<String, hessian::Hessian>;

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
        let mut gptq = None;
        let mut rot = false;
        for p in parts {
            match p {
                "rot" => rot = true,
                "gptq" => gptq = Some(GptqOptions::default()),
                "act" => {
                    gptq = Some(GptqOptions {
                        act_order: true,
                        ..Default::default()
                    })
                }
                other => return Err(format!("{spec}: unknown stage {other}").into()),
            }
        }
        if sources[rot as usize].is_none() {
            let t = Instant::now();
            let mut m = twain_io::load_model(gguf)?;
            if rot {
                rotate(&mut m, &RotateOptions::default())?;
            }
            let teacher = Transformer::from_loaded(
                m.clone(),
                TransformerOptions {
                    kv_dtype: KvDtype::F32,
                    ..Default::default()
                },
            )?;
            let hs = hessian::collect(
                &teacher,
                &calib_tokens,
                calib::CALIBRATION_WINDOW,
                |_, _| {},
            )?;
            let s = t.elapsed().as_secs_f64();
            eprintln!(
                "rotated {rot}: second moments of {} inputs over {} tokens in {s:.1} s",
                hs.len(),
                calib_tokens.len()
            );
            sources[rot as usize] = Some((m, hs, s));
        }
        let (src, hs, stats_s) = sources[rot as usize].as_ref().expect("made above");
        let t = Instant::now();
        let m = convert(
            src.clone(),
            preset,
            ConvertOptions {
                hessians: Some(hs),
                error_feedback: gptq,
                ..Default::default()
            },
        )?;
        let seconds = t.elapsed().as_secs_f64() + stats_s;
        eprintln!("{spec}: converted in {seconds:.1} s (statistics included)");
        variants.push(Variant {
            name: spec.clone(),
            model: Transformer::from_loaded(m, TransformerOptions::default())?,
            seconds,
            nll: 0.0,
            kld: 0.0,
            agree: 0,
        });
    }
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
    Ok(())
}

/// Bits per weight of the decoder linears, every scale counted.
fn decoder_bits(m: &Transformer) -> f64 {
    let (bytes, weights) = m.linear_footprint();
    8.0 * bytes as f64 / weights as f64
}
