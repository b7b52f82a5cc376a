//! Type traits per format (ggml's `type_traits` table, as Rust traits):
//! block size, block type, paired activation type, quantize, dequantize and dot
//! for one row. The dynamic counterpart is [`crate::QuantFormat`] plus
//! [`crate::kernels::Kernels`].

use crate::blocks::{Q2Block, Q4Block, Q8ActBlock, Q8Block, QK};
use crate::kernels::scalar;
use crate::{QuantError, QuantFormat};

/// A weight format, statically.
pub trait WeightFormat {
    /// The dynamic tag.
    const FORMAT: QuantFormat;
    /// Weights per block.
    const BLOCK_LEN: usize;
    /// Bytes per block with its share of scales (see [`QuantFormat::block_bytes`]).
    const BLOCK_BYTES: usize;
    /// The block type.
    type Block: bytemuck::Pod;
    /// The activation type its dot product pairs with.
    type Activation: bytemuck::Pod;

    /// Quantize one row of finite values into `dst` (`row_bytes(src.len())` bytes).
    fn quantize_row(
        src: &[f32],
        importance: Option<&[f32]>,
        dst: &mut [u8],
    ) -> Result<(), QuantError> {
        if let Some(i) = src.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::Value(format!(
                "{}: w[{i}] is not finite",
                Self::FORMAT
            )));
        }
        if dst.len() != Self::FORMAT.row_bytes(src.len())? {
            return Err(QuantError::Shape(format!(
                "{}: wrong row buffer size",
                Self::FORMAT
            )));
        }
        crate::quantize::quantize_row(Self::FORMAT, src, importance, true, dst)
    }
    /// Dequantize one row's bytes (`row_bytes(out.len())` bytes).
    fn dequantize_row(row: &[u8], out: &mut [f32]) {
        crate::matrix::dequantize_row_bytes(Self::FORMAT, row, out)
    }
    /// Scalar reference dot product of one row with its paired activations.
    fn vec_dot(row: &[u8], act: &[Self::Activation]) -> f32;
}

/// 2-bit format marker.
#[derive(Debug, Clone, Copy)]
pub struct Q2;
/// 4-bit format marker.
#[derive(Debug, Clone, Copy)]
pub struct Q4;
/// 8-bit format marker.
#[derive(Debug, Clone, Copy)]
pub struct Q8;
/// f32 format marker.
#[derive(Debug, Clone, Copy)]
pub struct F32;
/// f16 format marker.
#[derive(Debug, Clone, Copy)]
pub struct F16;

impl WeightFormat for Q2 {
    const FORMAT: QuantFormat = QuantFormat::Q2;
    const BLOCK_LEN: usize = QK;
    const BLOCK_BYTES: usize = 8;
    type Block = Q2Block;
    type Activation = Q8ActBlock;
    fn vec_dot(row: &[u8], act: &[Q8ActBlock]) -> f32 {
        scalar::q2_q8_row(row, act)
    }
}

impl WeightFormat for Q4 {
    const FORMAT: QuantFormat = QuantFormat::Q4;
    const BLOCK_LEN: usize = QK;
    const BLOCK_BYTES: usize = 18;
    type Block = Q4Block;
    type Activation = Q8ActBlock;
    fn vec_dot(row: &[u8], act: &[Q8ActBlock]) -> f32 {
        scalar::q4_q8_row(row, act)
    }
}

impl WeightFormat for Q8 {
    const FORMAT: QuantFormat = QuantFormat::Q8;
    const BLOCK_LEN: usize = QK;
    const BLOCK_BYTES: usize = 34;
    type Block = Q8Block;
    type Activation = Q8ActBlock;
    fn vec_dot(row: &[u8], act: &[Q8ActBlock]) -> f32 {
        scalar::q8_q8_row(row, act)
    }
}

impl WeightFormat for F32 {
    const FORMAT: QuantFormat = QuantFormat::F32;
    const BLOCK_LEN: usize = 1;
    const BLOCK_BYTES: usize = 4;
    type Block = f32;
    type Activation = f32;
    fn vec_dot(row: &[u8], act: &[f32]) -> f32 {
        scalar::dot_f32(bytemuck::cast_slice(row), act)
    }
}

impl WeightFormat for F16 {
    const FORMAT: QuantFormat = QuantFormat::F16;
    const BLOCK_LEN: usize = 1;
    const BLOCK_BYTES: usize = 2;
    type Block = u16;
    type Activation = f32;
    fn vec_dot(row: &[u8], act: &[f32]) -> f32 {
        let mut out = [0.0f32];
        scalar::f16_f32(bytemuck::cast_slice(row), act.len(), act, &mut out);
        out[0]
    }
}

const _: () = assert!(Q2::BLOCK_BYTES == std::mem::size_of::<Q2Block>());
const _: () = assert!(Q4::BLOCK_BYTES == std::mem::size_of::<Q4Block>() + 2);
const _: () = assert!(Q8::BLOCK_BYTES == std::mem::size_of::<Q8Block>() + 2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::Q8ActBlock;

    /// The static table agrees with the dynamic one and round-trips a row.
    fn check<T: WeightFormat>() {
        assert_eq!(T::BLOCK_LEN, T::FORMAT.block_len());
        assert_eq!(T::BLOCK_BYTES, T::FORMAT.block_bytes());
        let cols = 64;
        let w: Vec<f32> = (0..cols).map(|i| (i as f32 - 31.5) / 32.0).collect();
        let mut row = vec![0u8; T::FORMAT.row_bytes(cols).unwrap()];
        T::quantize_row(&w, None, &mut row).unwrap();
        let mut back = vec![0.0f32; cols];
        T::dequantize_row(&row, &mut back);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() < 0.25, "{}: {a} vs {b}", T::FORMAT);
        }
        assert!(T::quantize_row(&[f32::NAN; 64], None, &mut row).is_err());
    }

    #[test]
    fn static_tables() {
        check::<Q2>();
        check::<Q4>();
        check::<Q8>();
        check::<F32>();
        check::<F16>();
        // The paired activation of the integer formats carries its block sum.
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let mut act = [Q8ActBlock {
            d: 0.0,
            sum: 0,
            qs: [0; 32],
        }; 2];
        assert!(crate::kernels::scalar::quantize_act(&x, &mut act));
        let mut row = vec![0u8; QuantFormat::Q4.row_bytes(64).unwrap()];
        Q4::quantize_row(&x, None, &mut row).unwrap();
        let exact: f32 = x.iter().map(|v| v * v).sum();
        assert!((Q4::vec_dot(&row, &act) - exact).abs() < 0.02 * exact);
    }
}
