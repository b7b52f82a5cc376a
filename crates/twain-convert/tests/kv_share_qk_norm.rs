//! KV sharing retrofitted onto a qk-norm (Qwen3-style) model: sharing
//! layers lose their K/V projections, K/V biases and `attn_k_norm`
//! together, so the converted model saves, loads and runs (#21 item 7).

use twain_convert::{apply_plan, convert, synthetic, ConvertOptions, Preset};
use twain_core::{KvDtype, KvPlan, Transformer, TransformerOptions};
use twain_model::Model;

fn qwen3_like() -> twain_core::ModelConfig {
    let mut c = synthetic::tiny_config(4);
    c.arch = "qwen3".into();
    c.qk_norm = true;
    c.qkv_bias = true;
    c
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("twain-kvqk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(m: twain_io::LoadedModel) -> Vec<f32> {
    let t =
        Transformer::from_loaded(m, TransformerOptions::default().kv_dtype(KvDtype::F32)).unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 5 % 96) as u32).collect();
    t.forward_all(&mut t.new_state(), &tokens).unwrap()
}

#[test]
fn kv_share_on_a_qk_norm_model_drops_the_k_norm_and_the_file_loads() {
    let dir = scratch("convert");
    let base = synthetic::random_model(&qwen3_like(), Preset::F32, 7).unwrap();
    assert!(base.tensors.contains_key("blk.3.attn_k_norm.weight"));
    let plan = KvPlan::shared(4, 1, 1).unwrap();
    for preset in [Preset::F32, Preset::Q8] {
        let m = convert(
            base.clone(),
            preset,
            ConvertOptions {
                kv_share: Some((1, 1)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.config.kv_source, plan.sources());
        for l in 0..4 {
            for name in KvPlan::kv_tensor_names(l) {
                let has = m.tensors.contains_key(&name);
                if plan.owns(l) {
                    assert!(has || name.contains("bias") && !m.config.qkv_bias, "{name}");
                } else {
                    assert!(!has, "sharing layer {l} kept {name}");
                }
            }
            assert_eq!(
                m.tensors
                    .contains_key(&format!("blk.{l}.attn_k_norm.weight")),
                plan.owns(l),
                "layer {l}'s k-norm"
            );
            // The q-norm stays on every layer.
            assert!(m
                .tensors
                .contains_key(&format!("blk.{l}.attn_q_norm.weight")));
        }
        let path = dir.join(format!("{preset:?}.twain"));
        twain_io::write_native(&path, &twain_io::NativeModel::from_loaded(&m), &mut |_| {})
            .unwrap();
        let loaded = twain_io::load_model(&path).unwrap();
        assert_eq!(loaded.config.kv_source, plan.sources());
        let logits = run(loaded);
        assert!(logits.iter().all(|v| v.is_finite()));
    }
    // apply_plan alone (the engine's and the CLI's retrofit) leaves a model
    // the transformer and the writer accept.
    let mut m = base.clone();
    apply_plan(&mut m, &plan).unwrap();
    let path = dir.join("plan.twain");
    twain_io::write_native(&path, &twain_io::NativeModel::from_loaded(&m), &mut |_| {}).unwrap();
    assert_eq!(
        run(twain_io::load_model(&path).unwrap()),
        run(m),
        "the saved file computes what the model in memory does"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
