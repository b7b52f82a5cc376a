//! libFuzzer entry for the twain-fuzz target `json_schema` (seed corpus: ../corpus/json_schema).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::json_schema(data));
