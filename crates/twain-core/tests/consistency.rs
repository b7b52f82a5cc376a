//! Small random models: the forward pass is consistent with itself under
//! chunking, token-at-a-time decoding, the KV-sharing prefill skip, the int8
//! cache, the RoPE pair layout, truncation and concurrent use.

use std::sync::Arc;

use twain_convert::{synthetic, Preset};
use twain_core::{KvDtype, KvPlan, ModelConfig, RopeLayout, Transformer, TransformerOptions};
use twain_model::{Model, ModelError};

fn build(config: &ModelConfig, preset: Preset, opts: TransformerOptions) -> Transformer {
    let loaded = synthetic::random_model(config, preset, 42).expect("random model");
    Transformer::from_loaded(loaded, opts).expect("build")
}

fn f32_opts() -> TransformerOptions {
    TransformerOptions::default().kv_dtype(KvDtype::F32)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

fn prefill(model: &Transformer, tokens: &[u32]) -> Vec<f32> {
    let mut s = model.new_state();
    let mut logits = vec![0.0; model.info().vocab_size];
    model.forward(&mut s, tokens, &mut logits).unwrap();
    logits
}

fn one_at_a_time(model: &Transformer, tokens: &[u32]) -> Vec<f32> {
    let mut s = model.new_state();
    let mut logits = vec![0.0; model.info().vocab_size];
    for t in tokens {
        model.forward(&mut s, &[*t], &mut logits).unwrap();
    }
    logits
}

#[test]
fn decode_one_at_a_time_equals_prefill() {
    for config in [synthetic::tiny_config(3), {
        let mut c = synthetic::tiny_config(3);
        c.qk_norm = true;
        c.qkv_bias = true;
        c.tied_embeddings = false;
        c.rope_layout = RopeLayout::Interleaved;
        c
    }] {
        let model = build(&config, Preset::F32, f32_opts());
        let toks = prompt(40, config.vocab_size);
        let a = prefill(&model, &toks);
        let b = one_at_a_time(&model, &toks);
        let d = max_diff(&a, &b);
        assert!(d < 1e-4, "prefill vs decode differ by {d}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn chunk_size_does_not_change_logits() {
    let config = synthetic::tiny_config(2);
    let toks = prompt(50, config.vocab_size);
    let a = prefill(
        &build(&config, Preset::F32, f32_opts().prefill_chunk(7)),
        &toks,
    );
    let b = prefill(
        &build(&config, Preset::F32, f32_opts().prefill_chunk(512)),
        &toks,
    );
    assert!(max_diff(&a, &b) < 1e-4);
}

#[test]
fn kv_shared_prefill_skip_equals_naive_computation() {
    let mut config = synthetic::tiny_config(8);
    config.kv_source = KvPlan::shared(8, 5, 3).unwrap().sources().to_vec();
    assert_eq!(config.kv_source, vec![0, 1, 2, 3, 4, 4, 4, 4]);
    let toks = prompt(33, config.vocab_size);
    for chunk in [5, 64] {
        let skip = build(&config, Preset::F32, f32_opts().prefill_chunk(chunk));
        let naive = build(
            &config,
            Preset::F32,
            f32_opts().prefill_chunk(chunk).skip_shared_prefill(false),
        );
        let a = prefill(&skip, &toks);
        let b = prefill(&naive, &toks);
        let c = one_at_a_time(&skip, &toks);
        assert!(
            max_diff(&a, &b) < 1e-4,
            "skip vs naive: {}",
            max_diff(&a, &b)
        );
        assert!(
            max_diff(&a, &c) < 1e-4,
            "skip vs decode: {}",
            max_diff(&a, &c)
        );
        // forward_all runs every layer on every position; its last row is the same.
        let mut s = naive.new_state();
        let all = naive.forward_all(&mut s, &toks).unwrap();
        let v = config.vocab_size;
        assert!(max_diff(&all[(toks.len() - 1) * v..], &a) < 1e-4);
    }
}

#[test]
fn kv_sharing_layers_hold_no_kv_and_cache_shrinks_by_the_plan() {
    let plain = synthetic::tiny_config(8);
    let mut shared = plain.clone();
    shared.kv_source = KvPlan::shared(8, 5, 3).unwrap().sources().to_vec();
    let loaded = synthetic::random_model(&shared, Preset::F32, 1).unwrap();
    for l in 5..8 {
        assert!(!loaded
            .tensors
            .contains_key(&format!("blk.{l}.attn_k.weight")));
        assert!(!loaded
            .tensors
            .contains_key(&format!("blk.{l}.attn_v.weight")));
    }
    let a = Transformer::from_loaded(
        synthetic::random_model(&plain, Preset::F32, 1).unwrap(),
        Default::default(),
    )
    .unwrap();
    let b = Transformer::from_loaded(loaded, Default::default()).unwrap();
    assert_eq!(b.kv_owning_layers(), 5);
    assert_eq!(b.kv_bytes_per_token() * 8, a.kv_bytes_per_token() * 5);
    let toks = prompt(20, plain.vocab_size);
    let mut sa = a.new_state();
    let mut sb = b.new_state();
    let mut logits = vec![0.0; plain.vocab_size];
    a.forward(&mut sa, &toks, &mut logits).unwrap();
    b.forward(&mut sb, &toks, &mut logits).unwrap();
    assert_eq!(sb.kv_bytes() * 8, sa.kv_bytes() * 5);
    assert_eq!(sa.kv_bytes(), 20 * a.kv_bytes_per_token());
}

#[test]
fn kv_weights_on_a_sharing_layer_are_refused() {
    let plain = synthetic::tiny_config(4);
    let mut loaded = synthetic::random_model(&plain, Preset::F32, 1).unwrap();
    loaded.config.kv_source = vec![0, 1, 1, 1];
    let err = Transformer::from_loaded(loaded, Default::default())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("blk.2.attn_k.weight"), "{err}");
}

#[test]
fn int8_cache_stays_close_to_f32_cache() {
    // Documented tolerance: max |logit difference| below 2% of the logit range.
    let config = synthetic::tiny_config(3);
    let toks = prompt(60, config.vocab_size);
    let a = prefill(&build(&config, Preset::F32, f32_opts()), &toks);
    let b = prefill(
        &build(&config, Preset::F32, TransformerOptions::default()),
        &toks,
    );
    let c = prefill(
        &build(
            &config,
            Preset::F32,
            TransformerOptions::default().kv_dtype(KvDtype::F16),
        ),
        &toks,
    );
    let range =
        a.iter().cloned().fold(f32::MIN, f32::max) - a.iter().cloned().fold(f32::MAX, f32::min);
    let d8 = max_diff(&a, &b);
    let d16 = max_diff(&a, &c);
    assert!(d8 < 0.02 * range, "int8 cache: {d8} vs range {range}");
    assert!(d16 < 0.002 * range, "f16 cache: {d16} vs range {range}");
    assert!(d8 > 0.0, "int8 cache should not be bit-identical to f32");
}

#[test]
fn quantized_presets_run_and_stay_near_f32() {
    let config = synthetic::tiny_config(2);
    let toks = prompt(16, config.vocab_size);
    let reference = prefill(&build(&config, Preset::F32, f32_opts()), &toks);
    let mut last = 0.0;
    for preset in [Preset::F16, Preset::Q8, Preset::Q4, Preset::Afm] {
        let l = prefill(&build(&config, preset, f32_opts()), &toks);
        let d = max_diff(&reference, &l);
        assert!(l.iter().all(|v| v.is_finite()), "{preset:?}");
        assert!(
            d >= last * 0.5,
            "{preset:?} error {d} unexpectedly far below the wider format's {last}"
        );
        last = d;
    }
}

#[test]
fn context_overflow_is_an_error_and_keeps_the_state() {
    let config = synthetic::tiny_config(2);
    let model = build(&config, Preset::F32, f32_opts().context_length(Some(10)));
    let mut s = model.new_state();
    let mut logits = vec![0.0; config.vocab_size];
    model
        .forward(&mut s, &prompt(8, config.vocab_size), &mut logits)
        .unwrap();
    let before = logits.clone();
    let err = model.forward(&mut s, &[1, 2, 3], &mut logits).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextOverflow {
                position: 8,
                new_tokens: 3,
                context_length: 10
            }
        ),
        "{err}"
    );
    assert_eq!(model.position(&s), 8);
    // bad token id
    let err = model.forward(&mut s, &[1, 999], &mut logits).unwrap_err();
    assert!(matches!(
        err,
        ModelError::TokenOutOfRange { token: 999, .. }
    ));
    // still usable: two more tokens fit
    model.forward(&mut s, &[1, 2], &mut logits).unwrap();
    assert_eq!(model.position(&s), 10);
    assert_ne!(before, logits);
}

#[test]
fn truncate_rolls_back_to_a_prefix() {
    let config = synthetic::tiny_config(2);
    let model = build(&config, Preset::F32, f32_opts());
    let toks = prompt(30, config.vocab_size);
    let mut s = model.new_state();
    let mut logits = vec![0.0; config.vocab_size];
    model.forward(&mut s, &toks, &mut logits).unwrap();
    model.truncate(&mut s, 20).unwrap();
    assert_eq!(model.position(&s), 20);
    assert_eq!(s.kv_bytes(), 20 * model.kv_bytes_per_token());
    model.forward(&mut s, &toks[20..], &mut logits).unwrap();
    assert!(max_diff(&logits, &prefill(&model, &toks)) < 1e-4);
    assert!(matches!(
        model.truncate(&mut s, 31),
        Err(ModelError::TruncateBeyondEnd { .. })
    ));
}

#[test]
fn rope_layouts_agree_when_weights_are_permuted() {
    // The same model stored with half-split q/k rows and with llama.cpp's
    // interleaving permutation must give the same logits.
    let config = synthetic::tiny_config(2);
    let half = synthetic::random_model(&config, Preset::F32, 3).unwrap();
    let mut inter = synthetic::random_model(&config, Preset::F32, 3).unwrap();
    inter.config.rope_layout = RopeLayout::Interleaved;
    let hd = config.head_dim;
    for l in 0..config.n_layers {
        for (name, heads) in [("attn_q", config.n_heads), ("attn_k", config.n_kv_heads)] {
            let key = format!("blk.{l}.{name}.weight");
            let t = &inter.tensors[&key];
            let shape = t.shape().to_vec();
            let w = t.to_f32().unwrap();
            let cols = shape[1];
            let mut p = vec![0.0f32; w.len()];
            for h in 0..heads {
                for i in 0..hd / 2 {
                    for (dst, src) in [(2 * i, i), (2 * i + 1, i + hd / 2)] {
                        let (d0, s0) = ((h * hd + dst) * cols, (h * hd + src) * cols);
                        p[d0..d0 + cols].copy_from_slice(&w[s0..s0 + cols]);
                    }
                }
            }
            inter.tensors.insert(
                key.clone(),
                twain_io::Tensor::from_f32(key, shape, p).unwrap(),
            );
        }
    }
    let a = Transformer::from_loaded(half, f32_opts()).unwrap();
    let b = Transformer::from_loaded(inter, f32_opts()).unwrap();
    let toks = prompt(12, config.vocab_size);
    assert!(max_diff(&prefill(&a, &toks), &prefill(&b, &toks)) < 1e-4);
}

#[test]
fn many_states_from_several_threads() {
    let config = synthetic::tiny_config(2);
    let model = Arc::new(build(&config, Preset::Q4, TransformerOptions::default()));
    let expected: Vec<Vec<f32>> = (0..4)
        .map(|k| prefill(&model, &prompt(10 + k, config.vocab_size)))
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let m = model.clone();
            std::thread::spawn(move || prefill(&m, &prompt(10 + k, m.info().vocab_size)))
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), expected[k]);
    }
}

#[test]
fn a_state_from_another_model_is_refused() {
    let config = synthetic::tiny_config(1);
    let a = build(&config, Preset::F32, f32_opts());
    let b = build(&config, Preset::F32, f32_opts());
    let mut s = a.new_state();
    let mut logits = vec![0.0; config.vocab_size];
    assert!(matches!(
        b.forward(&mut s, &[1], &mut logits),
        Err(ModelError::ForeignState(_))
    ));
}

/// A dense per-state weight delta (what a merged LoRA adds), to exercise the
/// unmerged-adapter hook.
#[derive(Debug)]
struct DenseDelta {
    tensor: String,
    rows: usize,
    cols: usize,
    d: Vec<f32>,
}

impl twain_core::LinearDelta for DenseDelta {
    fn apply(
        &self,
        tensor: &str,
        x: &[f32],
        n: usize,
        y: &mut [f32],
    ) -> Result<(), twain_core::BoxError> {
        if tensor != self.tensor {
            return Ok(());
        }
        for j in 0..n {
            for r in 0..self.rows {
                let row = &self.d[r * self.cols..(r + 1) * self.cols];
                y[j * self.rows + r] += row
                    .iter()
                    .zip(&x[j * self.cols..(j + 1) * self.cols])
                    .map(|(a, b)| a * b)
                    .sum::<f32>();
            }
        }
        Ok(())
    }
    fn validate(
        &self,
        shape_of: &dyn Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<(), twain_core::BoxError> {
        match shape_of(&self.tensor) {
            Some(s) if s == (self.rows, self.cols) => Ok(()),
            Some(s) => Err(format!(
                "{}: model has {s:?}, delta has {:?}",
                self.tensor,
                (self.rows, self.cols)
            )
            .into()),
            None => Err(format!("{}: no such linear layer", self.tensor).into()),
        }
    }
}

#[test]
fn unmerged_delta_equals_merged_weights_and_can_be_swapped() {
    let config = synthetic::tiny_config(2);
    let (rows, cols) = (config.ffn_hidden, config.d_model);
    let d: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 101) as f32 - 50.0) * 1e-3)
        .collect();
    let name = "blk.1.ffn_up.weight".to_string();
    let delta: Arc<dyn twain_core::LinearDelta> = Arc::new(DenseDelta {
        tensor: name.clone(),
        rows,
        cols,
        d: d.clone(),
    });
    // merged reference
    let mut merged = synthetic::random_model(&config, Preset::F32, 42).unwrap();
    let w = merged.tensors[&name].to_f32().unwrap();
    let w2: Vec<f32> = w.iter().zip(&d).map(|(a, b)| a + b).collect();
    merged.tensors.insert(
        name.clone(),
        twain_io::Tensor::from_f32(name.clone(), vec![rows, cols], w2).unwrap(),
    );
    let merged = Transformer::from_loaded(merged, f32_opts()).unwrap();
    let base = build(&config, Preset::F32, f32_opts());
    let toks = prompt(20, config.vocab_size);

    let mut s = base.new_state();
    let mut logits = vec![0.0; config.vocab_size];
    base.forward(&mut s, &toks[..5], &mut logits).unwrap();
    base.set_adapter(&mut s, Some(delta.clone())).unwrap();
    assert_eq!(base.position(&s), 0, "switching adapters clears the cache");
    base.forward(&mut s, &toks, &mut logits).unwrap();
    assert!(max_diff(&logits, &prefill(&merged, &toks)) < 1e-4);
    // swap back to none: the base model again
    base.set_adapter(&mut s, None).unwrap();
    base.forward(&mut s, &toks, &mut logits).unwrap();
    assert!(max_diff(&logits, &prefill(&base, &toks)) < 1e-5);
    // a delta that does not fit is refused and the state keeps its adapter and cache
    let bad: Arc<dyn twain_core::LinearDelta> = Arc::new(DenseDelta {
        tensor: "blk.1.ffn_up.weight".into(),
        rows: 3,
        cols,
        d: vec![0.0; 3 * cols],
    });
    let err = base.set_adapter(&mut s, Some(bad)).unwrap_err();
    assert!(err.to_string().contains("blk.1.ffn_up.weight"), "{err}");
    assert_eq!(base.position(&s), toks.len());
}

#[test]
fn a_failed_forward_leaves_the_int8_cache_as_it_was() {
    // Token `BAD`'s embedding row holds an inf: its K/V rows are not finite,
    // so the int8 cache refuses them. Every failure must leave the state as
    // it was before the call, so the session goes on as if it never happened.
    const BAD: usize = 5;
    let mut config = synthetic::tiny_config(2);
    config.tied_embeddings = false;
    let mut loaded = synthetic::random_model(&config, Preset::F32, 42).unwrap();
    let embd = &loaded.tensors["token_embd.weight"];
    let shape = embd.shape().to_vec();
    let d = shape[1];
    let mut data = vec![0.0f32; shape[0] * d];
    let m = embd.matrix().unwrap();
    for (r, row) in data.chunks_exact_mut(d).enumerate() {
        m.dequantize_row(r, row).unwrap();
    }
    data[BAD * d + 3] = f32::INFINITY;
    let t = twain_io::Tensor::from_f32("token_embd.weight", shape, data).unwrap();
    loaded.tensors.insert("token_embd.weight".into(), t);
    let model = Transformer::from_loaded(loaded, TransformerOptions::default()).unwrap();
    let v = config.vocab_size;
    let good: Vec<u32> = prompt(12, v)
        .into_iter()
        .filter(|&t| t as usize != BAD)
        .collect();
    let (head, tail) = good.split_at(8);
    let mut logits = vec![0.0; v];

    let mut s = model.new_state();
    model.forward(&mut s, head, &mut logits).unwrap();
    let bytes = s.kv_bytes();
    // Fails on the first token of the call, in the middle, and in decode.
    for bad in [
        vec![BAD as u32],
        vec![1, BAD as u32, 2],
        vec![BAD as u32, 1],
    ] {
        let err = model.forward(&mut s, &bad, &mut logits).unwrap_err();
        assert!(err.to_string().contains("quantize_row"), "{err}");
        assert_eq!(model.position(&s), 8, "position after {bad:?}");
        assert_eq!(s.kv_bytes(), bytes, "cache bytes after {bad:?}");
    }
    model.forward(&mut s, tail, &mut logits).unwrap();
    let mut fresh = model.new_state();
    let mut want = vec![0.0; v];
    model.forward(&mut fresh, &good, &mut want).unwrap();
    assert!(
        max_diff(&logits, &want) < 1e-5,
        "{}",
        max_diff(&logits, &want)
    );
}
