//! Post-training quantization: error feedback beats nearest rounding on the
//! layer proxy loss, rotations keep the f32 model's function, conversion is
//! deterministic, and bad calibration input is a typed error.

use proptest::prelude::*;
use twain_convert::gptq::{gptq, proxy_loss, GptqOptions};
use twain_convert::rotate::{rotate, RotateOptions};
use twain_convert::synthetic::{self, SplitMix};
use twain_convert::{convert, hessian, ConvertError, ConvertOptions, Preset};
use twain_core::{KvDtype, KvPlan, Transformer, TransformerOptions};
use twain_model::Model;
use twain_quant::{quantize, QuantFormat, QuantizeOptions};

/// `X^T X` of `n` rows whose columns are correlated (a random mix of a few
/// factors plus noise), as real layer inputs are.
fn correlated_h(cols: usize, n: usize, rng: &mut SplitMix) -> Vec<f32> {
    let k = 4;
    let mix: Vec<f32> = (0..k * cols).map(|_| rng.uniform()).collect();
    let mut h = vec![0.0f32; cols * cols];
    let mut x = vec![0.0f32; cols];
    for _ in 0..n {
        let f: Vec<f32> = (0..k).map(|_| rng.uniform()).collect();
        for (c, v) in x.iter_mut().enumerate() {
            *v = (0..k).map(|j| f[j] * mix[j * cols + c]).sum::<f32>() + 0.1 * rng.uniform();
        }
        for a in 0..cols {
            for b in 0..cols {
                h[a * cols + b] += x[a] * x[b];
            }
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn error_feedback_lowers_the_proxy_loss(
        seed in any::<u64>(),
        rows in 1usize..24,
        groups in 1usize..5,
        fmt in prop::sample::select(vec![QuantFormat::Q2, QuantFormat::Q4, QuantFormat::Q8]),
        act_order in any::<bool>(),
        dynamic_scales in any::<bool>(),
    ) {
        let cols = 32 * groups;
        let mut rng = SplitMix::new(seed);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform()).collect();
        let h = correlated_h(cols, 4 * cols, &mut rng);
        let imp: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
        let mean = imp.iter().sum::<f32>() / cols as f32;
        let nearest = quantize(fmt, rows, cols, &w, &QuantizeOptions {
            importance: Some(imp.iter().map(|v| v / mean).collect()),
            no_clip_search: false,
        }).unwrap();
        let ef = gptq(fmt, rows, cols, &w, &h, &GptqOptions { act_order, dynamic_scales, ..Default::default() }).unwrap();
        let (a, b) = (proxy_loss(&w, &nearest, &h), proxy_loss(&w, &ef, &h));
        prop_assert!(b < a, "{fmt}: error feedback {b} vs nearest {a}");
    }
}

#[test]
fn singular_or_zero_hessians_are_damped_not_fatal() {
    let (rows, cols) = (4, 64);
    let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    // Zero: every column dead. Rank one: singular without damping.
    let zero = vec![0.0f32; cols * cols];
    let v: Vec<f32> = (0..cols).map(|i| (i % 5) as f32).collect();
    let rank1: Vec<f32> = (0..cols * cols)
        .map(|i| v[i / cols] * v[i % cols])
        .collect();
    for h in [zero, rank1] {
        let q = gptq(QuantFormat::Q2, rows, cols, &w, &h, &GptqOptions::default()).unwrap();
        assert_eq!(q.rows(), rows);
    }
    let mut bad = vec![0.0f32; cols * cols];
    bad[3] = f32::NAN;
    let e = gptq(
        QuantFormat::Q2,
        rows,
        cols,
        &w,
        &bad,
        &GptqOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ConvertError::Calibration(_)), "{e}");
    let e = gptq(
        QuantFormat::F16,
        rows,
        cols,
        &w,
        &vec![0.0; cols * cols],
        &GptqOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("grid"), "{e}");
}

fn f32_model(m: twain_io::LoadedModel) -> Transformer {
    Transformer::from_loaded(m, TransformerOptions::default().kv_dtype(KvDtype::F32)).unwrap()
}

fn logits(m: &Transformer, tokens: &[u32]) -> Vec<f32> {
    m.forward_all(&mut m.new_state(), tokens).unwrap()
}

#[test]
fn rotated_f32_model_computes_the_same_function() {
    let tokens: Vec<u32> = (0..40).map(|i| (i * 7 % 96) as u32).collect();
    let mut shared = synthetic::tiny_config(4);
    shared.kv_source = KvPlan::shared(4, 1, 1).unwrap().sources().to_vec();
    let mut biased = synthetic::tiny_config(3);
    biased.qkv_bias = true;
    biased.qk_norm = true;
    for config in [synthetic::tiny_config(3), shared, biased] {
        let base = synthetic::random_model(&config, Preset::F32, 5).unwrap();
        let mut rot = base.clone();
        rotate(&mut rot, &RotateOptions::default()).unwrap();
        assert!(rot.tensors.contains_key("rotation.residual"));
        let (a, b) = (
            logits(&f32_model(base), &tokens),
            logits(&f32_model(rot), &tokens),
        );
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-4 * scale.max(1.0),
            "max |diff| {worst} (logit scale {scale})"
        );
        // Decode (one token at a time, the prefill skip) agrees too.
        let m = f32_model({
            let mut r = synthetic::random_model(&config, Preset::F32, 5).unwrap();
            rotate(&mut r, &RotateOptions::default()).unwrap();
            r
        });
        let mut s = m.new_state();
        let mut last = vec![0.0; 96];
        for &t in &tokens {
            m.forward(&mut s, &[t], &mut last).unwrap();
        }
        let tail = &a[a.len() - 96..];
        let worst = tail
            .iter()
            .zip(&last)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-4 * scale.max(1.0), "decode max |diff| {worst}");
    }
}

#[test]
fn rotating_twice_or_an_unsupported_width_is_an_error() {
    let mut m = synthetic::random_model(&synthetic::tiny_config(1), Preset::F32, 1).unwrap();
    rotate(&mut m, &RotateOptions::default()).unwrap();
    assert!(rotate(&mut m, &RotateOptions::default()).is_err());
    let mut c = synthetic::tiny_config(1);
    c.ffn_hidden = 13 * 32;
    let mut m = synthetic::random_model(&c, Preset::F32, 1).unwrap();
    let e = rotate(&mut m, &RotateOptions::default()).unwrap_err();
    assert!(e.to_string().contains("FFN width 416"), "{e}");
}

#[test]
fn conversion_with_statistics_is_deterministic_and_checks_its_input() {
    let config = synthetic::tiny_config(2);
    let tokens: Vec<u32> = (0..200).map(|i| (i * 13 % 96) as u32).collect();
    let make = || {
        let mut m = synthetic::random_model(&config, Preset::F32, 9).unwrap();
        rotate(&mut m, &RotateOptions::default()).unwrap();
        let teacher = f32_model(m.clone());
        let hs = hessian::collect(&teacher, &tokens, 64, |_, _| {}).unwrap();
        let q = convert(
            m,
            Preset::Afm,
            ConvertOptions {
                hessians: Some(&hs),
                error_feedback: Some(GptqOptions::default()),
                ..Default::default()
            },
        )
        .unwrap();
        q.tensors
            .values()
            .map(|t| t.bytes().unwrap().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(make(), make());

    let teacher = f32_model(synthetic::random_model(&config, Preset::F32, 9).unwrap());
    let e = hessian::collect(&teacher, &[], 64, |_, _| {}).unwrap_err();
    assert!(matches!(e, ConvertError::Calibration(_)), "{e}");
    // A weight of inf makes the activations non-finite: a typed error.
    let mut m = synthetic::random_model(&config, Preset::F32, 9).unwrap();
    let name = "blk.0.attn_output.weight";
    let t = &m.tensors[name];
    let mut w = t.to_f32().unwrap();
    w[0] = f32::INFINITY;
    m.tensors.insert(
        name.into(),
        twain_io::Tensor::from_f32(name.to_string(), t.shape().to_vec(), w).unwrap(),
    );
    let e = hessian::collect(&f32_model(m), &tokens, 64, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
}

#[derive(Debug)]
struct NoDelta;

impl twain_core::LinearDelta for NoDelta {
    fn apply(
        &self,
        _: &str,
        _: &[f32],
        _: usize,
        _: &mut [f32],
    ) -> Result<(), twain_core::BoxError> {
        Ok(())
    }
    fn validate(
        &self,
        _: &dyn Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<(), twain_core::BoxError> {
        Ok(())
    }
}

#[test]
fn a_rotated_model_refuses_adapters_and_keeps_the_state() {
    let config = synthetic::tiny_config(2);
    let plain = f32_model(synthetic::random_model(&config, Preset::F32, 2).unwrap());
    let mut s = plain.new_state();
    plain
        .set_adapter(&mut s, Some(std::sync::Arc::new(NoDelta)))
        .unwrap();
    let mut m = synthetic::random_model(&config, Preset::F32, 2).unwrap();
    rotate(
        &mut m,
        &RotateOptions {
            residual: false,
            ffn_down: false,
            heads: true,
            ..Default::default()
        },
    )
    .unwrap();
    let rotated = f32_model(m);
    let mut s = rotated.new_state();
    let mut l = vec![0.0; 96];
    rotated.forward(&mut s, &[1, 2, 3], &mut l).unwrap();
    let e = rotated
        .set_adapter(&mut s, Some(std::sync::Arc::new(NoDelta)))
        .unwrap_err();
    assert!(e.to_string().contains("rotations"), "{e}");
    assert_eq!(rotated.position(&s), 3);
    assert!(s.adapter().is_none());
}
