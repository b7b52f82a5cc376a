//! Kernel benchmarks: matvec and matmul (batch 64) for every weight format at
//! SmolLM2-135M and AFM-3B shapes, on 1 and 2 threads.
//!
//! `cargo bench -p twain-benches --bench quant` runs criterion (throughput in
//! weight bytes per second). `cargo bench -p twain-benches --bench quant -- --table`
//! instead prints a markdown table with weight GB/s and GFLOP/s (best of 25
//! short timed loops), the one in docs/benchmarks.md. `--quick` limits the
//! shapes to 1536x576 and 49152x576; a filter argument works as usual.

use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use twain_quant::{matmul, quantize, Parallelism, QMatrix, QuantFormat, QuantizeOptions};

/// (name, rows, cols)
const SHAPES: [(&str, usize, usize); 9] = [
    ("smol.attn_q", 576, 576),
    ("smol.attn_kv", 192, 576),
    ("smol.ffn_up", 1536, 576),
    ("smol.ffn_down", 576, 1536),
    ("smol.lm_head", 49152, 576),
    ("afm.attn_q", 2048, 2048),
    ("afm.attn_kv", 256, 2048),
    ("afm.ffn_up", 6656, 2048),
    ("afm.ffn_down", 2048, 6656),
];
const QUICK: [usize; 2] = [2, 4];
const FORMATS: [QuantFormat; 5] = [
    QuantFormat::F32,
    QuantFormat::F16,
    QuantFormat::Q8,
    QuantFormat::Q4,
    QuantFormat::Q2,
];
const BATCH: usize = 64;

fn weights(rows: usize, cols: usize) -> Vec<f32> {
    // Roughly Gaussian (sum of uniforms) weights of scale 0.05.
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ (rows * 31 + cols) as u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..rows * cols)
        .map(|_| 0.05 * (next() + next() + next() + next()))
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

struct Case {
    name: String,
    m: QMatrix,
    x: Vec<f32>,
}

fn cases(quick: bool, filter: Option<&str>) -> Vec<(usize, usize, String, Vec<Case>)> {
    let mut out = Vec::new();
    for (i, &(shape, rows, cols)) in SHAPES.iter().enumerate() {
        if quick && !QUICK.contains(&i) {
            continue;
        }
        if let Some(f) = filter {
            if !shape.contains(f) && !FORMATS.iter().any(|fm| format!("{shape}/{fm}").contains(f)) {
                continue;
            }
        }
        let w = weights(rows, cols);
        let x: Vec<f32> = weights(BATCH, cols).iter().map(|v| v * 20.0).collect();
        let opts = QuantizeOptions {
            no_clip_search: true,
            ..Default::default()
        };
        let cs = FORMATS
            .iter()
            .map(|&f| Case {
                name: format!("{shape}/{f}"),
                m: quantize(f, rows, cols, &w, &opts).expect("quantize"),
                x: x.clone(),
            })
            .collect();
        out.push((rows, cols, format!("{shape} {rows}x{cols}"), cs));
    }
    out
}

/// One call; run it inside the pool's `install` (as a model's forward pass would
/// be), so the cross-thread hop into the pool is not timed.
fn run(c: &Case, n: usize, y: &mut [f32]) {
    matmul(
        &c.m.as_ref(),
        black_box(&c.x[..n * c.m.cols()]),
        y,
        Parallelism::Rayon,
    )
    .expect("matmul");
    black_box(y);
}

fn best_secs(c: &Case, n: usize, threads: &rayon::ThreadPool) -> f64 {
    threads.install(|| best_secs_here(c, n))
}

fn best_secs_here(c: &Case, n: usize) -> f64 {
    let mut y = vec![0.0f32; n * c.m.rows()];
    let y = &mut y[..];
    run(c, n, y);
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed() < Duration::from_millis(30) && reps < 3 {
        run(c, n, y);
        reps += 1;
    }
    let per = start.elapsed().as_secs_f64() / reps.max(1) as f64;
    let iters = ((0.004 / per).ceil() as usize).clamp(1, 1000);
    let mut times: Vec<f64> = (0..25)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                run(c, n, y);
            }
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    // The minimum: on a shared machine other processes only ever add time.
    times.sort_by(f64::total_cmp);
    times[0]
}

fn table(quick: bool, filter: Option<&str>) {
    let pools = [(1, pool(1)), (2, pool(2))];
    println!("backend: {}\n", twain_quant::backend_name());
    println!("| shape | format | op | threads | time | weight GB/s | GFLOP/s |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for (rows, cols, shape, cs) in cases(quick, filter) {
        for c in &cs {
            let bytes = c.m.data().len() as f64;
            for (op, n) in [("matvec", 1), ("matmul64", BATCH)] {
                for (t, p) in &pools {
                    let s = best_secs(c, n, p);
                    let flops = 2.0 * (rows * cols * n) as f64;
                    println!(
                        "| {shape} | {} | {op} | {t} | {:.1} us | {:.1} | {:.1} |",
                        c.m.format(),
                        s * 1e6,
                        bytes * n as f64 / s / 1e9 / n as f64,
                        flops / s / 1e9
                    );
                }
            }
        }
    }
}

fn bench(c: &mut Criterion, quick: bool, filter: Option<&str>) {
    let pools = [(1, pool(1)), (2, pool(2))];
    for (_, _, shape, cs) in cases(quick, filter) {
        let mut g = c.benchmark_group(shape);
        g.sample_size(10).warm_up_time(Duration::from_millis(200));
        g.measurement_time(Duration::from_millis(500));
        for case in &cs {
            g.throughput(Throughput::BytesDecimal(case.m.data().len() as u64));
            for (op, n) in [("matvec", 1), ("matmul64", BATCH)] {
                for (t, p) in &pools {
                    let id = BenchmarkId::new(format!("{}/{op}", case.name), format!("{t}t"));
                    let mut y = vec![0.0f32; n * case.m.rows()];
                    g.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            p.install(|| {
                                let t = Instant::now();
                                for _ in 0..iters {
                                    run(case, n, &mut y);
                                }
                                t.elapsed()
                            })
                        })
                    });
                }
            }
        }
        g.finish();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let filter = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    if args.iter().any(|a| a == "--table") {
        table(quick, filter);
        return;
    }
    let mut c = Criterion::default().with_filter(filter.unwrap_or(""));
    bench(&mut c, quick, filter);
    c.final_summary();
}
