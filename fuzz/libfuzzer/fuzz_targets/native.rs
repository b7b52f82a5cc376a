//! twain native-file parser on arbitrary bytes: Ok or Err, never a panic. Seed corpus:
//! `TWAIN_FUZZ_SEED_DIR=$PWD/fuzz/libfuzzer/corpus/native cargo test -p twain-io --test corrupt`
//! then `cargo +nightly fuzz run native corpus/native` from fuzz/libfuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twain_io::native::read_native_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = read_native_bytes("fuzz.twain", data) {
        for t in m.tensors.values() {
            let _ = t.to_f32();
            let _ = t.matrix().map(|v| v.rows());
            let _ = t.as_f32_slice();
        }
    }
});
