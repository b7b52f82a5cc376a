//! libFuzzer entry for the twain-fuzz target `gguf_tokenizer` (seed corpus: ../corpus/gguf_tokenizer).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::gguf_tokenizer(data));
