//! libFuzzer entry for the twain-fuzz target `chat_template` (seed corpus: ../corpus/chat_template).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| twain_fuzz::chat_template(data));
