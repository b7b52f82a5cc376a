//! Rough per-step timings on a 49 152-token vocabulary (SmolLM2's).
//! Run with `cargo test -p twain-sample --release --test speed -- --ignored --nocapture`.

use std::time::Instant;
use twain_sample::{Sampler, TokenMask};

const VOCAB: usize = 49_152;

/// Logits shaped like a language model's: roughly normal (sd 2.5) with a
/// handful of tokens 8 to 14 above the rest; `flat` gives a near-uniform
/// distribution instead, the worst case for top-p.
fn logits(step: u64, flat: bool) -> Vec<f32> {
    let mut x = step.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..VOCAB)
        .map(|_| {
            if flat {
                return uniform();
            }
            // Irwin-Hall: the sum of 4 uniforms has sd 1/sqrt(3).
            let z = (uniform() + uniform() + uniform() + uniform() - 2.0) * 3f32.sqrt();
            let spike = uniform();
            2.5 * z
                + if spike > 0.9998 {
                    8.0 + 6.0 * uniform()
                } else {
                    0.0
                }
        })
        .collect()
}

fn time(name: &str, sampler: &mut Sampler, mask: Option<&TokenMask>) {
    time_on(name, sampler, mask, false)
}

fn time_on(name: &str, sampler: &mut Sampler, mask: Option<&TokenMask>, flat: bool) {
    if let Ok(only) = std::env::var("SPEED_ONLY") {
        if name != only {
            return;
        }
    }
    let inputs: Vec<Vec<f32>> = (0..16).map(|s| logits(s, flat)).collect();
    let history: Vec<u32> = (0..1024).map(|i| (i * 7919 % VOCAB) as u32).collect();
    let mut buf = vec![0.0f32; VOCAB];
    // The best of 20 rounds: other processes on the machine only add time.
    let steps = 32;
    let mut best = std::time::Duration::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        for i in 0..steps {
            buf.copy_from_slice(&inputs[i % inputs.len()]);
            let r = match mask {
                Some(m) => sampler.sample_masked(&mut buf, &history, m),
                None => sampler.sample(&mut buf, &history),
            };
            r.unwrap();
        }
        best = best.min(start.elapsed() / steps as u32);
    }
    println!("{name:<48} {best:>10.1?} per step");
}

#[test]
#[ignore = "timing, run by hand"]
fn per_step_timings() {
    let b = || Sampler::builder().seed(1);
    time("greedy", &mut Sampler::greedy(), None);
    time(
        "temperature 0.8",
        &mut b().temperature(0.8).build().unwrap(),
        None,
    );
    time("top-k 40", &mut b().top_k(40).build().unwrap(), None);
    time("top-p 0.9", &mut b().top_p(0.9).build().unwrap(), None);
    time("min-p 0.05", &mut b().min_p(0.05).build().unwrap(), None);
    time(
        "t 0.7, top-k 40, top-p 0.9, min-p 0.05, rep 1.1",
        &mut b()
            .temperature(0.7)
            .top_k(40)
            .top_p(0.9)
            .min_p(0.05)
            .repetition_penalty(1.1)
            .build()
            .unwrap(),
        None,
    );
    time(
        "t 0.7, top-p 0.9, rep 1.1 (no top-k)",
        &mut b()
            .temperature(0.7)
            .top_p(0.9)
            .repetition_penalty(1.1)
            .build()
            .unwrap(),
        None,
    );
    time("top-k 5000", &mut b().top_k(5000).build().unwrap(), None);
    time_on(
        "top-p 0.9, near-uniform logits (worst case)",
        &mut b().top_p(0.9).build().unwrap(),
        None,
        true,
    );
    let mut half = TokenMask::deny_all(VOCAB);
    for t in (0..VOCAB as u32).step_by(2) {
        half.allow(t).unwrap();
    }
    time(
        "top-p 0.9, mask allowing every other token",
        &mut b().top_p(0.9).build().unwrap(),
        Some(&half),
    );
    time(
        "greedy, mask allowing every other token",
        &mut Sampler::greedy(),
        Some(&half),
    );
}

#[test]
#[ignore = "timing, run by hand"]
fn softmax_timing() {
    let l = logits(3, false);
    let mut buf = l.clone();
    let start = Instant::now();
    for _ in 0..400 {
        buf.copy_from_slice(&l);
        twain_sample::softmax_in_place(&mut buf).unwrap();
    }
    println!("softmax_in_place {:?} per call", start.elapsed() / 400);
    let start = Instant::now();
    let mut s = 0.0f32;
    for _ in 0..400 {
        buf.copy_from_slice(&l);
        s += buf.iter().map(|x| x.exp()).sum::<f32>();
    }
    println!("std exp + sum {:?} per call ({s})", start.elapsed() / 400);
}

#[test]
#[ignore = "timing, run by hand"]
fn nucleus_sizes() {
    for flat in [false, true] {
        let mut s = Sampler::builder().top_p(0.9).seed(1).build().unwrap();
        let n = s.distribution(&mut logits(1, flat), &[]).unwrap().len();
        let max = s
            .distribution(&mut logits(1, flat), &[])
            .unwrap()
            .iter()
            .map(|p| p.prob)
            .fold(0.0, f32::max);
        println!("flat {flat}: top-p 0.9 keeps {n} tokens, best p = {max}");
    }
}
