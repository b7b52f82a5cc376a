//! [`QuantFormat`]: names, sizes and layouts of the weight formats.

use crate::blocks::{Q2Block, Q4Block, Q8Block, Q2_ROW_HEADER, QK};
use crate::QuantError;
use std::mem::{align_of, size_of};

/// A storage format for a weight matrix (row-major, rows = output features,
/// cols = input features; blocks run along a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// f32, 4 bytes per weight.
    F32,
    /// IEEE half, 2 bytes per weight.
    F16,
    /// int8 per block of 32 + f16 scale ([`crate::blocks::Q8Block`], 8.5 bits/weight;
    /// a row's scales come first, then its blocks).
    Q8,
    /// 4-bit per block of 32 + f16 scale ([`crate::blocks::Q4Block`], 4.5 bits/weight;
    /// a row's scales come first, then its blocks):
    /// embeddings, tied LM head, `q4` preset. A min was measured and not worth its bits.
    Q4,
    /// 2-bit balanced codes {-1.5,-0.5,0.5,1.5} x per-group scale: decoder linears.
    /// Groups of 32 with a 4-bit sub-scale under an f32 row scale (2.125 bits/weight
    /// + 32 bits per row); any row length that is a multiple of 32.
    Q2,
}

impl QuantFormat {
    /// Every format.
    pub const ALL: [QuantFormat; 5] = [Self::F32, Self::F16, Self::Q8, Self::Q4, Self::Q2];

    /// Short lowercase name used in files and the CLI: "f32","f16","q8","q4","q2".
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
            Self::Q2 => "q2",
        }
    }

    /// Inverse of [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Weights per block along a row (1 for f32/f16). Row lengths must be multiples of it.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q8 | Self::Q4 | Self::Q2 => QK,
        }
    }

    /// Bytes per block, counting its f16 scale for Q4 (16 + 2) and Q8 (32 + 2).
    /// For Q2 this is the 8 bytes of codes only: every Q2 row adds a 4-byte row
    /// scale and half a byte of sub-scale per block, so use
    /// [`row_bytes`](Self::row_bytes) / [`matrix_bytes`](Self::matrix_bytes) for sizes.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q8 => size_of::<Q8Block>() + 2,
            Self::Q4 => size_of::<Q4Block>() + 2,
            Self::Q2 => size_of::<Q2Block>(),
        }
    }

    /// Storage cost in bits per weight (for Q2 without the 32-bit row scale,
    /// which adds `32 / cols`).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Self::Q2 => (8.0 * 8.5) / QK as f64,
            f => (8 * f.block_bytes()) as f64 / f.block_len() as f64,
        }
    }

    /// Bytes of one row of `cols` weights; Err when `cols` is 0 or not a multiple of `block_len`.
    pub fn row_bytes(self, cols: usize) -> Result<usize, QuantError> {
        let bl = self.block_len();
        if cols == 0 || !cols.is_multiple_of(bl) {
            return Err(QuantError::Shape(format!(
                "{}: row length {cols} is not a positive multiple of {bl}",
                self.name()
            )));
        }
        let nb = cols / bl;
        let bytes = match self {
            Self::Q2 => nb
                .checked_mul(size_of::<Q2Block>())
                .and_then(|b| b.checked_add(Q2_ROW_HEADER + nb.div_ceil(2))),
            f => nb.checked_mul(f.block_bytes()),
        };
        bytes.ok_or_else(|| {
            QuantError::Overflow(format!("{}: row of {cols} overflows", self.name()))
        })
    }

    /// Bytes of a rows x cols matrix, overflow-checked.
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Result<usize, QuantError> {
        self.row_bytes(cols)?.checked_mul(rows).ok_or_else(|| {
            QuantError::Overflow(format!(
                "{}: {rows}x{cols} matrix size overflows",
                self.name()
            ))
        })
    }

    /// Required alignment of the data slice (the block type's alignment).
    pub fn alignment(self) -> usize {
        match self {
            Self::F32 => align_of::<f32>(),
            Self::F16 => align_of::<u16>(),
            // The f16 scale arrays (rows are an even number of bytes).
            Self::Q8 | Self::Q4 => align_of::<u16>(),
            Self::Q2 => 1,
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantFormat {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self, QuantError> {
        Self::from_name(s).ok_or_else(|| QuantError::UnknownFormat(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in QuantFormat::ALL {
            assert_eq!(QuantFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(QuantFormat::from_name("q3"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(QuantFormat::Q2.row_bytes(576).unwrap(), 4 + 18 * 8 + 9);
        assert_eq!(QuantFormat::Q2.row_bytes(32).unwrap(), 4 + 8 + 1);
        assert_eq!(QuantFormat::Q4.row_bytes(576).unwrap(), 18 * 18);
        assert_eq!(QuantFormat::Q8.row_bytes(64).unwrap(), 68);
        assert_eq!(QuantFormat::F16.row_bytes(3).unwrap(), 6);
        assert!(QuantFormat::Q4.row_bytes(48).is_err());
        assert!(QuantFormat::F32.row_bytes(0).is_err());
        assert!(QuantFormat::F32.matrix_bytes(usize::MAX / 2, 4).is_err());
        assert_eq!(QuantFormat::Q4.bits_per_weight(), 4.5);
        assert_eq!(QuantFormat::Q2.bits_per_weight(), 2.125);
    }
}
