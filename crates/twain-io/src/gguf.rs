//! GGUF (v2 and v3) reader: header, metadata, tensor infos, and zero-copy tensor data over an mmap.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata count,
//! the metadata key/value pairs, the tensor infos, padding to `general.alignment` (default 32),
//! then the tensor data; each tensor's offset is relative to the start of the data section.
//! Every count, length, dimension and offset is checked against the file's size before use.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backing::Backing;
use crate::ggml::GgmlType;
use crate::IoError;

const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays accepted (arrays of arrays of ...).
const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a ggml tensor can have.
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `u8` (type 0).
    U8(u8),
    /// `i8` (type 1).
    I8(i8),
    /// `u16` (type 2).
    U16(u16),
    /// `i16` (type 3).
    I16(i16),
    /// `u32` (type 4).
    U32(u32),
    /// `i32` (type 5).
    I32(i32),
    /// `u64` (type 10).
    U64(u64),
    /// `i64` (type 11).
    I64(i64),
    /// `f32` (type 6).
    F32(f32),
    /// `f64` (type 12).
    F64(f64),
    /// `bool` (type 7).
    Bool(bool),
    /// UTF-8 string (type 8).
    String(String),
    /// Array (type 9) of values of one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any non-negative integer value as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer value as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self
                .as_i64()
                .map(|v| v as f64)
                .or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    /// The bool, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// One tensor's description from the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one, i.e. the
    /// number of columns of a matrix. See [`shape`](Self::shape) for row-major order.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Byte range of the data within the whole file (checked to lie inside it).
    pub file_range: Range<usize>,
}

impl GgufTensorInfo {
    /// Row-major shape (outermost first): `dims` reversed, e.g. `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize (its product is bounded by the file size).
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

/// A parsed GGUF file whose tensor data stays in the (memory-mapped) file.
pub struct GgufFile {
    path: PathBuf,
    backing: Arc<Backing>,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    /// A summary: path, version, counts (the metadata can hold 100k-entry arrays).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, IoError> {
        let path = path.as_ref();
        let backing = Backing::map(path)?;
        Self::parse(path.to_path_buf(), Arc::new(backing))
    }

    /// Parses a GGUF file held in memory (the bytes are copied into an aligned buffer).
    /// `name` is used in error messages in place of a path.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<GgufFile, IoError> {
        Self::parse(name.into(), Arc::new(Backing::from_bytes(bytes)))
    }

    fn parse(path: PathBuf, backing: Arc<Backing>) -> Result<GgufFile, IoError> {
        let bytes = backing.bytes();
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            path: &path,
        };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(IoError::malformed(
                &path,
                format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"),
            ));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(IoError::unsupported(
                    &path,
                    "GGUF version 1 (re-convert the model)",
                ))
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(IoError::unsupported(&path, "big-endian GGUF"))
            }
            v => {
                return Err(IoError::malformed(
                    &path,
                    format!("unknown GGUF version {v}"),
                ))
            }
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        r.check_count(n_kv, 13, &"metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of key {key}"))?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(IoError::key(&path, key, "duplicate key"));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => {
                    return Err(IoError::key(
                        &path,
                        "general.alignment",
                        format!("{v:?} is not a power of two <= 65536"),
                    ))
                }
            },
        };
        // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        r.check_count(n_tensors, 24, &"tensor count")?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::BTreeSet::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor #{i}"))?;
            if !names.insert(name.clone()) {
                return Err(IoError::tensor(&path, name, "duplicate tensor name"));
            }
            let n_dims = r.u32(&format!("dimension count of tensor {name}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(IoError::tensor(
                    &path,
                    name,
                    format!("{n_dims} dimensions (expected 1..={MAX_DIMS})"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&format!("dimensions of tensor {name}"))?;
                if d == 0 {
                    return Err(IoError::tensor(&path, name, "has a dimension of size 0"));
                }
                dims.push(d);
            }
            let ty = r.u32(&format!("type of tensor {name}"))?;
            let offset = r.u64(&format!("offset of tensor {name}"))?;
            raw.push((name, dims, ty, offset));
        }
        let header_end = r.pos as u64;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        if data_start > file_len && n_tensors > 0 {
            return Err(IoError::malformed(
                &path,
                format!("truncated: data section would start at {data_start}, file has {file_len} bytes"),
            ));
        }
        let data_len = file_len.saturating_sub(data_start);
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let ggml_type = GgmlType::from_id(ty).ok_or_else(|| {
                IoError::tensor(&path, &name, format!("unknown ggml type id {ty}"))
            })?;
            let nbytes = tensor_bytes(&dims, ggml_type, data_len)
                .map_err(|what| IoError::tensor(&path, &name, what))?;
            if offset % alignment != 0 {
                return Err(IoError::tensor(
                    &path,
                    name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            let end = offset.checked_add(nbytes).filter(|&e| e <= data_len).ok_or_else(|| {
                IoError::tensor(
                    &path,
                    &name,
                    format!(
                        "data [{offset}, {offset}+{nbytes}) runs past the end of the data section ({data_len} bytes)"
                    ),
                )
            })?;
            let file_range = (data_start + offset) as usize..(data_start + end) as usize;
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                file_range,
            });
        }
        // No two tensors may share bytes.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].file_range.start);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.file_range.end > b.file_range.start && !b.file_range.is_empty() {
                return Err(IoError::tensor(
                    &path,
                    &b.name,
                    format!("data overlaps tensor {}", a.name),
                ));
            }
        }
        Ok(GgufFile {
            path,
            backing,
            version,
            metadata,
            tensors,
            alignment,
            data_start: data_start as usize,
        })
    }

    /// The file's path (or the name given to [`from_bytes`](Self::from_bytes)).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The value of a metadata key, e.g. `tokenizer.ggml.tokens`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Every metadata key/value pair, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The info of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Alignment of the tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section within the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The raw bytes of a tensor (a view into the mmap).
    pub fn tensor_data(&self, info: &GgufTensorInfo) -> &[u8] {
        // file_range was checked against the file size in `parse`; an info from another file
        // with an out-of-range span yields an empty slice rather than a panic.
        self.backing
            .bytes()
            .get(info.file_range.clone())
            .unwrap_or(&[])
    }

    /// Dequantizes the tensor called `name` to f32 (row-major, `info.n_elements()` values).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, IoError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| IoError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        self.dequantize_info(info)
    }

    /// Dequantizes a tensor of this file to f32.
    pub fn dequantize_info(&self, info: &GgufTensorInfo) -> Result<Vec<f32>, IoError> {
        crate::ggml::dequantize(info.ggml_type, self.tensor_data(info), info.n_elements())
            .map_err(|what| IoError::tensor(&self.path, &info.name, what))
    }

    /// A metadata value that must be present, as an unsigned integer.
    pub(crate) fn require_u64(&self, key: &str) -> Result<u64, IoError> {
        match self.get(key) {
            None => Err(IoError::key(&self.path, key, "missing")),
            Some(v) => v.as_u64().ok_or_else(|| {
                IoError::key(
                    &self.path,
                    key,
                    format!("expected a non-negative integer, found {}", v.type_name()),
                )
            }),
        }
    }

    /// An optional metadata value as f64 (absent: None; wrong type: Err).
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>, IoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                IoError::key(
                    &self.path,
                    key,
                    format!("expected a number, found {}", v.type_name()),
                )
            }),
        }
    }
}

/// Bytes of a tensor of `dims` elements of `ty`, checked for overflow, block divisibility, and
/// against `limit` (the data section's size) so absurd dims fail early.
fn tensor_bytes(dims: &[u64], ty: GgmlType, limit: u64) -> Result<u64, String> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    }
    let (blk, bb) = (ty.block_len() as u64, ty.block_bytes() as u64);
    if !dims[0].is_multiple_of(blk) {
        return Err(format!(
            "row length {} is not a multiple of the {} block length {blk}",
            dims[0],
            ty.name()
        ));
    }
    let bytes = (n / blk)
        .checked_mul(bb)
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    if bytes > limit {
        return Err(format!(
            "dimensions {dims:?} of type {} need {bytes} bytes, the data section has {limit}",
            ty.name()
        ));
    }
    Ok(bytes)
}

/// A cursor over the header bytes that turns every short read into an `IoError`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], IoError> {
        if n > self.remaining() {
            return Err(IoError::malformed(
                self.path,
                format!(
                    "truncated while reading {what}: need {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], IoError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, IoError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, IoError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Errs unless `count` items of at least `min_size` bytes each fit in the rest of the file.
    ///
    /// `what` is only formatted on error: parsing stays linear in the file size however many
    /// (nested) arrays a long key holds.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &dyn std::fmt::Display,
    ) -> Result<(), IoError> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(IoError::malformed(
                self.path,
                format!(
                    "{what} {count} at offset {} is impossible: only {} bytes remain",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, IoError> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(IoError::malformed(
                self.path,
                format!(
                    "{what}: string length {len} at offset {} exceeds the {} bytes left",
                    self.pos - 8,
                    self.remaining()
                ),
            ));
        }
        let start = self.pos;
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            IoError::malformed(
                self.path,
                format!(
                    "{what}: invalid UTF-8 at offset {}",
                    start + e.utf8_error().valid_up_to()
                ),
            )
        })
    }

    /// Smallest encoding of one value of type `ty` (for bounding array counts).
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10 | 11 | 12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, IoError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(IoError::key(
                        self.path,
                        key,
                        format!(
                            "bool byte {b} at offset {} is neither 0 nor 1",
                            self.pos - 1
                        ),
                    ))
                }
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(IoError::key(
                        self.path,
                        key,
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem = self.u32(key)?;
                if elem > 12 {
                    return Err(IoError::key(
                        self.path,
                        key,
                        format!("unknown array element type {elem}"),
                    ));
                }
                let count = self.u64(key)?;
                self.check_count(
                    count,
                    Self::min_size(elem),
                    &format_args!("key {key}: array length"),
                )?;
                // Reserve no more than the rest of the file could hold in `MetaValue`s of its
                // bytes: a count near the bound then cannot claim 32x the file (a `MetaValue` is
                // 32 bytes, a u8 element 1); past that the vector grows as elements arrive.
                let cap = (count as usize)
                    .min(self.remaining() / std::mem::size_of::<MetaValue>().max(1));
                let mut items = Vec::with_capacity(cap);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            t => {
                return Err(IoError::key(
                    self.path,
                    key,
                    format!("unknown value type {t} at offset {}", self.pos - 4),
                ))
            }
        })
    }
}

/// One tensor to write with [`write_gguf`]: name, type, dims in ggml order
/// (`dims[0]` = columns), and its raw bytes in that type's block layout.
#[derive(Debug, Clone)]
pub struct GgufTensorData<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// Raw data.
    pub data: &'a [u8],
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        MetaValue::Array(items) => {
            // An empty array is written with element type string.
            let elem = items.first().map_or(8, type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(out, it);
            }
        }
    }
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// Serializes a GGUF v3 file (for tests and tools): metadata in the given order, tensor data
/// aligned to `general.alignment` if present among `metadata`, else 32.
///
/// Errs when an array mixes element types, or a tensor's bytes do not match its dims and type.
pub fn write_gguf(
    metadata: &[(&str, MetaValue)],
    tensors: &[GgufTensorData<'_>],
) -> Result<Vec<u8>, IoError> {
    fn check_array(key: &str, v: &MetaValue) -> Result<(), IoError> {
        if let MetaValue::Array(items) = v {
            if let Some(first) = items.first() {
                if items.iter().any(|x| type_id(x) != type_id(first)) {
                    return Err(IoError::key(
                        "<gguf writer>",
                        key,
                        "array mixes element types",
                    ));
                }
            }
            for it in items {
                check_array(key, it)?;
            }
        }
        Ok(())
    }
    let alignment = metadata
        .iter()
        .find(|(k, _)| *k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(DEFAULT_ALIGNMENT) as usize;
    if !alignment.is_power_of_two() {
        return Err(IoError::key(
            "<gguf writer>",
            "general.alignment",
            "not a power of two",
        ));
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        check_array(k, v)?;
        write_value(&mut out, &MetaValue::String((*k).to_string()));
        out.extend_from_slice(&type_id(v).to_le_bytes());
        write_value(&mut out, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let want = n.and_then(|n| {
            let bl = t.ggml_type.block_len() as u64;
            (n % bl == 0).then(|| n / bl * t.ggml_type.block_bytes() as u64)
        });
        if want != Some(t.data.len() as u64) {
            return Err(IoError::tensor(
                "<gguf writer>",
                t.name,
                format!(
                    "{} bytes do not match dims {:?} of type {}",
                    t.data.len(),
                    t.dims,
                    t.ggml_type.name()
                ),
            ));
        }
        write_value(&mut out, &MetaValue::String(t.name.to_string()));
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).div_ceil(alignment) * alignment;
    }
    out.resize(out.len().div_ceil(alignment) * alignment, 0);
    let data_start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(data_start + off, 0);
        out.extend_from_slice(t.data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let f: Vec<u8> = [1.0f32, -2.0, 3.5, 0.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let meta = vec![
            ("general.architecture", MetaValue::String("llama".into())),
            ("u8", MetaValue::U8(7)),
            ("i8", MetaValue::I8(-7)),
            ("u16", MetaValue::U16(700)),
            ("i16", MetaValue::I16(-700)),
            ("u32", MetaValue::U32(70000)),
            ("i32", MetaValue::I32(-70000)),
            ("u64", MetaValue::U64(1 << 40)),
            ("i64", MetaValue::I64(-(1 << 40))),
            ("f32", MetaValue::F32(1.5)),
            ("f64", MetaValue::F64(-2.25)),
            ("bool", MetaValue::Bool(true)),
            (
                "tokens",
                MetaValue::Array(vec![
                    MetaValue::String("a".into()),
                    MetaValue::String("ü".into()),
                ]),
            ),
            (
                "nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
                    MetaValue::Array(vec![]),
                ]),
            ),
        ];
        let t = [
            GgufTensorData {
                name: "a",
                ggml_type: GgmlType::F32,
                dims: vec![2, 2],
                data: &f,
            },
            GgufTensorData {
                name: "b",
                ggml_type: GgmlType::F32,
                dims: vec![3],
                data: &f[..12],
            },
        ];
        write_gguf(&meta, &t).unwrap()
    }

    #[test]
    fn round_trips_every_value_type() {
        let g = GgufFile::from_bytes("mem.gguf", &sample()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(g.get("u8").unwrap().as_u64(), Some(7));
        assert_eq!(g.get("i8").unwrap().as_i64(), Some(-7));
        assert_eq!(g.get("i8").unwrap().as_u64(), None);
        assert_eq!(g.get("u16").unwrap().as_u64(), Some(700));
        assert_eq!(g.get("i16").unwrap().as_i64(), Some(-700));
        assert_eq!(g.get("u32").unwrap().as_u64(), Some(70000));
        assert_eq!(g.get("i32").unwrap().as_i64(), Some(-70000));
        assert_eq!(g.get("u64").unwrap().as_u64(), Some(1 << 40));
        assert_eq!(g.get("i64").unwrap().as_i64(), Some(-(1 << 40)));
        assert_eq!(g.get("f32").unwrap().as_f64(), Some(1.5));
        assert_eq!(g.get("f64").unwrap().as_f64(), Some(-2.25));
        assert_eq!(g.get("u32").unwrap().as_f64(), Some(70000.0));
        assert_eq!(g.get("bool").unwrap().as_bool(), Some(true));
        let toks = g.get("tokens").unwrap().as_array().unwrap();
        assert_eq!(toks[1].as_str(), Some("ü"));
        let nested = g.get("nested").unwrap().as_array().unwrap();
        assert_eq!(nested[0].as_array().unwrap()[1], MetaValue::I32(2));
        assert!(nested[1].as_array().unwrap().is_empty());
        assert_eq!(g.metadata().len(), 14);
        assert_eq!(g.tensors().len(), 2);
        let a = g.tensor_info("a").unwrap();
        assert_eq!(a.shape(), vec![2, 2]);
        assert_eq!(a.file_range.start % 32, 0);
        assert_eq!(g.dequantize("a").unwrap(), vec![1.0, -2.0, 3.5, 0.25]);
        assert_eq!(g.dequantize("b").unwrap(), vec![1.0, -2.0, 3.5]);
        assert!(g.dequantize("zzz").is_err());
    }

    #[test]
    fn v2_is_accepted_v1_and_junk_rejected() {
        let mut b = sample();
        b[4] = 2;
        assert_eq!(GgufFile::from_bytes("v2", &b).unwrap().version(), 2);
        b[4] = 1;
        let e = GgufFile::from_bytes("v1", &b).unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        b[4] = 9;
        assert!(GgufFile::from_bytes("v9", &b).is_err());
        b[4] = 3;
        b[0] = b'X';
        let e = GgufFile::from_bytes("x.gguf", &b).unwrap_err().to_string();
        assert!(e.contains("x.gguf") && e.contains("magic"), "{e}");
        assert!(GgufFile::from_bytes("empty", &[]).is_err());
    }

    #[test]
    fn truncation_is_an_error_at_every_length() {
        let b = sample();
        for n in 0..b.len() {
            assert!(
                GgufFile::from_bytes("t", &b[..n]).is_err(),
                "accepted a file cut at {n}"
            );
        }
    }

    #[test]
    fn absurd_counts_fail_without_allocating() {
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufFile::from_bytes("t", &b).unwrap_err().to_string();
        assert!(e.contains("tensor count"), "{e}");
        let mut b = sample();
        b[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let e = GgufFile::from_bytes("t", &b).unwrap_err().to_string();
        assert!(e.contains("metadata count"), "{e}");
    }

    #[test]
    fn invalid_utf8_names_the_key() {
        let mut b = sample();
        let pos = b.windows(2).position(|w| w == "ü".as_bytes()).unwrap();
        b[pos] = 0xff;
        let e = GgufFile::from_bytes("t", &b).unwrap_err().to_string();
        assert!(e.contains("tokens") && e.contains("UTF-8"), "{e}");
    }
}
