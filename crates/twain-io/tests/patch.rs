//! Patches: a variant written as its difference from a base, applied back.

use std::path::PathBuf;
use twain_io::{apply_patch, load_model, write_patch, IoError, LoadedModel, QuantFormat, Tensor};
use twain_quant::{quantize, QuantizeOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// tiny_llama.gguf with every matrix in Q2 (norms f32).
fn base() -> LoadedModel {
    let mut m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let names: Vec<String> = m.tensors.keys().cloned().collect();
    for name in names {
        let t = &m.tensors[&name];
        let shape = t.shape().to_vec();
        let nt = if shape.len() == 2 {
            let q = quantize(
                QuantFormat::Q2,
                shape[0],
                shape[1],
                &t.to_f32().unwrap(),
                &QuantizeOptions::default(),
            )
            .unwrap();
            Tensor::from_qmatrix(name.clone(), shape, q).unwrap()
        } else {
            Tensor::from_f32(name.clone(), shape, t.to_f32().unwrap()).unwrap()
        };
        m.tensors.insert(name, nt);
    }
    m
}

/// The base with layer 1 reading layer 0's K/V, a few code bytes and a
/// norm changed, and one matrix in another format.
fn variant(b: &LoadedModel) -> LoadedModel {
    let mut v = b.clone();
    v.config.kv_source = vec![0, 0];
    v.tensors.remove("blk.1.attn_k.weight");
    v.tensors.remove("blk.1.attn_v.weight");
    let t = &v.tensors["blk.0.ffn_up.weight"];
    let mut bytes = t.bytes().unwrap().to_vec();
    for i in [0usize, 5, 6, 300, bytes.len() - 1] {
        bytes[i] ^= 0x5a;
    }
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let q = twain_quant::QMatrix::from_bytes(QuantFormat::Q2, r, c, &bytes).unwrap();
    let up = Tensor::from_qmatrix("blk.0.ffn_up.weight", t.shape().to_vec(), q).unwrap();
    v.tensors.insert(up.name().to_string(), up);
    let n = &v.tensors["blk.1.ffn_norm.weight"];
    let mut g = n.to_f32().unwrap();
    g[3] *= 1.25;
    let n = Tensor::from_f32("blk.1.ffn_norm.weight", n.shape().to_vec(), g).unwrap();
    v.tensors.insert(n.name().to_string(), n);
    let t = &v.tensors["blk.0.attn_q.weight"];
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let data = b.tensors["blk.0.attn_q.weight"].to_f32().unwrap();
    let q = quantize(QuantFormat::Q8, r, c, &data, &QuantizeOptions::default()).unwrap();
    let q = Tensor::from_qmatrix("blk.0.attn_q.weight", t.shape().to_vec(), q).unwrap();
    v.tensors.insert(q.name().to_string(), q);
    v.provenance.insert("twain.kv_share".into(), "1:1".into());
    v
}

fn same(a: &LoadedModel, b: &LoadedModel) {
    assert_eq!(a.config, b.config);
    assert_eq!(a.provenance, b.provenance);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert_eq!((t.format(), t.shape()), (u.format(), u.shape()), "{name}");
        assert_eq!(t.bytes().unwrap(), u.bytes().unwrap(), "{name}");
    }
}

#[test]
fn a_patch_rebuilds_the_variant_byte_for_byte() {
    let dir = std::env::temp_dir().join(format!("twain-io-patch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.patch");
    let b = base();
    let v = variant(&b);
    let stats = write_patch(&b, &v, "base-1", &path).unwrap();
    assert_eq!(stats.removed, 2);
    assert_eq!(stats.full, 1);
    // Five code bytes and the four bytes of one norm gain.
    assert!(
        stats.changed_bytes <= 9 && stats.changed_bytes >= 6,
        "{stats:?}"
    );
    assert!(stats.file_bytes < 4096 + 2 * stats.kept_bytes as u64 / 100);
    let back = apply_patch(b.clone(), &path, "base-1").unwrap();
    same(&back, &v);

    // Another base, a damaged file, a file that is no patch: typed errors.
    let e = apply_patch(b.clone(), &path, "base-2")
        .unwrap_err()
        .to_string();
    assert!(e.contains("base-1") && e.contains("base-2"), "{e}");
    let mut other = b.clone();
    other.tensors.remove("blk.0.ffn_up.weight");
    let e = apply_patch(other, &path, "base-1").unwrap_err().to_string();
    assert!(e.contains("blk.0.ffn_up.weight"), "{e}");
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.patch");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = apply_patch(b.clone(), &cut, "base-1").unwrap_err();
    assert!(matches!(e, IoError::Malformed { .. }), "{e}");
    let e = apply_patch(b.clone(), &fixture("tiny_llama.gguf"), "base-1").unwrap_err();
    assert!(e.to_string().contains("tiny_llama.gguf"), "{e}");
    let e = apply_patch(b, &dir.join("missing.patch"), "base-1").unwrap_err();
    assert!(e.to_string().contains("missing.patch"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn patch_write_never_follows_a_planted_temp_symlink() {
    let dir = std::env::temp_dir().join(format!("twain-io-patch-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.patch");
    std::fs::write(&path, b"old patch").unwrap();
    // A symlink where a predictable temporary name would be, pointing at another file.
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let mut planted = path.as_os_str().to_owned();
    planted.push(format!(".tmp.{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, PathBuf::from(&planted)).unwrap();
    let b = base();
    let v = variant(&b);
    let stats = write_patch(&b, &v, "base-1", &path).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), stats.file_bytes);
    same(&apply_patch(b.clone(), &path, "base-1").unwrap(), &v);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let planted_name = PathBuf::from(&planted)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut expected = vec![planted_name, "v.patch".into(), "victim".into()];
    expected.sort();
    assert_eq!(names, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
