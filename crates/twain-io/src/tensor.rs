//! [`Tensor`]: a named weight in some [`QuantFormat`], owned or borrowed from a mapped file.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use twain_quant::{QMatrix, QMatrixRef, QuantFormat};

use crate::backing::Backing;
use crate::IoError;

/// Where a tensor's bytes live.
#[derive(Clone)]
enum TensorData {
    /// Owned f32 values (GGUF and Hugging Face loads, `from_f32`).
    F32(Vec<f32>),
    /// An owned matrix in any format (`from_qmatrix`, e.g. after requantization).
    Owned(QMatrix),
    /// A byte range of a mapped file (native loads): zero copy.
    Mapped {
        backing: Arc<Backing>,
        range: Range<usize>,
    },
}

/// A named tensor: row-major shape, storage format and bytes.
///
/// A 2-D tensor is a matrix with `rows = shape[0]` (output features) and
/// `cols = shape[1]` (input features); a 1-D tensor of `n` values is a 1 x n matrix.
#[derive(Clone)]
pub struct Tensor {
    name: String,
    shape: Vec<usize>,
    format: QuantFormat,
    data: TensorData,
    source: PathBuf,
}

impl std::fmt::Debug for Tensor {
    /// Name, shape, format and where the bytes live; never the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let storage = match &self.data {
            TensorData::F32(_) => "owned f32".to_string(),
            TensorData::Owned(_) => "owned".to_string(),
            TensorData::Mapped { range, .. } => format!("mapped at {}..{}", range.start, range.end),
        };
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("format", &self.format)
            .field("storage", &storage)
            .finish()
    }
}

/// (rows, cols) of a 1-D or 2-D shape.
pub(crate) fn matrix_dims(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [n] => Some((1, n)),
        [r, c] => Some((r, c)),
        _ => None,
    }
}

impl Tensor {
    /// An owned f32 tensor. Errs when `data.len()` is not the product of `shape`.
    pub fn from_f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> Result<Tensor, IoError> {
        let name = name.into();
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(IoError::tensor(
                PathBuf::new(),
                name,
                format!("{} values do not fill shape {shape:?}", data.len()),
            ));
        }
        Ok(Tensor {
            name,
            shape,
            format: QuantFormat::F32,
            data: TensorData::F32(data),
            source: PathBuf::new(),
        })
    }

    /// An owned tensor in the matrix's format. `shape` must be `[rows, cols]`, or `[cols]`
    /// for a 1-row matrix.
    pub fn from_qmatrix(
        name: impl Into<String>,
        shape: Vec<usize>,
        m: QMatrix,
    ) -> Result<Tensor, IoError> {
        let name = name.into();
        let v = m.as_ref();
        if matrix_dims(&shape) != Some((v.rows(), v.cols())) {
            return Err(IoError::tensor(
                PathBuf::new(),
                name,
                format!(
                    "shape {shape:?} does not match a {}x{} matrix",
                    v.rows(),
                    v.cols()
                ),
            ));
        }
        let format = v.format();
        Ok(Tensor {
            name,
            shape,
            format,
            data: TensorData::Owned(m),
            source: PathBuf::new(),
        })
    }

    /// A view of `range` of a mapped file; the caller has checked that the range lies in the
    /// file and holds exactly `matrix_bytes(format, rows, cols)` bytes (more is allowed: padding).
    pub(crate) fn mapped(
        name: String,
        shape: Vec<usize>,
        format: QuantFormat,
        backing: Arc<Backing>,
        range: Range<usize>,
        source: PathBuf,
    ) -> Tensor {
        Tensor {
            name,
            shape,
            format,
            data: TensorData::Mapped { backing, range },
            source,
        }
    }

    pub(crate) fn with_source(mut self, source: PathBuf) -> Tensor {
        self.source = source;
        self
    }

    /// The tensor's name (canonical GGUF-style, e.g. `blk.0.attn_q.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Row-major shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Storage format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Whether the bytes are borrowed from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, TensorData::Mapped { .. })
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    fn err(&self, what: impl Into<String>) -> IoError {
        IoError::tensor(&self.source, &self.name, what)
    }

    /// The stored bytes in the format's block layout (f32 values are little-endian).
    pub fn bytes(&self) -> Result<&[u8], IoError> {
        match &self.data {
            TensorData::F32(v) => Ok(bytemuck::cast_slice(v)),
            TensorData::Owned(m) => Ok(m.as_ref().data()),
            TensorData::Mapped { backing, range } => {
                let (rows, cols) = matrix_dims(&self.shape)
                    .ok_or_else(|| self.err(format!("shape {:?} is not 1-D or 2-D", self.shape)))?;
                let n = self
                    .format
                    .matrix_bytes(rows, cols)
                    .map_err(|e| self.err(e.to_string()))?;
                backing
                    .bytes()
                    .get(range.start..)
                    .and_then(|b| b.get(..n.min(range.len())))
                    .filter(|b| b.len() == n)
                    .ok_or_else(|| {
                        self.err(format!("needs {n} bytes, the file holds {}", range.len()))
                    })
            }
        }
    }

    /// The tensor as a matrix view (see the type's doc for rows and cols).
    pub fn matrix(&self) -> Result<QMatrixRef<'_>, IoError> {
        if let TensorData::Owned(m) = &self.data {
            return Ok(m.as_ref());
        }
        let (rows, cols) = matrix_dims(&self.shape)
            .ok_or_else(|| self.err(format!("shape {:?} is not 1-D or 2-D", self.shape)))?;
        QMatrixRef::new(self.format, rows, cols, self.bytes()?).map_err(|e| self.err(e.to_string()))
    }

    /// The values as an f32 slice without copying, when stored as f32.
    pub fn as_f32_slice(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ if self.format == QuantFormat::F32 => {
                bytemuck::try_cast_slice(self.bytes().ok()?).ok()
            }
            _ => None,
        }
    }

    /// The values as f32 (dequantized when stored in a quantized format).
    pub fn to_f32(&self) -> Result<Vec<f32>, IoError> {
        if let Some(v) = self.as_f32_slice() {
            return Ok(v.to_vec());
        }
        match self.format {
            QuantFormat::F32 => Ok(self
                .bytes()?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            QuantFormat::F16 => Ok(self
                .bytes()?
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            _ => Ok(self.matrix()?.dequantize()),
        }
    }
}
