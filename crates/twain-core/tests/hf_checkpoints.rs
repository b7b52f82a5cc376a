//! The tiny Hugging Face checkpoints twain-io ships as fixtures (Llama 3 with
//! rope scaling, untied, BF16, single and sharded; Qwen2 with q/k/v bias;
//! Qwen3 with QK-norm) load, convert with every preset and run.

use std::path::PathBuf;

use twain_convert::{convert, ConvertOptions, Preset};
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_model::Model;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../twain-io/tests/fixtures")
        .join(name)
}

fn run(model: &Transformer) -> Vec<f32> {
    let v = model.info().vocab_size;
    let toks: Vec<u32> = (0..20).map(|i| (i * 13 % v) as u32).collect();
    let mut s = model.new_state();
    let mut logits = vec![0.0; v];
    model.forward(&mut s, &toks, &mut logits).unwrap();
    logits
}

#[test]
fn hugging_face_checkpoints_load_convert_and_run() {
    for name in ["hf_llama", "hf_llama_sharded", "hf_qwen2", "hf_qwen3"] {
        let loaded = twain_io::load_model(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = loaded.config.clone();
        let reference = run(&Transformer::from_loaded(
            loaded,
            TransformerOptions::default().kv_dtype(KvDtype::F32),
        )
        .unwrap());
        assert!(reference.iter().all(|v| v.is_finite()), "{name}");
        for preset in [Preset::F16, Preset::Q8, Preset::Q4, Preset::Afm] {
            let loaded = twain_io::load_model(fixture(name)).unwrap();
            let m = convert(loaded, preset, ConvertOptions::default())
                .unwrap_or_else(|e| panic!("{name} {preset:?}: {e}"));
            let logits = run(&Transformer::from_loaded(m, TransformerOptions::default()).unwrap());
            assert!(logits.iter().all(|v| v.is_finite()), "{name} {preset:?}");
            if preset == Preset::F16 {
                let d = reference
                    .iter()
                    .zip(&logits)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(d < 0.05, "{name}: f16 differs from f32 by {d}");
            }
        }
        // The single-file and sharded Llama are the same model.
        if name == "hf_llama_sharded" {
            let a = run(&Transformer::from_loaded(
                twain_io::load_model(fixture("hf_llama")).unwrap(),
                Default::default(),
            )
            .unwrap());
            let b = run(&Transformer::from_loaded(
                twain_io::load_model(fixture(name)).unwrap(),
                Default::default(),
            )
            .unwrap());
            assert_eq!(a, b);
        }
        assert!(cfg.n_layers >= 1);
    }
}
