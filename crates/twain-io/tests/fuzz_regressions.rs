//! Inputs the fuzz harness (fuzz/, issue #21 item 10) found to hang or panic, now typed
//! errors within milliseconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use twain_io::{load_model, IoError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn hf_config_with_a_million_layers_is_a_quick_typed_error() {
    let dir = std::env::temp_dir().join(format!("twain-io-million-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("hf_llama/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(fixture("hf_llama/config.json")).unwrap();
    let text = text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1048575");
    std::fs::write(dir.join("config.json"), text).unwrap();
    let t = Instant::now();
    let e = load_model(&dir).unwrap_err();
    let took = t.elapsed();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(&e, IoError::Key { key, .. } if key == "num_hidden_layers"),
        "{e:?}"
    );
    assert!(e.to_string().contains("1048575 layers"), "{e}");
    // It took 8 s before (a million layers' tensor names checked one by one).
    assert!(took < Duration::from_secs(1), "{took:?}");
}
