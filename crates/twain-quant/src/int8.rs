//! int8 symmetric rows for the KV cache (one scale per row, e.g. per token and head).

use crate::kernels::{self, scalar};
use crate::QuantError;

/// Quantize `x` into `out` (same length); returns the scale (max|x| / 127, 0 for an all-zero row). NaN/inf is an Err.
///
/// Rows whose scale would not be a normal float (max |x| below 1.5e-36) are stored as zeros.
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> Result<f32, QuantError> {
    if x.len() != out.len() {
        return Err(QuantError::Shape(format!(
            "int8::quantize_row: {} inputs, {} outputs",
            x.len(),
            out.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::Value(format!(
            "int8::quantize_row: x[{i}] = {}",
            x[i]
        )));
    }
    let scale = scalar::act_scale(scalar::max_abs(x));
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &v) in out.iter_mut().zip(x) {
        *q = scalar::round_even((v * inv).clamp(-127.0, 127.0)) as i8;
    }
    Ok(scale)
}

/// `out[i] = scale * q[i]`.
pub fn dequantize_row(q: &[i8], scale: f32, out: &mut [f32]) {
    debug_assert_eq!(q.len(), out.len());
    for (o, &v) in out.iter_mut().zip(q) {
        *o = scale * v as f32;
    }
}

/// `scale * sum q[i] * x[i]` (SIMD; lengths must match, debug-asserted).
pub fn dot_f32(q: &[i8], scale: f32, x: &[f32]) -> f32 {
    debug_assert_eq!(q.len(), x.len());
    let n = q.len().min(x.len());
    scale * (kernels::best().dot_i8_f32)(&q[..n], &x[..n])
}

/// `y[i] += alpha * scale * q[i]` (SIMD).
pub fn axpy(alpha: f32, q: &[i8], scale: f32, y: &mut [f32]) {
    debug_assert_eq!(q.len(), y.len());
    let n = q.len().min(y.len());
    (kernels::best().axpy_i8)(alpha * scale, &q[..n], &mut y[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.1).collect();
        let mut q = vec![0i8; 64];
        let s = quantize_row(&x, &mut q).unwrap();
        assert_eq!(s, 3.3 / 127.0);
        let mut back = vec![0.0; 64];
        dequantize_row(&q, s, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= s * 0.5 + 1e-6);
        }
        let d = dot_f32(&q, s, &x);
        let exact: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((d - exact).abs() < 1e-3 * exact.abs());
        let mut y = vec![1.0f32; 64];
        axpy(2.0, &q, s, &mut y);
        assert!((y[0] - (1.0 + 2.0 * back[0])).abs() < 1e-5);
        assert_eq!(quantize_row(&[0.0; 8], &mut [0; 8]).unwrap(), 0.0);
        assert!(quantize_row(&[f32::NAN], &mut [0]).is_err());
        assert!(quantize_row(&[1.0], &mut [0; 2]).is_err());
    }
}
