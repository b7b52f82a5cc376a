//! `twain inspect`: describe a model file (formats, sizes, bits per weight,
//! KV plan).

use std::path::PathBuf;

use twain_core::KvDtype;

#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    /// Model file.
    path: PathBuf,
    /// Machine-readable output (always lists every tensor).
    #[arg(long)]
    json: bool,
    /// List every tensor with its format and shape.
    #[arg(long)]
    tensors: bool,
}

pub(crate) fn run(a: InspectArgs) -> anyhow::Result<()> {
    let (path, json, tensors) = (a.path.as_path(), a.json, a.tensors);
    let loaded = twain_io::load_model(path)?;
    let c = loaded.config.clone();
    // (name, stored format, shape, params, bytes, what twain makes of it).
    struct Row {
        name: String,
        format: String,
        shape: Vec<usize>,
        n: usize,
        bytes: usize,
        kept: Option<twain_io::keep::Kept>,
    }
    let rows: Vec<Row> = match &loaded.gguf {
        // A GGUF's own tensor types (the loader's f32 copies are not what
        // the file holds), and what loading it without --preset keeps.
        Some(g) if twain::engine::is_gguf(path) => g
            .tensors()
            .iter()
            .map(|i| Row {
                name: i.name.clone(),
                format: i.ggml_type.name().to_string(),
                shape: i.shape(),
                n: i.n_elements(),
                bytes: i.file_range.len(),
                kept: Some(twain_io::keep::planned(i.ggml_type, &i.name, &i.shape())),
            })
            .collect(),
        _ => loaded
            .tensors
            .values()
            .map(|t| Row {
                name: t.name().to_string(),
                format: t.format().name().to_string(),
                shape: t.shape().to_vec(),
                n: t.n_elements(),
                bytes: t.bytes().map(|b| b.len()).unwrap_or(0),
                kept: None,
            })
            .collect(),
    };
    let kept_name = |k: twain_io::keep::Kept| {
        format!(
            "{} ({})",
            k.format().name(),
            if k.is_exact() {
                "kept bit-exact"
            } else {
                "widened"
            }
        )
    };
    let mut keeps: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for r in &rows {
        if let Some(k) = r.kept {
            *keeps.entry((r.format.clone(), kept_name(k))).or_default() += 1;
        }
    }
    let mut by_format: std::collections::BTreeMap<String, (usize, usize, usize)> =
        Default::default();
    let mut total_bytes = 0usize;
    let mut total_params = 0usize;
    // Decoder linears: what "bits per weight" of a preset counts.
    let (mut dec_bytes, mut dec_params) = (0usize, 0usize);
    for t in &rows {
        let (n, b) = (t.n, t.bytes);
        if twain_convert::hessian::input_of(&t.name).is_some() && t.name.starts_with("blk.") {
            dec_bytes += b;
            dec_params += n;
        }
        let e = by_format.entry(t.format.clone()).or_default();
        e.0 += 1;
        e.1 += n;
        e.2 += b;
        total_bytes += b;
        total_params += n;
    }
    let owners = c
        .kv_source
        .iter()
        .enumerate()
        .filter(|(l, s)| l == *s)
        .count();
    let kv_row = |d: KvDtype| 2 * owners * c.n_kv_heads * d.row_bytes(c.head_dim);
    let plan: Vec<String> = c
        .kv_source
        .iter()
        .enumerate()
        .filter(|(l, s)| l != *s)
        .map(|(l, s)| format!("{l}->{s}"))
        .collect();
    if json {
        let formats: Vec<serde_json::Value> = by_format
            .iter()
            .map(|(f, (count, n, b))| serde_json::json!({"format": f, "tensors": count, "params": n, "bytes": b, "bits_per_weight": 8.0 * *b as f64 / *n as f64}))
            .collect();
        let v = serde_json::json!({
            "path": path.display().to_string(),
            "arch": c.arch, "layers": c.n_layers, "d_model": c.d_model, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim, "ffn": c.ffn_hidden, "vocab": c.vocab_size, "context": c.context_length,
            "params": total_params, "bytes": total_bytes, "bits_per_weight": 8.0 * total_bytes as f64 / total_params as f64,
            "formats": formats,
            "decoder_linear_bits_per_weight": 8.0 * dec_bytes as f64 / dec_params.max(1) as f64,
            "tensors": rows.iter().map(|t| {
                let mut v = serde_json::json!({
                    "name": t.name, "format": t.format, "shape": t.shape, "bytes": t.bytes,
                });
                if let Some(k) = t.kept {
                    v["twain_format"] = k.format().name().into();
                    v["exact"] = k.is_exact().into();
                }
                v
            }).collect::<Vec<_>>(),
            "kept": keeps.iter().map(|((from, to), n)| serde_json::json!({"from": from, "to": to, "tensors": n})).collect::<Vec<_>>(),
            "kv_owning_layers": owners, "kv_sharing": plan,
            "kv_cache_bytes_per_token": {"int8": kv_row(KvDtype::Int8), "f16": kv_row(KvDtype::F16), "f32": kv_row(KvDtype::F32)},
            "provenance": loaded.provenance,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    println!("{}", path.display());
    println!(
        "  arch {} | {} layers | d {} | heads {}/{} x {} | ffn {} | vocab {} | context {}",
        c.arch,
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_hidden,
        c.vocab_size,
        c.context_length
    );
    println!(
        "  {:.1} M params, {:.1} MiB, {:.2} bits/weight",
        total_params as f64 / 1e6,
        total_bytes as f64 / 1048576.0,
        8.0 * total_bytes as f64 / total_params as f64
    );
    for (f, (count, n, b)) in &by_format {
        println!(
            "  {f:>5}: {count:>4} tensors, {:>8.2} M params, {:>8.2} MiB, {:.3} bits/weight",
            *n as f64 / 1e6,
            *b as f64 / 1048576.0,
            8.0 * *b as f64 / *n as f64
        );
    }
    println!(
        "  decoder linears: {:.3} bits/weight (every scale counted)",
        8.0 * dec_bytes as f64 / dec_params.max(1) as f64
    );
    if !keeps.is_empty() {
        println!(
            "  loaded without --preset (the file's own precision; --preset converts further):"
        );
        for ((from, to), n) in &keeps {
            println!("    {from:>5} -> {to}: {n} tensors");
        }
    }
    if tensors {
        for t in &rows {
            let to = t
                .kept
                .map_or(String::new(), |k| format!(" -> {}", kept_name(k)));
            println!("    {:<28} {:>5} {:?}{to}", t.name, t.format, t.shape);
        }
    }
    println!(
        "  KV: {owners} of {} layers own K/V{}",
        c.n_layers,
        if plan.is_empty() {
            String::new()
        } else {
            format!(" (shared: {})", plan.join(" "))
        }
    );
    println!(
        "  KV cache per token: int8 {} B, f16 {} B, f32 {} B",
        kv_row(KvDtype::Int8),
        kv_row(KvDtype::F16),
        kv_row(KvDtype::F32)
    );
    for (k, v) in &loaded.provenance {
        println!("  {k}: {v}");
    }
    Ok(())
}
