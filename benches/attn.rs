//! Attention kernels over a 512-position context, head size 64 (SmolLM2) and
//! 128 (the AFM shape): 16 causal query rows through `attn::attend_causal16`
//! (the best SIMD path, and the AVX2 path where the CPU has it) against the
//! per-row path (`dot_rows`, softmax, `axpy_rows` over the int8 cache) that
//! single rows (decode) still use.
//!
//! `cargo bench -p twain-benches --bench attn`

use criterion::{BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use twain_quant::{attn, int8};

const CTX: usize = 512;
const ROWS: usize = 16;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 2_654_435_761 + seed) % 1000) as f32 / 500.0 - 1.0) * 0.5)
        .collect()
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for d in [64usize, 128] {
        let q = values(ROWS * d, 1);
        let k = values(CTX * d, 2);
        let v = values(CTX * d, 3);
        // The int8 cache the per-row path reads.
        let quant = |x: &[f32]| {
            let mut qs = vec![0i8; x.len()];
            let scales: Vec<f32> = x
                .chunks(d)
                .zip(qs.chunks_mut(d))
                .map(|(r, o)| int8::quantize_row(r, o).expect("finite"))
                .collect();
            (qs, scales)
        };
        let (kq, ks) = quant(&k);
        let (vq, vs) = quant(&v);
        // The last 16 rows of a 512-token prompt.
        let limits: Vec<usize> = (0..ROWS).map(|i| CTX - ROWS + i + 1).collect();
        let mut out = vec![0.0f32; ROWS * d];
        let mut scratch = Vec::new();
        let mut g = c.benchmark_group(format!("attend_16_rows_ctx{CTX}_d{d}"));
        let macs: usize = limits.iter().map(|l| 2 * l * d).sum();
        g.throughput(Throughput::Elements(macs as u64));
        g.bench_function(BenchmarkId::from_parameter("attend_causal16"), |b| {
            b.iter(|| attn::attend_causal16(&q, d, &k, &v, d, &limits, &mut out, d, &mut scratch))
        });
        if attn::attend_causal16_avx2(&q, d, &k, &v, d, &limits, &mut out, d, &mut scratch) {
            g.bench_function(BenchmarkId::from_parameter("attend_causal16_avx2"), |b| {
                b.iter(|| {
                    attn::attend_causal16_avx2(&q, d, &k, &v, d, &limits, &mut out, d, &mut scratch)
                })
            });
        }
        let mut scores = vec![0.0f32; CTX];
        g.bench_function(BenchmarkId::from_parameter("per_row_int8"), |b| {
            b.iter(|| {
                for (i, &lim) in limits.iter().enumerate() {
                    let s = &mut scores[..lim];
                    attn::dot_rows(&kq, d, &ks, 1, &q[i * d..(i + 1) * d], s);
                    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let inv = 1.0 / attn::exp_sub_sum(s, max);
                    s.iter_mut().for_each(|p| *p *= inv);
                    let o = &mut out[i * d..(i + 1) * d];
                    o.fill(0.0);
                    attn::axpy_rows(s, &vq, d, &vs, 1, o);
                }
            })
        });
        g.finish();
    }
    c.final_summary();
}
