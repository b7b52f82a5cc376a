//! Measure candidate 2-bit and 4-bit layouts on real weights (docs/formats.md).
//!
//! Input: raw little-endian f32 matrices named `<tensor>.<rows>x<cols>.f32`
//! in a directory (default /tmp/smol-f32), e.g. dumped from a GGUF with the
//! Python `gguf` package (see docs/formats.md for the script).
//!
//! `cargo run --release -p twain-quant --example measure_formats [-- DIR]`
//!
//! Prints markdown tables of relative RMS error `||W - Q(W)|| / ||W||` per
//! matrix kind (pooled over the layers found) for every scheme.

use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;
use twain_quant::{quantize, QuantFormat, QuantizeOptions};

const KINDS: [&str; 8] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "token_embd",
];

struct Mat {
    kind: &'static str,
    rows: usize,
    cols: usize,
    w: Vec<f32>,
}

fn load(dir: &str) -> Vec<Mat> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".f32"))
        .collect();
    names.sort();
    for n in names {
        let kind = match KINDS.iter().find(|k| n.contains(&format!("{k}.weight"))) {
            Some(k) => *k,
            None => continue,
        };
        let shape = n.trim_end_matches(".f32").rsplit('.').next().unwrap_or("");
        let (r, c) = shape.split_once('x').expect("shape in file name");
        let (rows, cols): (usize, usize) = (r.parse().unwrap(), c.parse().unwrap());
        let bytes = std::fs::read(format!("{dir}/{n}")).unwrap();
        assert_eq!(bytes.len(), rows * cols * 4, "{n}");
        let w: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push(Mat {
            kind,
            rows,
            cols,
            w,
        });
    }
    out
}

/// (sum squared error, sum squared weight)
type Err2 = (f64, f64);

fn err2(w: &[f32], q: &[f32]) -> Err2 {
    let e = w.iter().zip(q).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    (e, w.iter().map(|a| (*a as f64).powi(2)).sum())
}

fn f16r(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Nearest balanced 2-bit value for scale s.
fn q2v(x: f32, s: f32) -> f32 {
    if s <= 0.0 {
        return 0.0;
    }
    ((x / s + 2.0).floor().clamp(0.0, 3.0) - 1.5) * s
}

fn group_err(x: &[f32], s: f32) -> f32 {
    x.iter().map(|&v| (v - q2v(v, s)).powi(2)).sum()
}

/// Best scale for a group among `quant(f * amax / 1.5)`, f in 0.30..=1.00.
fn best_scale(x: &[f32], quant: &dyn Fn(f32) -> f32) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut best = (f32::INFINITY, 0.0);
    for i in 0..36 {
        let f = 1.0 - 0.7 * i as f32 / 35.0;
        let s = quant(f * amax / 1.5);
        let e = group_err(x, s);
        if e < best.0 {
            best = (e, s);
        }
    }
    best.1
}

/// Single-level scheme: one `quant`-rounded scale per group of `g`.
fn q2_single(m: &Mat, g: usize, quant: &dyn Fn(f32) -> f32) -> Option<Err2> {
    if !m.cols.is_multiple_of(g) {
        return None;
    }
    let mut q = m.w.clone();
    for grp in q.chunks_mut(g) {
        let s = best_scale(grp, quant);
        for v in grp.iter_mut() {
            *v = q2v(*v, s);
        }
    }
    Some(err2(&m.w, &q))
}

/// Two-level scheme: groups of `g` with an integer sub-scale in 0..=levels
/// (linear) times an f32 row scale `d = max group scale / levels`.
fn q2_two_level(m: &Mat, g: usize, levels: u32) -> Option<Err2> {
    if !m.cols.is_multiple_of(g) {
        return None;
    }
    let mut q = m.w.clone();
    for row in q.chunks_mut(m.cols) {
        let s: Vec<f32> = row.chunks(g).map(|grp| best_scale(grp, &|s| s)).collect();
        let d = s.iter().fold(0.0f32, |a, &b| a.max(b)) / levels as f32;
        for (grp, &sg) in row.chunks_mut(g).zip(&s) {
            if d == 0.0 {
                grp.fill(0.0);
                continue;
            }
            let k0 = (sg / d).round() as i64;
            let mut best = (grp.iter().map(|v| v * v).sum::<f32>(), 0.0);
            for k in (k0 - 2).max(1)..=(k0 + 2).min(levels as i64) {
                let sc = d * k as f32;
                let e = group_err(grp, sc);
                if e < best.0 {
                    best = (e, sc);
                }
            }
            for v in grp.iter_mut() {
                *v = q2v(*v, best.1);
            }
        }
    }
    Some(err2(&m.w, &q))
}

/// 4-bit with a min (ggml Q4_1 style, f16 scale and min), searched range.
fn q4_min(m: &Mat) -> Option<Err2> {
    let mut q = m.w.clone();
    for grp in q.chunks_mut(32) {
        let mn = grp.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let mx = grp.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut best = (f32::INFINITY, 0.0, 0.0);
        for a in 0..6 {
            for b in 0..6 {
                let lo = mn + (mx - mn) * 0.02 * a as f32;
                let hi = mx - (mx - mn) * 0.02 * b as f32;
                let d = f16r((hi - lo) / 15.0);
                let m0 = f16r(lo);
                let e: f32 = grp
                    .iter()
                    .map(|&v| {
                        let c = if d > 0.0 {
                            ((v - m0) / d).round().clamp(0.0, 15.0)
                        } else {
                            0.0
                        };
                        (v - (c * d + m0)).powi(2)
                    })
                    .sum();
                if e < best.0 {
                    best = (e, d, m0);
                }
            }
        }
        let (_, d, m0) = best;
        for v in grp.iter_mut() {
            let c = if d > 0.0 {
                ((*v - m0) / d).round().clamp(0.0, 15.0)
            } else {
                0.0
            };
            *v = c * d + m0;
        }
    }
    Some(err2(&m.w, &q))
}

fn ours(m: &Mat, f: QuantFormat, no_clip_search: bool) -> Option<Err2> {
    let opts = QuantizeOptions {
        no_clip_search,
        ..Default::default()
    };
    let q = quantize(f, m.rows, m.cols, &m.w, &opts).ok()?;
    Some(err2(&m.w, &q.as_ref().dequantize()))
}

type Scheme = (
    &'static str,
    &'static str,
    Box<dyn Fn(&Mat) -> Option<Err2> + Sync>,
);

fn table(title: &str, mats: &[Mat], kinds: &[&str], schemes: Vec<Scheme>) {
    println!("\n### {title}\n");
    print!("| scheme | bits/weight |");
    for k in kinds {
        print!(" {k} |");
    }
    println!(" mean |");
    println!("|---|---:|{}---:|", "---:|".repeat(kinds.len()));
    for (name, bpw, f) in &schemes {
        let per: BTreeMap<&str, Err2> = kinds
            .par_iter()
            .map(|k| {
                let mut acc = (0.0, 0.0);
                let mut any = false;
                for m in mats.iter().filter(|m| m.kind == *k) {
                    if let Some((e, n)) = f(m) {
                        acc.0 += e;
                        acc.1 += n;
                        any = true;
                    }
                }
                (*k, if any { acc } else { (f64::NAN, 1.0) })
            })
            .collect();
        print!("| {name} | {bpw} |");
        let mut sum = 0.0;
        for k in kinds {
            let (e, n) = per[k];
            let r = (e / n).sqrt();
            if r.is_nan() {
                print!(" n/a |");
                sum = f64::NAN;
            } else {
                sum += r;
                print!(" {r:.4} |");
            }
        }
        if sum.is_nan() {
            println!(" n/a |");
        } else {
            println!(" {:.4} |", sum / kinds.len() as f64);
        }
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/smol-f32".into());
    let all = load(&dir);
    let layers: Vec<&Mat> = all.iter().filter(|m| m.kind != "token_embd").collect();
    println!(
        "{} decoder matrices, {} token_embd rows",
        layers.len(),
        all.iter()
            .filter(|m| m.kind == "token_embd")
            .map(|m| m.rows)
            .sum::<usize>()
    );
    let dec: Vec<Mat> = all
        .iter()
        .filter(|m| m.kind != "token_embd")
        .map(|m| Mat {
            kind: m.kind,
            rows: m.rows,
            cols: m.cols,
            w: m.w.clone(),
        })
        .collect();
    let q2: Vec<Scheme> = vec![
        (
            "G16, f16 scale",
            "3.000",
            Box::new(|m| q2_single(m, 16, &f16r)),
        ),
        (
            "G32, f16 scale",
            "2.500",
            Box::new(|m| q2_single(m, 32, &f16r)),
        ),
        (
            "G64, f16 scale (rows % 64)",
            "2.250",
            Box::new(|m| q2_single(m, 64, &f16r)),
        ),
        (
            "G128, f16 scale (rows % 128)",
            "2.125",
            Box::new(|m| q2_single(m, 128, &f16r)),
        ),
        (
            "G32, u8 sub-scale x f32 row scale",
            "2.250 + 32/cols",
            Box::new(|m| q2_two_level(m, 32, 255)),
        ),
        (
            "**G32, u4 sub-scale x f32 row scale (twain Q2)**",
            "2.125 + 32/cols",
            Box::new(|m| ours(m, QuantFormat::Q2, false)),
        ),
        (
            "same, example re-implementation",
            "2.125 + 32/cols",
            Box::new(|m| q2_two_level(m, 32, 15)),
        ),
        (
            "twain Q2 without clip search",
            "2.125 + 32/cols",
            Box::new(|m| ours(m, QuantFormat::Q2, true)),
        ),
        (
            "G64, u4 sub-scale x f32 row scale",
            "2.0625 + 32/cols",
            Box::new(|m| q2_two_level(m, 64, 15)),
        ),
    ];
    table("2-bit candidates (decoder matrices)", &dec, &KINDS[..7], q2);
    // token_embd: subsample rows to keep the run short.
    let emb: Vec<Mat> = all
        .iter()
        .filter(|m| m.kind == "token_embd")
        .map(|m| {
            let step = 8;
            let w: Vec<f32> =
                m.w.chunks(m.cols)
                    .step_by(step)
                    .flatten()
                    .copied()
                    .collect();
            Mat {
                kind: m.kind,
                rows: m.rows.div_ceil(step),
                cols: m.cols,
                w,
            }
        })
        .collect();
    let mut both = dec;
    both.extend(emb);
    let q4: Vec<Scheme> = vec![
        (
            "**Q4: G32, f16 scale, codes (c-8)d (twain Q4)**",
            "4.5",
            Box::new(|m| ours(m, QuantFormat::Q4, false)),
        ),
        (
            "twain Q4 without clip search",
            "4.5",
            Box::new(|m| ours(m, QuantFormat::Q4, true)),
        ),
        (
            "Q4 with min: G32, f16 scale + f16 min",
            "5.0",
            Box::new(q4_min),
        ),
        (
            "Q8: G32, f16 scale (twain Q8)",
            "8.5",
            Box::new(|m| ours(m, QuantFormat::Q8, false)),
        ),
    ];
    table(
        "4-bit and 8-bit (decoder matrices and every 8th token_embd row)",
        &both,
        &KINDS,
        q4,
    );

    // Output error of y = W x on these weights for Gaussian-like x: with int8
    // activations (`matmul`) and with f32 activations (`matmul_f32`).
    println!("\n### Output error ||y - W x|| / ||W x|| (decoder matrices, 8 random x each)\n");
    println!("| format | int8 activations (`matmul`) | f32 activations (`matmul_f32`) |");
    println!("|---|---:|---:|");
    for f in [QuantFormat::Q8, QuantFormat::Q4, QuantFormat::Q2] {
        let (mut e8, mut ef, mut n2) = (0.0f64, 0.0f64, 0.0f64);
        for (mi, m) in layers.iter().enumerate() {
            let q = quantize(f, m.rows, m.cols, &m.w, &QuantizeOptions::default()).unwrap();
            let n = 8;
            let mut s = 0x2545_f491_4f6c_dd1du64 ^ mi as u64;
            let x: Vec<f32> = (0..n * m.cols)
                .map(|_| {
                    let mut g = 0.0f32;
                    for _ in 0..4 {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        g += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    }
                    g
                })
                .collect();
            let mut y8 = vec![0.0f32; n * m.rows];
            let mut yf = vec![0.0f32; n * m.rows];
            twain_quant::matmul(&q.as_ref(), &x, &mut y8, twain_quant::Parallelism::Rayon).unwrap();
            twain_quant::matmul_f32(&q.as_ref(), &x, &mut yf, twain_quant::Parallelism::Rayon)
                .unwrap();
            for j in 0..n {
                for r in 0..m.rows {
                    let exact: f64 = (0..m.cols)
                        .map(|c| m.w[r * m.cols + c] as f64 * x[j * m.cols + c] as f64)
                        .sum();
                    e8 += (y8[j * m.rows + r] as f64 - exact).powi(2);
                    ef += (yf[j * m.rows + r] as f64 - exact).powi(2);
                    n2 += exact * exact;
                }
            }
        }
        println!(
            "| {f} | {:.4} | {:.4} |",
            (e8 / n2).sqrt(),
            (ef / n2).sqrt()
        );
    }

    // Quantizer speed on the full embedding table.
    if let Some(m) = all.iter().find(|m| m.kind == "token_embd") {
        println!();
        for f in [QuantFormat::Q4, QuantFormat::Q2, QuantFormat::Q8] {
            let t = Instant::now();
            let _ = quantize(f, m.rows, m.cols, &m.w, &QuantizeOptions::default()).unwrap();
            println!(
                "quantize {f} {}x{}: {:.2} s",
                m.rows,
                m.cols,
                t.elapsed().as_secs_f64()
            );
        }
    }
}
