//! libFuzzer entry for the twain-fuzz target `gguf_lora` (seed corpus: ../corpus/gguf_lora).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::gguf_lora(data));
