//! Block types: the byte layout of every quantized format.
//!
//! All are `#[repr(C)]`, [`bytemuck::Pod`] and have a compile-time size check,
//! so a slice of them can be viewed straight out of an mmapped file. Scales
//! stored as IEEE half are kept as their raw `u16` bits (little endian in files).
//! See `docs/formats.md` for the layouts with pictures.

use bytemuck::{Pod, Zeroable};
use std::mem::size_of;

/// Weights per block for every quantized format.
pub const QK: usize = 32;

/// 2-bit codes of one group of 32 weights (the [`crate::QuantFormat::Q2`] row body).
///
/// Code of element `i` (0..32) is `(qs[i % 8] >> (2 * (i / 8))) & 3`, i.e. byte `j`
/// holds elements `j, j+8, j+16, j+24` in bit pairs 0-1, 2-3, 4-5, 6-7 (this lets
/// SIMD unpack a block with one broadcast, one per-lane shift and one mask).
/// The value is `(code - 1.5) * d * k`, with `d` the row scale and `k` the
/// block's 4-bit sub-scale (see [`Q2_ROW_HEADER`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Q2Block {
    /// Packed 2-bit codes.
    pub qs: [u8; 8],
}
const _: () = assert!(size_of::<Q2Block>() == 8);

impl Q2Block {
    /// Pack 32 codes (each 0..=3; higher bits are ignored).
    pub fn from_codes(codes: &[u8; QK]) -> Self {
        let mut qs = [0u8; 8];
        for (i, &c) in codes.iter().enumerate() {
            qs[i % 8] |= (c & 3) << (2 * (i / 8));
        }
        Self { qs }
    }

    /// Unpack the 32 codes.
    pub fn codes(&self) -> [u8; QK] {
        std::array::from_fn(|i| (self.qs[i % 8] >> (2 * (i / 8))) & 3)
    }
}

/// Bytes at the start of every Q2 row: the row scale `d`, f32 little endian.
///
/// A Q2 row of `nb = cols / 32` blocks is
/// `[d: f32][nb x Q2Block][ceil(nb / 2) bytes of 4-bit sub-scales]`;
/// block `b`'s sub-scale is `(sc[b / 2] >> (4 * (b % 2))) & 15`.
pub const Q2_ROW_HEADER: usize = 4;

/// Bytes of the f16 scale array at the start of a Q4 or Q8 row (2 per block).
///
/// A Q4 row of `nb = cols / 32` blocks is `[nb x f16 scale][nb x Q4Block]`, a
/// Q8 row `[nb x f16 scale][nb x Q8Block]`: scales first, so SIMD kernels
/// load 16 of them with one instruction and two blocks' codes with another.
pub const fn scales_bytes(nb: usize) -> usize {
    2 * nb
}

/// 4-bit codes of one group of 32 weights ([`crate::QuantFormat::Q4`]).
///
/// Element `i < 16` is the low nibble of `qs[i]`, element `i >= 16` the high
/// nibble of `qs[i - 16]` (ggml's Q4_0 order); the value is `(code - 8) * d`
/// with `d` the block's f16 scale from the row's scale array. `d` may be
/// negative: the weight of largest magnitude maps to code 0 exactly, as in ggml.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Q4Block {
    /// Packed nibbles.
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<Q4Block>() == 16);

impl Q4Block {
    /// Pack 32 codes (each 0..=15; higher bits are ignored).
    pub fn from_codes(codes: &[u8; QK]) -> Self {
        Self {
            qs: std::array::from_fn(|j| (codes[j] & 15) | ((codes[j + 16] & 15) << 4)),
        }
    }

    /// Unpack the 32 codes.
    pub fn codes(&self) -> [u8; QK] {
        std::array::from_fn(|i| {
            if i < 16 {
                self.qs[i] & 15
            } else {
                self.qs[i - 16] >> 4
            }
        })
    }
}

/// int8 values of one group of 32 weights ([`crate::QuantFormat::Q8`]): value
/// `q * d` with `d` the block's f16 scale from the row's scale array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Q8Block {
    /// Quantized values.
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<Q8Block>() == 32);

/// int8 activation block of 32 values: value `q * d`, with `sum = sum q`
/// kept for the offset terms of the 2-bit and 4-bit dot products
/// (`dot(w, x) = s_w * d * (sum c*q - 1.5 * sum)` for Q2).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Q8ActBlock {
    /// Scale (`max|x| / 127`, 0 for an all-zero block).
    pub d: f32,
    /// Sum of `qs`.
    pub sum: i32,
    /// Quantized values in -127..=127.
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<Q8ActBlock>() == 40);

/// IEEE half -> f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 -> IEEE half bits (round to nearest even).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
