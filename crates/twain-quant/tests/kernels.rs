//! Every SIMD kernel family agrees with the scalar reference.
//!
//! Weights are random bytes (every code pattern, every sub-scale, random
//! finite scales) and activations random values of mixed magnitude and sign,
//! with zero and constant blocks mixed in. Integer parts (activation
//! quantization) must match exactly; float results within
//! `REL_TOL * sum |w_i x_i| + tiny`, i.e. relative to the magnitude of the
//! terms, since SIMD adds partial sums in a different order.

use proptest::prelude::*;
use twain_quant::blocks::{f32_to_f16, Q2Block, Q8ActBlock, Q8Block, QK};
use twain_quant::kernels::{available, scalar, Kernels, SCALAR};
use twain_quant::{Parallelism, QuantFormat};

/// Relative tolerance of float accumulations (f32, a few hundred terms).
const REL_TOL: f32 = 2e-5;

fn close(a: f32, b: f32, mag: f32) -> bool {
    (a - b).abs() <= REL_TOL * mag + 1e-30 || (a.is_nan() && b.is_nan())
}

fn others() -> Vec<&'static Kernels> {
    available().into_iter().filter_map(Kernels::get).collect()
}

/// Activation values: a base pattern scaled by one magnitude per block, some
/// blocks zero or constant.
fn act_values(cols: usize) -> impl Strategy<Value = Vec<f32>> {
    let nb = cols / QK;
    (
        prop::collection::vec(-1.0f32..1.0, cols),
        prop::collection::vec(
            prop_oneof![
                Just(0.0f32),
                Just(1e-30),
                Just(1e-6),
                Just(1.0),
                Just(1e6),
                Just(1e12)
            ],
            nb,
        ),
        prop::collection::vec(0u8..6, nb),
    )
        .prop_map(move |(base, mags, kind)| {
            let mut x = base;
            for b in 0..nb {
                for i in 0..QK {
                    let v = &mut x[b * QK + i];
                    *v = match kind[b] {
                        0 => 0.0,
                        1 => mags[b],
                        _ => *v * mags[b],
                    };
                }
            }
            x
        })
}

fn quant_act(x: &[f32]) -> Vec<Q8ActBlock> {
    let mut a = vec![bytemuck::Zeroable::zeroed(); x.len() / QK];
    assert!(scalar::quantize_act(x, &mut a));
    a
}

/// sum over rows of |w| |x| using the dequantized weights (the tolerance scale).
fn magnitudes(fmt: QuantFormat, data: &[u8], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let m = twain_quant::QMatrix::from_bytes(fmt, rows, cols, data).unwrap();
    let w = m.as_ref().dequantize();
    w.chunks(cols)
        .map(|r| r.iter().zip(x).map(|(a, b)| (a * b).abs()).sum())
        .collect()
}

fn q2_rows(rows: usize, cols: usize) -> impl Strategy<Value = Vec<u8>> {
    let rb = QuantFormat::Q2.row_bytes(cols).unwrap();
    (
        prop::collection::vec(any::<u8>(), rows * rb),
        prop::collection::vec(
            prop_oneof![Just(0.0f32), Just(1e-20), Just(1e-3), Just(1.0), Just(1e10)],
            rows,
        ),
    )
        .prop_map(move |(mut bytes, ds)| {
            for (r, d) in ds.iter().enumerate() {
                bytes[r * rb..r * rb + 4].copy_from_slice(&d.to_le_bytes());
            }
            bytes
        })
}

fn f16_scales(n: usize) -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec(
        prop_oneof![
            Just(0.0f32),
            Just(1e-7),
            -1.0f32..1.0,
            Just(100.0),
            Just(-3e4)
        ],
        n,
    )
    .prop_map(|v| v.into_iter().map(f32_to_f16).collect())
}

/// Q4/Q8 rows: each `[nb f16 scales][code bytes]`.
fn rows_with_scales(rows: usize, nb: usize, d: &[u16], codes: &[u8]) -> Vec<u8> {
    let per = codes.len() / rows;
    let mut out = Vec::new();
    for r in 0..rows {
        for b in 0..nb {
            out.extend_from_slice(&d[r * nb + b].to_le_bytes());
        }
        out.extend_from_slice(&codes[r * per..(r + 1) * per]);
    }
    out
}

fn shape() -> impl Strategy<Value = (usize, usize)> {
    (1usize..40, 1usize..40).prop_map(|(r, nb)| (r, nb * QK))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn q2_kernels_agree((rows, cols, w, x) in shape().prop_flat_map(|(r, c)| (Just(r), Just(c), q2_rows(r, c), act_values(c)))) {
        let act = quant_act(&x);
        let mut want = vec![0.0; rows];
        scalar::q2_q8(&w, cols, &act, &mut want);
        let xd: Vec<f32> = act.iter().flat_map(|a| a.qs.iter().map(move |&q| q as f32 * a.d)).collect();
        let mag = magnitudes(QuantFormat::Q2, &w, rows, cols, &xd);
        let mag_f = magnitudes(QuantFormat::Q2, &w, rows, cols, &x);
        let mut want_f = vec![0.0; rows];
        scalar::q2_f32(&w, cols, &x, &mut want_f);
        for k in others() {
            // Activation quantization is integer-exact across families.
            let mut a = vec![bytemuck::Zeroable::zeroed(); act.len()];
            prop_assert!((k.quantize_act)(&x, &mut a));
            prop_assert_eq!(&a, &act, "{:?} quantize_act", k.backend);
            let mut bad = x.clone();
            bad[(rows * 7919) % cols] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rows % 3];
            prop_assert!(!(k.quantize_act)(&bad, &mut a), "{:?} accepted non-finite", k.backend);
            let mut got = vec![0.0; rows];
            (k.q2_q8)(&w, cols, &act, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want[r], mag[r]), "{:?} row {r}: {} vs {}", k.backend, got[r], want[r]);
            }
            (k.q2_f32)(&w, cols, &x, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want_f[r], mag_f[r]), "{:?} f32 row {r}: {} vs {}", k.backend, got[r], want_f[r]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if twain_quant::kernels::avx512::is_supported() {
            // The block-pair matvec of CPUs without GFNI/VBMI.
            let mut got = vec![0.0; rows];
            twain_quant::kernels::avx512::q2_q8_pairs(&w, cols, &act, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want[r], mag[r]), "avx512 pairs row {r}: {} vs {}", got[r], want[r]);
            }
        }
    }

    #[test]
    fn q4_kernels_agree((rows, cols, d, codes, x) in shape().prop_flat_map(|(r, c)| (Just(r), Just(c), f16_scales(r * c / QK), prop::collection::vec(any::<u8>(), r * c / 2), act_values(c)))) {
        let blocks = rows_with_scales(rows, cols / QK, &d, &codes);
        let bytes: &[u8] = &blocks;
        let act = quant_act(&x);
        let xd: Vec<f32> = act.iter().flat_map(|a| a.qs.iter().map(move |&q| q as f32 * a.d)).collect();
        let mag = magnitudes(QuantFormat::Q4, bytes, rows, cols, &xd);
        let mag_f = magnitudes(QuantFormat::Q4, bytes, rows, cols, &x);
        let mut want = vec![0.0; rows];
        scalar::q4_q8(&blocks, cols, &act, &mut want);
        let mut want_f = vec![0.0; rows];
        scalar::q4_f32(&blocks, cols, &x, &mut want_f);
        for k in others() {
            let mut got = vec![0.0; rows];
            (k.q4_q8)(&blocks, cols, &act, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want[r], mag[r]), "{:?} row {r}: {} vs {}", k.backend, got[r], want[r]);
            }
            (k.q4_f32)(&blocks, cols, &x, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want_f[r], mag_f[r]), "{:?} f32 row {r}: {} vs {}", k.backend, got[r], want_f[r]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if twain_quant::kernels::avx512::is_supported() {
            // The block-pair matvec of CPUs without GFNI/VBMI.
            let mut got = vec![0.0; rows];
            twain_quant::kernels::avx512::q4_q8_pairs(&blocks, cols, &act, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want[r], mag[r]), "avx512 pairs row {r}: {} vs {}", got[r], want[r]);
            }
        }
    }

    #[test]
    fn q8_kernels_agree((rows, cols, d, codes, x) in shape().prop_flat_map(|(r, c)| (Just(r), Just(c), f16_scales(r * c / QK), prop::collection::vec(-127i8..=127, r * c), act_values(c)))) {
        let codes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
        let blocks = rows_with_scales(rows, cols / QK, &d, &codes);
        let bytes: &[u8] = &blocks;
        let act = quant_act(&x);
        let xd: Vec<f32> = act.iter().flat_map(|a| a.qs.iter().map(move |&q| q as f32 * a.d)).collect();
        let mag = magnitudes(QuantFormat::Q8, bytes, rows, cols, &xd);
        let mag_f = magnitudes(QuantFormat::Q8, bytes, rows, cols, &x);
        let mut want = vec![0.0; rows];
        scalar::q8_q8(&blocks, cols, &act, &mut want);
        let mut want_f = vec![0.0; rows];
        scalar::q8_f32(&blocks, cols, &x, &mut want_f);
        for k in others() {
            let mut got = vec![0.0; rows];
            (k.q8_q8)(&blocks, cols, &act, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want[r], mag[r]), "{:?} row {r}: {} vs {}", k.backend, got[r], want[r]);
            }
            (k.q8_f32)(&blocks, cols, &x, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want_f[r], mag_f[r]), "{:?} f32 row {r}: {} vs {}", k.backend, got[r], want_f[r]);
            }
        }
    }

    #[test]
    fn float_kernels_agree(rows in 1usize..6, cols in 1usize..300, seed in prop::collection::vec(-1.0f32..1.0, 2048), mag in prop_oneof![Just(1e-20f32), Just(1.0), Just(1e15)]) {
        let w: Vec<f32> = (0..rows * cols).map(|i| seed[i % 2048] * mag).collect();
        let x: Vec<f32> = (0..cols).map(|i| seed[(i * 7 + 3) % 2048]).collect();
        let h: Vec<u16> = (0..rows * cols).map(|i| f32_to_f16(seed[(i * 5) % 2048] * 1e3)).collect();
        let m32: Vec<f32> = w.chunks(cols).map(|r| r.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum()).collect();
        let m16: Vec<f32> = h.chunks(cols).map(|r| r.iter().zip(&x).map(|(&a, b)| (half::f16::from_bits(a).to_f32() * b).abs()).sum()).collect();
        let mut want = vec![0.0; rows];
        let mut want16 = vec![0.0; rows];
        scalar::f32_f32(&w, cols, &x, &mut want);
        scalar::f16_f32(&h, cols, &x, &mut want16);
        let mut y0 = vec![0.5f32; cols];
        scalar::axpy_f32(0.25, &x, &mut y0);
        let q: Vec<i8> = (0..cols).map(|i| (seed[(i * 3) % 2048] * 127.0) as i8).collect();
        let want_i8 = scalar::dot_i8_f32(&q, &x);
        let mag_i8: f32 = q.iter().zip(&x).map(|(&a, b)| (a as f32 * b).abs()).sum();
        let mut yq = vec![0.5f32; cols];
        scalar::axpy_i8(0.25, &q, &mut yq);
        let mut xa = x.clone();
        xa.resize(cols.div_ceil(QK) * QK, 0.0);
        let want_act = quant_act(&xa);
        for k in others() {
            let mut got = vec![0.0; rows];
            (k.f32_f32)(&w, cols, &x, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want[r], m32[r]), "{:?} f32: {} vs {}", k.backend, got[r], want[r]);
            }
            (k.f16_f32)(&h, cols, &x, &mut got);
            for r in 0..rows {
                prop_assert!(close(got[r], want16[r], m16[r]), "{:?} f16: {} vs {}", k.backend, got[r], want16[r]);
            }
            prop_assert!(close((k.dot_f32)(&w[..cols], &x), want[0], m32[0]));
            let mut y = vec![0.5f32; cols];
            (k.axpy_f32)(0.25, &x, &mut y);
            prop_assert_eq!(&y, &y0);
            prop_assert!(close((k.dot_i8_f32)(&q, &x), want_i8, mag_i8));
            let mut y = vec![0.5f32; cols];
            (k.axpy_i8)(0.25, &q, &mut y);
            prop_assert_eq!(&y, &yq);
            let mut a = vec![bytemuck::Zeroable::zeroed(); xa.len() / QK];
            prop_assert!((k.quantize_act)(&xa, &mut a));
            prop_assert_eq!(&a, &want_act, "{:?} quantize_act", k.backend);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Batched `matmul` (row tiles x column tiles, rayon) of every family
    /// against the scalar family, every format and activation mode.
    #[test]
    fn batched_matmul_agrees(rows in 1usize..70, nb in 1usize..20, n in 1usize..20, seed in prop::collection::vec(-1.0f32..1.0, 4096)) {
        let cols = nb * QK;
        let w: Vec<f32> = (0..rows * cols).map(|i| seed[(i * 13) % 4096] * (1.0 + (i / cols) as f32)).collect();
        let x: Vec<f32> = (0..n * cols).map(|i| seed[(i * 7 + 1) % 4096] * 3.0).collect();
        for fmt in QuantFormat::ALL {
            let q = twain_quant::quantize(fmt, rows, cols, &w, &Default::default()).unwrap();
            let deq = q.as_ref().dequantize();
            for f32_act in [false, true] {
                let run = |k: &Kernels, par| {
                    let mut y = vec![f32::NAN; n * rows];
                    if f32_act {
                        twain_quant::matmul_f32_with(k, &q.as_ref(), &x, &mut y, par).unwrap();
                    } else {
                        twain_quant::matmul_with(k, &q.as_ref(), &x, &mut y, par).unwrap();
                    }
                    y
                };
                let want = run(&SCALAR, Parallelism::Sequential);
                for k in others() {
                    for par in [Parallelism::Sequential, Parallelism::Rayon] {
                        let got = run(k, par);
                        for j in 0..n {
                            for r in 0..rows {
                                let mag: f32 = (0..cols).map(|c| (deq[r * cols + c] * x[j * cols + c]).abs()).sum();
                                let (a, b) = (got[j * rows + r], want[j * rows + r]);
                                prop_assert!(close(a, b, mag), "{fmt} {:?} f32act={f32_act} {par:?} y[{j}][{r}]: {a} vs {b}", k.backend);
                            }
                        }
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The batched float kernels (f32 / f16 weights) at any row length, not
    /// only whole blocks: the vector loop and its scalar tail.
    #[test]
    fn batched_float_matmul_any_width(rows in 1usize..12, cols in 1usize..90, n in 2usize..8, seed in prop::collection::vec(-1.0f32..1.0, 1024)) {
        let w: Vec<f32> = (0..rows * cols).map(|i| seed[(i * 13) % 1024]).collect();
        let x: Vec<f32> = (0..n * cols).map(|i| seed[(i * 7 + 1) % 1024] * 3.0).collect();
        for fmt in [QuantFormat::F32, QuantFormat::F16] {
            let q = twain_quant::quantize(fmt, rows, cols, &w, &Default::default()).unwrap();
            let deq = q.as_ref().dequantize();
            let mut want = vec![f32::NAN; n * rows];
            twain_quant::matmul_f32_with(&SCALAR, &q.as_ref(), &x, &mut want, Parallelism::Sequential).unwrap();
            for k in others() {
                let mut got = vec![f32::NAN; n * rows];
                twain_quant::matmul_f32_with(k, &q.as_ref(), &x, &mut got, Parallelism::Sequential).unwrap();
                for j in 0..n {
                    for r in 0..rows {
                        let mag: f32 = (0..cols).map(|c| (deq[r * cols + c] * x[j * cols + c]).abs()).sum();
                        let (a, b) = (got[j * rows + r], want[j * rows + r]);
                        prop_assert!(close(a, b, mag), "{fmt} {:?} y[{j}][{r}]: {a} vs {b}", k.backend);
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// `matmul_many` over matrices of mixed formats and heights gives exactly
    /// what `matmul` gives for each, with every family, 1 or many columns.
    #[test]
    fn matmul_many_matches_matmul_per_matrix(
        rows in prop::collection::vec(1usize..50, 1..4),
        fmts in prop::collection::vec(0usize..5, 4),
        nb in 1usize..8,
        n in 1usize..20,
        seed in prop::collection::vec(-1.0f32..1.0, 1024),
    ) {
        let cols = nb * QK;
        let x: Vec<f32> = (0..n * cols).map(|i| seed[(i * 7 + 3) % 1024] * 2.0).collect();
        let qs: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(m, &r)| {
                let w: Vec<f32> = (0..r * cols).map(|i| seed[(i * 13 + m) % 1024]).collect();
                twain_quant::quantize(QuantFormat::ALL[fmts[m]], r, cols, &w, &Default::default()).unwrap()
            })
            .collect();
        let refs: Vec<_> = qs.iter().map(|q| q.as_ref()).collect();
        for k in others() {
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let mut got: Vec<Vec<f32>> = rows.iter().map(|r| vec![f32::NAN; r * n]).collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
                twain_quant::matmul_many_with(k, &refs, &x, &mut outs, par).unwrap();
                for (m, q) in refs.iter().enumerate() {
                    let mut want = vec![f32::NAN; rows[m] * n];
                    twain_quant::matmul_with(k, q, &x, &mut want, par).unwrap();
                    prop_assert_eq!(&got[m], &want, "{:?} matrix {} ({})", k.backend, m, q.format());
                }
            }
        }
    }
}

/// `matmul_many` refuses mismatched inputs with an error, not a panic.
#[test]
fn matmul_many_rejects_bad_shapes() {
    let w =
        twain_quant::quantize(QuantFormat::Q4, 4, 64, &[0.5; 256], &Default::default()).unwrap();
    let v =
        twain_quant::quantize(QuantFormat::Q4, 4, 32, &[0.5; 128], &Default::default()).unwrap();
    let x = vec![1.0f32; 128];
    let mut a = vec![0.0f32; 8];
    let mut b = vec![0.0f32; 8];
    let err = |r: Result<(), twain_quant::QuantError>| r.unwrap_err().to_string();
    let many = twain_quant::matmul_many;
    let e = err(many(
        &[w.as_ref()],
        &x,
        &mut [&mut a, &mut b],
        Parallelism::Rayon,
    ));
    assert!(e.contains("1 matrices but 2 outputs"), "{e}");
    let e = err(many(
        &[w.as_ref(), v.as_ref()],
        &x,
        &mut [&mut a, &mut b],
        Parallelism::Rayon,
    ));
    assert!(e.contains("share one input"), "{e}");
    let mut short = vec![0.0f32; 7];
    let e = err(many(
        &[w.as_ref()],
        &x,
        &mut [&mut short],
        Parallelism::Rayon,
    ));
    assert!(e.contains("expected 2 x 4"), "{e}");
    many(&[], &x, &mut [], Parallelism::Rayon).unwrap();
}

#[test]
fn scalar_is_always_available() {
    println!(
        "backends: {:?}, chosen {}",
        available(),
        twain_quant::backend_name()
    );
    assert_eq!(available()[0], SCALAR.backend);
    assert!(!twain_quant::backend_name().is_empty());
    let _ = Q2Block::from_codes(&[0; QK]);
    let _ = Q8Block { qs: [0; 32] };
}

#[test]
fn tiny_activation_blocks_agree() {
    // A block whose scale would be subnormal (1 / d overflows) next to zeros.
    let mut x = vec![0.0f32; 96];
    x[0] = 1e-40;
    x[33] = -3e-39;
    x[64] = 1.0;
    let want = quant_act(&x);
    assert_eq!(want[0].qs, [0; 32]);
    assert_eq!(want[2].qs[0], 127);
    for k in others() {
        let mut a = vec![bytemuck::Zeroable::zeroed(); 3];
        assert!((k.quantize_act)(&x, &mut a));
        assert_eq!(a, want, "{:?}", k.backend);
    }
    let mut q = [0i8; 32];
    let s = twain_quant::int8::quantize_row(&x[..32], &mut q).unwrap();
    assert_eq!(s, 0.0);
    assert_eq!(q, [0; 32]);
}

mod attention_rows {
    use proptest::prelude::*;
    use twain_quant::attn;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The fused strided-row kernels agree with their scalar references
        /// (float accumulation: within 1e-4 relative to the sum of magnitudes).
        #[test]
        fn fused_rows_match_scalar(
            d8 in 1usize..17, n in 1usize..40, gap in 0usize..3,
            seed in any::<u64>(), scale_mag in -20i32..20,
        ) {
            let d = 8 * d8;
            let stride = d * (gap + 1);
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (s >> 33) as u32 };
            let rows: Vec<i8> = (0..n * stride).map(|_| (next() % 255) as i32 as i8).collect();
            let scales: Vec<f32> = (0..n * 2).map(|_| (next() % 1000) as f32 * 2f32.powi(scale_mag) / 1000.0).collect();
            let x: Vec<f32> = (0..d).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let w: Vec<f32> = (0..n).map(|_| (next() % 1000) as f32 / 1000.0).collect();
            let mut a = vec![0.0f32; n];
            let mut b = vec![0.0f32; n];
            attn::dot_rows(&rows, stride, &scales, 2, &x, &mut a);
            attn::scalar_dot_rows(&rows, stride, &scales, 2, &x, &mut b);
            for t in 0..n {
                let mag: f32 = (0..d).map(|i| (rows[t * stride + i] as f32 * x[i]).abs()).sum::<f32>() * scales[2 * t];
                prop_assert!((a[t] - b[t]).abs() <= 1e-4 * mag + f32::MIN_POSITIVE, "dot row {}: {} vs {}", t, a[t], b[t]);
            }
            let y0: Vec<f32> = (0..d).map(|i| i as f32 * 0.01).collect();
            let mut ya = y0.clone();
            let mut yb = y0.clone();
            attn::axpy_rows(&w, &rows, stride, &scales, 2, &mut ya);
            attn::scalar_axpy_rows(&w, &rows, stride, &scales, 2, &mut yb);
            for i in 0..d {
                let mag: f32 = y0[i].abs() + (0..n).map(|t| (w[t] * scales[2 * t] * rows[t * stride + i] as f32).abs()).sum::<f32>();
                prop_assert!((ya[i] - yb[i]).abs() <= 1e-4 * mag + f32::MIN_POSITIVE, "axpy col {}: {} vs {}", i, ya[i], yb[i]);
            }
        }
    }
}

mod simd_dequantize {
    use proptest::prelude::*;
    use twain_quant::{quantize, QuantFormat, QuantizeOptions};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The AVX-512 row dequantizer (embedding gather) is bit-identical to
        /// the scalar reference.
        #[test]
        fn simd_dequantize_row_is_exact(blocks in 1usize..20, rows in 1usize..4, seed in any::<u64>(), mag in -12i32..12) {
            #[cfg(target_arch = "x86_64")]
            {
                if !twain_quant::kernels::available().contains(&twain_quant::kernels::Backend::Avx512Vnni) {
                    return Ok(());
                }
                let cols = 32 * blocks;
                let mut s = seed;
                let w: Vec<f32> = (0..rows * cols).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 2f32.powi(mag) }).collect();
                for fmt in [QuantFormat::Q2, QuantFormat::Q4, QuantFormat::Q8] {
                    let q = quantize(fmt, rows, cols, &w, &QuantizeOptions::default()).unwrap();
                    let m = q.as_ref();
                    for r in 0..rows {
                        let mut a = vec![0.0f32; cols];
                        let mut b = vec![0.0f32; cols];
                        prop_assert!(twain_quant::kernels::avx512::dequantize_row(fmt, m.row_data(r).unwrap(), &mut a));
                        match fmt {
                            QuantFormat::Q2 => twain_quant::kernels::scalar::dequantize_row_q2(m.row_data(r).unwrap(), &mut b),
                            QuantFormat::Q4 => twain_quant::kernels::scalar::dequantize_row_q4(m.row_data(r).unwrap(), &mut b),
                            _ => twain_quant::kernels::scalar::dequantize_row_q8(m.row_data(r).unwrap(), &mut b),
                        }
                        prop_assert_eq!(&a, &b, "{} row {}", fmt, r);
                    }
                }
            }
        }
    }
}

mod softmax_exp {
    use proptest::prelude::*;
    use twain_quant::attn;

    proptest! {
        /// The vectorised exponentials agree with `f32::exp` (relative 4e-7,
        /// absolute 1e-37 near the underflow) and so do their sums.
        #[test]
        fn exp_sub_sum_matches_scalar(x in prop::collection::vec(-120.0f32..10.0, 0..70), max in 0.0f32..10.0) {
            let mut a = x.clone();
            let mut b = x.clone();
            let sa = attn::exp_sub_sum(&mut a, max);
            let sb = attn::scalar_exp_sub_sum(&mut b, max);
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                prop_assert!((u - v).abs() <= 4e-7 * v + 1e-37, "x[{i}] = {}: {u} vs {v}", x[i]);
            }
            prop_assert!((sa - sb).abs() <= 1e-6 * sb + 1e-37, "{sa} vs {sb}");
        }

        /// Causal attention of up to 16 queries agrees with the scalar
        /// reference: every limit from 0 (zeros) to the whole context, strided
        /// queries and outputs, head sizes with and without a SIMD path.
        #[test]
        fn attend_causal16_matches_scalar(
            m in 1usize..=16,
            d in prop_oneof![Just(8usize), Just(16), Just(64), Just(128)],
            t in 1usize..40,
            lims in prop::collection::vec(0usize..40, 16),
            sharp in prop_oneof![Just(0.1f32), Just(1.0), Just(8.0)],
            seed in prop::collection::vec(-1.0f32..1.0, 997),
        ) {
            let stride = d + 3;
            let val = |i: usize| seed[i % 997];
            let q: Vec<f32> = (0..m * stride).map(|i| val(i * 7 + 1) * sharp).collect();
            let k: Vec<f32> = (0..t * d).map(|i| val(i * 3 + 5)).collect();
            let v: Vec<f32> = (0..t * d).map(|i| val(i * 11 + 2)).collect();
            let limits: Vec<usize> = lims[..m].iter().map(|l| l % (t + 1)).collect();
            let mut a = vec![f32::NAN; m * stride];
            let mut b = a.clone();
            let mut scratch = Vec::new();
            attn::attend_causal16(&q, stride, &k, &v, d, &limits, &mut a, stride, &mut scratch);
            attn::scalar_attend_causal16(&q, stride, &k, &v, d, &limits, &mut b, stride);
            let mut c = vec![f32::NAN; m * stride];
            let avx2 = attn::attend_causal16_avx2(&q, stride, &k, &v, d, &limits, &mut c, stride, &mut scratch);
            for i in 0..m {
                for e in 0..d {
                    let (x, y) = (a[i * stride + e], b[i * stride + e]);
                    prop_assert!((x - y).abs() <= 2e-5, "query {i} (limit {}) dim {e}: {x} vs {y}", limits[i]);
                    if avx2 {
                        let z = c[i * stride + e];
                        prop_assert!((z - y).abs() <= 2e-5, "AVX2: query {i} (limit {}) dim {e}: {z} vs {y}", limits[i]);
                    }
                }
            }
        }

        /// The vectorised SwiGLU gate agrees with the scalar one (relative
        /// 1e-6 plus 1e-30), from deep negatives (silu -> -0) to large positives.
        #[test]
        fn swiglu_matches_scalar(g in prop::collection::vec(-200.0f32..200.0, 0..70), u in prop::collection::vec(-4.0f32..4.0, 70)) {
            let u = &u[..g.len()];
            let mut a = g.clone();
            let mut b = g.clone();
            attn::swiglu(&mut a, u);
            attn::scalar_swiglu(&mut b, u);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                prop_assert!(x.is_finite(), "g[{i}] = {}: {x}", g[i]);
                prop_assert!((x - y).abs() <= 1e-6 * y.abs() + 1e-30, "g[{i}] = {}: {x} vs {y}", g[i]);
            }
        }
    }
}

/// Each kind of bad input has its own error variant, so a caller can tell a
/// wrong shape from a bad value or an unsupported request without parsing text.
#[test]
fn errors_are_typed_by_kind() {
    use twain_quant::QuantError;
    let opts = Default::default();
    let e = twain_quant::quantize(QuantFormat::Q4, 2, 32, &[0.5; 63], &opts).unwrap_err();
    assert!(matches!(e, QuantError::Shape(_)), "{e:?}");
    let mut w = vec![0.5f32; 64];
    w[40] = f32::NAN;
    let e = twain_quant::quantize(QuantFormat::Q2, 2, 32, &w, &opts).unwrap_err();
    assert!(matches!(e, QuantError::Value(_)), "{e:?}");
    assert!(e.to_string().contains("w[1][8]"), "{e}");
    w[40] = 1e9;
    let e = twain_quant::quantize(QuantFormat::Q8, 2, 32, &w, &opts).unwrap_err();
    assert!(matches!(e.root(), QuantError::Value(_)), "{e:?}");
    assert!(matches!(e, QuantError::At { .. }), "{e:?}");
    assert!(e.to_string().contains("row 1"), "{e}");
    let e = "q3".parse::<QuantFormat>().unwrap_err();
    assert!(
        matches!(&e, QuantError::UnknownFormat(n) if n == "q3"),
        "{e:?}"
    );
    let e = QuantFormat::Q4.matrix_bytes(usize::MAX, 64).unwrap_err();
    assert!(matches!(e, QuantError::Overflow(_)), "{e:?}");
    let e = twain_quant::hadamard::transform(&mut [0.0; 7]).unwrap_err();
    assert!(matches!(e, QuantError::Unsupported(_)), "{e:?}");
    let e = twain_quant::grid::group_scales(QuantFormat::F32, &[], 32);
    assert!(matches!(e, Err(QuantError::Unsupported(_))), "{e:?}");
}
