#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (the real-model tests
# fetch SmolLM2-135M-Instruct into the cache on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc (broken intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== the shipped recovered models reassemble under another kernel family"
TWAIN_QUANT_BACKEND=avx2 cargo test --locked -p twain --test shipped
echo "== feature sets: twain-io without the fetch, the facade without the bundled model"
RUSTFLAGS="-D warnings" cargo check --locked -p twain-io --no-default-features
RUSTFLAGS="-D warnings" cargo check --locked -p twain --no-default-features
RUSTFLAGS="-D warnings" cargo check --locked -p twain --no-default-features --features core
echo "== the cargo-fuzz targets compile (without libFuzzer's C++)"
(cd fuzz/libfuzzer && RUSTFLAGS="-D warnings" cargo check --no-default-features --bins)
