//! GGUF parser, model mapping and dequantization on arbitrary bytes: Ok or Err, never a panic.
//! Seed corpus: crates/twain-io/tests/fixtures/*.gguf
//! (`mkdir -p corpus/gguf && cp ../../crates/twain-io/tests/fixtures/*.gguf corpus/gguf/` then
//! `cargo +nightly fuzz run gguf corpus/gguf` from fuzz/libfuzzer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use twain_io::{model_from_gguf, GgufFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = GgufFile::from_bytes("fuzz.gguf", data) {
        for info in g.tensors() {
            let _ = g.dequantize_info(info);
        }
        if let Ok(m) = model_from_gguf(g) {
            for t in m.tensors.values() {
                let _ = t.to_f32();
                let _ = t.matrix().map(|v| v.rows());
            }
        }
    }
});
