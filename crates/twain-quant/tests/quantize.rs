//! Quantizer properties: exact code packing, documented error bounds, exact
//! zeros, and errors (never panics or NaN scales) for bad input.

use proptest::prelude::*;
use twain_quant::blocks::{Q2Block, Q4Block, QK};
use twain_quant::{quantize, QMatrix, QMatrixRef, QuantFormat, QuantizeOptions};

/// Rows of groups: each group a random pattern times a magnitude, some groups
/// zero or constant, signs mixed.
fn matrix(mags: Vec<f32>) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..5, 1usize..12).prop_flat_map(move |(rows, nb)| {
        let cols = nb * QK;
        let mags = mags.clone();
        (
            Just(rows),
            Just(cols),
            prop::collection::vec(-1.0f32..1.0, rows * cols),
            prop::collection::vec((prop::sample::select(mags), 0u8..8), rows * nb),
        )
            .prop_map(move |(rows, cols, base, groups)| {
                let mut w = base;
                for (g, (mag, kind)) in groups.iter().enumerate() {
                    for v in &mut w[g * QK..(g + 1) * QK] {
                        *v = match kind {
                            0 => 0.0,
                            1 => *mag,
                            2 => -*mag,
                            _ => *v * mag,
                        };
                    }
                }
                (rows, cols, w)
            })
    })
}

fn group_max(g: &[f32]) -> f32 {
    g.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

fn group_rms_err(w: &[f32], q: &[f32]) -> f64 {
    let s: f64 = w
        .iter()
        .zip(q)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    (s / w.len() as f64).sqrt()
}

/// Checks the bound of docs/formats.md for every group: RMS error of a group
/// <= `rel * group max + row_rel * row max`.
fn check_bound(
    fmt: QuantFormat,
    rows: usize,
    cols: usize,
    w: &[f32],
    rel: f64,
    row_rel: f64,
) -> Result<(), TestCaseError> {
    let q = quantize(fmt, rows, cols, w, &QuantizeOptions::default()).unwrap();
    let d = q.as_ref().dequantize();
    prop_assert!(d.iter().all(|v| v.is_finite()));
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let row_max = group_max(row) as f64;
        for g in 0..cols / QK {
            let (a, b) = (
                &row[g * QK..(g + 1) * QK],
                &d[r * cols + g * QK..r * cols + (g + 1) * QK],
            );
            let gm = group_max(a) as f64;
            if gm == 0.0 {
                prop_assert!(b.iter().all(|v| *v == 0.0), "{fmt}: zero group not exact");
                continue;
            }
            let e = group_rms_err(a, b);
            prop_assert!(
                e <= rel * gm + row_rel * row_max,
                "{fmt}: row {r} group {g}: rms {e} > bound (group max {gm}, row max {row_max})"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn q2_codes_pack_exactly(codes in prop::array::uniform32(0u8..4)) {
        prop_assert_eq!(Q2Block::from_codes(&codes).codes(), codes);
    }

    #[test]
    fn q4_codes_pack_exactly(codes in prop::array::uniform32(0u8..16)) {
        prop_assert_eq!(Q4Block::from_codes(&codes).codes(), codes);
    }

    #[test]
    fn q2_error_bound((rows, cols, w) in matrix(vec![1e-30, 1e-6, 0.01, 1.0, 1e6, 1e30])) {
        check_bound(QuantFormat::Q2, rows, cols, &w, 0.34, 0.05)?;
    }

    #[test]
    fn q4_error_bound((rows, cols, w) in matrix(vec![0.01, 0.3, 1.0, 50.0, 1e4])) {
        check_bound(QuantFormat::Q4, rows, cols, &w, 0.127, 0.0)?;
    }

    #[test]
    fn q8_error_bound((rows, cols, w) in matrix(vec![0.01, 0.3, 1.0, 50.0, 1e5])) {
        check_bound(QuantFormat::Q8, rows, cols, &w, 0.0040, 0.0)?;
    }

    #[test]
    fn f16_error_bound((rows, cols, w) in matrix(vec![1e-4, 1.0, 1e4])) {
        let q = quantize(QuantFormat::F16, rows, cols, &w, &QuantizeOptions::default()).unwrap();
        for (a, b) in w.iter().zip(q.as_ref().dequantize()) {
            prop_assert!((a - b).abs() <= a.abs() * 4.9e-4 + 6e-8);
        }
    }

    #[test]
    fn f32_is_exact((rows, cols, w) in matrix(vec![1e-30, 1.0, 1e30])) {
        let q = quantize(QuantFormat::F32, rows, cols, &w, &QuantizeOptions::default()).unwrap();
        prop_assert_eq!(q.as_ref().dequantize(), w);
    }

    #[test]
    fn non_finite_is_an_error((rows, cols, mut w) in matrix(vec![1.0]), pos in any::<prop::sample::Index>(), bad in prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY])) {
        let i = pos.index(w.len());
        w[i] = bad;
        for fmt in QuantFormat::ALL {
            prop_assert!(quantize(fmt, rows, cols, &w, &QuantizeOptions::default()).is_err(), "{fmt}");
        }
    }

    #[test]
    fn importance_weighted_quantization_is_valid((rows, cols, w) in matrix(vec![0.1, 1.0]), seed in 0u32..1000) {
        let imp: Vec<f32> = (0..cols).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 100) as f32).collect();
        for fmt in [QuantFormat::Q2, QuantFormat::Q4, QuantFormat::Q8] {
            let opts = QuantizeOptions { importance: Some(imp.clone()), no_clip_search: false };
            let q = quantize(fmt, rows, cols, &w, &opts).unwrap();
            prop_assert!(q.as_ref().dequantize().iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn zero_matrix_is_exactly_zero() {
    for fmt in QuantFormat::ALL {
        for opts in [
            QuantizeOptions::default(),
            QuantizeOptions {
                importance: None,
                no_clip_search: true,
            },
        ] {
            let q = quantize(fmt, 3, 64, &[0.0; 192], &opts).unwrap();
            assert!(q.as_ref().dequantize().iter().all(|v| *v == 0.0), "{fmt}");
        }
    }
}

#[test]
fn bad_shapes_and_options_are_errors() {
    let o = QuantizeOptions::default();
    for fmt in QuantFormat::ALL {
        assert!(quantize(fmt, 0, 32, &[], &o).is_err(), "{fmt} 0 rows");
        assert!(quantize(fmt, 1, 0, &[], &o).is_err(), "{fmt} 0 cols");
        assert!(quantize(fmt, 2, 32, &[1.0; 63], &o).is_err(), "{fmt} short");
        assert!(quantize(fmt, 1, 32, &[1.0; 33], &o).is_err(), "{fmt} long");
        assert!(
            quantize(fmt, usize::MAX, 32, &[1.0; 32], &o).is_err(),
            "{fmt} overflow"
        );
        let bad = QuantizeOptions {
            importance: Some(vec![1.0; 31]),
            no_clip_search: false,
        };
        assert!(
            quantize(fmt, 1, 32, &[1.0; 32], &bad).is_err(),
            "{fmt} importance length"
        );
        let neg = QuantizeOptions {
            importance: Some(vec![-1.0; 32]),
            no_clip_search: false,
        };
        assert!(
            quantize(fmt, 1, 32, &[1.0; 32], &neg).is_err(),
            "{fmt} negative importance"
        );
    }
    for fmt in [QuantFormat::Q2, QuantFormat::Q4, QuantFormat::Q8] {
        assert!(
            quantize(fmt, 1, 48, &[1.0; 48], &o).is_err(),
            "{fmt} cols % 32"
        );
    }
    // Out of the f16 scale range: an error, never an inf scale.
    assert!(quantize(QuantFormat::Q4, 1, 32, &[1e9; 32], &o).is_err());
    assert!(quantize(QuantFormat::Q8, 1, 32, &[1e9; 32], &o).is_err());
    assert!(quantize(QuantFormat::F16, 1, 32, &[1e9; 32], &o).is_err());
    // Too small for an f16 scale: finite (zero) output.
    let q = quantize(QuantFormat::Q4, 1, 32, &[1e-12; 32], &o).unwrap();
    assert!(q
        .as_ref()
        .dequantize()
        .iter()
        .all(|v| v.is_finite() && v.abs() <= 1e-12));
}

#[test]
fn views_check_sizes_and_alignment() {
    let q = quantize(
        QuantFormat::Q4,
        4,
        64,
        &[0.5; 256],
        &QuantizeOptions::default(),
    )
    .unwrap();
    let data = q.data();
    assert!(QMatrixRef::new(QuantFormat::Q4, 4, 64, data).is_ok());
    assert!(QMatrixRef::new(QuantFormat::Q4, 4, 64, &data[1..]).is_err());
    assert!(QMatrixRef::new(QuantFormat::Q4, 5, 64, data).is_err());
    assert!(QMatrixRef::new(QuantFormat::Q4, 0, 64, &[]).is_err());
    let v = q.as_ref();
    assert!(v.rows_range(1..3).is_ok());
    assert_eq!(v.rows_range(1..3).unwrap().rows(), 2);
    assert!(v.rows_range(3..5).is_err());
    assert!(v.rows_range(2..2).is_err());
    let mut out = vec![0.0; 64];
    assert!(v.dequantize_row(3, &mut out).is_ok());
    assert!(v.dequantize_row(4, &mut out).is_err());
    assert!(v.dequantize_row(0, &mut out[..63]).is_err());
    let copy = QMatrix::from_bytes(QuantFormat::Q4, 4, 64, data).unwrap();
    assert_eq!(copy.data(), data);
    assert!(QMatrix::from_bytes(QuantFormat::Q4, 4, 64, &data[1..]).is_err());
    // f32 view of misaligned bytes is refused.
    let buf = vec![0u32; 9];
    let bytes: &[u8] = bytemuck::cast_slice(&buf);
    assert!(QMatrixRef::new(QuantFormat::F32, 2, 4, &bytes[1..33]).is_err());
}
