//! libFuzzer entry for the twain-fuzz target `hf_folder` (seed corpus: ../corpus/hf_folder).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::hf_folder(data));
