//! End-to-end tests: loaders against fixtures, unmerged vs merged, errors, swapping.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use twain_adapters::{merge_into, parse_target, AdapterError, LoraAdapter, MODULES};
use twain_convert::synthetic::{self, SplitMix};
use twain_convert::Preset;
use twain_core::RopeLayout;
use twain_core::{KvDtype, LinearDelta, LoadedModel, Transformer, TransformerOptions};
use twain_io::gguf::{write_gguf, GgufTensorData};
use twain_io::{GgmlType, GgufFile, MetaValue, Tensor};
use twain_model::Model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn hf_base() -> LoadedModel {
    twain_io::load_model(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../twain-io/tests/fixtures/hf_llama"),
    )
    .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("twain-adapters-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn build(m: LoadedModel) -> Transformer {
    Transformer::from_loaded(m, TransformerOptions::default().kv_dtype(KvDtype::F32)).unwrap()
}

const TOKENS: [u32; 7] = [1, 5, 9, 17, 33, 2, 38];

fn logits(model: &Transformer, adapter: Option<Arc<dyn LinearDelta>>) -> Vec<f32> {
    let mut s = model.new_state();
    model.set_adapter(&mut s, adapter).unwrap();
    model.forward_all(&mut s, &TOKENS).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn shape_of(m: &LoadedModel, name: &str) -> Option<(usize, usize)> {
    match m.tensors.get(name)?.shape() {
        [r, c] => Some((*r, *c)),
        _ => None,
    }
}

/// A random adapter on every linear layer `m` has, rank `r` (alpha 2r: scaling 2).
fn random_adapter(m: &LoadedModel, r: usize, seed: u64) -> LoraAdapter {
    let mut rng = SplitMix::new(seed);
    let mut ad = LoraAdapter::new();
    for l in 0..m.config.n_layers {
        for module in MODULES {
            let name = format!("blk.{l}.{module}.weight");
            let Some((rows, cols)) = shape_of(m, &name) else {
                continue;
            };
            let sa = 1.0 / (cols as f32).sqrt();
            let a = (0..r * cols).map(|_| sa * rng.uniform()).collect();
            let b = (0..rows * r).map(|_| 0.3 * rng.uniform()).collect();
            ad.insert(&name, rows, cols, r, 2.0, a, b).unwrap();
        }
    }
    ad
}

fn merged(base: &LoadedModel, ad: &LoraAdapter) -> LoadedModel {
    let mut m = base.clone();
    merge_into(ad, &mut m).unwrap();
    m
}

#[test]
fn unmerged_equals_merged_on_random_model() {
    let mut config = synthetic::tiny_config(4);
    config.kv_source = twain_core::KvPlan::shared(4, 1, 1)
        .unwrap()
        .sources()
        .to_vec();
    let base = synthetic::random_model(&config, Preset::F32, 3).unwrap();
    let ad = random_adapter(&base, 4, 11);
    // Q/O/FFN everywhere, K/V only on the two owning layers.
    assert_eq!(ad.len(), 4 * 5 + 2 * 2);
    let reference = build(merged(&base, &ad));
    let model = build(base);
    let want = logits(&reference, None);
    let got = logits(&model, Some(Arc::new(ad)));
    let plain = logits(&model, None);
    assert!(max_diff(&want, &got) < 1e-4, "{}", max_diff(&want, &got));
    assert!(max_diff(&plain, &got) > 1e-2, "the adapter changes nothing");
}

#[test]
fn unmerged_over_quantized_base_adds_no_error() {
    let config = synthetic::tiny_config(2);
    // Same seed: the same weights, in f32 and in int8.
    let base_f32 = synthetic::random_model(&config, Preset::F32, 3).unwrap();
    let base_q8 = synthetic::random_model(&config, Preset::Q8, 3).unwrap();
    let ad = random_adapter(&base_f32, 2, 5);
    let reference = build(merged(&base_f32, &ad));
    let q8 = build(base_q8);
    let quant_err = max_diff(&logits(&build(base_f32), None), &logits(&q8, None));
    let d = max_diff(&logits(&reference, None), &logits(&q8, Some(Arc::new(ad))));
    assert!(
        d < 2.0 * quant_err + 1e-3,
        "{d} vs quantization error {quant_err}"
    );
}

#[test]
fn unmerged_equals_merged_on_qwen_fixtures() {
    // q/k/v biases (qwen2) and QK-norm with tied embeddings (qwen3).
    for name in ["hf_qwen2", "hf_qwen3"] {
        let base = twain_io::load_model(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../twain-io/tests/fixtures")
                .join(name),
        )
        .unwrap();
        let ad = random_adapter(&base, 3, 8);
        assert_eq!(ad.len(), 7 * base.config.n_layers);
        let reference = build(merged(&base, &ad));
        let model = build(base);
        let d = max_diff(
            &logits(&reference, None),
            &logits(&model, Some(Arc::new(ad))),
        );
        assert!(d < 1e-4, "{name}: {d}");
    }
}

#[test]
fn user_scale_multiplies_the_delta() {
    let config = synthetic::tiny_config(2);
    let base = synthetic::random_model(&config, Preset::F32, 4).unwrap();
    let ad = random_adapter(&base, 3, 6);
    let model = build(base.clone());
    let off = logits(&model, Some(Arc::new(ad.clone().with_scale(0.0))));
    assert!(max_diff(&off, &logits(&model, None)) < 1e-5);
    let doubled = ad.clone().with_scale(2.0);
    let reference = build(merged(&base, &doubled));
    let d = max_diff(
        &logits(&reference, None),
        &logits(&model, Some(Arc::new(doubled))),
    );
    assert!(d < 1e-4, "{d}");
}

#[derive(serde::Deserialize)]
struct Expected {
    shape: [usize; 2],
    scaling: f32,
    delta: Vec<f32>,
}

#[test]
fn peft_fixture_matches_numpy() {
    let ad = LoraAdapter::load(fixtures().join("peft_llama")).unwrap();
    assert_eq!(ad.len(), 2 * 7);
    assert_eq!(ad.rope_layout(), Some(RopeLayout::HalfSplit));
    assert_eq!(ad.target("blk.1.ffn_down.weight").unwrap().rank(), 2);
    assert_eq!(ad.target("blk.0.attn_q.weight").unwrap().scaling(), 4.0);
    assert_eq!(ad.target("blk.0.attn_v.weight").unwrap().scaling(), 2.0);
    let text = std::fs::read_to_string(fixtures().join("peft_expected.json")).unwrap();
    let expected: std::collections::BTreeMap<String, Expected> =
        serde_json::from_str(&text).unwrap();
    assert_eq!(expected.len(), 4);
    let base = hf_base();
    let m = merged(&base, &ad);
    for (name, e) in &expected {
        let t = ad.target(name).unwrap();
        assert_eq!(t.shape(), (e.shape[0], e.shape[1]), "{name}");
        assert_eq!(t.scaling(), e.scaling, "{name}");
        let d = ad.delta(name).unwrap();
        assert!(max_diff(&d, &e.delta) < 1e-5, "{name}");
        let w0 = base.tensor(name).unwrap().to_f32().unwrap();
        let w1 = m.tensor(name).unwrap().to_f32().unwrap();
        let diff: Vec<f32> = w1.iter().zip(&w0).map(|(a, b)| a - b).collect();
        assert!(max_diff(&diff, &e.delta) < 1e-5, "{name}");
    }
    // A file inside the directory loads the same adapter.
    let again = LoraAdapter::load(fixtures().join("peft_llama/adapter_model.safetensors")).unwrap();
    assert_eq!(again.len(), ad.len());
}

#[test]
fn peft_unmerged_equals_merged() {
    let base = hf_base();
    let ad = LoraAdapter::load_for(fixtures().join("peft_llama"), &base.config).unwrap();
    let reference = build(merged(&base, &ad));
    let model = build(base);
    let want = logits(&reference, None);
    let got = logits(&model, Some(Arc::new(ad)));
    assert!(max_diff(&want, &got) < 1e-4, "{}", max_diff(&want, &got));
    assert!(max_diff(&logits(&model, None), &got) > 1e-3);
}

/// Permute rows per head from the half-split to the interleaved layout (what llama.cpp's
/// converter does to llama q/k weights and to LoRA B).
fn interleave_rows(v: &[f32], rows: usize, cols: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for h in 0..rows / hd {
        for i in 0..hd / 2 {
            let (src0, src1) = (h * hd + i, h * hd + i + hd / 2);
            let (dst0, dst1) = (h * hd + 2 * i, h * hd + 2 * i + 1);
            out[dst0 * cols..(dst0 + 1) * cols].copy_from_slice(&v[src0 * cols..(src0 + 1) * cols]);
            out[dst1 * cols..(dst1 + 1) * cols].copy_from_slice(&v[src1 * cols..(src1 + 1) * cols]);
        }
    }
    out
}

fn is_qk(name: &str) -> bool {
    matches!(parse_target(name), Some((_, "attn_q" | "attn_k")))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The adapter as llama.cpp's convert_lora_to_gguf.py writes it for arch `llama`: one alpha
/// (per-target scalings folded into B), q/k B rows interleaved.
fn to_gguf_lora(ad: &LoraAdapter, hd: usize, alpha: f32) -> Vec<u8> {
    let mut owned = Vec::new();
    for name in ad.targets() {
        let t = ad.target(name).unwrap();
        let (rows, cols) = t.shape();
        let r = t.rank();
        let fold = t.scaling() / (alpha / r as f32);
        let mut b: Vec<f32> = t.b().iter().map(|v| v * fold).collect();
        if is_qk(name) {
            b = interleave_rows(&b, rows, r, hd);
        }
        owned.push((
            format!("{name}.lora_a"),
            vec![cols as u64, r as u64],
            f32_bytes(t.a()),
        ));
        owned.push((
            format!("{name}.lora_b"),
            vec![r as u64, rows as u64],
            f32_bytes(&b),
        ));
    }
    let tensors: Vec<GgufTensorData<'_>> = owned
        .iter()
        .map(|(n, dims, data)| GgufTensorData {
            name: n,
            ggml_type: GgmlType::F32,
            dims: dims.clone(),
            data,
        })
        .collect();
    write_gguf(
        &[
            ("general.architecture", MetaValue::String("llama".into())),
            ("general.type", MetaValue::String("adapter".into())),
            ("adapter.type", MetaValue::String("lora".into())),
            ("adapter.lora.alpha", MetaValue::F32(alpha)),
        ],
        &tensors,
    )
    .unwrap()
}

#[test]
fn gguf_lora_gives_the_same_numbers() {
    let base = hf_base();
    let peft = LoraAdapter::load_for(fixtures().join("peft_llama"), &base.config).unwrap();
    let dir = scratch("gguf");
    let path = dir.join("lora.gguf");
    std::fs::write(&path, to_gguf_lora(&peft, base.config.head_dim, 8.0)).unwrap();
    let raw = LoraAdapter::load(&path).unwrap();
    assert_eq!(raw.rope_layout(), Some(RopeLayout::Interleaved));
    // Fitted to the half-split HF base, the q/k rows go back.
    let gguf = LoraAdapter::load_for(&path, &base.config).unwrap();
    assert_eq!(
        gguf.targets().collect::<Vec<_>>(),
        peft.targets().collect::<Vec<_>>()
    );
    for name in peft.targets() {
        let d = max_diff(&gguf.delta(name).unwrap(), &peft.delta(name).unwrap());
        assert!(d < 1e-5, "{name}: {d}");
    }
    let model = build(base);
    let a = logits(&model, Some(Arc::new(peft)));
    let b = logits(&model, Some(Arc::new(gguf)));
    assert!(max_diff(&a, &b) < 1e-4);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gguf_writer_round_trips() {
    let base = hf_base();
    let peft = LoraAdapter::load(fixtures().join("peft_llama"))
        .unwrap()
        .with_scale(0.75);
    // arch llama: written interleaved, read back as interleaved, fitted back to half-split.
    let bytes = peft.to_gguf_bytes(&base.config).unwrap();
    let g = GgufFile::from_bytes("w.gguf", &bytes).unwrap();
    assert_eq!(
        g.get("general.type").and_then(MetaValue::as_str),
        Some("adapter")
    );
    let mut back = LoraAdapter::from_gguf(&g).unwrap();
    assert_eq!(back.rope_layout(), Some(RopeLayout::Interleaved));
    back.adapt_to(&base.config).unwrap();
    assert_eq!(back.len(), peft.len());
    for name in peft.targets() {
        let d = max_diff(&back.delta(name).unwrap(), &peft.delta(name).unwrap());
        assert!(d < 1e-5, "{name}: {d}");
    }
    // The independent writer above and this one agree on the file's numbers.
    let other = LoraAdapter::from_gguf(
        &GgufFile::from_bytes(
            "o.gguf",
            &to_gguf_lora(&peft.clone().with_scale(1.0), base.config.head_dim, 8.0),
        )
        .unwrap(),
    )
    .unwrap();
    let raw = LoraAdapter::from_gguf(&g).unwrap();
    for name in peft.targets() {
        let a: Vec<f32> = other
            .delta(name)
            .unwrap()
            .iter()
            .map(|v| v * 0.75)
            .collect();
        assert!(max_diff(&raw.delta(name).unwrap(), &a) < 1e-5, "{name}");
    }
}

#[test]
fn peft_adapter_on_interleaved_base() {
    let base = hf_base();
    let hd = base.config.head_dim;
    // The same model with llama.cpp's interleaved q/k rows.
    let mut inter = base.clone();
    inter.config.rope_layout = RopeLayout::Interleaved;
    for (name, t) in inter.tensors.iter_mut() {
        if is_qk(name) {
            let (rows, cols) = (t.shape()[0], t.shape()[1]);
            let v = interleave_rows(&t.to_f32().unwrap(), rows, cols, hd);
            *t = Tensor::from_f32(name.clone(), vec![rows, cols], v).unwrap();
        }
    }
    let peft = LoraAdapter::load(fixtures().join("peft_llama")).unwrap();
    let fitted = LoraAdapter::load_for(fixtures().join("peft_llama"), &inter.config).unwrap();
    assert_eq!(fitted.rope_layout(), Some(RopeLayout::Interleaved));
    let half = build(base.clone());
    let want = logits(&half, Some(Arc::new(peft.clone())));
    let inter_model = build(inter.clone());
    assert!(max_diff(&logits(&half, None), &logits(&inter_model, None)) < 1e-4);
    let got = logits(&inter_model, Some(Arc::new(fitted)));
    assert!(max_diff(&want, &got) < 1e-4, "{}", max_diff(&want, &got));
    // merge_into fits the adapter itself.
    let m = build(merged(&inter, &peft));
    assert!(max_diff(&want, &logits(&m, None)) < 1e-4);
}

#[test]
fn native_round_trip() {
    let base = hf_base();
    let peft = LoraAdapter::load(fixtures().join("peft_llama"))
        .unwrap()
        .with_scale(0.5);
    let dir = scratch("native");
    let path = dir.join("a.safetensors");
    peft.write_native(&path).unwrap();
    let back = LoraAdapter::load(&path).unwrap();
    assert_eq!(back.scale(), 1.0);
    assert_eq!(back.rope_layout(), Some(RopeLayout::HalfSplit));
    assert_eq!(back.len(), peft.len());
    for name in peft.targets() {
        assert_eq!(
            back.target(name).unwrap().rank(),
            peft.target(name).unwrap().rank()
        );
        let d = max_diff(&back.delta(name).unwrap(), &peft.delta(name).unwrap());
        assert!(d < 1e-6, "{name}: {d}");
    }
    let model = build(base);
    let d = max_diff(
        &logits(&model, Some(Arc::new(peft))),
        &logits(&model, Some(Arc::new(back))),
    );
    assert!(d < 1e-5);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn switching_adapters_between_states() {
    let config = synthetic::tiny_config(2);
    let base = synthetic::random_model(&config, Preset::F32, 21).unwrap();
    let a1 = random_adapter(&base, 2, 1);
    let a2 = random_adapter(&base, 4, 2);
    let want1 = logits(&build(merged(&base, &a1)), None);
    let want2 = logits(&build(merged(&base, &a2)), None);
    let model = build(base);
    let plain = logits(&model, None);
    let (a1, a2): (Arc<dyn LinearDelta>, Arc<dyn LinearDelta>) = (Arc::new(a1), Arc::new(a2));
    let mut s1 = model.new_state();
    let mut s2 = model.new_state();
    model.set_adapter(&mut s1, Some(a1.clone())).unwrap();
    model.set_adapter(&mut s2, Some(a2.clone())).unwrap();
    // Interleave the two states' work over the one model.
    let h1 = model.forward_all(&mut s1, &TOKENS[..3]).unwrap();
    let h2 = model.forward_all(&mut s2, &TOKENS[..3]).unwrap();
    let t1 = model.forward_all(&mut s1, &TOKENS[3..]).unwrap();
    let t2 = model.forward_all(&mut s2, &TOKENS[3..]).unwrap();
    assert!(max_diff(&[h1, t1].concat(), &want1) < 1e-4);
    assert!(max_diff(&[h2, t2].concat(), &want2) < 1e-4);
    // Swap: the cache is cleared and the new adapter is used.
    model.set_adapter(&mut s1, Some(a2)).unwrap();
    assert_eq!(s1.position(), 0);
    assert!(max_diff(&model.forward_all(&mut s1, &TOKENS).unwrap(), &want2) < 1e-4);
    model.set_adapter(&mut s2, None).unwrap();
    assert!(max_diff(&model.forward_all(&mut s2, &TOKENS).unwrap(), &plain) < 1e-5);
}

// ---- malformed adapters ----

fn write_peft(dir: &Path, config: serde_json::Value, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| f32_bytes(&t.2)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let out = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), out).unwrap();
}

fn cfg(r: usize) -> serde_json::Value {
    serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj"]})
}

const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q_B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

#[test]
fn peft_half_precision_tensors() {
    let dir = scratch("half");
    let a: Vec<f32> = (0..4 * 32).map(|i| (i as f32 * 0.1).sin()).collect();
    let b: Vec<f32> = (0..32 * 4).map(|i| (i as f32 * 0.3).cos()).collect();
    write_peft(
        &dir,
        cfg(4),
        &[(Q_A, vec![4, 32], a.clone()), (Q_B, vec![32, 4], b.clone())],
    );
    let want = LoraAdapter::load(&dir).unwrap();
    for dtype in [safetensors::Dtype::BF16, safetensors::Dtype::F16] {
        let enc = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|&x| match dtype {
                    safetensors::Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes(),
                    _ => half::f16::from_f32(x).to_le_bytes(),
                })
                .collect()
        };
        let (ba, bb) = (enc(&a), enc(&b));
        let views = vec![
            (
                Q_A,
                safetensors::tensor::TensorView::new(dtype, vec![4, 32], &ba).unwrap(),
            ),
            (
                Q_B,
                safetensors::tensor::TensorView::new(dtype, vec![32, 4], &bb).unwrap(),
            ),
        ];
        let out = safetensors::tensor::serialize(views, None).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), out).unwrap();
        let got = LoraAdapter::load(&dir).unwrap();
        let n = "blk.0.attn_q.weight";
        let d = max_diff(&got.delta(n).unwrap(), &want.delta(n).unwrap());
        assert!(d > 0.0 && d < 0.05, "{dtype:?}: {d}");
    }
    // Integer tensors are refused with the tensor's name.
    let ints = vec![0u8; 4 * 32 * 4];
    let views = vec![
        (
            Q_A,
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![4, 32], &ints)
                .unwrap(),
        ),
        (
            Q_B,
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![32, 4], &ints)
                .unwrap(),
        ),
    ];
    let out = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), out).unwrap();
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(
        matches!(&e, AdapterError::BadTensor { tensor, .. } if tensor == Q_A),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rank_mismatch_is_typed() {
    let dir = scratch("rank");
    // A is rank 4, B rank 3.
    write_peft(
        &dir,
        cfg(4),
        &[
            (Q_A, vec![4, 32], vec![0.1; 128]),
            (Q_B, vec![32, 3], vec![0.1; 96]),
        ],
    );
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(
        matches!(&e, AdapterError::RankMismatch { target, .. } if target == "blk.0.attn_q.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("adapter_model.safetensors"), "{e}");
    // Config says r = 8, the tensors are rank 4.
    write_peft(
        &dir,
        cfg(8),
        &[
            (Q_A, vec![4, 32], vec![0.1; 128]),
            (Q_B, vec![32, 4], vec![0.1; 128]),
        ],
    );
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(matches!(e, AdapterError::RankMismatch { .. }), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_half_and_unknown_modules_are_typed() {
    let dir = scratch("unknown");
    write_peft(&dir, cfg(4), &[(Q_A, vec![4, 32], vec![0.1; 128])]);
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(
        matches!(&e, AdapterError::MissingTensor { tensor, .. } if tensor == Q_B),
        "{e}"
    );
    write_peft(
        &dir,
        cfg(4),
        &[
            (
                "base_model.model.lm_head.lora_A.weight",
                vec![4, 32],
                vec![0.1; 128],
            ),
            (
                "base_model.model.lm_head.lora_B.weight",
                vec![96, 4],
                vec![0.1; 384],
            ),
        ],
    );
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(
        matches!(&e, AdapterError::UnknownModule { name, .. } if name.contains("lm_head")),
        "{e}"
    );
    let mut c = cfg(4);
    c["target_modules"] = serde_json::json!(["q_proj", "embed_tokens"]);
    write_peft(
        &dir,
        c,
        &[
            (Q_A, vec![4, 32], vec![0.1; 128]),
            (Q_B, vec![32, 4], vec![0.1; 128]),
        ],
    );
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(
        matches!(&e, AdapterError::UnknownModule { name, .. } if name == "embed_tokens"),
        "{e}"
    );
    let mut c = cfg(4);
    c["use_dora"] = true.into();
    write_peft(
        &dir,
        c,
        &[
            (Q_A, vec![4, 32], vec![0.1; 128]),
            (Q_B, vec![32, 4], vec![0.1; 128]),
        ],
    );
    assert!(matches!(
        LoraAdapter::load(&dir).unwrap_err(),
        AdapterError::Unsupported { .. }
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn truncated_and_biased_peft_are_typed() {
    let dir = scratch("trunc");
    write_peft(
        &dir,
        cfg(4),
        &[
            (Q_A, vec![4, 32], vec![0.1; 128]),
            (Q_B, vec![32, 4], vec![0.1; 128]),
        ],
    );
    assert_eq!(LoraAdapter::load(&dir).unwrap().len(), 1);
    let st = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 9]).unwrap();
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(matches!(e, AdapterError::Malformed { .. }), "{e}");
    std::fs::write(&st, &bytes).unwrap();
    let mut c = cfg(4);
    c["bias"] = "lora_only".into();
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    assert!(matches!(
        LoraAdapter::load(&dir).unwrap_err(),
        AdapterError::Unsupported { .. }
    ));
    std::fs::write(dir.join("adapter_config.json"), "{ not json").unwrap();
    assert!(matches!(
        LoraAdapter::load(&dir).unwrap_err(),
        AdapterError::Malformed { .. }
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wrong_shape_and_missing_target_are_typed() {
    let base = hf_base();
    let model = build(base.clone());
    // Layer 0's q is 32x32; this delta is 32x16.
    let mut ad = LoraAdapter::new().with_source("x.safetensors");
    ad.insert(
        "blk.0.attn_q.weight",
        32,
        16,
        2,
        1.0,
        vec![0.1; 32],
        vec![0.1; 64],
    )
    .unwrap();
    let e = ad.check_model(&base).unwrap_err();
    assert!(
        matches!(&e, AdapterError::WrongShape { target, expected: (32, 32), found: (32, 16), .. } if target == "blk.0.attn_q.weight"),
        "{e}"
    );
    assert!(e.to_string().contains("x.safetensors"), "{e}");
    let mut s = model.new_state();
    let msg = model
        .set_adapter(&mut s, Some(Arc::new(ad.clone())))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("blk.0.attn_q.weight"), "{msg}");
    let mut m = base.clone();
    assert!(matches!(
        merge_into(&ad, &mut m).unwrap_err(),
        AdapterError::WrongShape { .. }
    ));
    // The fixture model has 2 layers.
    let mut ad = LoraAdapter::new();
    ad.insert(
        "blk.2.ffn_up.weight",
        64,
        32,
        1,
        1.0,
        vec![0.1; 32],
        vec![0.1; 64],
    )
    .unwrap();
    let e = ad.check_model(&base).unwrap_err();
    assert!(
        matches!(&e, AdapterError::MissingTarget { target, .. } if target == "blk.2.ffn_up.weight"),
        "{e}"
    );
    let msg = model
        .set_adapter(&mut s, Some(Arc::new(ad)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("blk.2.ffn_up.weight"), "{msg}");
    // Names that are not linear layers are refused up front.
    let mut ad = LoraAdapter::new();
    assert!(matches!(
        ad.insert(
            "output.weight",
            96,
            32,
            1,
            1.0,
            vec![0.0; 32],
            vec![0.0; 96]
        ),
        Err(AdapterError::UnknownModule { .. })
    ));
}

#[test]
fn kv_on_a_shared_layer_is_typed() {
    let mut config = synthetic::tiny_config(4);
    config.kv_source = twain_core::KvPlan::shared(4, 1, 1)
        .unwrap()
        .sources()
        .to_vec();
    let base = synthetic::random_model(&config, Preset::F32, 3).unwrap();
    let model = build(base.clone());
    let kv = (config.n_kv_heads * config.head_dim, config.d_model);
    for name in ["blk.3.attn_k.weight", "blk.2.attn_v.weight"] {
        let mut ad = LoraAdapter::new();
        ad.insert(name, kv.0, kv.1, 1, 1.0, vec![0.1; kv.1], vec![0.1; kv.0])
            .unwrap();
        let e = ad.check(&|n| model.linear_shape(n)).unwrap_err();
        assert!(
            matches!(&e, AdapterError::SharedKv { target, .. } if target == name),
            "{e}"
        );
        let mut s = model.new_state();
        let msg = model
            .set_adapter(&mut s, Some(Arc::new(ad.clone())))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(name) && msg.contains("K/V"), "{msg}");
        let mut m = base.clone();
        assert!(matches!(
            merge_into(&ad, &mut m).unwrap_err(),
            AdapterError::SharedKv { .. }
        ));
    }
    // K/V of an owning layer is fine.
    let mut ad = LoraAdapter::new();
    ad.insert(
        "blk.1.attn_k.weight",
        kv.0,
        kv.1,
        1,
        1.0,
        vec![0.1; kv.1],
        vec![0.1; kv.0],
    )
    .unwrap();
    assert!(ad.check(&|n| model.linear_shape(n)).is_ok());
}

#[test]
fn malformed_gguf_and_native_files_are_typed() {
    let dir = scratch("badfiles");
    // A GGUF model, not an adapter.
    let bytes = write_gguf(&[("general.type", MetaValue::String("model".into()))], &[]).unwrap();
    let g = GgufFile::from_bytes("m.gguf", &bytes).unwrap();
    assert!(matches!(
        LoraAdapter::from_gguf(&g).unwrap_err(),
        AdapterError::Malformed { .. }
    ));
    // A GGUF LoRA whose B is (r x out) instead of (out x r): rank mismatch.
    let a = f32_bytes(&[0.1; 2 * 32]);
    let b = f32_bytes(&[0.1; 32 * 2]);
    let bytes = write_gguf(
        &[("general.type", MetaValue::String("adapter".into()))],
        &[
            GgufTensorData {
                name: "blk.0.attn_q.weight.lora_a",
                ggml_type: GgmlType::F32,
                dims: vec![32, 2],
                data: &a,
            },
            GgufTensorData {
                name: "blk.0.attn_q.weight.lora_b",
                ggml_type: GgmlType::F32,
                dims: vec![32, 2],
                data: &b,
            },
        ],
    )
    .unwrap();
    let g = GgufFile::from_bytes("t.gguf", &bytes).unwrap();
    let e = LoraAdapter::from_gguf(&g).unwrap_err();
    assert!(matches!(&e, AdapterError::RankMismatch { .. }), "{e}");
    assert!(e.to_string().contains("t.gguf"), "{e}");
    // A plain safetensors file that is not a native adapter.
    let path = dir.join("x.safetensors");
    let out = safetensors::tensor::serialize(
        Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
        None,
    )
    .unwrap();
    std::fs::write(&path, out).unwrap();
    assert!(matches!(
        LoraAdapter::load(&path).unwrap_err(),
        AdapterError::Malformed { .. }
    ));
    assert!(matches!(
        LoraAdapter::load(dir.join("nope.safetensors")).unwrap_err(),
        AdapterError::Os { .. }
    ));
    let _ = std::fs::remove_dir_all(dir);
}
