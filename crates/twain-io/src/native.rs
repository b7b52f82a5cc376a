//! twain's native model file: a safetensors container whose tensors are U8 byte arrays of packed
//! blocks, each starting on a 64-byte boundary so that [`QMatrixRef`](twain_quant::QMatrixRef)
//! views of the mmap need no copy. The layout is documented in docs/formats.md
//! ("Native file format").

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use twain_quant::QuantFormat;

use crate::backing::Backing;
use crate::gguf::{write_gguf, GgufFile, MetaValue};
use crate::model::LoadedModel;
use crate::tensor::matrix_dims;
use twain_model::ModelConfig;

use crate::{IoError, Tensor};

/// Value of the `format` metadata entry that marks a twain native file.
pub const NATIVE_FORMAT_TAG: &str = "twain";
/// The native layout version this crate writes and reads.
pub const NATIVE_VERSION: u32 = 1;
/// Alignment of every tensor's data (and of the data section) in the file.
pub const NATIVE_ALIGNMENT: usize = 64;
/// Container entry holding a tensor-less GGUF with the source's `tokenizer.*` metadata.
pub const GGUF_TOKENIZER_ENTRY: &str = "__twain_gguf_tokenizer__";
/// Largest header accepted (the safetensors crate's limit too).
const MAX_HEADER: u64 = 100_000_000;

/// Per-tensor description stored in the `tensors` metadata entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TensorMeta {
    format: String,
    shape: Vec<usize>,
}

/// Everything [`write_native`] stores. Build it with [`NativeModel::from_loaded`] and replace
/// `tensors` with requantized ones as needed.
#[derive(Debug, Clone)]
pub struct NativeModel<'a> {
    /// Hyperparameters (stored as JSON).
    pub config: &'a ModelConfig,
    /// Tensors by canonical name, each in the format it is to be stored in.
    pub tensors: &'a BTreeMap<String, Tensor>,
    /// Hugging Face `tokenizer.json` text.
    pub tokenizer_json: Option<&'a str>,
    /// Jinja chat template.
    pub chat_template: Option<&'a str>,
    /// A GGUF whose `tokenizer.*` keys are kept (so a GGUF-sourced model keeps its tokenizer);
    /// loading the native file gives them back as [`LoadedModel::gguf`].
    pub gguf_tokenizer: Option<&'a GgufFile>,
    /// Provenance entries; every key must start with `twain.` (e.g. `twain.preset`).
    pub provenance: BTreeMap<String, String>,
}

impl<'a> NativeModel<'a> {
    /// Everything of a loaded model, with its tensors as they are.
    pub fn from_loaded(m: &'a LoadedModel) -> NativeModel<'a> {
        NativeModel {
            config: &m.config,
            tensors: &m.tensors,
            tokenizer_json: m.tokenizer_json.as_deref(),
            chat_template: m.chat_template.as_deref(),
            gguf_tokenizer: m.gguf.as_deref(),
            provenance: m.provenance.clone(),
        }
    }
}

/// Progress of [`write_native`], reported after each tensor.
#[derive(Debug, Clone, Copy)]
pub struct WriteProgress<'a> {
    /// The tensor just written.
    pub tensor: &'a str,
    /// Tensors written so far (1-based count).
    pub done: usize,
    /// Tensors in all.
    pub count: usize,
    /// Bytes written so far.
    pub bytes_done: u64,
    /// Size of the whole file.
    pub bytes_total: u64,
}

/// Provenance key of a partial native file: the comma-separated names of
/// the tensors it leaves out on purpose (e.g. `token_embd.weight` in the
/// trained parameters twain ships, whose embedding the user's conversion
/// makes). Loading such a file gives a model without them, which
/// `Transformer::from_loaded` refuses until they are put back.
pub const OMITTED_KEY: &str = "twain.omitted";

fn omitted(v: Option<&String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// The file-level half of a partial file's promise: every tensor it says it
/// leaves out is absent (whether the rest is a model is twain-core's check).
fn check_omitted(
    tensors: &BTreeMap<String, Tensor>,
    omitted: &[String],
    path: &Path,
) -> Result<(), IoError> {
    match omitted.iter().find(|n| tensors.contains_key(*n)) {
        Some(name) => Err(IoError::tensor(path, name, "listed as omitted but present")),
        None => Ok(()),
    }
}

fn pad64(n: usize) -> usize {
    n.div_ceil(NATIVE_ALIGNMENT) * NATIVE_ALIGNMENT
}

/// Writes `model` to `path` as a twain native file (via a temporary file and a rename, so a
/// reader never sees a half-written file). Returns the file size.
///
/// Checks file-level facts only (every tensor's bytes have its format's size, the tensors it
/// says it omits are absent): check an assembled model with `twain_core::check_tensors` first.
pub fn write_native(
    path: impl AsRef<Path>,
    model: &NativeModel<'_>,
    progress: &mut dyn FnMut(&WriteProgress<'_>),
) -> Result<u64, IoError> {
    let path = path.as_ref();
    check_omitted(
        model.tensors,
        &omitted(model.provenance.get(OMITTED_KEY)),
        path,
    )?;
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    metadata.insert("format".into(), NATIVE_FORMAT_TAG.into());
    metadata.insert("twain_version".into(), NATIVE_VERSION.to_string());
    let config = serde_json::to_string(model.config)
        .map_err(|e| IoError::key(path, "config", e.to_string()))?;
    metadata.insert("config".into(), config);
    if let Some(t) = model.tokenizer_json {
        metadata.insert("tokenizer_json".into(), t.into());
    }
    if let Some(t) = model.chat_template {
        metadata.insert("chat_template".into(), t.into());
    }
    for (k, v) in &model.provenance {
        if !k.starts_with("twain.") {
            return Err(IoError::key(
                path,
                k,
                "provenance keys must start with \"twain.\"",
            ));
        }
        metadata.insert(k.clone(), v.clone());
    }
    // Tensor payloads, in name order.
    let mut blobs: Vec<(&str, &[u8])> = Vec::new();
    let mut metas = BTreeMap::new();
    for (name, t) in model.tensors {
        if name.starts_with("__") {
            return Err(IoError::tensor(
                path,
                name,
                "names starting with \"__\" are reserved",
            ));
        }
        if name != t.name() {
            return Err(IoError::tensor(
                path,
                name,
                format!("map key differs from the tensor's name {}", t.name()),
            ));
        }
        let (rows, cols) = matrix_dims(t.shape()).ok_or_else(|| {
            IoError::tensor(
                path,
                name,
                format!("shape {:?} is not 1-D or 2-D", t.shape()),
            )
        })?;
        let bytes = t.bytes()?;
        let want = t
            .format()
            .matrix_bytes(rows, cols)
            .map_err(|e| IoError::tensor(path, name, e.to_string()))?;
        if bytes.len() != want {
            return Err(IoError::tensor(
                path,
                name,
                format!(
                    "{} bytes, format {} needs {want}",
                    bytes.len(),
                    t.format().name()
                ),
            ));
        }
        metas.insert(
            name.clone(),
            TensorMeta {
                format: t.format().name().into(),
                shape: t.shape().to_vec(),
            },
        );
        blobs.push((name, bytes));
    }
    let gguf_blob;
    if let Some(g) = model.gguf_tokenizer {
        let kv: Vec<(&str, MetaValue)> = g
            .metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        gguf_blob = write_gguf(&kv, &[])?;
        blobs.push((GGUF_TOKENIZER_ENTRY, &gguf_blob));
    }
    metadata.insert(
        "tensors".into(),
        serde_json::to_string(&metas).map_err(|e| IoError::key(path, "tensors", e.to_string()))?,
    );
    // The safetensors header: U8 entries of padded length, contiguous, 64-byte aligned.
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(&metadata).expect("string map"),
    );
    let mut offset = 0usize;
    for (name, bytes) in &blobs {
        let len = pad64(bytes.len());
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": "U8", "shape": [len], "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let total_data = offset;
    let mut hbytes = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| IoError::malformed(path, e.to_string()))?;
    hbytes.resize(pad64(hbytes.len() + 8) - 8, b' ');
    let bytes_total = (8 + hbytes.len() + total_data) as u64;

    // A fresh temporary file, flushed, renamed into place, directory flushed (crate::atomic).
    crate::atomic::write_atomic_with(path, |w| -> std::io::Result<()> {
        w.write_all(&(hbytes.len() as u64).to_le_bytes())?;
        w.write_all(&hbytes)?;
        let mut done = (8 + hbytes.len()) as u64;
        let zeros = [0u8; NATIVE_ALIGNMENT];
        let count = blobs.len();
        for (i, (name, bytes)) in blobs.iter().enumerate() {
            w.write_all(bytes)?;
            w.write_all(&zeros[..pad64(bytes.len()) - bytes.len()])?;
            done += pad64(bytes.len()) as u64;
            progress(&WriteProgress {
                tensor: name,
                done: i + 1,
                count,
                bytes_done: done,
                bytes_total,
            });
        }
        Ok(())
    })
    .map_err(|e| IoError::os(path, e))?;
    Ok(bytes_total)
}

/// Whether the first bytes of a file look like a twain native file (a safetensors header that
/// starts with the twain `__metadata__`... or at least a safetensors header; the full check is
/// [`read_native`]).
pub(crate) fn looks_like_safetensors(head: &[u8]) -> bool {
    head.len() >= 9 && head[8] == b'{'
}

/// Reads a native file by mmap; tensors are zero-copy views in their stored formats.
pub fn read_native(path: impl AsRef<Path>) -> Result<LoadedModel, IoError> {
    let path = path.as_ref();
    parse(path.to_path_buf(), Arc::new(Backing::map(path)?))
}

/// Parses a native file held in memory (copied into an aligned buffer); `name` stands for the
/// path in errors. For tests and fuzzing.
pub fn read_native_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<LoadedModel, IoError> {
    parse(name.into(), Arc::new(Backing::from_bytes(bytes)))
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn parse(path: PathBuf, backing: Arc<Backing>) -> Result<LoadedModel, IoError> {
    let bytes = backing.bytes();
    let bad = |what: String| IoError::malformed(&path, what);
    if bytes.len() < 8 {
        return Err(bad(format!(
            "truncated: {} bytes, a header length needs 8",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
        return Err(bad(format!(
            "header length {n} exceeds the file ({} bytes)",
            bytes.len()
        )));
    }
    let data_start = 8 + n as usize;
    let header = std::str::from_utf8(&bytes[8..data_start]).map_err(|e| {
        bad(format!(
            "header is not UTF-8 (at byte {})",
            8 + e.valid_up_to()
        ))
    })?;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_str(header)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let meta: BTreeMap<String, String> = match header.remove("__metadata__") {
        Some(v) => serde_json::from_value(v)
            .map_err(|e| bad(format!("__metadata__ is not a string map: {e}")))?,
        None => {
            return Err(bad(
                "no __metadata__: a safetensors file, but not a twain native file".into(),
            ))
        }
    };
    let get = |k: &str| meta.get(k).ok_or_else(|| IoError::key(&path, k, "missing"));
    if get("format")? != NATIVE_FORMAT_TAG {
        return Err(IoError::key(
            &path,
            "format",
            format!("{:?} is not \"twain\"", meta["format"]),
        ));
    }
    let version = get("twain_version")?;
    if version != &NATIVE_VERSION.to_string() {
        return Err(IoError::unsupported(
            &path,
            format!("native format version {version:?} (this build reads {NATIVE_VERSION})"),
        ));
    }
    let config: ModelConfig = serde_json::from_str(get("config")?)
        .map_err(|e| IoError::key(&path, "config", format!("invalid: {e}")))?;
    let metas: BTreeMap<String, TensorMeta> = serde_json::from_str(get("tensors")?)
        .map_err(|e| IoError::key(&path, "tensors", format!("invalid: {e}")))?;
    let data_len = (bytes.len() - data_start) as u64;
    // Container entries: U8, 1-D, in range, 64-byte aligned, not overlapping.
    let mut spans: Vec<(u64, u64, String)> = Vec::with_capacity(header.len());
    let mut entries = BTreeMap::new();
    for (name, v) in header {
        let e: Entry = serde_json::from_value(v)
            .map_err(|e| IoError::tensor(&path, &name, format!("invalid header entry: {e}")))?;
        let [b, end] = e.data_offsets;
        let terr = |what: String| IoError::tensor(&path, &name, what);
        if e.dtype != "U8" {
            return Err(terr(format!(
                "dtype {} (native tensors are U8 byte arrays)",
                e.dtype
            )));
        }
        if e.shape.len() != 1 || b > end || end - b != e.shape[0] {
            return Err(terr(format!(
                "shape {:?} does not match data_offsets [{b}, {end}]",
                e.shape
            )));
        }
        if end > data_len {
            return Err(terr(format!(
                "data [{b}, {end}) runs past the data section ({data_len} bytes)"
            )));
        }
        if !(data_start as u64 + b).is_multiple_of(NATIVE_ALIGNMENT as u64) {
            return Err(terr(format!(
                "data at file offset {} is not {NATIVE_ALIGNMENT}-byte aligned",
                data_start as u64 + b
            )));
        }
        spans.push((b, end, name.clone()));
        entries.insert(name, (data_start + b as usize)..(data_start + end as usize));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(IoError::tensor(
                &path,
                &w[1].2,
                format!("data overlaps tensor {}", w[0].2),
            ));
        }
    }
    let gguf = match entries.remove(GGUF_TOKENIZER_ENTRY) {
        None => None,
        Some(range) => {
            let g = GgufFile::from_bytes(path.clone(), &bytes[range])
                .map_err(|e| IoError::tensor(&path, GGUF_TOKENIZER_ENTRY, e.to_string()))?;
            Some(Arc::new(g))
        }
    };
    let mut tensors = BTreeMap::new();
    for (name, m) in metas {
        let terr = |what: String| IoError::tensor(&path, &name, what);
        let range = entries
            .remove(&name)
            .ok_or_else(|| terr("listed in the tensors metadata but has no data entry".into()))?;
        let format = QuantFormat::from_name(&m.format)
            .ok_or_else(|| terr(format!("unknown format {:?}", m.format)))?;
        let (rows, cols) = matrix_dims(&m.shape)
            .ok_or_else(|| terr(format!("shape {:?} is not 1-D or 2-D", m.shape)))?;
        let need = format
            .matrix_bytes(rows, cols)
            .map_err(|e| terr(e.to_string()))?;
        if need > range.len() {
            return Err(terr(format!(
                "{}x{} {} needs {need} bytes, the file holds {}",
                rows,
                cols,
                format.name(),
                range.len()
            )));
        }
        let t = Tensor::mapped(
            name.clone(),
            m.shape,
            format,
            backing.clone(),
            range.start..range.start + need,
            path.clone(),
        );
        tensors.insert(name, t);
    }
    if let Some(name) = entries.keys().next() {
        return Err(IoError::tensor(
            &path,
            name,
            "has data but no entry in the tensors metadata",
        ));
    }
    check_omitted(&tensors, &omitted(meta.get(OMITTED_KEY)), &path)?;
    let provenance = meta
        .iter()
        .filter(|(k, _)| k.starts_with("twain."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer_json: meta.get("tokenizer_json").cloned(),
        chat_template: meta.get("chat_template").cloned(),
        gguf,
        source: path,
        provenance,
    })
}
