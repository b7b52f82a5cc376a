//! libFuzzer entry for the twain-fuzz target `tokenizer_json` (seed corpus: ../corpus/tokenizer_json).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::tokenizer_json(data));
