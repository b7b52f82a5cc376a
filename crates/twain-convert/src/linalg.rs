//! Dense symmetric positive-definite algebra in f64 for error-feedback
//! rounding: Cholesky factors and the upper Cholesky factor of an inverse.
//! Matrices are row-major `n x n`.

use rayon::prelude::*;

/// Lower Cholesky factor `L` of `a` (`a = L L^T`), or the index of the first
/// pivot that is not positive (the matrix is not positive definite).
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let (li, lj) = (&l[i * n..i * n + j], &l[j * n..j * n + j]);
            let s = a[i * n + j] - dot(li, lj);
            if i == j {
                if s.is_nan() || s <= 0.0 || !s.is_finite() {
                    return Err(i);
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Ok(l)
}

#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four accumulators: the compiler vectorises this.
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc[0] + acc[1] + acc[2] + acc[3];
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `U` upper triangular with `a^{-1} = U^T U`, returned row-major, from the
/// Cholesky factor `L` of `a`: `a^{-1} = L^{-T} L^{-1}`, then the Cholesky
/// factor of that, transposed. Row `i` of `U` (from the diagonal on) is
/// what error feedback spreads column `i`'s rounding error with.
pub fn inverse_upper_factor(l: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    // M = L^{-T}: row k of M is column k of L^{-1}, the solution of L x = e_k.
    let mut m = vec![0.0f64; n * n];
    m.par_chunks_mut(n).enumerate().for_each(|(k, x)| {
        for i in k..n {
            let s = if i == k { 1.0 } else { 0.0 } - dot(&l[i * n + k..i * n + i], &x[k..i]);
            x[i] = s / l[i * n + i];
        }
    });
    // a^{-1}[r][c] = sum_i M[r][i] M[c][i], over i >= max(r, c).
    let mut inv = vec![0.0f64; n * n];
    inv.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        for c in 0..=r {
            row[c] = dot(&m[r * n + r..(r + 1) * n], &m[c * n + r..(c + 1) * n]);
        }
    });
    for r in 0..n {
        for c in r + 1..n {
            inv[r * n + c] = inv[c * n + r];
        }
    }
    let lh = cholesky(&inv, n)?;
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = lh[j * n + i];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        let mut g = vec![0.0f64; n * n];
        for (i, v) in g.iter_mut().enumerate() {
            *v = ((i * 7919 % 97) as f64 - 48.0) / 48.0;
        }
        let mut a = vec![0.0f64; n * n];
        for r in 0..n {
            for c in 0..n {
                a[r * n + c] = (0..n).map(|k| g[r * n + k] * g[c * n + k]).sum::<f64>()
                    + if r == c { 0.5 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn factors_reconstruct() {
        let n = 13;
        let a = spd(n);
        let l = cholesky(&a, n).unwrap();
        for r in 0..n {
            for c in 0..n {
                let v: f64 = (0..n).map(|k| l[r * n + k] * l[c * n + k]).sum();
                assert!((v - a[r * n + c]).abs() < 1e-9);
            }
        }
        let u = inverse_upper_factor(&l, n).unwrap();
        // (U^T U) a = I
        let mut inv = vec![0.0; n * n];
        for r in 0..n {
            for c in 0..n {
                inv[r * n + c] = (0..n).map(|k| u[k * n + r] * u[k * n + c]).sum();
            }
        }
        for r in 0..n {
            for c in 0..n {
                let v: f64 = (0..n).map(|k| inv[r * n + k] * a[k * n + c]).sum();
                assert!(
                    (v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-8,
                    "{r} {c} {v}"
                );
            }
            for c in 0..r {
                assert_eq!(u[r * n + c], 0.0);
            }
        }
    }

    #[test]
    fn not_positive_definite_is_an_error() {
        let a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&a, 2), Err(1));
    }
}
