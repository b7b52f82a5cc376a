//! Whole-model forward passes on random weights at SmolLM2-135M's shape
//! (30 layers, d 576, 9 / 3 heads of 64, FFN 1536, vocab 49 152): a 128-token
//! prefill and one decode step after a 128-token context, for the `q4` preset
//! (the default) and `afm` (2-bit, with a 5:3 KV-sharing plan), on 1 and 2
//! threads. The end-to-end numbers on the real model are `twain bench`
//! (docs/benchmarks.md); this is the regression guard that needs no model file.
//!
//! `cargo bench -p twain-benches --bench model`

use criterion::{BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use twain_convert::synthetic::{random_model, tiny_config};
use twain_convert::Preset;
use twain_core::{KvPlan, Transformer, TransformerOptions};
use twain_model::Model;

const PROMPT: usize = 128;

fn smol_shape() -> twain_core::ModelConfig {
    let mut c = tiny_config(30);
    c.d_model = 576;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.ffn_hidden = 1536;
    c.vocab_size = 49_152;
    c.context_length = 2048;
    c
}

fn model(preset: Preset) -> Transformer {
    let mut c = smol_shape();
    if preset == Preset::Afm {
        c.kv_source = KvPlan::shared(c.n_layers, 5, 3)
            .expect("5:3 plan")
            .sources()
            .to_vec();
    }
    let loaded = random_model(&c, preset, 3).expect("random model");
    Transformer::from_loaded(loaded, TransformerOptions::default()).expect("model")
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let tokens: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 7919) % 49_152).collect();
    for (name, preset) in [("q4", Preset::Q4), ("afm", Preset::Afm)] {
        let m = model(preset);
        let mut logits = vec![0.0f32; m.info().vocab_size];
        let mut g = c.benchmark_group(format!("smol_shape_{name}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(2));
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            g.throughput(Throughput::Elements(PROMPT as u64));
            g.bench_function(BenchmarkId::new("prefill128", format!("{threads}t")), |b| {
                b.iter(|| {
                    pool.install(|| {
                        let mut s = m.new_state();
                        m.forward(&mut s, &tokens, &mut logits).expect("prefill");
                    })
                })
            });
            let mut ctx = m.new_state();
            m.forward(&mut ctx, &tokens, &mut logits).expect("context");
            g.throughput(Throughput::Elements(1));
            g.bench_function(
                BenchmarkId::new("decode_at128", format!("{threads}t")),
                |b| {
                    b.iter(|| {
                        pool.install(|| {
                            m.forward(&mut ctx, &[17], &mut logits).expect("decode");
                            m.truncate(&mut ctx, PROMPT).expect("truncate");
                        })
                    })
                },
            );
        }
        g.finish();
    }
    c.final_summary();
}
