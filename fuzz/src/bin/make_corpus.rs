//! Writes `fuzz/corpus/<target>/`: the valid seeds of every target ([`twain_fuzz::seeds`])
//! and deterministic mutations of them (truncations, bit flips, interesting integers). Files
//! named `regress-*` are inputs the replay test once failed on; they are kept.
//! Run once after changing the seeds: `cargo run -p twain-fuzz --bin make_corpus`.

use std::path::PathBuf;

use twain_fuzz::mutate::{mutate, mutate_once, Rng, INTERESTING};
use twain_fuzz::{check_seed, seeds, TARGETS};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for t in TARGETS {
        let dir = root.join(t.name);
        // Keep the inputs fuzzing found (`regress-*`), rewrite the rest.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().starts_with("regress-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let seeds = seeds::seeds(t.name);
        let mut rng = Rng::new(0x7477_6169_6e00 ^ t.name.len() as u64);
        for (i, (name, data)) in seeds.iter().enumerate() {
            if let Err(e) = check_seed(t.name, data) {
                panic!("seed {}/{name} does not parse: {e}", t.name);
            }
            let write = |suffix: &str, bytes: &[u8]| {
                std::fs::write(dir.join(format!("{name}{suffix}")), bytes).expect("write")
            };
            write("", data);
            // Truncations at a quarter, a half and one byte short.
            write(".trunc-quarter", &data[..data.len() / 4]);
            write(".trunc-half", &data[..data.len() / 2]);
            write(".trunc-last", &data[..data.len().saturating_sub(1)]);
            // Bit flips.
            let mut flipped = data.clone();
            for _ in 0..4 {
                let k = rng.below(flipped.len());
                flipped[k] ^= 1 << rng.below(8);
            }
            write(".bitflip", &flipped);
            // Huge counts: 0xFFFFFFFF / u64::MAX over the first length-like fields (a GGUF
            // header's counts sit at 8 and 16, a safetensors header length at 0).
            for (k, &v) in [INTERESTING[11], INTERESTING[14]].iter().enumerate() {
                let mut huge = data.clone();
                for off in [0usize, 8, 16, 24 + 8 * k] {
                    if off + 8 <= huge.len() && rng.one_in(2) {
                        huge[off..off + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
                mutate_once(&mut rng, &mut huge, &[]);
                write(&format!(".huge{k}"), &huge);
            }
            let other = &seeds[(i + 1) % seeds.len()].1;
            write(".mutated", &mutate(&mut rng, data, other));
        }
        println!("{}: {} seeds", t.name, seeds.len());
    }
}
