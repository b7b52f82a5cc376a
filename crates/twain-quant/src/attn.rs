//! Attention over an int8 KV cache: scores of one query against many cached
//! key rows, and the probability-weighted sum of many value rows, in one call
//! each (strided rows, one f32 scale per row), so the per-row cost is the
//! arithmetic and not a call.

/// `out[t] = scales[t * scale_stride] * dot(rows[t * stride ..][..x.len()], x)`
/// for `t` in `0..out.len()`.
///
/// Panics (debug and release) if the slices are too short for the rows asked for.
pub fn dot_rows(
    rows: &[i8],
    stride: usize,
    scales: &[f32],
    scale_stride: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let n = out.len();
    let d = x.len();
    if n == 0 {
        return;
    }
    assert!(
        rows.len() >= (n - 1) * stride + d,
        "dot_rows: rows too short"
    );
    assert!(
        scales.len() > (n - 1) * scale_stride,
        "dot_rows: scales too short"
    );
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && avx512() {
        // SAFETY: AVX-512F/BW checked at run time; bounds asserted above.
        unsafe { x86::dot_rows(rows, stride, scales, scale_stride, x, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && avx2() {
        // SAFETY: AVX2/FMA checked at run time; bounds asserted above.
        unsafe { x86::dot_rows_avx2(rows, stride, scales, scale_stride, x, out) };
        return;
    }
    scalar_dot_rows(rows, stride, scales, scale_stride, x, out);
}

/// `y += sum_t w[t] * scales[t * scale_stride] * rows[t * stride ..][..y.len()]`
/// for `t` in `0..w.len()`.
///
/// Panics (debug and release) if the slices are too short for the rows asked for.
pub fn axpy_rows(
    w: &[f32],
    rows: &[i8],
    stride: usize,
    scales: &[f32],
    scale_stride: usize,
    y: &mut [f32],
) {
    let n = w.len();
    let d = y.len();
    if n == 0 {
        return;
    }
    assert!(
        rows.len() >= (n - 1) * stride + d,
        "axpy_rows: rows too short"
    );
    assert!(
        scales.len() > (n - 1) * scale_stride,
        "axpy_rows: scales too short"
    );
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && avx512() {
        // SAFETY: AVX-512F/BW checked at run time; bounds asserted above.
        unsafe { x86::axpy_rows(w, rows, stride, scales, scale_stride, y) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && avx2() {
        // SAFETY: AVX2/FMA checked at run time; bounds asserted above.
        unsafe { x86::axpy_rows_avx2(w, rows, stride, scales, scale_stride, y) };
        return;
    }
    scalar_axpy_rows(w, rows, stride, scales, scale_stride, y);
}

/// `x[i] = exp(x[i] - max)` for every `i`, returning the sum of the results:
/// the exponentials of a softmax. Vectorised where the CPU allows (relative
/// error below 4e-7 against `f32::exp` down to -87.3; arguments below that
/// are taken as -87.3, whose exponential, 1.2e-38, is already negligible in a sum).
pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2/FMA checked at run time.
        return unsafe { x86::exp_sub_sum_avx2(x, max) };
    }
    scalar_exp_sub_sum(x, max)
}

/// `g[i] = silu(g[i]) * u[i]` (the SwiGLU gate, `silu(x) = x / (1 + e^-x)`),
/// vectorised where the CPU allows with the same exponential as
/// [`exp_sub_sum`], taken of `-|x|` only so it never overflows.
///
/// Panics if the slices differ in length.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "swiglu: gate and up differ in length");
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2/FMA checked at run time; lengths equal.
        return unsafe { x86::swiglu_avx2(g, u) };
    }
    scalar_swiglu(g, u)
}

/// Scalar reference of [`swiglu`].
pub fn scalar_swiglu(g: &mut [f32], u: &[f32]) {
    for (a, b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// Causal attention of up to 16 query rows of one head over f32 keys and
/// values: query `i` (`q[i * q_stride ..][..d]`, already scaled) attends
/// positions `0 .. limits[i]` of `k` and `v` (`d` values per position,
/// row-major), and its softmax-weighted sum of values goes to
/// `out[i * out_stride ..][..d]`. A query with limit 0 gets zeros. `scratch`
/// is reused between calls.
///
/// With AVX-512 the 16 queries are the 16 lanes of every vector: scores,
/// softmax and the weighted sum run over positions with the keys and values
/// broadcast from memory, 4 positions at a time for the scores. AVX2 does the
/// same in two passes of 8 queries.
///
/// Panics if more than 16 queries are given or a slice is too short.
#[allow(clippy::too_many_arguments)]
pub fn attend_causal16(
    q: &[f32],
    q_stride: usize,
    k: &[f32],
    v: &[f32],
    d: usize,
    limits: &[usize],
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) {
    if !check_attend(
        q.len(),
        q_stride,
        k.len().min(v.len()),
        d,
        limits,
        out.len(),
        out_stride,
    ) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && avx512() {
        // SAFETY: AVX-512F checked at run time; bounds asserted above.
        unsafe { x86::attend16(q, q_stride, k, v, d, limits, out, out_stride, scratch) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2() && attend_causal16_avx2(q, q_stride, k, v, d, limits, out, out_stride, scratch) {
        return;
    }
    let _ = &scratch;
    scalar_attend_causal16(q, q_stride, k, v, d, limits, out, out_stride);
}

/// [`attend_causal16`] through its AVX2 path even where AVX-512 is there (for
/// tests and benchmarks). Returns false, doing nothing, when this CPU has no
/// AVX2/FMA or `d` is not a multiple of 8.
///
/// Panics like [`attend_causal16`].
#[allow(clippy::too_many_arguments)]
pub fn attend_causal16_avx2(
    q: &[f32],
    q_stride: usize,
    k: &[f32],
    v: &[f32],
    d: usize,
    limits: &[usize],
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Vec<f32>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(8) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        check_attend(
            q.len(),
            q_stride,
            k.len().min(v.len()),
            d,
            limits,
            out.len(),
            out_stride,
        );
        // Two blocks of 8 queries, one per 8-lane pass.
        for (h, lim) in limits.chunks(8).enumerate() {
            let (qo, oo) = (8 * h * q_stride, 8 * h * out_stride);
            // SAFETY: AVX2/FMA checked at run time; the asserted bounds cover
            // queries 8h .. 8h + lim.len().
            unsafe {
                x86::attend8_avx2(
                    &q[qo..],
                    q_stride,
                    k,
                    v,
                    d,
                    lim,
                    &mut out[oo..],
                    out_stride,
                    scratch,
                )
            };
        }
        return true;
    }
    let _ = (q, q_stride, k, v, d, limits, out, out_stride, scratch);
    false
}

/// Whether [`attend_causal16`] has a SIMD path for head size `d` on this CPU
/// (otherwise it runs the scalar reference, and per-row attention with
/// [`dot_rows`]/[`axpy_rows`] is faster).
pub fn attend_causal16_is_simd(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if (d.is_multiple_of(16) && avx512()) || (d.is_multiple_of(8) && avx2()) {
        return true;
    }
    let _ = d;
    false
}

/// The slice-length contract of [`attend_causal16`] (lengths of the queries,
/// of the shorter of keys and values, and of the outputs): panics on a
/// breach; false when there is no query.
fn check_attend(
    q_len: usize,
    q_stride: usize,
    kv_len: usize,
    d: usize,
    limits: &[usize],
    out_len: usize,
    out_stride: usize,
) -> bool {
    let m = limits.len();
    assert!(m <= 16, "attend_causal16: {m} queries (at most 16)");
    if m == 0 {
        return false;
    }
    let t_max = limits.iter().copied().max().unwrap_or(0);
    assert!(
        q_len >= (m - 1) * q_stride + d && out_len >= (m - 1) * out_stride + d,
        "attend_causal16: queries or outputs too short"
    );
    assert!(
        kv_len >= t_max * d,
        "attend_causal16: keys or values too short"
    );
    true
}

/// Scalar reference of [`attend_causal16`].
#[allow(clippy::too_many_arguments)]
pub fn scalar_attend_causal16(
    q: &[f32],
    q_stride: usize,
    k: &[f32],
    v: &[f32],
    d: usize,
    limits: &[usize],
    out: &mut [f32],
    out_stride: usize,
) {
    for (i, &lim) in limits.iter().enumerate() {
        let qi = &q[i * q_stride..i * q_stride + d];
        let mut s: Vec<f32> = (0..lim)
            .map(|t| {
                k[t * d..(t + 1) * d]
                    .iter()
                    .zip(qi)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = scalar_exp_sub_sum(&mut s, max);
        let o = &mut out[i * out_stride..i * out_stride + d];
        o.fill(0.0);
        for (t, p) in s.iter().enumerate() {
            for (a, b) in o.iter_mut().zip(&v[t * d..(t + 1) * d]) {
                *a += p / sum * b;
            }
        }
    }
}

/// Scalar reference of [`exp_sub_sum`].
pub fn scalar_exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

/// Scalar reference of [`dot_rows`].
pub fn scalar_dot_rows(
    rows: &[i8],
    stride: usize,
    scales: &[f32],
    scale_stride: usize,
    x: &[f32],
    out: &mut [f32],
) {
    for (t, o) in out.iter_mut().enumerate() {
        let r = &rows[t * stride..t * stride + x.len()];
        let s: f32 = r.iter().zip(x).map(|(&a, &b)| a as f32 * b).sum();
        *o = scales[t * scale_stride] * s;
    }
}

/// Scalar reference of [`axpy_rows`].
pub fn scalar_axpy_rows(
    w: &[f32],
    rows: &[i8],
    stride: usize,
    scales: &[f32],
    scale_stride: usize,
    y: &mut [f32],
) {
    for (t, &wt) in w.iter().enumerate() {
        let a = wt * scales[t * scale_stride];
        let r = &rows[t * stride..t * stride + y.len()];
        for (o, &v) in y.iter_mut().zip(r) {
            *o += a * v as f32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var("TWAIN_QUANT_BACKEND").map_or(true, |b| b == "avx512vnni")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
    })
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var("TWAIN_QUANT_BACKEND").map_or(true, |b| b != "scalar")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn dot_rows(
        rows: &[i8],
        stride: usize,
        scales: &[f32],
        scale_stride: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let d = x.len();
        // SAFETY: (whole body) the caller asserted rows.len() >= (n-1)*stride + d
        // and scales.len() > (n-1)*scale_stride; every load below reads
        // rows[t*stride + c .. + 16] with c + 16 <= d and x[c .. c + 16].
        unsafe {
            for (t, o) in out.iter_mut().enumerate() {
                let r = rows.as_ptr().add(t * stride);
                let mut acc = _mm512_setzero_ps();
                let mut c = 0;
                while c < d {
                    let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        r.add(c) as *const __m128i
                    )));
                    acc = _mm512_fmadd_ps(q, _mm512_loadu_ps(x.as_ptr().add(c)), acc);
                    c += 16;
                }
                *o = *scales.get_unchecked(t * scale_stride) * _mm512_reduce_add_ps(acc);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn axpy_rows(
        w: &[f32],
        rows: &[i8],
        stride: usize,
        scales: &[f32],
        scale_stride: usize,
        y: &mut [f32],
    ) {
        let d = y.len();
        // SAFETY: (whole body) bounds as asserted by the caller; y chunks of
        // 64 (or the 16-multiple tail) stay inside y, row loads inside rows.
        unsafe {
            let mut c = 0;
            while c < d {
                let width = (d - c).min(64);
                let lanes = width / 16;
                let yp = y.as_mut_ptr().add(c);
                let mut acc = [_mm512_setzero_ps(); 4];
                for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                    *a = _mm512_loadu_ps(yp.add(16 * l));
                }
                for (t, &wt) in w.iter().enumerate() {
                    let a = _mm512_set1_ps(wt * *scales.get_unchecked(t * scale_stride));
                    let r = rows.as_ptr().add(t * stride + c);
                    for (l, s) in acc.iter_mut().enumerate().take(lanes) {
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            r.add(16 * l) as *const __m128i,
                        )));
                        *s = _mm512_fmadd_ps(a, q, *s);
                    }
                }
                for (l, a) in acc.iter().enumerate().take(lanes) {
                    _mm512_storeu_ps(yp.add(16 * l), *a);
                }
                c += width;
            }
        }
    }

    /// Sum of the 8 lanes.
    #[inline(always)]
    unsafe fn hsum8(v: __m256) -> f32 {
        // SAFETY: an inline helper of kernels that run only where
        // detection found the CPU features these intrinsics need.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// 8 int8 at `p` as f32.
    #[inline(always)]
    unsafe fn i8x8(p: *const i8) -> __m256 {
        // SAFETY: the caller keeps p .. p + 8 inside the rows.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_avx2(
        rows: &[i8],
        stride: usize,
        scales: &[f32],
        scale_stride: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let d = x.len();
        // SAFETY: (whole body) bounds as asserted by the caller; every load
        // reads rows[t*stride + c .. + 8] with c + 8 <= d and x[c .. c + 8].
        unsafe {
            let n = out.len();
            let xp = x.as_ptr();
            let mut t = 0;
            // Two rows at a time: each x vector is loaded once for both.
            while t + 2 <= n {
                let r0 = rows.as_ptr().add(t * stride);
                let r1 = r0.add(stride);
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut c = 0;
                while c < d {
                    let xv = _mm256_loadu_ps(xp.add(c));
                    a0 = _mm256_fmadd_ps(i8x8(r0.add(c)), xv, a0);
                    a1 = _mm256_fmadd_ps(i8x8(r1.add(c)), xv, a1);
                    c += 8;
                }
                out[t] = *scales.get_unchecked(t * scale_stride) * hsum8(a0);
                out[t + 1] = *scales.get_unchecked((t + 1) * scale_stride) * hsum8(a1);
                t += 2;
            }
            if t < n {
                let r0 = rows.as_ptr().add(t * stride);
                let mut a0 = _mm256_setzero_ps();
                let mut c = 0;
                while c < d {
                    a0 = _mm256_fmadd_ps(i8x8(r0.add(c)), _mm256_loadu_ps(xp.add(c)), a0);
                    c += 8;
                }
                out[t] = *scales.get_unchecked(t * scale_stride) * hsum8(a0);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_rows_avx2(
        w: &[f32],
        rows: &[i8],
        stride: usize,
        scales: &[f32],
        scale_stride: usize,
        y: &mut [f32],
    ) {
        let d = y.len();
        // SAFETY: (whole body) bounds as asserted by the caller; y chunks of
        // 64 (or the 8-multiple tail) stay inside y, row loads inside rows.
        unsafe {
            let mut c = 0;
            while c < d {
                let width = (d - c).min(64);
                let lanes = width / 8;
                let yp = y.as_mut_ptr().add(c);
                let mut acc = [_mm256_setzero_ps(); 8];
                for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                    *a = _mm256_loadu_ps(yp.add(8 * l));
                }
                for (t, &wt) in w.iter().enumerate() {
                    let a = _mm256_set1_ps(wt * *scales.get_unchecked(t * scale_stride));
                    let r = rows.as_ptr().add(t * stride + c);
                    for (l, s) in acc.iter_mut().enumerate().take(lanes) {
                        *s = _mm256_fmadd_ps(a, i8x8(r.add(8 * l)), *s);
                    }
                }
                for (l, a) in acc.iter().enumerate().take(lanes) {
                    _mm256_storeu_ps(yp.add(8 * l), *a);
                }
                c += width;
            }
        }
    }

    /// `exp(x)` for `x <= 0` on 8 lanes: `2^n * p(r)` with `n = round(x / ln 2)`,
    /// `r = x - n ln 2` (ln 2 split in two for accuracy) and a degree-6
    /// polynomial for `exp(r)` on |r| <= ln 2 / 2; arguments are clamped at -87.3.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: register arithmetic only.
        unsafe {
            let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm256_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            _mm256_mul_ps(p, _mm256_castsi256_ps(e))
        }
    }

    /// Scratch for `L` queries in lanes: the queries transposed (`d x L`,
    /// zeros past the last), room for the outputs transposed (`d x L`) and
    /// for the scores (`t_max x L`), and the limits as lanes (0 past the last).
    #[allow(clippy::type_complexity)]
    fn lanes_in<'s, const L: usize>(
        q: &[f32],
        q_stride: usize,
        d: usize,
        limits: &[usize],
        scratch: &'s mut Vec<f32>,
    ) -> (&'s mut [f32], &'s mut [f32], &'s mut [f32], [i32; L]) {
        let t_max = limits.iter().copied().max().unwrap_or(0);
        scratch.clear();
        scratch.resize(2 * d * L + t_max * L, 0.0);
        let (qt, rest) = scratch.split_at_mut(d * L);
        let (ot, s) = rest.split_at_mut(d * L);
        for i in 0..limits.len() {
            for (e, &x) in q[i * q_stride..i * q_stride + d].iter().enumerate() {
                qt[e * L + i] = x;
            }
        }
        let mut lim = [0i32; L];
        for (l, &x) in lim.iter_mut().zip(limits) {
            *l = x as i32;
        }
        (qt, ot, s, lim)
    }

    /// The first `m` lanes of the transposed outputs `ot` (`d x L`) back into
    /// rows of `out`.
    fn lanes_out<const L: usize>(
        ot: &[f32],
        d: usize,
        m: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        for i in 0..m {
            for (e, o) in out[i * out_stride..i * out_stride + d]
                .iter_mut()
                .enumerate()
            {
                *o = ot[e * L + i];
            }
        }
    }

    /// [`exp8`] on 16 lanes.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        // SAFETY: register arithmetic only.
        unsafe {
            let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm512_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(n),
                _mm512_set1_epi32(127),
            ));
            _mm512_mul_ps(p, _mm512_castsi512_ps(e))
        }
    }

    /// Scores of `W` consecutive key rows at `kp` (`d` apart) against the 16
    /// transposed queries at `qp` (`d x 16`).
    #[inline(always)]
    unsafe fn scores<const W: usize>(kp: *const f32, qp: *const f32, d: usize) -> [__m512; W] {
        // SAFETY: the caller keeps W rows of d keys at kp and d x 16 values at qp.
        unsafe {
            let mut a = [[_mm512_setzero_ps(); 2]; W];
            let mut e = 0;
            while e < d {
                let q0 = _mm512_loadu_ps(qp.add(e * 16));
                let q1 = _mm512_loadu_ps(qp.add((e + 1) * 16));
                for (p, a) in a.iter_mut().enumerate() {
                    let kr = kp.add(p * d + e);
                    a[0] = _mm512_fmadd_ps(_mm512_set1_ps(*kr), q0, a[0]);
                    a[1] = _mm512_fmadd_ps(_mm512_set1_ps(*kr.add(1)), q1, a[1]);
                }
                e += 2;
            }
            a.map(|a| _mm512_add_ps(a[0], a[1]))
        }
    }

    /// See [`super::attend_causal16`]; the caller checked the bounds, `d % 16 == 0`
    /// and at most 16 limits.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend16(
        q: &[f32],
        q_stride: usize,
        k: &[f32],
        v: &[f32],
        d: usize,
        limits: &[usize],
        out: &mut [f32],
        out_stride: usize,
        scratch: &mut Vec<f32>,
    ) {
        let t_max = limits.iter().copied().max().unwrap_or(0);
        let (qt, ot, s, lim) = lanes_in::<16>(q, q_stride, d, limits, scratch);
        // SAFETY: (whole body) k and v hold t_max * d values (asserted by the
        // caller), qt and ot d * 16, s t_max * 16; every access below stays inside.
        unsafe {
            let lim = _mm512_loadu_si512(lim.as_ptr() as *const _);
            let valid = |t: usize| _mm512_cmpgt_epi32_mask(lim, _mm512_set1_epi32(t as i32));
            let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
            let (kp, qp, sp) = (k.as_ptr(), qt.as_ptr(), s.as_mut_ptr());
            let mut mx = ninf;
            // Scores, 4 positions at a time (8 independent sums: 4 positions x
            // even/odd dimensions), each query vector loaded once for the 4.
            let mut put = |t: usize, sc: __m512| {
                let sc = _mm512_mask_blend_ps(valid(t), ninf, sc);
                mx = _mm512_max_ps(mx, sc);
                _mm512_storeu_ps(sp.add(t * 16), sc);
            };
            let mut t = 0;
            while t + 4 <= t_max {
                for (p, sc) in scores::<4>(kp.add(t * d), qp, d).into_iter().enumerate() {
                    put(t + p, sc);
                }
                t += 4;
            }
            while t < t_max {
                put(t, scores::<1>(kp.add(t * d), qp, d)[0]);
                t += 1;
            }
            // Softmax numerators; masked positions are exactly zero.
            let mut sum = _mm512_setzero_ps();
            for t in 0..t_max {
                let x = _mm512_loadu_ps(sp.add(t * 16));
                let e = _mm512_maskz_mov_ps(valid(t), exp16(_mm512_sub_ps(x, mx)));
                sum = _mm512_add_ps(sum, e);
                _mm512_storeu_ps(sp.add(t * 16), e);
            }
            let has = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(sum, _mm512_setzero_ps());
            let inv = _mm512_maskz_div_ps(has, _mm512_set1_ps(1.0), sum);
            // Weighted values, 16 dimensions at a time.
            let (vp, op) = (v.as_ptr(), ot.as_mut_ptr());
            let mut e0 = 0;
            while e0 < d {
                let mut acc = [_mm512_setzero_ps(); 16];
                for t in 0..t_max {
                    let p = _mm512_loadu_ps(sp.add(t * 16));
                    let vr = vp.add(t * d + e0);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*vr.add(j)), p, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(op.add((e0 + j) * 16), _mm512_mul_ps(*a, inv));
                }
                e0 += 16;
            }
        }
        lanes_out::<16>(ot, d, limits.len(), out, out_stride);
    }

    /// [`scores`] on 8 lanes.
    #[inline(always)]
    unsafe fn scores8<const W: usize>(kp: *const f32, qp: *const f32, d: usize) -> [__m256; W] {
        // SAFETY: the caller keeps W rows of d keys at kp and d x 8 values at qp.
        unsafe {
            let mut a = [[_mm256_setzero_ps(); 2]; W];
            let mut e = 0;
            while e < d {
                let q0 = _mm256_loadu_ps(qp.add(e * 8));
                let q1 = _mm256_loadu_ps(qp.add((e + 1) * 8));
                for (p, a) in a.iter_mut().enumerate() {
                    let kr = kp.add(p * d + e);
                    a[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*kr), q0, a[0]);
                    a[1] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*kr.add(1)), q1, a[1]);
                }
                e += 2;
            }
            a.map(|a| _mm256_add_ps(a[0], a[1]))
        }
    }

    /// [`attend16`] for at most 8 queries on 8 lanes (`d % 8 == 0`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend8_avx2(
        q: &[f32],
        q_stride: usize,
        k: &[f32],
        v: &[f32],
        d: usize,
        limits: &[usize],
        out: &mut [f32],
        out_stride: usize,
        scratch: &mut Vec<f32>,
    ) {
        let t_max = limits.iter().copied().max().unwrap_or(0);
        let (qt, ot, s, lim) = lanes_in::<8>(q, q_stride, d, limits, scratch);
        // SAFETY: (whole body) k and v hold t_max * d values (asserted by the
        // caller), qt and ot d * 8, s t_max * 8; every access below stays inside.
        unsafe {
            let lim = _mm256_loadu_si256(lim.as_ptr() as *const __m256i);
            let valid = |t: usize| {
                _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_set1_epi32(t as i32)))
            };
            let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
            let (kp, qp, sp) = (k.as_ptr(), qt.as_ptr(), s.as_mut_ptr());
            let mut mx = ninf;
            let mut put = |t: usize, sc: __m256| {
                let sc = _mm256_blendv_ps(ninf, sc, valid(t));
                mx = _mm256_max_ps(mx, sc);
                _mm256_storeu_ps(sp.add(t * 8), sc);
            };
            let mut t = 0;
            while t + 4 <= t_max {
                for (p, sc) in scores8::<4>(kp.add(t * d), qp, d).into_iter().enumerate() {
                    put(t + p, sc);
                }
                t += 4;
            }
            while t < t_max {
                put(t, scores8::<1>(kp.add(t * d), qp, d)[0]);
                t += 1;
            }
            let mut sum = _mm256_setzero_ps();
            for t in 0..t_max {
                let x = _mm256_loadu_ps(sp.add(t * 8));
                let e = _mm256_and_ps(valid(t), exp8(_mm256_sub_ps(x, mx)));
                sum = _mm256_add_ps(sum, e);
                _mm256_storeu_ps(sp.add(t * 8), e);
            }
            let has = _mm256_cmp_ps::<_CMP_GT_OQ>(sum, _mm256_setzero_ps());
            let inv = _mm256_and_ps(has, _mm256_div_ps(_mm256_set1_ps(1.0), sum));
            let (vp, op) = (v.as_ptr(), ot.as_mut_ptr());
            let mut e0 = 0;
            while e0 < d {
                let mut acc = [_mm256_setzero_ps(); 8];
                for t in 0..t_max {
                    let p = _mm256_loadu_ps(sp.add(t * 8));
                    let vr = vp.add(t * d + e0);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*vr.add(j)), p, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(op.add((e0 + j) * 8), _mm256_mul_ps(*a, inv));
                }
                e0 += 8;
            }
        }
        lanes_out::<8>(ot, d, limits.len(), out, out_stride);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu_avx2(g: &mut [f32], u: &[f32]) {
        let n = g.len();
        // SAFETY: vector accesses only while i + 8 <= n (u has n values too);
        // the tail is scalar.
        unsafe {
            let one = _mm256_set1_ps(1.0);
            let sign = _mm256_set1_ps(-0.0);
            let mut i = 0;
            while i + 8 <= n {
                let p = g.as_mut_ptr().add(i);
                let x = _mm256_loadu_ps(p);
                // e = exp(-|x|); sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below.
                let e = exp8(_mm256_or_ps(x, sign));
                let r = _mm256_div_ps(one, _mm256_add_ps(one, e));
                let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
                let sg = _mm256_blendv_ps(r, _mm256_mul_ps(e, r), neg);
                let y = _mm256_mul_ps(_mm256_mul_ps(x, sg), _mm256_loadu_ps(u.as_ptr().add(i)));
                _mm256_storeu_ps(p, y);
                i += 8;
            }
            super::scalar_swiglu(&mut g[i..], &u[i..]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_sum_avx2(x: &mut [f32], max: f32) -> f32 {
        let n = x.len();
        // SAFETY: vector accesses only while i + 8 <= n; the tail is scalar.
        unsafe {
            let m = _mm256_set1_ps(max);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                let p = x.as_mut_ptr().add(i);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
            let mut sum = hsum8(acc);
            for v in &mut x[i..] {
                *v = (*v - max).exp();
                sum += *v;
            }
            sum
        }
    }
}
