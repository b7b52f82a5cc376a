//! Property tests: the unmerged apply equals the dense delta, for any shape and batch.

use proptest::prelude::*;
use twain_adapters::LoraAdapter;
use twain_core::LinearDelta;

proptest! {
    #[test]
    fn apply_equals_dense_delta(
        rows in 1usize..40,
        cols in 1usize..40,
        r in 1usize..9,
        n in 1usize..6,
        scaling in -2.0f32..2.0,
        mult in -2.0f32..2.0,
        seed in any::<u64>(),
    ) {
        let mut rng = twain_convert::synthetic::SplitMix::new(seed);
        let a: Vec<f32> = (0..r * cols).map(|_| rng.uniform()).collect();
        let b: Vec<f32> = (0..rows * r).map(|_| rng.uniform()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform()).collect();
        let y0: Vec<f32> = (0..n * rows).map(|_| rng.uniform()).collect();
        let mut ad = LoraAdapter::new();
        ad.insert("blk.1.ffn_gate.weight", rows, cols, r, scaling, a, b).unwrap();
        let ad = ad.with_scale(mult);
        let d = ad.delta("blk.1.ffn_gate.weight").unwrap();
        let mut y = y0.clone();
        ad.apply("blk.1.ffn_gate.weight", &x, n, &mut y).unwrap();
        for i in 0..n {
            for j in 0..rows {
                let want = y0[i * rows + j]
                    + (0..cols).map(|c| d[j * cols + c] * x[i * cols + c]).sum::<f32>();
                let tol = 1e-4 * (1.0 + (scaling * mult).abs() * (r * cols) as f32);
                prop_assert!((y[i * rows + j] - want).abs() < tol, "{} vs {}", y[i * rows + j], want);
            }
        }
    }
}
