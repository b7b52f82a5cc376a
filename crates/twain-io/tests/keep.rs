//! A GGUF at its own precision: Q8_0 and Q4_0 re-laid out bit-exactly into
//! twain's q8 and q4, F16/BF16 kept exact, other types widened to f16.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use twain_io::gguf::{write_gguf, GgufTensorData};
use twain_io::keep::{model_from_gguf_kept, planned, Kept};
use twain_io::{GgmlType, GgufFile, MetaValue, QuantFormat};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
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

fn q4_0(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in v.chunks_exact(32) {
        let max = b
            .iter()
            .fold(0f32, |a, &x| if x.abs() > a.abs() { x } else { a });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        let q = |x: f32| ((x * id + 8.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            out.push(q(b[j]) | (q(b[j + 16]) << 4));
        }
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

/// The tiny llama fixture with its matrices re-encoded in `types`
/// (tensor name suffix -> type; F32 otherwise). `poison` sets one Q8_0 code
/// of that tensor to -128.
pub fn mixed_gguf(types: &[(&str, GgmlType)], poison: Option<&str>) -> Vec<u8> {
    let g = GgufFile::open(fixture("tiny_llama.gguf")).unwrap();
    let meta: Vec<(String, MetaValue)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("GGUF.") && *k != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut datas = Vec::new();
    for info in g.tensors() {
        let v = g.dequantize_info(info).unwrap();
        let ty = types
            .iter()
            .find(|(s, _)| info.name.ends_with(s) && info.dims.len() == 2)
            .map_or(GgmlType::F32, |&(_, t)| t);
        let mut bytes = match ty {
            GgmlType::Q8_0 => q8_0(&v),
            GgmlType::Q4_0 => q4_0(&v),
            GgmlType::Q4_1 => q4_1(&v),
            GgmlType::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            GgmlType::BF16 => v
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        if poison.is_some_and(|p| info.name.ends_with(p)) {
            bytes[2] = 0x80;
        }
        datas.push((info.name.clone(), ty, info.dims.clone(), bytes));
    }
    let meta_ref: Vec<(&str, MetaValue)> =
        meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let tensors: Vec<GgufTensorData<'_>> = datas
        .iter()
        .map(|(n, t, d, b)| GgufTensorData {
            name: n,
            ggml_type: *t,
            dims: d.clone(),
            data: b,
        })
        .collect();
    write_gguf(&meta_ref, &tensors).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn q8_0_and_q4_0_are_bit_exact_and_the_rest_is_widened() {
    let dir = std::env::temp_dir().join(format!("twain-io-keep-{}", std::process::id()));
    let types = [
        ("attn_q.weight", GgmlType::Q8_0),
        ("attn_k.weight", GgmlType::Q4_0),
        ("ffn_gate.weight", GgmlType::Q4_0),
        ("attn_v.weight", GgmlType::F16),
        ("attn_output.weight", GgmlType::BF16),
        ("ffn_up.weight", GgmlType::Q4_1),
        ("token_embd.weight", GgmlType::Q8_0),
        // 64 columns: two blocks per row, where the re-layout moves bytes.
        ("blk.0.ffn_down.weight", GgmlType::Q8_0),
        ("blk.1.ffn_down.weight", GgmlType::Q4_0),
    ];
    let path = write(&dir, "mixed.gguf", &mixed_gguf(&types, None));
    let g = GgufFile::open(&path).unwrap();
    let (m, kept) = model_from_gguf_kept(GgufFile::open(&path).unwrap()).unwrap();
    for info in g.tensors() {
        let t = &m.tensors[&info.name];
        let k = kept[&info.name];
        let want = g.dequantize_info(info).unwrap();
        let got = t.to_f32().unwrap();
        if info.name.ends_with("ffn_down.weight") {
            assert!(info.ggml_type != GgmlType::F32, "{}", info.name);
        }
        let expect = match info.ggml_type {
            GgmlType::Q8_0 => Kept::Exact(QuantFormat::Q8),
            GgmlType::Q4_0 => Kept::Exact(QuantFormat::Q4),
            GgmlType::F16 | GgmlType::BF16 => Kept::Exact(QuantFormat::F16),
            GgmlType::Q4_1 => Kept::Widened(QuantFormat::F16),
            _ => Kept::Exact(QuantFormat::F32),
        };
        assert_eq!(k, expect, "{}", info.name);
        assert_eq!(t.format(), expect.format(), "{}", info.name);
        assert_eq!(planned(info.ggml_type, &info.name, &info.shape()), expect);
        if k.is_exact() {
            // Bit for bit: twain's dequantization of the re-laid-out blocks
            // equals ggml's of the file's.
            let a: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
            assert_eq!(a, b, "{} ({:?})", info.name, info.ggml_type);
        } else {
            for (x, y) in want.iter().zip(&got) {
                assert!(
                    (x - y).abs() <= x.abs() / 2048.0 + 6e-8,
                    "{}: {x} vs {y}",
                    info.name
                );
            }
        }
    }
    // A Q8_0 code of -128 is outside twain's q8: that tensor becomes f16.
    let path = write(
        &dir,
        "poisoned.gguf",
        &mixed_gguf(&types, Some("blk.0.attn_q.weight")),
    );
    let (m, kept) = model_from_gguf_kept(GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(kept["blk.0.attn_q.weight"], Kept::Widened(QuantFormat::F16));
    assert_eq!(m.tensors["blk.0.attn_q.weight"].format(), QuantFormat::F16);
    assert_eq!(kept["blk.1.attn_q.weight"], Kept::Exact(QuantFormat::Q8));
    std::fs::remove_dir_all(&dir).unwrap();
}
