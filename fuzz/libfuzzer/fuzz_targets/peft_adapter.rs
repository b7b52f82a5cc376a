//! libFuzzer entry for the twain-fuzz target `peft_adapter` (seed corpus: ../corpus/peft_adapter).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::peft_adapter(data));
