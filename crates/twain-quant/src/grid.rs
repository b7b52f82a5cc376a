//! The grid of a quantized row: the scale each group of 32 weights uses, the
//! nearest grid value of any number under a group's scale, and re-encoding a
//! row's codes under its kept scales. Error-feedback rounding (GPTQ / LDLQ in
//! twain-convert) chooses the scales first ([`crate::quantize`]) and then
//! rounds column by column with these.

use crate::blocks::{f16_to_f32, scales_bytes, Q2Block, Q4Block, Q8Block, Q2_ROW_HEADER, QK};
use crate::{QuantError, QuantFormat};

/// Formats with a per-group grid (the ones error feedback applies to).
pub fn has_grid(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::Q2 | QuantFormat::Q4 | QuantFormat::Q8)
}

fn check(format: QuantFormat, row: &[u8], cols: usize) -> Result<usize, QuantError> {
    if !has_grid(format) {
        return Err(QuantError::Unsupported(format!(
            "{format} has no per-group grid"
        )));
    }
    let need = format.row_bytes(cols)?;
    if row.len() != need {
        return Err(QuantError::Shape(format!(
            "{format} row of {cols} columns is {need} bytes, got {}",
            row.len()
        )));
    }
    Ok(cols / QK)
}

/// The scale of every group of a quantized row: a value is `level * scale`
/// with levels `c - 1.5` (Q2, c in 0..=3), `c - 8` (Q4, c in 0..=15; the
/// scale may be negative) or `q` (Q8, q in -127..=127).
pub fn group_scales(format: QuantFormat, row: &[u8], cols: usize) -> Result<Vec<f32>, QuantError> {
    let nb = check(format, row, cols)?;
    Ok(match format {
        QuantFormat::Q2 => {
            let d = f32::from_le_bytes(row[..4].try_into().expect("4 bytes"));
            let sc = &row[Q2_ROW_HEADER + nb * 8..];
            (0..nb)
                .map(|b| d * ((sc[b / 2] >> (4 * (b % 2))) & 15) as f32)
                .collect()
        }
        _ => (0..nb)
            .map(|b| f16_to_f32(u16::from_le_bytes([row[2 * b], row[2 * b + 1]])))
            .collect(),
    })
}

/// The code of `x` nearest under `scale` (see [`group_scales`]).
#[inline]
pub fn code(format: QuantFormat, scale: f32, x: f32) -> u8 {
    if scale == 0.0 || !x.is_finite() {
        return match format {
            QuantFormat::Q2 => 2,
            QuantFormat::Q4 => 8,
            _ => 0,
        };
    }
    let v = x / scale;
    match format {
        // floor(v + 2) clamped: the nearest of (c - 1.5).
        QuantFormat::Q2 => (v + 2.0).clamp(0.0, 3.0) as u8,
        QuantFormat::Q4 => (v + 8.0).round().clamp(0.0, 15.0) as u8,
        _ => (v.round().clamp(-127.0, 127.0) as i8) as u8,
    }
}

/// The value of `code` under `scale`.
#[inline]
pub fn value(format: QuantFormat, scale: f32, code: u8) -> f32 {
    match format {
        QuantFormat::Q2 => (code as f32 - 1.5) * scale,
        QuantFormat::Q4 => (code as f32 - 8.0) * scale,
        _ => (code as i8) as f32 * scale,
    }
}

/// The grid value nearest `x` under `scale`.
#[inline]
pub fn snap(format: QuantFormat, scale: f32, x: f32) -> f32 {
    value(format, scale, code(format, scale, x))
}

/// The codes of a quantized row of `cols` columns, one per column as
/// [`code`] gives them (the inverse of [`set_codes`]).
pub fn codes(format: QuantFormat, row: &[u8], cols: usize) -> Result<Vec<u8>, QuantError> {
    let nb = check(format, row, cols)?;
    let (off, bb) = match format {
        QuantFormat::Q2 => (Q2_ROW_HEADER, 8),
        QuantFormat::Q4 => (scales_bytes(nb), 16),
        _ => (scales_bytes(nb), 32),
    };
    let mut out = Vec::with_capacity(cols);
    for b in 0..nb {
        let src = &row[off + b * bb..off + (b + 1) * bb];
        match format {
            QuantFormat::Q2 => out.extend(
                Q2Block {
                    qs: src.try_into().expect("8 bytes"),
                }
                .codes(),
            ),
            QuantFormat::Q4 => out.extend(
                Q4Block {
                    qs: src.try_into().expect("16 bytes"),
                }
                .codes(),
            ),
            _ => out.extend_from_slice(src),
        }
    }
    Ok(out)
}

/// Replace the codes of a quantized row by the ones in `codes` (one per
/// column, as [`code`] gives), keeping its scales.
pub fn set_codes(format: QuantFormat, row: &mut [u8], codes: &[u8]) -> Result<(), QuantError> {
    let cols = codes.len();
    let nb = check(format, row, cols)?;
    let (off, bb) = match format {
        QuantFormat::Q2 => (Q2_ROW_HEADER, 8),
        QuantFormat::Q4 => (scales_bytes(nb), 16),
        _ => (scales_bytes(nb), 32),
    };
    for (b, c) in codes.chunks_exact(QK).enumerate() {
        let c: &[u8; QK] = c.try_into().expect("32 codes");
        let dst = &mut row[off + b * bb..off + (b + 1) * bb];
        match format {
            QuantFormat::Q2 => dst.copy_from_slice(&Q2Block::from_codes(c).qs),
            QuantFormat::Q4 => dst.copy_from_slice(&Q4Block::from_codes(c).qs),
            _ => {
                let q = Q8Block {
                    qs: std::array::from_fn(|i| c[i] as i8),
                };
                dst.copy_from_slice(bytemuck::bytes_of(&q));
            }
        }
    }
    Ok(())
}

/// The row scale `d` of a Q2 row (group scales are `d * k`, k in 0..=15);
/// `None` for the other formats.
pub fn q2_row_scale(row: &[u8]) -> Option<f32> {
    Some(f32::from_le_bytes(row.get(..4)?.try_into().ok()?))
}

/// The scale the clipping search picks for one group of 32 finite values
/// (weighted by `imp`), rounded to what the row can store: for Q2 a multiple
/// `d * k` of the row scale `row_d` (k in 0..=15), for Q4/Q8 an f16.
pub fn group_scale(
    format: QuantFormat,
    values: &[f32],
    imp: Option<&[f32]>,
    row_d: f32,
) -> Result<f32, QuantError> {
    if values.len() != QK || imp.is_some_and(|i| i.len() != QK) {
        return Err(QuantError::Shape(format!(
            "a group is {QK} values (and {QK} importances)"
        )));
    }
    let mut tmp = vec![0u8; format.row_bytes(QK)?];
    crate::quantize::quantize_row(format, values, imp, true, &mut tmp)?;
    let s = group_scales(format, &tmp, QK)?[0];
    Ok(match format {
        QuantFormat::Q2 if row_d > 0.0 => row_d * (s / row_d).round().clamp(0.0, 15.0),
        QuantFormat::Q2 => 0.0,
        _ => s,
    })
}

/// Store `scale` as group `b`'s scale of a row of `cols` columns (Q2: the
/// sub-scale `round(scale / d)`; Q4/Q8: its f16 bits).
pub fn set_group_scale(
    format: QuantFormat,
    row: &mut [u8],
    cols: usize,
    b: usize,
    scale: f32,
) -> Result<(), QuantError> {
    let nb = check(format, row, cols)?;
    if b >= nb {
        return Err(QuantError::Shape(format!("group {b} of {nb}")));
    }
    match format {
        QuantFormat::Q2 => {
            let d = q2_row_scale(row).unwrap_or(0.0);
            let k = if d > 0.0 {
                (scale / d).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
            let at = Q2_ROW_HEADER + nb * 8 + b / 2;
            let shift = 4 * (b % 2);
            row[at] = (row[at] & !(15 << shift)) | (k << shift);
        }
        _ => {
            let h = crate::blocks::f32_to_f16(scale);
            row[2 * b..2 * b + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quantize, QuantizeOptions};

    #[test]
    fn grid_reproduces_the_quantizer() {
        let (rows, cols) = (3, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        for f in [QuantFormat::Q2, QuantFormat::Q4, QuantFormat::Q8] {
            let m = quantize(f, rows, cols, &w, &QuantizeOptions::default()).unwrap();
            let deq = m.as_ref().dequantize();
            for r in 0..rows {
                let row = m.as_ref().row_data(r).unwrap();
                let s = group_scales(f, row, cols).unwrap();
                // The dequantized values are exactly grid values, and their
                // codes re-encode to the same bytes.
                let codes: Vec<u8> = (0..cols)
                    .map(|c| code(f, s[c / QK], deq[r * cols + c]))
                    .collect();
                for c in 0..cols {
                    assert_eq!(
                        value(f, s[c / QK], codes[c]),
                        deq[r * cols + c],
                        "{f} {r} {c}"
                    );
                }
                let mut copy = row.to_vec();
                set_codes(f, &mut copy, &codes).unwrap();
                assert_eq!(copy, row, "{f}");
                // And reading the codes back gives them (where a group's
                // scale is 0 any code dequantizes to 0).
                let read = super::codes(f, row, cols).unwrap();
                for c in 0..cols {
                    if s[c / QK] != 0.0 {
                        assert_eq!(read[c], codes[c], "{f} {r} {c}");
                    }
                }
                let mut again = row.to_vec();
                set_codes(f, &mut again, &read).unwrap();
                assert_eq!(again, row, "{f}");
            }
        }
    }
}
