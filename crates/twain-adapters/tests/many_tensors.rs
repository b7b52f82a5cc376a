//! A GGUF LoRA with many tensors loads in time linear in their number (#21
//! item 7): each pair's halves used to be looked up again by name with a
//! scan of the whole tensor list, quadratic in the file's tensors.

use std::time::{Duration, Instant};

use twain_adapters::{LoraAdapter, MODULES};
use twain_io::gguf::{write_gguf, GgufTensorData};
use twain_io::{GgmlType, GgufFile, MetaValue};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn a_gguf_lora_with_50000_pairs_loads_in_bounded_time() {
    const PAIRS: usize = 50_000;
    let mut owned = Vec::with_capacity(2 * PAIRS);
    let mut targets = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let name = format!(
            "blk.{}.{}.weight",
            i / MODULES.len(),
            MODULES[i % MODULES.len()]
        );
        // A is 1 x 2 (r x in), B is 2 x 1 (out x r); GGUF dims are reversed.
        let v = i as f32;
        owned.push((
            format!("{name}.lora_a"),
            vec![2u64, 1],
            f32_bytes(&[v, 1.0]),
        ));
        owned.push((
            format!("{name}.lora_b"),
            vec![1u64, 2],
            f32_bytes(&[1.0, -v]),
        ));
        targets.push(name);
    }
    let tensors: Vec<GgufTensorData<'_>> = owned
        .iter()
        .map(|(n, dims, data)| GgufTensorData {
            name: n,
            ggml_type: GgmlType::F32,
            dims: dims.clone(),
            data,
        })
        .collect();
    let bytes = write_gguf(
        &[
            ("general.type", MetaValue::String("adapter".into())),
            ("adapter.type", MetaValue::String("lora".into())),
        ],
        &tensors,
    )
    .unwrap();
    let g = GgufFile::from_bytes("many.gguf", &bytes).unwrap();
    let t = Instant::now();
    let ad = LoraAdapter::from_gguf(&g).unwrap();
    let took = t.elapsed();
    // 0.2 s here; the name scan took 29 s (2 shared cores, test profile).
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(ad.targets().count(), PAIRS);
    // Every target got its own halves.
    for i in [0, 1, 6, 7, 12_345, PAIRS - 1] {
        let d = ad.target(&targets[i]).unwrap();
        assert_eq!(d.shape(), (2, 2));
        assert_eq!(d.rank(), 1);
        assert_eq!(d.a(), [i as f32, 1.0]);
        assert_eq!(d.b(), [1.0, -(i as f32)]);
    }
}
