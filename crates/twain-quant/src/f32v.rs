//! f32 vector helpers the transformer's attention uses (SIMD).

use crate::kernels;

/// `sum a[i] * b[i]`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    (kernels::best().dot_f32)(&a[..n], &b[..n])
}

/// `y[i] += alpha * x[i]`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len().min(y.len());
    (kernels::best().axpy_f32)(alpha, &x[..n], &mut y[..n])
}
