//! Byte patches between two models: how a variant (e.g. a KV-shared model
//! trained from a recovered one) differs from its base, stored compactly.
//!
//! A patch is a safetensors container of U8 entries. For a tensor both
//! models hold in the same format and shape, `NAME.pos` lists the changed
//! byte offsets (LEB128 varints of the gaps between them) and `NAME.val`
//! their new bytes; a tensor that is new or changed its format or shape is
//! stored whole as `NAME.full`; `removed` names the base tensors the
//! variant drops. The metadata holds the variant's config and provenance
//! and the id of the base it was made for (checked on applying, so a patch
//! never lands on another base).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::tensor::matrix_dims;
use twain_model::ModelConfig;

use crate::{IoError, LoadedModel, QuantFormat, Tensor};

/// The `format` metadata value of a patch file.
pub const PATCH_FORMAT_TAG: &str = "twain-patch";
/// The patch layout version this build reads and writes.
pub const PATCH_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FullMeta {
    format: String,
    shape: Vec<usize>,
}

/// What [`write_patch`] stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PatchStats {
    /// Size of the patch file.
    pub file_bytes: u64,
    /// Bytes changed in place, over all tensors kept.
    pub changed_bytes: usize,
    /// Bytes of the tensors kept (what the changed bytes are a part of).
    pub kept_bytes: usize,
    /// Tensors stored whole.
    pub full: usize,
    /// Base tensors the variant drops.
    pub removed: usize,
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Write how `variant` differs from `base` to `path` (atomically: a
/// temporary file, then a rename). `base_id` names the base (e.g. the
/// sha256 of the file it was loaded from); [`apply_patch`] checks it.
pub fn write_patch(
    base: &LoadedModel,
    variant: &LoadedModel,
    base_id: &str,
    path: &Path,
) -> Result<PatchStats, IoError> {
    let mut stats = PatchStats::default();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut full = BTreeMap::new();
    for (name, t) in &variant.tensors {
        let bytes = t.bytes()?;
        match base.tensors.get(name) {
            Some(b) if b.format() == t.format() && b.shape() == t.shape() => {
                let old = b.bytes()?;
                let (mut pos, mut val) = (Vec::new(), Vec::new());
                let mut next = 0u64;
                for (i, (&x, &y)) in old.iter().zip(bytes).enumerate() {
                    if x != y {
                        varint(i as u64 - next, &mut pos);
                        val.push(y);
                        next = i as u64 + 1;
                    }
                }
                stats.kept_bytes += bytes.len();
                if !val.is_empty() {
                    stats.changed_bytes += val.len();
                    entries.push((format!("{name}.pos"), pos));
                    entries.push((format!("{name}.val"), val));
                }
            }
            _ => {
                full.insert(
                    name.clone(),
                    FullMeta {
                        format: t.format().name().into(),
                        shape: t.shape().to_vec(),
                    },
                );
                entries.push((format!("{name}.full"), bytes.to_vec()));
                stats.full += 1;
            }
        }
    }
    let removed: Vec<&String> = base
        .tensors
        .keys()
        .filter(|n| !variant.tensors.contains_key(*n))
        .collect();
    stats.removed = removed.len();
    let json = |k: &str, v: serde_json::Result<String>| {
        v.map_err(|e| IoError::key(path, k, e.to_string()))
    };
    let meta = HashMap::from([
        ("format".to_string(), PATCH_FORMAT_TAG.to_string()),
        ("version".to_string(), PATCH_VERSION.to_string()),
        ("base".to_string(), base_id.to_string()),
        (
            "config".to_string(),
            json("config", serde_json::to_string(&variant.config))?,
        ),
        (
            "provenance".to_string(),
            json("provenance", serde_json::to_string(&variant.provenance))?,
        ),
        (
            "removed".to_string(),
            json("removed", serde_json::to_string(&removed))?,
        ),
        (
            "full".to_string(),
            json("full", serde_json::to_string(&full))?,
        ),
    ]);
    let views = entries
        .iter()
        .map(|(n, b)| {
            TensorView::new(Dtype::U8, vec![b.len()], b)
                .map(|v| (n.clone(), v))
                .map_err(|e| IoError::tensor(path, n, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| IoError::malformed(path, e.to_string()))?;
    crate::atomic::write_atomic(path, &data).map_err(|e| IoError::os(path, e))?;
    stats.file_bytes = data.len() as u64;
    Ok(stats)
}

/// `base` with the patch at `path` applied: the variant [`write_patch`]
/// saw, byte for byte. Errs, naming the file and the tensor, when the patch
/// was made for another base (`base_id`), is damaged, or does not fit.
pub fn apply_patch(
    mut base: LoadedModel,
    path: &Path,
    base_id: &str,
) -> Result<LoadedModel, IoError> {
    let data = std::fs::read(path).map_err(|e| IoError::os(path, e))?;
    let bad = |what: String| IoError::malformed(path, what);
    let st = SafeTensors::deserialize(&data).map_err(|e| bad(format!("not a patch: {e}")))?;
    let (_, header) =
        SafeTensors::read_metadata(&data).map_err(|e| bad(format!("not a patch: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .ok_or_else(|| bad("no metadata: not a twain patch".into()))?;
    let get = |k: &str| meta.get(k).ok_or_else(|| IoError::key(path, k, "missing"));
    if get("format")? != PATCH_FORMAT_TAG {
        return Err(IoError::key(path, "format", "not \"twain-patch\""));
    }
    if get("version")? != &PATCH_VERSION.to_string() {
        return Err(IoError::unsupported(
            path,
            format!(
                "patch version {:?} (this build reads {PATCH_VERSION})",
                meta["version"]
            ),
        ));
    }
    if get("base")? != base_id {
        return Err(IoError::key(
            path,
            "base",
            format!(
                "made for base {:?}, not for this one ({base_id:?})",
                meta["base"]
            ),
        ));
    }
    let parse = |k: &str| -> Result<serde_json::Value, IoError> {
        serde_json::from_str(get(k)?).map_err(|e| IoError::key(path, k, format!("invalid: {e}")))
    };
    let config: ModelConfig = serde_json::from_value(parse("config")?)
        .map_err(|e| IoError::key(path, "config", format!("invalid: {e}")))?;
    let provenance: BTreeMap<String, String> = serde_json::from_value(parse("provenance")?)
        .map_err(|e| IoError::key(path, "provenance", format!("invalid: {e}")))?;
    let removed: Vec<String> = serde_json::from_value(parse("removed")?)
        .map_err(|e| IoError::key(path, "removed", format!("invalid: {e}")))?;
    let full: BTreeMap<String, FullMeta> = serde_json::from_value(parse("full")?)
        .map_err(|e| IoError::key(path, "full", format!("invalid: {e}")))?;
    for name in &removed {
        if base.tensors.remove(name).is_none() {
            return Err(IoError::tensor(
                path,
                name,
                "removed, but the base has no such tensor",
            ));
        }
    }
    let entry = |name: &str| -> Result<&[u8], IoError> {
        let v = st
            .tensor(name)
            .map_err(|e| IoError::tensor(path, name, e.to_string()))?;
        if v.dtype() != Dtype::U8 {
            return Err(IoError::tensor(path, name, "not a U8 entry"));
        }
        Ok(v.data())
    };
    let mut seen = 0usize;
    for (name, m) in &full {
        let format = QuantFormat::from_name(&m.format)
            .ok_or_else(|| IoError::tensor(path, name, format!("unknown format {:?}", m.format)))?;
        let bytes = entry(&format!("{name}.full"))?;
        seen += 1;
        base.tensors.insert(
            name.clone(),
            tensor_of(name, &m.shape, format, bytes.to_vec(), path)?,
        );
    }
    for key in st.names() {
        let Some(name) = key.strip_suffix(".pos") else {
            continue;
        };
        let pos = entry(key)?;
        let val = entry(&format!("{name}.val"))?;
        seen += 2;
        let t = base.tensors.get(name).ok_or_else(|| {
            IoError::tensor(path, name, "patched, but the base has no such tensor")
        })?;
        let mut bytes = t.bytes()?.to_vec();
        let (mut at, mut k, mut gap, mut shift) = (0u64, 0usize, 0u64, 0u32);
        for &b in pos {
            if shift > 56 {
                return Err(IoError::tensor(path, key, "offset varint too long"));
            }
            gap |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 != 0 {
                continue;
            }
            let i = at.checked_add(gap).filter(|&i| i < bytes.len() as u64);
            let (Some(i), Some(&v)) = (i, val.get(k)) else {
                return Err(IoError::tensor(
                    path,
                    name,
                    format!(
                        "change {k} lies past the tensor's {} bytes or has no value",
                        bytes.len()
                    ),
                ));
            };
            bytes[i as usize] = v;
            (at, k, gap, shift) = (i + 1, k + 1, 0, 0);
        }
        if shift != 0 || k != val.len() {
            return Err(IoError::tensor(
                path,
                name,
                format!("{k} offsets for {} values", val.len()),
            ));
        }
        let (shape, format) = (t.shape().to_vec(), t.format());
        base.tensors.insert(
            name.to_string(),
            tensor_of(name, &shape, format, bytes, path)?,
        );
    }
    if seen != st.len() {
        return Err(bad(format!(
            "{} entries, {seen} of them understood",
            st.len()
        )));
    }
    base.config = config;
    base.provenance = provenance;
    Ok(base)
}

fn tensor_of(
    name: &str,
    shape: &[usize],
    format: QuantFormat,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<Tensor, IoError> {
    let err = |e: String| IoError::tensor(path, name, e);
    let (rows, cols) =
        matrix_dims(shape).ok_or_else(|| err(format!("shape {shape:?} is not 1-D or 2-D")))?;
    if format == QuantFormat::F32 {
        if bytes.len() != rows * cols * 4 {
            return Err(err(format!("{} bytes for {rows}x{cols} f32", bytes.len())));
        }
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        return Tensor::from_f32(name, shape.to_vec(), v);
    }
    let m = twain_quant::QMatrix::from_bytes(format, rows, cols, &bytes)
        .map_err(|e| err(e.to_string()))?;
    Tensor::from_qmatrix(name, shape.to_vec(), m)
}
