//! Quality of each preset against the f32 model: perplexity, mean KL
//! divergence and top-1 agreement on a text, windows of 512 tokens scored like
//! llama.cpp's perplexity tool. The base model runs once per window and every
//! variant is compared with it. Produces the table in docs/quality.md.
//!
//! Run: `cargo run --release -p twain-examples --example quality -- GGUF EVAL.txt [MAX_WINDOWS]`

use std::collections::BTreeMap;
use std::time::Instant;

use twain::Model;
use twain_convert::calib::CALIBRATION_TEXT;
use twain_convert::eval::calibrate;
use twain_convert::{convert, ConvertOptions, Preset};
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_examples::{argmax, log_softmax};

struct Variant {
    name: String,
    model: Transformer,
    nll: f64,
    kld: f64,
    agree: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let gguf = args
        .get(1)
        .ok_or("usage: quality GGUF EVAL.txt [MAX_WINDOWS]")?;
    let text = std::fs::read_to_string(args.get(2).ok_or("missing EVAL.txt")?)?;
    let max_windows: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let ctx = 512;
    let f32_opts = || TransformerOptions::default().kv_dtype(KvDtype::F32);

    let loaded = twain_io::load_model(gguf)?;
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&loaded)?;
    let tokens = tokenizer.encode(&text, false)?;
    let base = Transformer::from_loaded(loaded, f32_opts())?;
    let t = Instant::now();
    let calib_tokens = tokenizer.encode(CALIBRATION_TEXT, false)?;
    let importance = calibrate(
        &base,
        &calib_tokens[..calib_tokens.len().min(8192)],
        ctx,
        |_, _| {},
    )?;
    eprintln!(
        "calibrated on {} tokens in {:.1} s",
        calib_tokens.len().min(8192),
        t.elapsed().as_secs_f64()
    );

    let mut variants = Vec::new();
    let only: Option<String> = std::env::var("QUALITY_ONLY").ok();
    type Spec = (&'static str, Preset, bool, Option<(usize, usize)>, KvDtype);
    let specs: Vec<Spec> = vec![
        (
            "f32 weights, int8 KV cache",
            Preset::F32,
            false,
            None,
            KvDtype::Int8,
        ),
        ("q8", Preset::Q8, false, None, KvDtype::Int8),
        ("q4", Preset::Q4, false, None, KvDtype::Int8),
        ("q4, q8 embeddings", Preset::Q4, false, None, KvDtype::Int8),
        (
            "afm (2-bit), q8 embeddings",
            Preset::Afm,
            false,
            None,
            KvDtype::Int8,
        ),
        (
            "f32, q4 embeddings",
            Preset::F32,
            false,
            None,
            KvDtype::Int8,
        ),
        ("q4 + importance", Preset::Q4, true, None, KvDtype::Int8),
        ("afm (2-bit)", Preset::Afm, false, None, KvDtype::Int8),
        (
            "afm (2-bit) + importance",
            Preset::Afm,
            true,
            None,
            KvDtype::Int8,
        ),
        (
            "f32, KV share 5:3 retrofit",
            Preset::F32,
            false,
            Some((5, 3)),
            KvDtype::F32,
        ),
    ];
    for (name, preset, imp, share, kv) in specs {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(';').any(|x| x == name))
        {
            continue;
        }
        let embedding_format = if name.contains("q8 embeddings") {
            Some(twain_quant::QuantFormat::Q8)
        } else if name.contains("q4 embeddings") {
            Some(twain_quant::QuantFormat::Q4)
        } else {
            None
        };
        let m = twain_io::load_model(gguf)?;
        let m = convert(
            m,
            preset,
            ConvertOptions {
                kv_share: share,
                importance: if imp {
                    importance.clone()
                } else {
                    BTreeMap::new()
                },
                progress: None,
                embedding_format,
                ..Default::default()
            },
        )?;
        let model = Transformer::from_loaded(m, TransformerOptions::default().kv_dtype(kv))?;
        variants.push(Variant {
            name: name.into(),
            model,
            nll: 0.0,
            kld: 0.0,
            agree: 0,
        });
    }
    let v = base.info().vocab_size;
    let windows = (tokens.len() / ctx).min(max_windows);
    let (mut base_nll, mut scored) = (0.0f64, 0usize);
    let t = Instant::now();
    for w in 0..windows {
        let window = &tokens[w * ctx..(w + 1) * ctx];
        let mut s = base.new_state();
        let bl = base.forward_all(&mut s, window)?;
        let base_rows: Vec<(Vec<f64>, usize)> = (ctx / 2..ctx - 1)
            .map(|j| {
                (
                    log_softmax(&bl[j * v..(j + 1) * v]),
                    argmax(&bl[j * v..(j + 1) * v]),
                )
            })
            .collect();
        for (k, j) in (ctx / 2..ctx - 1).enumerate() {
            base_nll -= base_rows[k].0[window[j + 1] as usize];
        }
        scored += base_rows.len();
        for var in &mut variants {
            let mut s = var.model.new_state();
            let l = var.model.forward_all(&mut s, window)?;
            for (k, j) in (ctx / 2..ctx - 1).enumerate() {
                let row = &l[j * v..(j + 1) * v];
                let lq = log_softmax(row);
                let (lp, top) = &base_rows[k];
                var.nll -= lq[window[j + 1] as usize];
                var.kld += lp
                    .iter()
                    .zip(&lq)
                    .map(|(&p, &q)| p.exp() * (p - q))
                    .sum::<f64>();
                if argmax(row) == *top {
                    var.agree += 1;
                }
            }
        }
        eprintln!(
            "window {}/{} ({:.0} s)",
            w + 1,
            windows,
            t.elapsed().as_secs_f64()
        );
    }
    let n = scored as f64;
    println!(
        "{} windows of {ctx} tokens, {scored} scored tokens\n",
        windows
    );
    println!("| variant | bits/weight (linears) | PPL | mean KLD | same top-1 |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| f32 (base) | 32 | {:.3} | 0 | 100 % |",
        (base_nll / n).exp()
    );
    for var in &variants {
        println!(
            "| {} | {} | {:.3} | {:.4} | {:.1} % |",
            var.name,
            var.name
                .split_whitespace()
                .next()
                .and_then(Preset::from_name)
                .map_or("32".to_string(), |p| format!(
                    "{:.3}",
                    p.linear_format().bits_per_weight()
                )),
            (var.nll / n).exp(),
            var.kld / n,
            100.0 * var.agree as f64 / n
        );
    }
    Ok(())
}
