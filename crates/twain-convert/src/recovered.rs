//! Trained parameters that ship with twain, so users get a recovered 2-bit
//! model without training (`twain generate --preset afm`).
//!
//! A recovered model is shipped as a *pack*: a partial native file with
//! every tensor but the embedding table (the 4-bit table is a third of the
//! file, and nothing trains it). [`assemble`] makes the table from the
//! user's own copy of the source model with [`embedding_of`] — nearest
//! rounding in scalar code, the same bytes on every CPU — checks it against
//! the sha256 the pack records, and puts it back. A variant trained from
//! the recovered model (the KV-shared one) ships as a byte patch against
//! the pack ([`twain_io::write_patch`]): only the codes, scales and norms
//! that training moved.
//!
//! The 2-bit codes are shipped, not re-derived, because the conversion
//! that made them (calibration statistics through the f32 forward, then
//! error feedback) rounds differently on different kernel families.

use std::path::Path;

use sha2::{Digest, Sha256};
use twain_io::{LoadedModel, NativeModel, Tensor, OMITTED_KEY};
use twain_quant::{quantize, QuantFormat, QuantizeOptions};

use crate::ConvertError;

/// The tensor a pack leaves out.
pub const EMBEDDING: &str = "token_embd.weight";
/// Provenance key: the embedding's format and the sha256 of its bytes.
pub const EMBEDDING_KEY: &str = "twain.embedding";
/// Provenance key: the per-column importance the embedding was rounded
/// with (f32 little endian, in hex), when it had one.
pub const IMPORTANCE_KEY: &str = "twain.embedding_importance";

fn shipped(path: &Path, what: impl Into<String>) -> ConvertError {
    ConvertError::Shipped {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The embedding table of `source` in `format`, by nearest rounding with
/// the clipping search weighted by `importance` (one value per column, or
/// none): scalar code, so every machine makes the same bytes from the same
/// importance.
pub fn embedding_of(
    source: &LoadedModel,
    format: QuantFormat,
    importance: Option<&[f32]>,
) -> Result<Tensor, ConvertError> {
    let t = source.tensor(EMBEDDING)?;
    let shape = t.shape().to_vec();
    let [rows, cols] = shape[..] else {
        return Err(ConvertError::Plan(format!(
            "{EMBEDDING} has shape {shape:?}, not a matrix"
        )));
    };
    let data = t.to_f32()?;
    let opts = QuantizeOptions {
        importance: importance.map(<[f32]>::to_vec),
        no_clip_search: false,
    };
    let m = quantize(format, rows, cols, &data, &opts).map_err(|e| ConvertError::Tensor {
        name: EMBEDDING.into(),
        source: e,
    })?;
    Ok(Tensor::from_qmatrix(EMBEDDING, shape, m)?)
}

/// `model` with its embedding table replaced by [`embedding_of`] its
/// `source` (in the table's format, weighted by `importance`, which is
/// recorded): the model a pack of it reassembles to.
pub fn with_reproducible_embedding(
    mut model: LoadedModel,
    source: &LoadedModel,
    importance: Option<&[f32]>,
) -> Result<LoadedModel, ConvertError> {
    let format = model.tensor(EMBEDDING)?.format();
    let e = embedding_of(source, format, importance)?;
    model.tensors.insert(EMBEDDING.into(), e);
    match importance {
        Some(w) => {
            let hex = w
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| format!("{b:02x}"))
                .collect();
            model.provenance.insert(IMPORTANCE_KEY.into(), hex);
        }
        None => {
            model.provenance.remove(IMPORTANCE_KEY);
        }
    }
    Ok(model)
}

/// The importance recorded under [`IMPORTANCE_KEY`], if any.
fn recorded_importance(model: &LoadedModel, path: &Path) -> Result<Option<Vec<f32>>, ConvertError> {
    let Some(hex) = model.provenance.get(IMPORTANCE_KEY) else {
        return Ok(None);
    };
    let bad = || shipped(path, format!("{IMPORTANCE_KEY} is not hex f32 values"));
    if !hex.len().is_multiple_of(8) || !hex.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    Ok(Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Write `model` as a pack at `path`: every tensor but the embedding,
/// which must be the one [`embedding_of`] its `source` makes (use
/// [`with_reproducible_embedding`] first). Returns the file size.
pub fn write_pack(
    model: &LoadedModel,
    source: &LoadedModel,
    path: &Path,
) -> Result<u64, ConvertError> {
    let e = model.tensor(EMBEDDING)?;
    let importance = recorded_importance(model, path)?;
    let want = embedding_of(source, e.format(), importance.as_deref())?;
    if want.bytes()? != e.bytes()? {
        return Err(shipped(
            path,
            format!("the model's {EMBEDDING} is not what a conversion of its source makes, so a pack cannot leave it out"),
        ));
    }
    let mut tensors = model.tensors.clone();
    tensors.remove(EMBEDDING);
    let mut native = NativeModel::from_loaded(model);
    native.tensors = &tensors;
    native.tokenizer_json = None;
    native.chat_template = None;
    native.gguf_tokenizer = None;
    native
        .provenance
        .insert(OMITTED_KEY.into(), EMBEDDING.into());
    native.provenance.insert(
        EMBEDDING_KEY.into(),
        format!("{} sha256 {}", e.format().name(), sha256_hex(e.bytes()?)),
    );
    Ok(twain_io::write_native(path, &native, &mut |_| {})?)
}

/// The model a pack at `path` holds, completed from `source` (the f32 or
/// GGUF model it was trained from): the embedding made and checked, the
/// tokenizer and chat template taken from the source.
pub fn assemble(path: &Path, source: &LoadedModel) -> Result<LoadedModel, ConvertError> {
    let pack = twain_io::read_native(path)?;
    if pack.provenance.get(OMITTED_KEY).map(String::as_str) != Some(EMBEDDING) {
        return Err(shipped(
            path,
            format!("not a pack: it must omit {EMBEDDING} and nothing else"),
        ));
    }
    let recorded = pack
        .provenance
        .get(EMBEDDING_KEY)
        .ok_or_else(|| shipped(path, format!("no {EMBEDDING_KEY} entry")))?;
    let (fmt, hash) = recorded.split_once(" sha256 ").ok_or_else(|| {
        shipped(
            path,
            format!("{EMBEDDING_KEY} {recorded:?} is not \"FORMAT sha256 HEX\""),
        )
    })?;
    let format = QuantFormat::from_name(fmt)
        .ok_or_else(|| shipped(path, format!("unknown embedding format {fmt:?}")))?;
    let (p, s) = (&pack.config, &source.config);
    if (p.n_layers, p.d_model, p.vocab_size) != (s.n_layers, s.d_model, s.vocab_size) {
        return Err(shipped(
            path,
            format!(
                "made for a model of {} layers, width {}, vocabulary {}; the source has {}, {}, {}",
                p.n_layers, p.d_model, p.vocab_size, s.n_layers, s.d_model, s.vocab_size
            ),
        ));
    }
    let importance = recorded_importance(&pack, path)?;
    if importance.as_ref().is_some_and(|w| w.len() != s.d_model) {
        return Err(shipped(
            path,
            format!("{IMPORTANCE_KEY} does not have {} values", s.d_model),
        ));
    }
    let e = embedding_of(source, format, importance.as_deref())?;
    let got = sha256_hex(e.bytes()?);
    if got != hash {
        return Err(shipped(
            path,
            format!("the embedding made from {} has sha256 {got}, the pack was trained with {hash}: another source model", source.source.display()),
        ));
    }
    let mut model = pack;
    model.tensors.insert(EMBEDDING.into(), e);
    model.provenance.remove(OMITTED_KEY);
    model.tokenizer_json = source.tokenizer_json.clone();
    model.chat_template = source.chat_template.clone();
    model.gguf = source.gguf.clone();
    twain_core::check_tensors(&model.config, &model.tensors)?;
    Ok(model)
}

/// The id a patch against the pack at `path` records: the pack file's
/// sha256.
pub fn pack_id(path: &Path) -> Result<String, ConvertError> {
    sha256_file(path)
}

/// The sha256 of the file at `path`, in hex, read in a stream.
pub fn sha256_file(path: &Path) -> Result<String, ConvertError> {
    let mut f = std::fs::File::open(path).map_err(|e| shipped(path, e.to_string()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| shipped(path, e.to_string()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
