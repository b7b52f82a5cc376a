//! The Hadamard transforms: `H_12` is Hadamard, `matrix(n)` is orthonormal,
//! every path computes `x · matrix(n)` (and `x · matrix(n)^T` for the
//! transpose), SIMD agrees with scalar, the transpose undoes the transform,
//! rows are independent, and unsupported lengths are errors.
//!
//! Relative errors are `‖a - b‖₂ / ‖b‖₂` (the transform keeps the norm).

// Matrices are indexed by (row, column).
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use twain_quant::hadamard::{self, Path, H12};

/// Lengths with a dense reference (the matrices are cached).
const DENSE_SIZES: [usize; 21] = [
    1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 144, 192, 288, 384, 576, 768, 1152, 1536, 2048,
];

/// Larger lengths, checked against the scalar path and by the round trip.
const BIG_SIZES: [usize; 6] = [3072, 4096, 4608, 6144, 9216, 8192];

fn dense(n: usize) -> Arc<Vec<f32>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Vec<f32>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache.lock().unwrap().get(&n) {
        return m.clone();
    }
    let m = Arc::new(hadamard::matrix(n).expect("supported"));
    cache.lock().unwrap().insert(n, m.clone());
    m
}

/// `x · M` (or `x · M^T`) in f64, M row-major n x n.
fn mul_dense(x: &[f32], m: &[f32], transposed: bool) -> Vec<f32> {
    let n = x.len();
    let mut y = vec![0.0f64; n];
    if transposed {
        for (c, yc) in y.iter_mut().enumerate() {
            let row = &m[c * n..(c + 1) * n];
            *yc = x.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
    } else {
        for (r, &xr) in x.iter().enumerate() {
            let row = &m[r * n..(r + 1) * n];
            for (yc, &b) in y.iter_mut().zip(row) {
                *yc += xr as f64 * b as f64;
            }
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let nb = norm(b);
    if nb == 0.0 {
        d
    } else {
        d / nb
    }
}

fn simd_paths() -> Vec<Path> {
    Path::ALL
        .into_iter()
        .filter(|p| *p != Path::Scalar && p.is_supported())
        .collect()
}

/// Vectors of length `n`: uniform values times one magnitude, sometimes
/// with zeros or a spike mixed in.
fn vector(n: usize) -> impl Strategy<Value = Vec<f32>> {
    (
        prop::collection::vec(-1.0f32..1.0, n),
        prop_oneof![Just(1e-20f32), Just(1e-3), Just(1.0), Just(1e4), Just(1e15)],
        0u8..4,
        any::<usize>(),
    )
        .prop_map(move |(base, mag, kind, at)| {
            let mut x: Vec<f32> = base.into_iter().map(|v| v * mag).collect();
            match kind {
                0 => x.iter_mut().step_by(3).for_each(|v| *v = 0.0),
                1 => x[at % n] = 100.0 * mag,
                _ => {}
            }
            x
        })
}

fn dense_case() -> impl Strategy<Value = Vec<f32>> {
    prop::sample::select(&DENSE_SIZES[..]).prop_flat_map(vector)
}

fn any_case() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        3 => prop::sample::select(&DENSE_SIZES[..]),
        1 => prop::sample::select(&BIG_SIZES[..]),
    ]
    .prop_flat_map(vector)
}

#[test]
fn h12_is_hadamard() {
    for r in 0..12 {
        for c in 0..12 {
            assert!(H12[r][c] == 1 || H12[r][c] == -1);
            let dot: i32 = (0..12)
                .map(|k| i32::from(H12[r][k]) * i32::from(H12[c][k]))
                .sum();
            assert_eq!(dot, if r == c { 12 } else { 0 }, "rows {r}, {c}");
            // Skew-Hadamard: H + H^T = 2 I (so H is not symmetric).
            let s = i32::from(H12[r][c]) + i32::from(H12[c][r]);
            assert_eq!(s, if r == c { 2 } else { 0 }, "({r}, {c})");
        }
    }
    // Paley I, q = 11: border of ones / minus ones, Q[a][b] = chi(a - b).
    let qr = [1usize, 3, 4, 5, 9];
    for r in 1..12 {
        assert_eq!(H12[0][r], 1);
        assert_eq!(H12[r][0], -1);
        for c in 1..12 {
            let diff = (r + 11 - c) % 11;
            let want = if r == c || qr.contains(&diff) { 1 } else { -1 };
            assert_eq!(H12[r][c], want, "({r}, {c})");
        }
    }
}

#[test]
fn matrix_is_orthonormal() {
    for n in [1usize, 2, 12, 16, 24, 144, 576, 1536] {
        let m = hadamard::matrix(n).unwrap();
        assert_eq!(m.len(), n * n);
        let mut worst = 0.0f32;
        for i in 0..n {
            let ri = &m[i * n..(i + 1) * n];
            for k in i..n {
                let rk = &m[k * n..(k + 1) * n];
                let mut acc = [0.0f32; 8];
                let (ci, ck) = (ri.chunks_exact(8), rk.chunks_exact(8));
                let tail: f32 = ci
                    .remainder()
                    .iter()
                    .zip(ck.remainder())
                    .map(|(a, b)| a * b)
                    .sum();
                for (a, b) in ci.zip(ck) {
                    for l in 0..8 {
                        acc[l] += a[l] * b[l];
                    }
                }
                let dot = acc.iter().sum::<f32>() + tail;
                let want = if i == k { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        assert!(worst < 1e-5, "n = {n}: max |M M^T - I| = {worst}");
    }
    // Not symmetric once a H_12 factor is in (symmetric for powers of two).
    let m = hadamard::matrix(12).unwrap();
    assert!((0..12).any(|r| (0..12).any(|c| m[r * 12 + c] != m[c * 12 + r])));
    let m = hadamard::matrix(64).unwrap();
    assert!((0..64).all(|r| (0..64).all(|c| m[r * 64 + c] == m[c * 64 + r])));
}

#[test]
fn index_convention() {
    // n = 1536 = 12 * 128: entry (r, c) = H12[r / 128][c / 128] *
    // (-1)^popcount((r % 128) & (c % 128)) / sqrt(1536).
    let n = 1536;
    let m = hadamard::matrix(n).unwrap();
    let sc = 1.0 / (n as f64).sqrt();
    for (r, c) in [
        (0, 0),
        (1, 1),
        (129, 3),
        (130, 1400),
        (1535, 1535),
        (700, 5),
    ] {
        let s = f64::from(H12[r / 128][c / 128])
            * if ((r % 128) & (c % 128)).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
        assert_eq!(m[r * n + c], (s * sc) as f32, "({r}, {c})");
    }
    // n = 576 = 12 * 12 * 4: i = a * 48 + b * 4 + c2.
    let n = 576;
    let m = hadamard::matrix(n).unwrap();
    for (r, c) in [(0, 0), (47, 100), (575, 1), (333, 222)] {
        let s = f64::from(H12[r / 48][c / 48])
            * f64::from(H12[r / 4 % 12][c / 4 % 12])
            * if ((r % 4) & (c % 4)).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
        assert_eq!(m[r * n + c], (s / 24.0) as f32, "({r}, {c})");
    }
    // The transform of a unit vector e_r is row r of the matrix.
    for n in [12usize, 576, 1536] {
        let m = hadamard::matrix(n).unwrap();
        for r in [0, 1, n / 2 + 3, n - 1] {
            let mut x = vec![0.0f32; n];
            x[r] = 1.0;
            hadamard::transform(&mut x).unwrap();
            assert!(
                rel_err(&x, &m[r * n..(r + 1) * n]) < 1e-6,
                "n = {n}, r = {r}"
            );
        }
    }
}

#[test]
fn unsupported_lengths_are_errors() {
    for n in [
        0usize,
        3,
        5,
        6,
        13,
        36,
        1728,
        6656,
        576 * 13,
        12 * 12 * 12 * 4,
    ] {
        assert!(!hadamard::supported(n), "{n}");
        assert!(hadamard::matrix(n).is_none(), "{n}");
        let mut x = vec![1.0f32; n];
        let e = hadamard::transform(&mut x).unwrap_err();
        assert!(e.to_string().contains(&n.to_string()), "{e}");
        assert!(hadamard::transform_transposed(&mut x).is_err());
        assert!(hadamard::transform_scalar(&mut x).is_err());
        assert!(hadamard::transform_transposed_scalar(&mut x).is_err());
        for p in Path::ALL {
            assert!(hadamard::transform_with(p, &mut x).is_err());
            assert!(hadamard::transform_transposed_with(p, &mut x).is_err());
        }
        assert!(hadamard::transform_rows(&mut x, n).is_err());
        assert!(hadamard::transform_rows_transposed(&mut x, n).is_err());
        assert!(x.iter().all(|&v| v == 1.0), "untouched");
    }
    // Rows: a length that is not a whole number of rows.
    let mut x = vec![1.0f32; 100];
    assert!(hadamard::transform_rows(&mut x, 64).is_err());
    assert!(hadamard::transform_rows_transposed(&mut x, 64).is_err());
    assert!(hadamard::transform_rows(&mut [], 0).is_err());
    assert!(hadamard::transform_rows(&mut [], 64).is_ok());
    for n in [1usize, 2, 12, 24, 48, 144, 576, 1536, 2048, 9216, 1 << 20] {
        assert!(hadamard::supported(n), "{n}");
    }
    // Unsupported paths are errors too.
    for p in Path::ALL.into_iter().filter(|p| !p.is_supported()) {
        assert!(hadamard::transform_with(p, &mut [0.0; 16]).is_err());
    }
}

#[test]
fn env_forcing_and_names() {
    let p = hadamard::path();
    assert!(p.is_supported());
    if std::env::var("TWAIN_QUANT_BACKEND").as_deref() == Ok("scalar") {
        assert_eq!(p, Path::Scalar);
    }
    let names: Vec<_> = Path::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["scalar", "avx2", "avx512"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn matches_dense_matrix(x in dense_case()) {
        let n = x.len();
        let m = dense(n);
        for transposed in [false, true] {
            let want = mul_dense(&x, &m, transposed);
            for p in Path::ALL.into_iter().filter(|p| p.is_supported()) {
                let mut y = x.clone();
                if transposed {
                    hadamard::transform_transposed_with(p, &mut y).unwrap();
                } else {
                    hadamard::transform_with(p, &mut y).unwrap();
                }
                let e = rel_err(&y, &want);
                prop_assert!(e < 1e-4, "n = {}, {:?}, transposed {}: {}", n, p, transposed, e);
            }
            let mut y = x.clone();
            if transposed {
                hadamard::transform_transposed(&mut y).unwrap();
            } else {
                hadamard::transform(&mut y).unwrap();
            }
            prop_assert!(rel_err(&y, &want) < 1e-4);
        }
    }

    #[test]
    fn simd_matches_scalar_and_round_trips(x in any_case()) {
        let n = x.len();
        let mut s = x.clone();
        hadamard::transform_scalar(&mut s).unwrap();
        let mut st = x.clone();
        hadamard::transform_transposed_scalar(&mut st).unwrap();
        for p in simd_paths() {
            let mut y = x.clone();
            hadamard::transform_with(p, &mut y).unwrap();
            let e = rel_err(&y, &s);
            prop_assert!(e < 1e-5, "n = {}, {:?}: {}", n, p, e);
            let mut yt = x.clone();
            hadamard::transform_transposed_with(p, &mut yt).unwrap();
            let e = rel_err(&yt, &st);
            prop_assert!(e < 1e-5, "n = {}, {:?} transposed: {}", n, p, e);
        }
        for p in Path::ALL.into_iter().filter(|p| p.is_supported()) {
            let mut y = x.clone();
            hadamard::transform_with(p, &mut y).unwrap();
            hadamard::transform_transposed_with(p, &mut y).unwrap();
            let e = rel_err(&y, &x);
            prop_assert!(e < 1e-5, "n = {}, {:?} round trip: {}", n, p, e);
            let mut y = x.clone();
            hadamard::transform_transposed_with(p, &mut y).unwrap();
            hadamard::transform_with(p, &mut y).unwrap();
            let e = rel_err(&y, &x);
            prop_assert!(e < 1e-5, "n = {}, {:?} round trip (transposed first): {}", n, p, e);
        }
        // Orthonormal: the norm is kept.
        let (a, b) = (norm(&s), norm(&x));
        prop_assert!((a - b).abs() <= 1e-5 * b + 1e-30);
    }

    #[test]
    fn rows_match_per_row(
        (n, rows) in (prop::sample::select(&DENSE_SIZES[..]), 0usize..5),
        seed in any::<u64>(),
    ) {
        let mut state = seed | 1;
        let x: Vec<f32> = (0..n * rows)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        let mut y = x.clone();
        hadamard::transform_rows(&mut y, n).unwrap();
        let mut yt = x.clone();
        hadamard::transform_rows_transposed(&mut yt, n).unwrap();
        for (r, (row, (got, got_t))) in x
            .chunks_exact(n)
            .zip(y.chunks_exact(n).zip(yt.chunks_exact(n)))
            .enumerate()
        {
            let mut want = row.to_vec();
            hadamard::transform(&mut want).unwrap();
            prop_assert_eq!(got, &want[..], "row {}", r);
            let mut want = row.to_vec();
            hadamard::transform_transposed(&mut want).unwrap();
            prop_assert_eq!(got_t, &want[..], "row {} transposed", r);
        }
    }
}

/// Folding into weights: `x W^T == (x H) (W H)^T`.
#[test]
fn folding_into_weights() {
    let (rows, n) = (5usize, 576usize);
    let w: Vec<f32> = (0..rows * n)
        .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 105.0)
        .collect();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0)
        .collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
    let (mut wh, mut xh) = (w.clone(), x.clone());
    hadamard::transform_rows(&mut wh, n).unwrap();
    hadamard::transform(&mut xh).unwrap();
    for r in 0..rows {
        let want = dot(&x, &w[r * n..(r + 1) * n]);
        let got = dot(&xh, &wh[r * n..(r + 1) * n]);
        assert!((want - got).abs() < 1e-3, "row {r}: {want} vs {got}");
    }
}

/// Speed per transform (no assertions):
/// `cargo test --release -p twain-quant --test hadamard -- --ignored --nocapture`.
#[test]
#[ignore]
fn speed() {
    println!("hadamard::path() = {}", hadamard::path().name());
    for n in [128usize, 576, 1536, 2048, 9216] {
        let mut x: Vec<f32> = (0..n).map(|i| (i % 17) as f32 - 8.0).collect();
        let mut line = format!("n = {n:5}:");
        for p in Path::ALL.into_iter().filter(|p| p.is_supported()) {
            for transposed in [false, true] {
                let f = if transposed {
                    hadamard::transform_transposed_with
                } else {
                    hadamard::transform_with
                };
                let iters = (20_000_000 / n).max(100);
                for _ in 0..iters / 10 {
                    f(p, &mut x).unwrap();
                }
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = Instant::now();
                    for _ in 0..iters {
                        f(p, std::hint::black_box(&mut x)).unwrap();
                    }
                    best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
                }
                let tag = if transposed { "^T" } else { "" };
                line += &format!("  {}{tag} {best:8.1} ns", p.name());
            }
        }
        println!("{line}");
    }
}
