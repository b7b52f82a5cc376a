//! A GGUF file keeps its own precision and its conversion is cached, keyed
//! by the source, the conversion and the converter version; a cached file
//! whose record does not match is rebuilt, not trusted.

use std::path::{Path, PathBuf};

use half::f16;
use twain::engine::{cached_conversion, Conversion, Engine, LoadOptions};
use twain::Model;
use twain_io::gguf::{write_gguf, GgufTensorData};
use twain_io::{GgmlType, GgufFile, MetaValue, QuantFormat};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../twain-io/tests/fixtures/tiny_llama.gguf")
}

fn q8_0(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in v.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|x| (x * id).round() as i8 as u8));
    }
    out
}

fn q4_1(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in v.chunks_exact(32) {
        let (lo, hi) = b
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        let d = (hi - lo) / 15.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(lo).to_le_bytes());
        let q = |x: f32| (((x - lo) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out.push(q(b[j]) | (q(b[j + 16]) << 4));
        }
    }
    out
}

/// The tiny llama fixture as a llama.cpp-style Q4_1 file: Q8_0 embedding,
/// Q4_1 decoder matrices, f32 norms.
fn q4_1_gguf(path: &Path) {
    let g = GgufFile::open(fixture()).unwrap();
    // A vocabulary the merges ("t 1", "t 2") can be built from.
    let mut vocab: Vec<String> = ["t", "1", "2", "t1", "t2"].map(String::from).to_vec();
    let more: Vec<String> = (b'!'..=b'~')
        .map(|c| (c as char).to_string())
        .filter(|c| !vocab.contains(c))
        .collect();
    vocab.extend(more);
    vocab.truncate(96);
    let mut meta: Vec<(&str, MetaValue)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| *k != "general.alignment" && *k != "tokenizer.ggml.tokens")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    meta.push((
        "tokenizer.ggml.tokens",
        MetaValue::Array(vocab.into_iter().map(MetaValue::String).collect()),
    ));
    let datas: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> = g
        .tensors()
        .iter()
        .map(|info| {
            let v = g.dequantize_info(info).unwrap();
            let (ty, b) = if info.dims.len() != 2 {
                (
                    GgmlType::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            } else if info.name == "token_embd.weight" {
                (GgmlType::Q8_0, q8_0(&v))
            } else {
                (GgmlType::Q4_1, q4_1(&v))
            };
            (info.name.clone(), ty, info.dims.clone(), b)
        })
        .collect();
    let tensors: Vec<GgufTensorData<'_>> = datas
        .iter()
        .map(|(n, t, d, b)| GgufTensorData {
            name: n,
            ggml_type: *t,
            dims: d.clone(),
            data: b,
        })
        .collect();
    std::fs::write(path, write_gguf(&meta, &tensors).unwrap()).unwrap();
}

fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let m = &engine.model();
    let mut st = m.new_state();
    let mut logits = vec![0f32; m.info().vocab_size];
    m.forward(&mut st, prompt, &mut logits).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push(t);
        m.forward(&mut st, &[t], &mut logits).unwrap();
    }
    out
}

fn rewrite_provenance(path: &Path, key: &str, value: &str) {
    let mut m = twain_io::read_native(path).unwrap();
    m.provenance.insert(key.into(), value.into());
    let tmp = path.with_extension("tmp.twain");
    twain_io::write_native(&tmp, &twain_io::NativeModel::from_loaded(&m), &mut |_| {}).unwrap();
    drop(m);
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_gguf_is_kept_cached_and_rebuilt_when_its_record_is_stale() {
    let dir = std::env::temp_dir().join(format!("twain-gguf-cache-{}", std::process::id()));
    let cache = dir.join("cache");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("tiny.Q4_1.gguf");
    q4_1_gguf(&src);

    // First use converts (keep: Q8_0 -> q8 bit-exact, Q4_1 -> f16).
    let p1 = cached_conversion(&src, &cache, Conversion::default(), None).unwrap();
    let m = twain_io::read_native(&p1).unwrap();
    assert_eq!(m.tensors["token_embd.weight"].format(), QuantFormat::Q8);
    assert_eq!(m.tensors["blk.0.ffn_up.weight"].format(), QuantFormat::F16);
    assert_eq!(
        m.tensors["blk.0.attn_norm.weight"].format(),
        QuantFormat::F32
    );
    assert_eq!(m.provenance["twain.preset"], "keep");
    drop(m);
    let stamp = std::fs::metadata(&p1).unwrap().modified().unwrap();

    // The second use finds it and does not rewrite it.
    let p2 = cached_conversion(&src, &cache, Conversion::default(), None).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(std::fs::metadata(&p2).unwrap().modified().unwrap(), stamp);

    // The cached file answers as the in-memory kept load does, and as the
    // file's own weights dequantized to f32 (the tiny model's greedy path).
    let opts = || LoadOptions::default().kv_dtype(twain_core::KvDtype::F32);
    let cached = Engine::load(&p1, opts()).unwrap();
    let kept = Engine::load(&src, opts()).unwrap();
    let f32_opts = opts().preset(Some(twain_convert::Preset::F32));
    let own = Engine::load(&src, f32_opts).unwrap();
    let prompt = [1u32, 5, 9, 17, 33];
    let a = greedy(&cached, &prompt, 12);
    assert_eq!(a, greedy(&kept, &prompt, 12));
    assert_eq!(a, greedy(&own, &prompt, 12));

    // A stale record (another converter version, another source) is rebuilt.
    for (k, v) in [
        ("twain.converter_version", "0.0"),
        ("twain.source_key", "0000000000000000"),
    ] {
        rewrite_provenance(&p1, k, v);
        let p3 = cached_conversion(&src, &cache, Conversion::default(), None).unwrap();
        assert_eq!(p3, p1);
        let m = twain_io::read_native(&p3).unwrap();
        assert_ne!(m.provenance[k], v, "{k} was trusted, not rebuilt");
    }
    // A file that is not a model at all is rebuilt too.
    std::fs::write(&p1, b"junk").unwrap();
    let p4 = cached_conversion(&src, &cache, Conversion::default(), None).unwrap();
    assert!(twain_io::read_native(&p4).is_ok());

    // Another preset, or a changed source, is another file.
    let q8 = Conversion {
        preset: Some(twain_convert::Preset::Q8),
        ..Default::default()
    };
    let p5 = cached_conversion(&src, &cache, q8, None).unwrap();
    assert_ne!(p5, p1);
    assert_eq!(
        twain_io::read_native(&p5).unwrap().tensors["blk.0.ffn_up.weight"].format(),
        QuantFormat::Q8
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    q4_1_gguf(&src);
    let p6 = cached_conversion(&src, &cache, Conversion::default(), None).unwrap();
    assert_ne!(p6, p1);
    std::fs::remove_dir_all(&dir).unwrap();
}
