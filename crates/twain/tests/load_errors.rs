//! Loading errors are typed: each names the crate that failed through
//! [`LoadError`], keeps that crate's error as its source, and says where.

use std::error::Error as _;
use std::path::Path;

use twain::engine::{source_key, Engine, LoadOptions};
use twain::{Error, LoadError};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../twain-io/tests/fixtures/tiny_llama.gguf")
}

#[test]
fn a_missing_file_is_a_file_error_naming_the_path() {
    let dir = std::env::temp_dir().join(format!("twain-load-errors-{}", std::process::id()));
    let missing = dir.join("no-such-model.gguf");
    let err = Engine::load(&missing, LoadOptions::default())
        .err()
        .expect("a missing file cannot load");
    let Error::Load(LoadError::File(inner)) = &err else {
        panic!("expected Error::Load(LoadError::File), got {err:?}");
    };
    assert!(err.to_string().contains("no-such-model.gguf"), "{err}");
    // The chain keeps the typed source: the facade's error → twain-io's.
    let source = err.source().expect("a source");
    assert_eq!(source.to_string(), inner.to_string());
}

#[test]
fn a_truncated_gguf_is_a_file_error() {
    let dir = tempfile_dir("truncated");
    let p = dir.join("cut.gguf");
    let bytes = std::fs::read(fixture()).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    for preset in [None, Some(twain::engine::DEFAULT_PRESET)] {
        let opts = LoadOptions::default().preset(preset);
        let err = Engine::load(&p, opts)
            .err()
            .expect("a truncated file cannot load");
        assert!(
            matches!(err, Error::Load(LoadError::File(_))),
            "preset {preset:?}: {err:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_system_error_carries_the_path_and_the_os_error() {
    let dir = tempfile_dir("io");
    let missing = dir.join("absent.gguf");
    let err = source_key(&missing).unwrap_err();
    match &err {
        Error::Load(LoadError::Io { path, source }) => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected LoadError::Io, got {other:?}"),
    }
    assert!(err.to_string().contains("absent.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("twain-load-errors-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
