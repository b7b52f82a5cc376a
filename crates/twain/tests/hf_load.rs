//! `Engine::load` converts nothing unless asked: a Hugging Face folder
//! without a preset runs at its own precision (f32), exactly as with
//! `--preset f32`, and only a preset compresses it.

use std::path::Path;

use twain::engine::{Engine, LoadOptions};
use twain::Model;
use twain_convert::Preset;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../twain-io/tests/fixtures/hf_llama")
}

fn logits(e: &Engine) -> Vec<f32> {
    let m = e.model();
    let mut s = m.new_state();
    let mut l = vec![0.0; m.info().vocab_size];
    m.forward(&mut s, &[1, 5, 9, 3], &mut l).unwrap();
    l
}

#[test]
fn a_hugging_face_folder_loads_unconverted_without_a_preset() {
    let plain = Engine::load(fixture(), LoadOptions::default()).unwrap();
    let f32 = Engine::load(fixture(), LoadOptions::default().preset(Some(Preset::F32))).unwrap();
    let q4 = Engine::load(fixture(), LoadOptions::default().preset(Some(Preset::Q4))).unwrap();
    assert_eq!(plain.model().weight_bytes(), f32.model().weight_bytes());
    assert!(
        q4.model().weight_bytes() < plain.model().weight_bytes(),
        "q4 {} vs unconverted {}",
        q4.model().weight_bytes(),
        plain.model().weight_bytes()
    );
    assert_eq!(logits(&plain), logits(&f32));
    assert_ne!(logits(&plain), logits(&q4));
}
