//! Native file: write a requantized model, read it back zero-copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use twain_io::native::{read_native_bytes, NATIVE_ALIGNMENT};
use twain_io::{load_model, write_native, IoError, LoadedModel, NativeModel, QuantFormat, Tensor};
use twain_quant::{quantize, QuantizeOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("twain-io-native-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// tiny_llama.gguf with its matrices requantized to a mix of twain formats.
fn requantized() -> (LoadedModel, BTreeMap<String, Tensor>) {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let formats = [
        QuantFormat::Q2,
        QuantFormat::Q4,
        QuantFormat::Q8,
        QuantFormat::F16,
        QuantFormat::F32,
    ];
    let mut out = BTreeMap::new();
    for (i, (name, t)) in m.tensors.iter().enumerate() {
        let nt = if t.shape().len() == 2 {
            let (r, c) = (t.shape()[0], t.shape()[1]);
            let f = formats[i % formats.len()];
            let q = quantize(f, r, c, &t.to_f32().unwrap(), &QuantizeOptions::default()).unwrap();
            Tensor::from_qmatrix(name.clone(), t.shape().to_vec(), q).unwrap()
        } else {
            t.clone()
        };
        out.insert(name.clone(), nt);
    }
    (m, out)
}

#[test]
fn round_trip_is_exact_and_zero_copy() {
    let (m, tensors) = requantized();
    let dir = scratch("rt");
    let path = dir.join("tiny.twain");
    let mut native = NativeModel::from_loaded(&m);
    native.tensors = &tensors;
    native.tokenizer_json = Some("{\"model\": {}}");
    native
        .provenance
        .insert("twain.preset".into(), "mixed".into());
    let mut calls = 0;
    let size = write_native(&path, &native, &mut |p| {
        calls += 1;
        assert!(p.done <= p.count && p.bytes_done <= p.bytes_total);
    })
    .unwrap();
    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(calls, tensors.len() + 1); // + the GGUF tokenizer entry
    let back = load_model(&path).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.chat_template, m.chat_template);
    assert_eq!(back.tokenizer_json.as_deref(), Some("{\"model\": {}}"));
    assert_eq!(
        back.provenance.get("twain.preset").map(String::as_str),
        Some("mixed")
    );
    let g = back.gguf.as_ref().expect("tokenizer metadata kept");
    assert_eq!(
        g.get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        96
    );
    assert!(g.get("llama.block_count").is_none());
    assert_eq!(back.tensors.len(), tensors.len());
    let mut seen = std::collections::HashSet::new();
    for (name, t) in &tensors {
        let b = back.tensor(name).unwrap();
        assert!(b.is_mapped(), "{name}");
        assert_eq!(b.format(), t.format(), "{name}");
        assert_eq!(b.shape(), t.shape(), "{name}");
        let view = b.matrix().unwrap();
        assert_eq!(
            view.data().as_ptr() as usize % NATIVE_ALIGNMENT,
            0,
            "{name}"
        );
        assert_eq!(view.data(), t.bytes().unwrap(), "{name}");
        assert_eq!(b.to_f32().unwrap(), t.to_f32().unwrap(), "{name}");
        seen.insert(b.format());
    }
    assert_eq!(seen.len(), 5, "every format exercised: {seen:?}");
    // Every tool that reads safetensors can list the file.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names().len(), tensors.len() + 1);
    // Writing over an existing file replaces it atomically.
    write_native(&path, &native, &mut |_| {}).unwrap();
    assert!(read_native_bytes("again", &std::fs::read(&path).unwrap()).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writer_rejects_bad_provenance_and_writes_nothing() {
    // Whether the tensors are a model of the config is twain-core's check
    // (crates/twain-core/tests/arch.rs); the writer checks what it writes.
    let (m, _) = requantized();
    let dir = scratch("bad");
    let path = dir.join("bad.twain");
    let mut native = NativeModel::from_loaded(&m);
    native.provenance.insert("preset".into(), "x".into());
    let e = write_native(&path, &native, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("twain."), "{e}");
    assert!(!path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reader_rejects_damaged_files() {
    let (m, tensors) = requantized();
    let dir = scratch("dmg");
    let path = dir.join("x.twain");
    let mut native = NativeModel::from_loaded(&m);
    native.tensors = &tensors;
    write_native(&path, &native, &mut |_| {}).unwrap();
    let good = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap().to_string();
    let with_header = |h: &str| {
        let mut h = h.as_bytes().to_vec();
        h.resize(n, b' ');
        let mut b = good.clone();
        b[8..8 + n].copy_from_slice(&h[..n]);
        b
    };
    let err = |b: &[u8]| read_native_bytes("x.twain", b).unwrap_err().to_string();
    // Version.
    let e = err(&with_header(
        &header.replace("\"twain_version\":\"1\"", "\"twain_version\":\"7\""),
    ));
    assert!(e.contains("version"), "{e}");
    // Unknown format name.
    let e = err(&with_header(&header.replacen(
        "\\\"format\\\":\\\"q2\\\"",
        "\\\"format\\\":\\\"q9\\\"",
        1,
    )));
    assert!(e.contains("q9"), "{e}");
    // Header length past the end.
    let mut b = good.clone();
    b[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    assert!(err(&b).contains("header length"));
    // Truncated data.
    let e = err(&good[..good.len() - 100]);
    assert!(e.contains("runs past"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kv_sharing_plan_round_trips_without_block2_kv_weights() {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let dir = scratch("kv");
    let path = dir.join("kv.twain");
    let write = |kv_source: Vec<usize>, drop_kv: bool| {
        let mut config = m.config.clone();
        config.kv_source = kv_source;
        let mut tensors = m.tensors.clone();
        if drop_kv {
            tensors.remove("blk.1.attn_k.weight");
            tensors.remove("blk.1.attn_v.weight");
        }
        let mut native = NativeModel::from_loaded(&m);
        native.config = &config;
        native.tensors = &tensors;
        write_native(&path, &native, &mut |_| {})
    };
    write(vec![0, 0], true).unwrap();
    let back = load_model(&path).unwrap();
    assert_eq!(back.config.kv_source, vec![0, 0]);
    assert!(!back.tensors.contains_key("blk.1.attn_k.weight"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_partial_file_omits_only_what_it_says() {
    let (m, mut tensors) = requantized();
    let dir = scratch("partial");
    let path = dir.join("partial.twain");
    let embd = tensors.remove("token_embd.weight").unwrap();
    let mut native = NativeModel::from_loaded(&m);
    native.tensors = &tensors;
    native
        .provenance
        .insert(twain_io::OMITTED_KEY.into(), "token_embd.weight".into());
    write_native(&path, &native, &mut |_| {}).unwrap();
    let back = load_model(&path).unwrap();
    assert!(!back.tensors.contains_key("token_embd.weight"));
    assert_eq!(back.tensors.len(), tensors.len());
    assert_eq!(
        back.provenance[twain_io::OMITTED_KEY],
        "token_embd.weight".to_string()
    );
    // Omitting a tensor that is there, or one the model does not have.
    let mut with = tensors.clone();
    with.insert("token_embd.weight".into(), embd);
    native.tensors = &with;
    let e = write_native(&path, &native, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("omitted but present"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Names in `dir`, sorted.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[cfg(unix)]
#[test]
fn native_write_is_atomic_and_never_writes_through_a_symlink() {
    let (m, tensors) = requantized();
    let dir = scratch("atomic");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut native = NativeModel::from_loaded(&m);
    native.tensors = &tensors;
    // The destination is a symlink to another file: the link is replaced, the file kept.
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let path = dir.join("tiny.twain");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let size = write_native(&path, &native, &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    // Complete: the size returned, and it reads back.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    let back = load_model(&path).unwrap();
    assert_eq!(back.tensors.len(), tensors.len());
    assert_eq!(entries(&dir), ["tiny.twain", "victim"]);
    // A failing write (the rename onto a non-empty directory) leaves no temporary file.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("x"), b"x").unwrap();
    let e = write_native(&sub, &native, &mut |_| {}).unwrap_err();
    assert!(matches!(e, IoError::Os { .. }), "{e:?}");
    assert!(e.to_string().contains("sub"), "{e}");
    assert_eq!(entries(&dir), ["sub", "tiny.twain", "victim"]);
    let _ = std::fs::remove_dir_all(&dir);
}
