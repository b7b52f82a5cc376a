//! The architecture checks live in twain-core (`arch`): whatever file a model
//! comes from, a tensor set that is not a model of its config is a typed
//! error naming the tensor or the config key, and the readers and writers of
//! twain-io leave that check to it.

use std::path::PathBuf;

use twain_core::{
    check_tensors, check_tensors_except, expected_tensors, validate_config, CoreError, KvPlan,
    Transformer,
};
use twain_io::{load_model, write_native, NativeModel};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../twain-io/tests/fixtures")
        .join(name)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("twain-core-arch-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensor_error(e: &CoreError) -> (&str, &str) {
    match e {
        CoreError::Tensor { name, problem } => (name.as_str(), problem.as_str()),
        other => panic!("expected CoreError::Tensor, got {other:?}"),
    }
}

#[test]
fn expected_tensors_are_what_a_real_file_holds() {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let plan = validate_config(&m.config).unwrap();
    let expected = expected_tensors(&m.config, &plan);
    for (name, shape) in &expected {
        assert_eq!(m.tensors[name].shape(), shape.as_slice(), "{name}");
    }
    // The file has nothing the list lacks but GGUF extras.
    let extra: Vec<_> = m
        .tensors
        .keys()
        .filter(|n| !expected.iter().any(|(e, _)| e == *n))
        .collect();
    assert!(
        extra.iter().all(|n| n.starts_with("rope_freqs")),
        "{extra:?}"
    );
    assert_eq!(check_tensors(&m.config, &m.tensors).unwrap(), plan);
}

#[test]
fn a_written_file_missing_a_tensor_fails_in_core_with_its_name() {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let dir = scratch("missing");
    let path = dir.join("bad.twain");
    let mut tensors = m.tensors.clone();
    tensors.remove("blk.1.ffn_up.weight");
    let mut native = NativeModel::from_loaded(&m);
    native.tensors = &tensors;
    // The writer checks file-level facts only ...
    write_native(&path, &native, &mut |_| {}).unwrap();
    let back = load_model(&path).unwrap();
    // ... and the model is refused where the architecture is known.
    let e = check_tensors(&back.config, &back.tensors).unwrap_err();
    assert_eq!(tensor_error(&e).0, "blk.1.ffn_up.weight");
    let e = Transformer::from_loaded(back, Default::default())
        .err()
        .expect("a missing tensor must fail");
    assert_eq!(tensor_error(&e).0, "blk.1.ffn_up.weight");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_shape_from_a_config_is_named_with_both_shapes() {
    // A Hugging Face directory whose config.json says FFN 48 over weights of 32.
    let src = fixture("hf_qwen2");
    let d = scratch("shape");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    let cfg = d.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"intermediate_size\": 32", "\"intermediate_size\": 48");
    std::fs::write(&cfg, text).unwrap();
    let m = load_model(&d).unwrap();
    let e = Transformer::from_loaded(m, Default::default())
        .err()
        .expect("a wrong shape must fail");
    let (name, problem) = tensor_error(&e);
    assert_eq!(name, "blk.0.ffn_gate.weight");
    assert!(problem.contains("[48, 16]"), "{problem}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn kv_plans_are_checked_against_the_weights() {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let mut config = m.config.clone();
    // Layer 1 reads layer 0's cache but still has K/V weights.
    config.kv_source = vec![0, 0];
    let e = check_tensors(&config, &m.tensors).unwrap_err();
    let (name, problem) = tensor_error(&e);
    assert_eq!(name, "blk.1.attn_k.weight");
    assert!(problem.contains("kv_source"), "{problem}");
    // Without them it is a valid 2-layer plan with one cache.
    let mut tensors = m.tensors.clone();
    for n in KvPlan::kv_tensor_names(1) {
        tensors.remove(&n);
    }
    assert_eq!(check_tensors(&config, &tensors).unwrap().n_caches(), 1);
    // Layer 0 cannot read a later layer.
    config.kv_source = vec![1, 1];
    let e = check_tensors(&config, &tensors).unwrap_err();
    assert!(
        matches!(&e, CoreError::Config(m) if m.starts_with("kv_source")),
        "{e}"
    );
    config.kv_source = vec![0];
    let e = validate_config(&config).unwrap_err();
    assert!(e.to_string().contains("1 entries for 2 layers"), "{e}");
}

#[test]
fn omitted_tensors_must_be_the_models_and_absent() {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    let mut tensors = m.tensors.clone();
    tensors.remove("token_embd.weight");
    let e = check_tensors(&m.config, &tensors).unwrap_err();
    assert_eq!(tensor_error(&e).0, "token_embd.weight");
    let omit = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    check_tensors_except(&m.config, &tensors, &omit(&["token_embd.weight"])).unwrap();
    let e = check_tensors_except(
        &m.config,
        &tensors,
        &omit(&["token_embd.weight", "blk.99.attn_q.weight"]),
    )
    .unwrap_err();
    let (name, problem) = tensor_error(&e);
    assert_eq!(name, "blk.99.attn_q.weight");
    assert!(problem.contains("not a tensor"), "{problem}");
    let e = check_tensors_except(&m.config, &m.tensors, &omit(&["token_embd.weight"])).unwrap_err();
    assert!(tensor_error(&e).1.contains("omitted but present"));
}

#[test]
fn absurd_configs_are_refused_before_any_allocation() {
    let m = load_model(fixture("tiny_llama.gguf")).unwrap();
    for (key, f) in [
        (
            "n_layers",
            (|c: &mut twain_core::ModelConfig| c.n_layers = 1 << 30) as fn(&mut _),
        ),
        ("d_model", |c| c.d_model = 0),
        ("n_kv_heads", |c| c.n_kv_heads = c.n_heads + 1),
        ("head_dim", |c| c.head_dim = 7),
        ("rope_theta", |c| c.rope_theta = f32::NAN),
        ("rms_eps", |c| c.rms_eps = -1.0),
    ] {
        let mut c = m.config.clone();
        f(&mut c);
        let e = check_tensors(&c, &m.tensors).unwrap_err();
        assert!(
            matches!(&e, CoreError::Config(msg) if msg.starts_with(key)),
            "{key}: {e}"
        );
    }
    // More layers than tensors (with a plan that matches) is refused by count.
    let mut c = m.config.clone();
    c.n_layers = 1000;
    c.kv_source = (0..1000).collect();
    let e = check_tensors(&c, &m.tensors).unwrap_err();
    assert!(e.to_string().contains("1000 layers"), "{e}");
}
