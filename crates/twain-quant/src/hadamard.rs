//! Fast orthonormal Hadamard transforms of f32 vectors (QuaRot-style
//! incoherence processing).
//!
//! # The matrix
//!
//! For `n = 12^j * 2^k` with `j` in {0, 1, 2} and `k >= 0` ([`supported`]),
//!
//! ```text
//! H_n = (H_12 ⊗ ... ⊗ H_12) ⊗ H_m / sqrt(n),   j factors H_12, m = 2^k,
//! ```
//!
//! where `⊗` is the Kronecker product, `(A ⊗ B)[(a, b), (a', b')] = A[a][a'] *
//! B[b][b']`, `H_m` the Sylvester (natural-order Walsh-Hadamard) matrix,
//! `H_m[r][c] = (-1)^popcount(r & c)`, and `H_12` the fixed matrix [`H12`].
//! The factor `1 / sqrt(n)` makes `H_n` orthonormal: `H_n H_n^T = I`.
//!
//! Index convention (the first factor is the most significant digit): an
//! index `i < n` is written in mixed radix with the power-of-two digit last,
//!
//! * `j = 0`: `i = i_2`, `i_2 < m`;
//! * `j = 1`: `i = i_12 * m + i_2`, `i_12 < 12`;
//! * `j = 2`: `i = i_12a * (12 * m) + i_12b * m + i_2`,
//!
//! and `H_n[r][c] = H_12[r_12a][c_12a] * H_12[r_12b][c_12b] *
//! H_m[r_2][c_2] / sqrt(n)`. So the power-of-two part acts on each
//! contiguous block of `m` values and a `H_12` factor on 12 values `m` (or
//! `12 m`) apart. Examples: 1536 = 12 * 128 (`j = 1`, `m = 128`), 576 =
//! 12 * 12 * 4 (`j = 2`, `m = 4`), 2048 (`j = 0`); 6656 = 2^9 * 13 is not
//! supported.
//!
//! # `H_12`: Paley construction I with q = 11
//!
//! `chi` is the quadratic character mod 11: `chi(0) = 0`, `chi(a) = 1` for
//! the quadratic residues a in {1, 3, 4, 5, 9}, `-1` otherwise. The 11 x 11
//! Jacobsthal matrix is `Q[a][b] = chi(a - b mod 11)`; since 11 = 3 (mod 4),
//! `chi(-1) = -1` and `Q` is antisymmetric. With the border,
//!
//! ```text
//! S = [ 0   1^T ]          H_12 = I + S = [  1   1^T   ]
//!     [ -1   Q  ]                         [ -1   Q + I ]
//! ```
//!
//! `S` is skew-symmetric with `S S^T = 11 I`, hence `H_12 H_12^T = 12 I`.
//! `H_12` is *skew*-Hadamard (`H_12 + H_12^T = 2 I`), in particular **not
//! symmetric**, so neither is `H_n` for `j >= 1` (for `j = 0` it is).
//!
//! # Direction
//!
//! [`transform`] computes the row vector times the matrix, `x <- x H_n`
//! (`y[c] = sum_r x[r] H_n[r][c]`), and [`matrix`] returns exactly that
//! `H_n`, so `transform(x) == x · matrix(n)`. [`transform_transposed`]
//! computes `x <- x H_n^T`, the inverse (`H_n` is orthonormal); for
//! `j = 0` both are the same map. A `H_12` factor on values `v` computes, with
//! `S1 = v_1 + ... + v_11` and `R(c) = sum_{d in {1,3,4,5,9}}
//! v_{1 + (c - 1 + d) mod 11}`:
//!
//! * `x H_12`: `y_0 = v_0 - S1`, `y_c = y_0 + 2 (v_c + R(c))` (c >= 1);
//! * `x H_12^T`: `y_0 = v_0 + S1`, `y_c = (S1 - v_0) - 2 R(c)`,
//!
//! 77 and 67 additions instead of 132 for the dense product.
//!
//! # Folding into weights
//!
//! For a linear layer `y = x W^T` (this crate's [`crate::matvec`] convention,
//! `W` row-major `out x in`) and `H` orthonormal, `x W^T = (x H) (W H)^T`:
//! transform the activations online with [`transform`] and the weights
//! offline with [`transform_rows`]`(W, in)` (each row `w <- w H`).
//!
//! # Implementations
//!
//! [`transform_scalar`] is the portable reference. On x86-64 a SIMD path is
//! chosen once at run time ([`path`]): AVX-512F (16 lanes) or AVX2 + FMA (8
//! lanes). The power-of-two butterflies run inside registers for distances
//! below the vector width (a lane swap and one FMA with a +-1 vector per
//! stage) and between registers above it, up to three stages per pass over
//! memory (for `m = 128` and AVX-512 all seven stages in one pass). The 12-point
//! factors run the formulas above on 12 registers that hold the same lanes of
//! the 12 strided groups (`x[i * s + lane]`), vectorized across the `s = m`
//! (or `12 m`) lanes, with narrower registers and then scalars for the lanes
//! left over. The normalization is folded into the last stage. Lengths that
//! are not a multiple of the vector width (n < 16, 24, ...) fall back to a
//! narrower path. `TWAIN_QUANT_BACKEND=scalar` (see [`crate::kernels::best`])
//! forces the scalar path here too, and forcing `avx2` on a CPU with AVX-512
//! VNNI keeps this module on AVX2.
//!
//! ```
//! use twain_quant::hadamard;
//!
//! let n = 1536;
//! let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
//! let mut y = x.clone();
//! hadamard::transform(&mut y)?;
//! // Orthonormal: the norm is kept, and the transpose undoes it.
//! let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
//! assert!((norm(&x) - norm(&y)).abs() < 1e-4 * norm(&x));
//! hadamard::transform_transposed(&mut y)?;
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
//! assert!(hadamard::transform(&mut vec![0.0; 13]).is_err());
//! # Ok::<(), twain_quant::QuantError>(())
//! ```

use crate::QuantError;
use std::sync::OnceLock;

/// The quadratic residues mod 11.
const QR11: [usize; 5] = [1, 3, 4, 5, 9];

/// The quadratic character mod 11 of `a mod 11`.
const fn chi11(a: usize) -> i8 {
    let a = a % 11;
    if a == 0 {
        return 0;
    }
    let mut i = 0;
    while i < QR11.len() {
        if QR11[i] == a {
            return 1;
        }
        i += 1;
    }
    -1
}

const fn build_h12() -> [[i8; 12]; 12] {
    let mut h = [[0i8; 12]; 12];
    let mut r = 0;
    while r < 12 {
        let mut c = 0;
        while c < 12 {
            h[r][c] = if r == c || r == 0 {
                1
            } else if c == 0 {
                -1
            } else {
                // Q[r - 1][c - 1] = chi((r - 1) - (c - 1)) = chi(r - c).
                chi11(r + 11 - c)
            };
            c += 1;
        }
        r += 1;
    }
    h
}

/// The 12 x 12 Hadamard matrix of the `H_12` factors (unnormalized, +-1):
/// Paley construction I with q = 11, `H12 = I + [[0, 1^T], [-1, Q]]` with
/// `Q[a][b] = chi(a - b)` (see the [module docs](self)). Row-major:
/// `H12[r][c]`; row 0 is all ones, column 0 below it all minus ones.
pub const H12: [[i8; 12]; 12] = build_h12();

/// A supported length: `n = 12^j * m`, `m = 2^k`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    n: usize,
    m: usize,
    j: u32,
}

impl Shape {
    fn of(n: usize) -> Option<Shape> {
        if n == 0 {
            return None;
        }
        let (mut r, mut j) = (n, 0u32);
        while r % 3 == 0 {
            r /= 3;
            j += 1;
        }
        let four_j = 1usize << (2 * j.min(2));
        if j > 2 || !r.is_power_of_two() || r % four_j != 0 {
            return None;
        }
        Some(Shape {
            n,
            m: r / four_j,
            j,
        })
    }

    /// `1 / sqrt(n)`, rounded once.
    fn scale(self) -> f32 {
        (1.0 / (self.n as f64).sqrt()) as f32
    }
}

fn shape(n: usize) -> Result<Shape, QuantError> {
    Shape::of(n).ok_or_else(|| {
        QuantError::Unsupported(format!(
            "hadamard: length {n} is not supported (need 12^j * 2^k with j <= 2, n >= 1)"
        ))
    })
}

/// Whether `n = 12^j * 2^k` with `j` in {0, 1, 2}, `k >= 0` (and so `n >= 1`).
pub fn supported(n: usize) -> bool {
    Shape::of(n).is_some()
}

/// The dense normalized `n x n` matrix `H_n`, row-major (`out[r * n + c] =
/// H_n[r][c]`), such that [`transform`]`(x)` is the row vector `x` times it;
/// entries computed in f64 and rounded to f32. None for unsupported `n`.
/// Takes `4 n^2` bytes: meant for offline folding and tests.
pub fn matrix(n: usize) -> Option<Vec<f32>> {
    let sh = Shape::of(n)?;
    let sc = 1.0 / (n as f64).sqrt();
    let mut out = vec![0.0f32; n * n];
    for (r, row) in out.chunks_exact_mut(n).enumerate() {
        for (c, o) in row.iter_mut().enumerate() {
            let (r2, c2) = (r % sh.m, c % sh.m);
            let mut sign = if (r2 & c2).count_ones() % 2 == 0 {
                1.0f64
            } else {
                -1.0
            };
            let (mut rr, mut cc) = (r / sh.m, c / sh.m);
            for _ in 0..sh.j {
                sign *= f64::from(H12[rr % 12][cc % 12]);
                rr /= 12;
                cc /= 12;
            }
            *o = (sign * sc) as f32;
        }
    }
    Some(out)
}

/// An implementation of the transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Portable scalar reference ([`transform_scalar`]).
    Scalar,
    /// x86-64 AVX2 + FMA, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F (with AVX2 + FMA for the narrower tails), 16 lanes.
    Avx512,
}

impl Path {
    /// Every path, slowest first.
    pub const ALL: [Path; 3] = [Path::Scalar, Path::Avx2, Path::Avx512];

    /// Short name ("scalar", "avx2", "avx512").
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => Path::Avx2.is_supported() && std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The path [`transform`] uses, chosen once and cached: the fastest supported
/// one, except that the kernel family forced by `TWAIN_QUANT_BACKEND` (read
/// by [`crate::kernels::best`]) caps it: `scalar` forces [`Path::Scalar`],
/// and a forced `avx2` on a CPU whose best family is higher keeps
/// [`Path::Avx2`].
pub fn path() -> Path {
    static PATH: OnceLock<Path> = OnceLock::new();
    *PATH.get_or_init(|| {
        use crate::kernels::{available, best, Backend};
        let family = best().backend;
        if family == Backend::Scalar {
            return Path::Scalar;
        }
        let forced_below = available().last() != Some(&family);
        let candidates: &[Path] = if forced_below && family == Backend::Avx2 {
            &[Path::Avx2]
        } else {
            &[Path::Avx512, Path::Avx2]
        };
        candidates
            .iter()
            .copied()
            .find(|p| p.is_supported())
            .unwrap_or(Path::Scalar)
    })
}

/// `x <- x H_n` for `n = x.len()` (row vector times [`matrix`]`(n)`), with the
/// fastest path ([`path`]). Err for an unsupported length.
pub fn transform(x: &mut [f32]) -> Result<(), QuantError> {
    transform_with(path(), x)
}

/// `x <- x H_n^T`, the inverse of [`transform`] (`H_n` is orthonormal; for
/// `n` a power of two `H_n` is symmetric and this is the same map). Err for
/// an unsupported length.
pub fn transform_transposed(x: &mut [f32]) -> Result<(), QuantError> {
    transform_transposed_with(path(), x)
}

/// [`transform`] with the portable scalar reference.
pub fn transform_scalar(x: &mut [f32]) -> Result<(), QuantError> {
    transform_with(Path::Scalar, x)
}

/// [`transform_transposed`] with the portable scalar reference.
pub fn transform_transposed_scalar(x: &mut [f32]) -> Result<(), QuantError> {
    transform_transposed_with(Path::Scalar, x)
}

/// [`transform`] with a given path; Err for an unsupported length or a path
/// this CPU cannot run.
pub fn transform_with(path: Path, x: &mut [f32]) -> Result<(), QuantError> {
    let sh = shape(x.len())?;
    check_path(path)?;
    run::<false>(path, x, sh);
    Ok(())
}

/// [`transform_transposed`] with a given path; Err for an unsupported length
/// or a path this CPU cannot run.
pub fn transform_transposed_with(path: Path, x: &mut [f32]) -> Result<(), QuantError> {
    let sh = shape(x.len())?;
    check_path(path)?;
    run::<true>(path, x, sh);
    Ok(())
}

/// [`transform`] on each consecutive row of length `n` of `x` (row-major
/// `rows x n`, e.g. folding `H` into a weight matrix's input side). Err when
/// `n` is unsupported or `x.len()` is not a multiple of `n`.
pub fn transform_rows(x: &mut [f32], n: usize) -> Result<(), QuantError> {
    rows::<false>(x, n)
}

/// [`transform_transposed`] on each consecutive row of length `n` of `x`.
/// Err when `n` is unsupported or `x.len()` is not a multiple of `n`.
pub fn transform_rows_transposed(x: &mut [f32], n: usize) -> Result<(), QuantError> {
    rows::<true>(x, n)
}

fn rows<const TR: bool>(x: &mut [f32], n: usize) -> Result<(), QuantError> {
    let sh = shape(n)?;
    if !x.len().is_multiple_of(n) {
        return Err(QuantError::Shape(format!(
            "hadamard: {} values are not whole rows of length {n}",
            x.len()
        )));
    }
    let p = path();
    for row in x.chunks_exact_mut(n) {
        run::<TR>(p, row, sh);
    }
    Ok(())
}

fn check_path(path: Path) -> Result<(), QuantError> {
    if path.is_supported() {
        Ok(())
    } else {
        Err(QuantError::Unsupported(format!(
            "hadamard: the {} path needs CPU features this machine lacks",
            path.name()
        )))
    }
}

/// `x <- x H_n` (`TR`: `x H_n^T`) on a supported `path`, `x.len() == sh.n`.
fn run<const TR: bool>(path: Path, x: &mut [f32], sh: Shape) {
    debug_assert_eq!(x.len(), sh.n);
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => {
            // SAFETY: callers only pass supported paths (`check_path` or
            // `path()`), so the CPU has AVX-512F, AVX2 and FMA.
            unsafe { x86::run_avx512::<TR>(x, sh) }
        }
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => {
            // SAFETY: as above, the CPU has AVX2 and FMA.
            unsafe { x86::run_avx2::<TR>(x, sh) }
        }
        _ => run_scalar::<TR>(x, sh),
    }
}

/// One `H_12` factor on 12 values (`TR`: `H_12^T`), times `sc`.
#[inline]
fn h12_f32<const TR: bool>(v: [f32; 12], sc: f32) -> [f32; 12] {
    let s1 = ((v[1] + v[2]) + (v[3] + v[4]))
        + ((v[5] + v[6]) + (v[7] + v[8]))
        + ((v[9] + v[10]) + v[11]);
    let r = |c: usize| {
        let g = |d: usize| v[1 + (c - 1 + d) % 11];
        (g(QR11[0]) + g(QR11[1])) + (g(QR11[2]) + g(QR11[3])) + g(QR11[4])
    };
    let mut y = [0.0f32; 12];
    if TR {
        y[0] = (v[0] + s1) * sc;
        let t = (s1 - v[0]) * sc;
        for (c, yc) in y.iter_mut().enumerate().skip(1) {
            *yc = r(c) * (-2.0 * sc) + t;
        }
    } else {
        let y0 = (v[0] - s1) * sc;
        y[0] = y0;
        for (c, yc) in y.iter_mut().enumerate().skip(1) {
            *yc = (v[c] + r(c)) * (2.0 * sc) + y0;
        }
    }
    y
}

/// The scalar reference: butterflies on each block of `m`, then the `H_12`
/// factors, innermost first, the last one scaled by `1 / sqrt(n)`.
fn run_scalar<const TR: bool>(x: &mut [f32], sh: Shape) {
    let sc = sh.scale();
    let mut d = 1;
    while d < sh.m {
        for blk in x.chunks_exact_mut(2 * d) {
            let (a, b) = blk.split_at_mut(d);
            for (u, w) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *w);
                *u = p + q;
                *w = p - q;
            }
        }
        d *= 2;
    }
    if sh.j == 0 {
        if sh.n > 1 {
            x.iter_mut().for_each(|v| *v *= sc);
        }
        return;
    }
    let mut s = sh.m;
    for stage in 0..sh.j {
        let f = if stage + 1 == sh.j { sc } else { 1.0 };
        for blk in x.chunks_exact_mut(12 * s) {
            for lane in 0..s {
                let v: [f32; 12] = std::array::from_fn(|r| blk[r * s + lane]);
                let y = h12_f32::<TR>(v, f);
                for (r, yr) in y.into_iter().enumerate() {
                    blk[r * s + lane] = yr;
                }
            }
        }
        s *= 12;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The SIMD passes, generic over the register type ([`Lanes`]) and
    //! instantiated inside the `#[target_feature]` entry points, where every
    //! `#[inline(always)]` helper is inlined.

    use super::{run_scalar, Shape, QR11};
    use std::arch::x86_64::*;

    /// f32 lanes of one register (or a single f32), as the passes see them.
    ///
    /// Safety contract of every method: the CPU has the type's features
    /// (AVX-512F for `__m512`, AVX2 + FMA for `__m256` and `__m128`), and for
    /// `load` / `store`, `p` is valid for `W` floats.
    trait Lanes: Copy {
        /// Lanes per register.
        const W: usize;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn splat(v: f32) -> Self;
        unsafe fn add(self, o: Self) -> Self;
        unsafe fn sub(self, o: Self) -> Self;
        unsafe fn mul(self, o: Self) -> Self;
        /// `self * b + c`.
        unsafe fn fma(self, b: Self, c: Self) -> Self;
    }

    /// Registers wide enough for in-register butterflies.
    trait Butterfly: Lanes {
        /// The Walsh-Hadamard butterflies of distances 1, 2, 4, .. below
        /// `min(m, W)` between the lanes of the register.
        unsafe fn lanes_wht(self, m: usize) -> Self;
    }

    macro_rules! impl_lanes {
        ($t:ty, $w:expr, $load:ident, $store:ident, $set1:ident,
         $add:ident, $sub:ident, $mul:ident, $fma:ident) => {
            impl Lanes for $t {
                const W: usize = $w;
                #[inline(always)]
                unsafe fn load(p: *const f32) -> Self {
                    // SAFETY: the caller guarantees the features and W floats at p.
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(self, p: *mut f32) {
                    // SAFETY: the caller guarantees the features and W floats at p.
                    unsafe { $store(p, self) }
                }
                #[inline(always)]
                unsafe fn splat(v: f32) -> Self {
                    // SAFETY: the caller guarantees the features.
                    unsafe { $set1(v) }
                }
                #[inline(always)]
                unsafe fn add(self, o: Self) -> Self {
                    // SAFETY: the caller guarantees the features.
                    unsafe { $add(self, o) }
                }
                #[inline(always)]
                unsafe fn sub(self, o: Self) -> Self {
                    // SAFETY: the caller guarantees the features.
                    unsafe { $sub(self, o) }
                }
                #[inline(always)]
                unsafe fn mul(self, o: Self) -> Self {
                    // SAFETY: the caller guarantees the features.
                    unsafe { $mul(self, o) }
                }
                #[inline(always)]
                unsafe fn fma(self, b: Self, c: Self) -> Self {
                    // SAFETY: the caller guarantees the features.
                    unsafe { $fma(self, b, c) }
                }
            }
        };
    }

    impl_lanes!(
        __m512,
        16,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        _mm512_fmadd_ps
    );
    impl_lanes!(
        __m256,
        8,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_fmadd_ps
    );
    impl_lanes!(
        __m128,
        4,
        _mm_loadu_ps,
        _mm_storeu_ps,
        _mm_set1_ps,
        _mm_add_ps,
        _mm_sub_ps,
        _mm_mul_ps,
        _mm_fmadd_ps
    );

    impl Lanes for f32 {
        const W: usize = 1;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller guarantees one float at p.
            unsafe { *p }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller guarantees one float at p.
            unsafe { *p = self }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            v
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            self + o
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            self - o
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            self * o
        }
        #[inline(always)]
        unsafe fn fma(self, b: Self, c: Self) -> Self {
            self * b + c
        }
    }

    /// `SIGNS[s][l]` = +1 if bit `s` of lane `l` is clear, else -1: lane
    /// `l` of a butterfly of distance `2^s` keeps `x[l] + x[l ^ d]` (low
    /// half) or `x[l ^ d] - x[l]` (high half), i.e. `fma(x, SIGNS[s], swap)`.
    static SIGNS: [[f32; 16]; 4] = signs();

    const fn signs() -> [[f32; 16]; 4] {
        let mut out = [[1.0f32; 16]; 4];
        let mut s = 0;
        while s < 4 {
            let mut l = 0;
            while l < 16 {
                if l & (1 << s) != 0 {
                    out[s][l] = -1.0;
                }
                l += 1;
            }
            s += 1;
        }
        out
    }

    impl Butterfly for __m512 {
        #[inline(always)]
        unsafe fn lanes_wht(self, m: usize) -> Self {
            // SAFETY: the caller guarantees AVX-512F; each SIGNS row holds
            // 16 floats.
            unsafe {
                let sign = |s: usize| _mm512_loadu_ps(SIGNS[s].as_ptr());
                let mut v = self;
                if m >= 2 {
                    v = _mm512_fmadd_ps(v, sign(0), _mm512_permute_ps::<0xB1>(v));
                }
                if m >= 4 {
                    v = _mm512_fmadd_ps(v, sign(1), _mm512_permute_ps::<0x4E>(v));
                }
                if m >= 8 {
                    // Swap the 128-bit lanes of each 256-bit half: [1, 0, 3, 2].
                    v = _mm512_fmadd_ps(v, sign(2), _mm512_shuffle_f32x4::<0xB1>(v, v));
                }
                if m >= 16 {
                    // Swap the 256-bit halves: [2, 3, 0, 1].
                    v = _mm512_fmadd_ps(v, sign(3), _mm512_shuffle_f32x4::<0x4E>(v, v));
                }
                v
            }
        }
    }

    impl Butterfly for __m256 {
        #[inline(always)]
        unsafe fn lanes_wht(self, m: usize) -> Self {
            // SAFETY: the caller guarantees AVX2 + FMA; each SIGNS row holds
            // at least 8 floats.
            unsafe {
                let sign = |s: usize| _mm256_loadu_ps(SIGNS[s].as_ptr());
                let mut v = self;
                if m >= 2 {
                    v = _mm256_fmadd_ps(v, sign(0), _mm256_permute_ps::<0xB1>(v));
                }
                if m >= 4 {
                    v = _mm256_fmadd_ps(v, sign(1), _mm256_permute_ps::<0x4E>(v));
                }
                if m >= 8 {
                    // Swap the 128-bit halves.
                    v = _mm256_fmadd_ps(v, sign(2), _mm256_permute2f128_ps::<0x01>(v, v));
                }
                v
            }
        }
    }

    /// Radix-2 butterflies between the `G` registers (distances 1, 2, 4 in
    /// the array index).
    #[inline(always)]
    unsafe fn bfly<V: Lanes, const G: usize>(v: &mut [V; G]) {
        // SAFETY: register arithmetic; features by the caller.
        unsafe {
            let mut h = 1;
            while h < G {
                for t in 0..G {
                    if t & h == 0 {
                        let (a, b) = (v[t], v[t + h]);
                        v[t] = a.add(b);
                        v[t + h] = a.sub(b);
                    }
                }
                h *= 2;
            }
        }
    }

    /// Every power-of-two stage up to distance `G * W / 2` on the `n` floats
    /// at `p` (blocks of `m >= G * W` values, `n` a multiple of `G * W`), the
    /// results times `sc` if given.
    #[inline(always)]
    unsafe fn wht_pass_a<V: Butterfly, const G: usize>(p: *mut f32, n: usize, sc: Option<f32>) {
        // SAFETY: every access is inside the n floats at p (n is a multiple
        // of G * W); features by the caller.
        unsafe {
            let mut i = 0;
            while i < n {
                let q = p.add(i);
                let mut v = [V::splat(0.0); G];
                for (t, vt) in v.iter_mut().enumerate() {
                    *vt = V::load(q.add(t * V::W)).lanes_wht(V::W);
                }
                bfly::<V, G>(&mut v);
                if let Some(sc) = sc {
                    let s = V::splat(sc);
                    for vt in v.iter_mut() {
                        *vt = vt.mul(s);
                    }
                }
                for (t, vt) in v.iter().enumerate() {
                    vt.store(q.add(t * V::W));
                }
                i += G * V::W;
            }
        }
    }

    /// The stages of distances `d, 2d, .. (R / 2) d` floats (`d` a multiple
    /// of `W`, `R d` dividing the block length and `n`) over the `n` floats at
    /// `p`, the results times `sc` if given.
    #[inline(always)]
    unsafe fn wht_pass_r<V: Lanes, const R: usize>(
        p: *mut f32,
        n: usize,
        d: usize,
        sc: Option<f32>,
    ) {
        // SAFETY: base + lo + (R - 1) d + W <= n for every access; features
        // by the caller.
        unsafe {
            let mut base = 0;
            while base < n {
                let mut lo = 0;
                while lo < d {
                    let q = p.add(base + lo);
                    let mut v = [V::splat(0.0); R];
                    for (t, vt) in v.iter_mut().enumerate() {
                        *vt = V::load(q.add(t * d));
                    }
                    bfly::<V, R>(&mut v);
                    if let Some(sc) = sc {
                        let s = V::splat(sc);
                        for vt in v.iter_mut() {
                            *vt = vt.mul(s);
                        }
                    }
                    for (t, vt) in v.iter().enumerate() {
                        vt.store(q.add(t * d));
                    }
                    lo += V::W;
                }
                base += R * d;
            }
        }
    }

    /// The Walsh-Hadamard transform of every block of `m` of the `n` floats
    /// at `p` (`n` a multiple of `W`), the results times `sc` if given.
    #[inline(always)]
    unsafe fn wht<V: Butterfly>(p: *mut f32, n: usize, m: usize, sc: Option<f32>) {
        // SAFETY: the passes' preconditions hold (see each call); features
        // by the caller.
        unsafe {
            if m < V::W {
                // (Only with j >= 1, so without a scale in practice.)
                if m == 1 && sc.is_none() {
                    return;
                }
                let mut i = 0;
                while i < n {
                    let mut v = V::load(p.add(i)).lanes_wht(m);
                    if let Some(sc) = sc {
                        v = v.mul(V::splat(sc));
                    }
                    v.store(p.add(i));
                    i += V::W;
                }
                return;
            }
            // m = vpb * W with vpb a power of two, and n a multiple of m.
            let vpb = m / V::W;
            let g = vpb.min(8);
            let sa = if g == vpb { sc } else { None };
            match g {
                1 => wht_pass_a::<V, 1>(p, n, sa),
                2 => wht_pass_a::<V, 2>(p, n, sa),
                4 => wht_pass_a::<V, 4>(p, n, sa),
                _ => wht_pass_a::<V, 8>(p, n, sa),
            }
            let mut d = g * V::W;
            while d < m {
                let r = (m / d).min(8);
                let sr = if d * r == m { sc } else { None };
                match r {
                    2 => wht_pass_r::<V, 2>(p, n, d, sr),
                    4 => wht_pass_r::<V, 4>(p, n, d, sr),
                    _ => wht_pass_r::<V, 8>(p, n, d, sr),
                }
                d *= r;
            }
        }
    }

    /// `R(c)`: the sum of `v[1 + (c - 1 + d) % 11]` over the quadratic
    /// residues `d`.
    #[inline(always)]
    unsafe fn qr_sum<V: Lanes>(v: &[V; 12], c: usize) -> V {
        let g = |d: usize| v[1 + (c - 1 + d) % 11];
        // SAFETY: register arithmetic; features by the caller.
        unsafe {
            g(QR11[0])
                .add(g(QR11[1]))
                .add(g(QR11[2]).add(g(QR11[3])))
                .add(g(QR11[4]))
        }
    }

    /// One `H_12` factor (`TR`: `H_12^T`) on the 12 registers, times `sc`
    /// (the same formulas as `h12_f32`).
    #[inline(always)]
    unsafe fn h12<V: Lanes, const TR: bool>(v: &[V; 12], sc: f32) -> [V; 12] {
        // SAFETY: register arithmetic; features by the caller.
        unsafe {
            let s1 = v[1]
                .add(v[2])
                .add(v[3].add(v[4]))
                .add(v[5].add(v[6]).add(v[7].add(v[8])))
                .add(v[9].add(v[10]).add(v[11]));
            let mut y = *v;
            if TR {
                y[0] = v[0].add(s1).mul(V::splat(sc));
                let t = s1.sub(v[0]).mul(V::splat(sc));
                let m2 = V::splat(-2.0 * sc);
                for (c, yc) in y.iter_mut().enumerate().skip(1) {
                    *yc = qr_sum(v, c).fma(m2, t);
                }
            } else {
                let y0 = v[0].sub(s1).mul(V::splat(sc));
                y[0] = y0;
                let two = V::splat(2.0 * sc);
                for (c, yc) in y.iter_mut().enumerate().skip(1) {
                    *yc = v[c].add(qr_sum(v, c)).fma(two, y0);
                }
            }
            y
        }
    }

    /// One `H_12` factor on the `W` lanes at `p`, `p + s`, .. `p + 11 s`.
    #[inline(always)]
    unsafe fn h12_group<V: Lanes, const TR: bool>(p: *mut f32, s: usize, sc: f32) {
        // SAFETY: the caller guarantees W floats at each p + r s, r < 12, and
        // the features.
        unsafe {
            let mut v = [V::splat(0.0); 12];
            for (r, vr) in v.iter_mut().enumerate() {
                *vr = V::load(p.add(r * s));
            }
            let y = h12::<V, TR>(&v, sc);
            for (r, yr) in y.iter().enumerate() {
                yr.store(p.add(r * s));
            }
        }
    }

    /// One `H_12` factor with stride `s` (digit of weight `s`) over the `n`
    /// floats at `p` (`n` a multiple of `12 s`): `V` registers across the
    /// lanes, then 8-, 4- and 1-wide ones for the rest.
    #[inline(always)]
    unsafe fn h12_stage<V: Lanes, const TR: bool>(p: *mut f32, n: usize, s: usize, sc: f32) {
        // SAFETY: lane + width <= s keeps every group inside its block of
        // 12 s floats; the callers enable the features of every width used
        // (the AVX-512 entry point enables AVX2 + FMA as well).
        unsafe {
            let mut base = 0;
            while base < n {
                let q = p.add(base);
                let mut lane = 0;
                while lane + V::W <= s {
                    h12_group::<V, TR>(q.add(lane), s, sc);
                    lane += V::W;
                }
                if V::W > 8 {
                    while lane + 8 <= s {
                        h12_group::<__m256, TR>(q.add(lane), s, sc);
                        lane += 8;
                    }
                }
                if V::W > 4 {
                    while lane + 4 <= s {
                        h12_group::<__m128, TR>(q.add(lane), s, sc);
                        lane += 4;
                    }
                }
                while lane < s {
                    h12_group::<f32, TR>(q.add(lane), s, sc);
                    lane += 1;
                }
                base += 12 * s;
            }
        }
    }

    /// The whole transform with `V` registers; `x.len() == sh.n`, a
    /// multiple of `W`.
    #[inline(always)]
    unsafe fn run<V: Butterfly, const TR: bool>(x: &mut [f32], sh: Shape) {
        let n = x.len();
        debug_assert!(n == sh.n && n.is_multiple_of(V::W));
        let p = x.as_mut_ptr();
        let sc = sh.scale();
        // SAFETY: n floats at p, n a multiple of W and of 12^j m; features
        // by the caller.
        unsafe {
            wht::<V>(p, n, sh.m, (sh.j == 0).then_some(sc));
            let mut s = sh.m;
            for stage in 0..sh.j {
                let f = if stage + 1 == sh.j { sc } else { 1.0 };
                h12_stage::<V, TR>(p, n, s, f);
                s *= 12;
            }
        }
    }

    /// AVX2 + FMA entry point (lengths not a multiple of 8 go scalar).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<const TR: bool>(x: &mut [f32], sh: Shape) {
        if !x.len().is_multiple_of(8) {
            return run_scalar::<TR>(x, sh);
        }
        // SAFETY: AVX2 + FMA are enabled here; the length is a multiple of 8.
        unsafe { run::<__m256, TR>(x, sh) }
    }

    /// AVX-512F entry point (lengths not a multiple of 16 go to AVX2).
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512<const TR: bool>(x: &mut [f32], sh: Shape) {
        // SAFETY: AVX-512F, AVX2 and FMA are enabled here (the caller's
        // contract); the length is a multiple of 16 for the 16-lane run.
        unsafe {
            if !x.len().is_multiple_of(16) {
                return run_avx2::<TR>(x, sh);
            }
            run::<__m512, TR>(x, sh)
        }
    }
}
