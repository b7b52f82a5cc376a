//! Weight matrices: a borrowed view ([`QMatrixRef`]) and an owned, aligned buffer ([`QMatrix`]).

use crate::kernels::scalar;
use crate::{QuantError, QuantFormat};
use std::ops::Range;

/// A borrowed weight matrix in some format (e.g. a view into an mmapped file).
#[derive(Debug, Clone, Copy)]
pub struct QMatrixRef<'a> {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl<'a> QMatrixRef<'a> {
    /// Checks that `data` has exactly `matrix_bytes(rows, cols)` bytes and the format's alignment.
    pub fn new(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, QuantError> {
        let want = format.matrix_bytes(rows, cols)?;
        if rows == 0 {
            return Err(QuantError::Shape(format!("{format} matrix with 0 rows")));
        }
        if data.len() != want {
            return Err(QuantError::Shape(format!(
                "{format} {rows}x{cols} matrix needs {want} bytes, got {}",
                data.len()
            )));
        }
        if !(data.as_ptr() as usize).is_multiple_of(format.alignment()) {
            return Err(QuantError::Shape(format!(
                "{format} {rows}x{cols} matrix data is not {}-byte aligned",
                format.alignment()
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Raw bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        // Validated in `new`.
        self.format.row_bytes(self.cols).unwrap_or(0)
    }

    /// The raw bytes of one row.
    pub fn row_data(&self, row: usize) -> Result<&'a [u8], QuantError> {
        if row >= self.rows {
            return Err(QuantError::Shape(format!(
                "row {row} out of range for a {}x{} matrix",
                self.rows, self.cols
            )));
        }
        let rb = self.row_bytes();
        Ok(&self.data[row * rb..(row + 1) * rb])
    }

    /// A view of a range of rows.
    pub fn rows_range(&self, rows: Range<usize>) -> Result<QMatrixRef<'a>, QuantError> {
        if rows.start >= rows.end || rows.end > self.rows {
            return Err(QuantError::Shape(format!(
                "row range {rows:?} is empty or out of range for a {}x{} matrix",
                self.rows, self.cols
            )));
        }
        let rb = self.row_bytes();
        Ok(QMatrixRef {
            format: self.format,
            rows: rows.end - rows.start,
            cols: self.cols,
            data: &self.data[rows.start * rb..rows.end * rb],
        })
    }

    /// Dequantize one row into `out` (len = cols). Used for embedding gather.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if out.len() != self.cols {
            return Err(QuantError::Shape(format!(
                "dequantize_row: output has {} values, matrix has {} columns",
                out.len(),
                self.cols
            )));
        }
        let data = self.row_data(row)?;
        dequantize_row_bytes(self.format, data, out);
        Ok(())
    }

    /// Dequantize the whole matrix (rows * cols values).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        let rb = self.row_bytes();
        for (o, row) in out
            .chunks_exact_mut(self.cols)
            .zip(self.data.chunks_exact(rb))
        {
            dequantize_row_bytes(self.format, row, o);
        }
        out
    }
}

/// Dequantize one row's bytes (length already checked).
pub(crate) fn dequantize_row_bytes(format: QuantFormat, row: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::best().backend == crate::kernels::Backend::Avx512Vnni
        && crate::kernels::avx512::dequantize_row(format, row, out)
    {
        return;
    }
    match format {
        QuantFormat::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        QuantFormat::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = crate::blocks::f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        QuantFormat::Q8 => scalar::dequantize_row_q8(row, out),
        QuantFormat::Q4 => scalar::dequantize_row_q4(row, out),
        QuantFormat::Q2 => scalar::dequantize_row_q2(row, out),
    }
}

/// An owned weight matrix; its byte buffer is aligned for every format.
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// Backing store (8-byte aligned); only the first `len` bytes are the matrix.
    buf: Vec<u64>,
    len: usize,
}

impl QMatrix {
    /// A zero-filled matrix of `len` bytes (sizes already validated).
    pub(crate) fn zeroed(format: QuantFormat, rows: usize, cols: usize, len: usize) -> Self {
        Self {
            format,
            rows,
            cols,
            buf: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.buf)[..self.len]
    }

    /// Borrow as a view.
    pub fn as_ref(&self) -> QMatrixRef<'_> {
        QMatrixRef {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            data: &bytemuck::cast_slice::<u64, u8>(&self.buf)[..self.len],
        }
    }

    /// Copy raw bytes (e.g. read from a file) into an aligned owned matrix, with the checks of [`QMatrixRef::new`].
    pub fn from_bytes(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, QuantError> {
        let want = format.matrix_bytes(rows, cols)?;
        if rows == 0 || data.len() != want {
            return Err(QuantError::Shape(format!(
                "{format} {rows}x{cols} matrix needs {want} bytes, got {}",
                data.len()
            )));
        }
        let mut m = Self::zeroed(format, rows, cols, want);
        m.bytes_mut().copy_from_slice(data);
        Ok(m)
    }

    /// The format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Raw bytes.
    pub fn data(&self) -> &[u8] {
        self.as_ref().data
    }
}
