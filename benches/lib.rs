//! Criterion benchmarks; see the `[[bench]]` entries in Cargo.toml.
