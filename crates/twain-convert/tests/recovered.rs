//! Shipped parameters: a pack reassembles to the trained model byte for
//! byte from the user's source, and refuses another source.

use std::collections::BTreeMap;
use twain_convert::recovered::{
    assemble, embedding_of, with_reproducible_embedding, write_pack, EMBEDDING,
};
use twain_convert::{convert, synthetic, ConvertError, ConvertOptions, Preset};
use twain_io::{LoadedModel, Tensor};
use twain_quant::QuantFormat;

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("twain-recovered-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A source and a "trained" afm model of it: converted, then one norm
/// gain and one code byte changed as training would.
fn trained(seed: u64) -> (LoadedModel, LoadedModel) {
    let source = synthetic::random_model(&synthetic::tiny_config(2), Preset::F32, seed).unwrap();
    let mut m = convert(source.clone(), Preset::Afm, ConvertOptions::default()).unwrap();
    let n = &m.tensors["blk.1.attn_norm.weight"];
    let mut g = n.to_f32().unwrap();
    g[0] += 0.5;
    let n = Tensor::from_f32("blk.1.attn_norm.weight", n.shape().to_vec(), g).unwrap();
    m.tensors.insert(n.name().into(), n);
    let t = &m.tensors["blk.0.ffn_down.weight"];
    let mut b = t.bytes().unwrap().to_vec();
    b[10] ^= 0x33;
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let q = twain_quant::QMatrix::from_bytes(QuantFormat::Q2, r, c, &b).unwrap();
    let t = Tensor::from_qmatrix("blk.0.ffn_down.weight", t.shape().to_vec(), q).unwrap();
    m.tensors.insert(t.name().into(), t);
    (source, m)
}

fn bytes(m: &LoadedModel) -> BTreeMap<String, Vec<u8>> {
    m.tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.bytes().unwrap().to_vec()))
        .collect()
}

#[test]
fn a_pack_reassembles_the_model_from_its_source() {
    let dir = scratch("pack");
    let (source, m) = trained(1);
    assert_eq!(m.tensors[EMBEDDING].format(), QuantFormat::Q4);
    for importance in [None, Some(vec![0.5f32; source.config.d_model])] {
        let imp = importance.as_deref().map(|w| {
            // Uneven weights, so they change the rounding.
            w.iter()
                .enumerate()
                .map(|(i, v)| v + i as f32)
                .collect::<Vec<_>>()
        });
        let m = with_reproducible_embedding(m.clone(), &source, imp.as_deref()).unwrap();
        let path = dir.join("m.pack.twain");
        let size = write_pack(&m, &source, &path).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let pack = twain_io::load_model(&path).unwrap();
        assert!(!pack.tensors.contains_key(EMBEDDING));
        let back = assemble(&path, &source).unwrap();
        assert_eq!(bytes(&back), bytes(&m));
        assert_eq!(back.config, m.config);
        // It runs.
        twain_core::Transformer::from_loaded(back, Default::default()).unwrap();
    }
    // The importance is what makes the table: another one makes another.
    let plain = embedding_of(&source, QuantFormat::Q4, None).unwrap();
    let ramp: Vec<f32> = (0..source.config.d_model)
        .map(|i| 1.0 + (i % 7) as f32 * 3.0)
        .collect();
    let weighted = embedding_of(&source, QuantFormat::Q4, Some(&ramp)).unwrap();
    assert_ne!(plain.bytes().unwrap(), weighted.bytes().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pack_refuses_another_source_and_a_model_it_cannot_rebuild() {
    let dir = scratch("refuse");
    let (source, m) = trained(1);
    let path = dir.join("m.pack.twain");
    write_pack(&m, &source, &path).unwrap();
    let (other, _) = trained(2);
    let e = assemble(&path, &other).unwrap_err();
    assert!(matches!(e, ConvertError::Shipped { .. }), "{e}");
    assert!(e.to_string().contains("sha256"), "{e}");
    // A model whose embedding the source does not reproduce cannot be packed.
    let e = write_pack(&m, &other, &dir.join("x.twain")).unwrap_err();
    assert!(e.to_string().contains(EMBEDDING), "{e}");
    assert!(!dir.join("x.twain").exists());
    // A full native file is no pack.
    let full = dir.join("full.twain");
    twain_io::write_native(&full, &twain_io::NativeModel::from_loaded(&m), &mut |_| {}).unwrap();
    let e = assemble(&full, &source).unwrap_err().to_string();
    assert!(e.contains("not a pack"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
