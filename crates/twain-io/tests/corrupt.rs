//! A deterministic corpus of damaged files (truncations, byte flips, absurd numbers patched in)
//! through the GGUF and native parsers: each must return Ok or Err, never panic or run away
//! with memory. The same checks run under cargo-fuzz in fuzz/.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use twain_io::native::read_native_bytes;
use twain_io::{
    model_from_gguf, write_native, GgufFile, LoadedModel, NativeModel, QuantFormat, Tensor,
};
use twain_quant::{quantize, QuantizeOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// xorshift64*: a tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ABSURD: [u64; 8] = [
    u64::MAX,
    u64::MAX / 2,
    1 << 40,
    1 << 32,
    u32::MAX as u64,
    0,
    1,
    0xFFFF_FFFF_0000_0000,
];

/// Uses everything a parsed model offers, so lazy checks are exercised too.
fn exercise_model(m: &LoadedModel) {
    for t in m.tensors.values() {
        let _ = t.to_f32();
        let _ = t.matrix().map(|v| v.rows());
        let _ = t.as_f32_slice();
    }
}

/// Mutants that parsed (so the corpus reaches past the first checks).
static GGUF_OK: AtomicUsize = AtomicUsize::new(0);
static NATIVE_OK: AtomicUsize = AtomicUsize::new(0);

fn gguf_case(bytes: &[u8]) {
    if let Ok(g) = GgufFile::from_bytes("fuzz.gguf", bytes) {
        GGUF_OK.fetch_add(1, Ordering::Relaxed);
        for info in g.tensors() {
            let _ = g.dequantize_info(info);
        }
        if let Ok(m) = model_from_gguf(g) {
            exercise_model(&m);
        }
    }
}

fn native_case(bytes: &[u8]) {
    if let Ok(m) = read_native_bytes("fuzz.twain", bytes) {
        NATIVE_OK.fetch_add(1, Ordering::Relaxed);
        exercise_model(&m);
    }
}

fn run(what: &str, bytes: &[u8], case: fn(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| case(bytes))).is_err() {
        let path = std::env::temp_dir().join(format!("twain-io-crash-{}.bin", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        panic!(
            "parser panicked on {what}; input saved to {}",
            path.display()
        );
    }
}

/// Truncations, byte flips and absurd u32/u64 values at many positions of `good`.
fn mutate_all(label: &str, good: &[u8], header_len: usize, case: fn(&[u8])) -> usize {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ good.len() as u64);
    let mut n = 0;
    // Truncation at every offset in the header, at a stride through the data.
    let stride = (good.len() / 500).max(1);
    for cut in (0..header_len.min(good.len())).chain((header_len..good.len()).step_by(stride)) {
        run(&format!("{label} cut at {cut}"), &good[..cut], case);
        n += 1;
    }
    // Byte flips, mostly in the header.
    for i in 0..3000 {
        let mut b = good.to_vec();
        let flips = 1 + rng.below(4);
        for _ in 0..flips {
            let pos = if i % 4 == 0 {
                rng.below(b.len())
            } else {
                rng.below(header_len.min(b.len()))
            };
            b[pos] = rng.next() as u8;
        }
        run(&format!("{label} flip #{i}"), &b, case);
        n += 1;
    }
    // Absurd counts, lengths, dims and offsets patched over any 4 or 8 header bytes.
    for i in 0..3000 {
        let mut b = good.to_vec();
        let v = ABSURD[rng.below(ABSURD.len())];
        let pos = rng.below(header_len.saturating_sub(8).max(1));
        if rng.next().is_multiple_of(2) {
            b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
        } else {
            b[pos..pos + 4].copy_from_slice(&(v as u32).to_le_bytes());
        }
        run(&format!("{label} absurd #{i} at {pos}"), &b, case);
        n += 1;
    }
    n
}

fn gguf_header_len(bytes: &[u8]) -> usize {
    let g = GgufFile::from_bytes("x", bytes).unwrap();
    g.data_start()
}

#[test]
fn gguf_parser_survives_damage() {
    let mut total = 0;
    for f in ["tiny_llama.gguf", "quants.gguf"] {
        let good = std::fs::read(fixture(f)).unwrap();
        let h = gguf_header_len(&good);
        total += mutate_all(f, &good, h, gguf_case);
    }
    // Specific absurd counts at the known header fields.
    let good = std::fs::read(fixture("tiny_llama.gguf")).unwrap();
    for (pos, len) in [(8usize, 8usize), (16, 8), (24, 8)] {
        for v in ABSURD {
            let mut b = good.clone();
            b[pos..pos + len].copy_from_slice(&v.to_le_bytes()[..len]);
            run(&format!("header field at {pos} = {v}"), &b, gguf_case);
            total += 1;
        }
    }
    let ok = GGUF_OK.load(Ordering::Relaxed);
    eprintln!("gguf: {total} mutants, {ok} parsed");
    assert!(total > 10_000, "{total}");
    assert!(
        ok > 500,
        "too few mutants parse ({ok}): the corpus does not reach the deeper checks"
    );
}

fn native_fixture() -> Vec<u8> {
    let m = twain_io::load_model(fixture("tiny_llama.gguf")).unwrap();
    let formats = [
        QuantFormat::Q2,
        QuantFormat::Q4,
        QuantFormat::Q8,
        QuantFormat::F16,
    ];
    let tensors = m
        .tensors
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let nt = if let [r, c] = *t.shape() {
                let q = quantize(
                    formats[i % 4],
                    r,
                    c,
                    &t.to_f32().unwrap(),
                    &QuantizeOptions::default(),
                )
                .unwrap();
                Tensor::from_qmatrix(name.clone(), vec![r, c], q).unwrap()
            } else {
                t.clone()
            };
            (name.clone(), nt)
        })
        .collect();
    let mut native = NativeModel::from_loaded(&m);
    native.tensors = &tensors;
    native.tokenizer_json = Some("{}");
    let path = std::env::temp_dir().join(format!("twain-io-corrupt-{}.twain", std::process::id()));
    write_native(&path, &native, &mut |_| {}).unwrap();
    let b = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    // Seed for `cargo fuzz run native`: TWAIN_FUZZ_SEED_DIR=fuzz/corpus/native cargo test ...
    if let Some(dir) = std::env::var_os("TWAIN_FUZZ_SEED_DIR") {
        std::fs::write(PathBuf::from(dir).join("tiny.twain"), &b).unwrap();
    }
    b
}

#[test]
fn native_parser_survives_damage() {
    let good = native_fixture();
    assert!(read_native_bytes("good", &good).is_ok());
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut total = mutate_all("native", &good, 8 + n, native_case);
    // Numbers inside the JSON header (offsets, shapes, config values) replaced by absurd ones.
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap();
    let digits: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| {
            c.is_ascii_digit() && !header[..i].ends_with(|p: char| p.is_ascii_digit())
        })
        .map(|(i, _)| i)
        .collect();
    let mut rng = Rng(42);
    let absurd = [
        "18446744073709551615",
        "9223372036854775807",
        "4294967296",
        "0",
        "1",
        "63",
        "65",
        "-1",
        "1e300",
    ];
    for i in 0..2000 {
        let at = digits[rng.below(digits.len())];
        let end = at
            + header[at..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(header.len() - at);
        let new = format!(
            "{}{}{}",
            &header[..at],
            absurd[rng.below(absurd.len())],
            &header[end..]
        );
        let mut h = new.into_bytes();
        if h.len() < n {
            h.resize(n, b' ');
        }
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(&h);
        b.extend_from_slice(&good[8 + n..]);
        run(
            &format!("native header number #{i} at {at}"),
            &b,
            native_case,
        );
        total += 1;
    }
    let ok = NATIVE_OK.load(Ordering::Relaxed);
    eprintln!("native: {total} mutants, {ok} parsed");
    assert!(total > 8_000, "{total}");
    assert!(
        ok > 100,
        "too few mutants parse ({ok}): the corpus does not reach the deeper checks"
    );
}
