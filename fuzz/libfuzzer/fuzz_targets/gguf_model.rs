//! libFuzzer entry for the twain-fuzz target `gguf_model` (seed corpus: ../corpus/gguf_model).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::gguf_model(data));
