//! Hostile GGUF metadata: parsing stays linear in the file size and its memory a small multiple
//! of it (issue #21 item 4, docs/reliability.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use twain_io::GgufFile;

/// Counts live heap bytes and their peak, so a test can bound what parsing allocates.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests measuring memory run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Peak heap bytes allocated while running `f` (above what was live before).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// A GGUF v3 header with no tensors and `n_kv` metadata entries; the caller appends them.
fn header(n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

fn key(b: &mut Vec<u8>, k: &str) {
    b.extend_from_slice(&(k.len() as u64).to_le_bytes());
    b.extend_from_slice(k.as_bytes());
}

/// Array header: value type 9, element type, count.
fn array_header(b: &mut Vec<u8>, elem: u32, count: u64) {
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&elem.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
}

#[test]
fn gguf_array_of_2_pow_40_elements_is_a_typed_error() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = header(1);
    key(&mut b, "general.huge");
    array_header(&mut b, 0, 1 << 40);
    b.extend_from_slice(&[0u8; 64]);
    let t = Instant::now();
    let (r, peak) = peak_during(|| GgufFile::from_bytes("huge.gguf", &b));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("huge.gguf") && e.contains("general.huge") && e.contains("array length"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        peak < 64 * 1024,
        "peak {peak} bytes for a {}-byte file",
        b.len()
    );
}

#[test]
fn gguf_array_count_cannot_reserve_beyond_the_file() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // An array of bools whose count fits the file exactly (1 byte each), broken at element 2:
    // reserving `count` MetaValues up front would take 32x the file before the error.
    let n: usize = 4 << 20;
    let mut b = header(1);
    key(&mut b, "general.flags");
    array_header(&mut b, 7, n as u64);
    b.extend_from_slice(&[0, 2]);
    b.resize(b.len() + n - 2, 0);
    let (r, peak) = peak_during(|| GgufFile::from_bytes("flags.gguf", &b));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("general.flags") && e.contains("bool byte 2"),
        "{e}"
    );
    // The aligned copy of the bytes (1x) plus at most 1x in reserved MetaValues.
    assert!(
        peak <= 3 * b.len(),
        "peak {peak} bytes for a {}-byte file",
        b.len()
    );
}

#[test]
fn gguf_long_key_with_many_nested_arrays_parses_in_linear_time() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A 1 MiB key holding 200k empty inner arrays: formatting the key into a message for every
    // inner array would copy 200 GB.
    let long_key = "k".repeat(1 << 20);
    let inner = 200_000u64;
    let mut b = header(1);
    key(&mut b, &long_key);
    array_header(&mut b, 9, inner);
    for _ in 0..inner {
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    }
    let t = Instant::now();
    let g = GgufFile::from_bytes("nested.gguf", &b).unwrap();
    assert_eq!(
        g.get(&long_key).unwrap().as_array().unwrap().len(),
        inner as usize
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn gguf_deeply_nested_arrays_are_a_typed_error() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = header(1);
    key(&mut b, "general.deep");
    // 64 levels of one-element arrays of arrays.
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..64 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0u8; 64]);
    let t = Instant::now();
    let e = GgufFile::from_bytes("deep.gguf", &b)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("general.deep") && e.contains("nested deeper"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}
