//! AVX-512 (F, BW, VL) + VNNI kernels.
//!
//! The quantized kernels share one scheme: two blocks (64 weights) are
//! unpacked into 64 unsigned bytes `u`, multiplied with the 64 int8
//! activations by `vpdpbusd` into 16 int32 lanes (8 per block), whose
//! accumulator starts at the block's offset term (`-3 sum` for Q2 with doubled
//! codes, `-8 sum` for Q4, `-128 sum` for Q8 with codes biased to unsigned) in
//! lane 0; the lanes are converted to f32 and multiplied by the per-block scale
//! (broadcast to the block's 8 lanes by `vpermps`) into one f32 accumulator.
//!
//! Two kernels depart from it. One vector (decode) of Q2/Q4 puts one block
//! per int32 lane instead (`gemv_lanes`: 16 blocks per `vpdpbusd` chain, bit
//! fields extracted by GFNI's `gf2p8affineqb`, see docs/design.md), and
//! batches from `PACK_MIN_N` columns put one row per lane (`gemm_packed`).

// Register tiles are indexed by (row, column) in several arrays at once.
#![allow(clippy::needless_range_loop)]
use super::scalar::q2_row_layout;
use super::{
    avx2, gemv_via, lane_tail_in_groups, ActPanel, Backend, Kernels, OutTile, PairOrder, PanelKind,
    PACK_MIN_N,
};
use crate::blocks::{f16_to_f32, scales_bytes, Q8ActBlock, Q2_ROW_HEADER, QK};
use crate::QuantFormat;
use std::arch::x86_64::*;

/// Whether this CPU has AVX-512 F/BW/VL/VNNI (and the AVX2 family's features).
pub fn is_supported() -> bool {
    super::avx2::is_supported()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// The AVX-512 table.
pub static KERNELS: Kernels = Kernels {
    backend: Backend::Avx512Vnni,
    q2_q8,
    q4_q8,
    q8_q8,
    f32_f32,
    f16_f32,
    dot_f32,
    q2_gemm,
    q4_gemm,
    q8_gemm,
    panel,
    f32_gemm: Some(f32_gemm),
    f16_gemm: Some(f16_gemm),
    quantize_act,
    q2_f32,
    q4_f32,
    q8_f32,
    ..super::avx2::KERNELS
};

fn check() {
    assert!(
        is_supported(),
        "AVX-512 VNNI kernels called on a CPU without them"
    );
}

fn panel(f: QuantFormat) -> PanelKind {
    match f {
        // Codes are doubled (2c) so the offset term -1.5 sum becomes -3 sum.
        QuantFormat::Q2 => PanelKind::Simd {
            corr: -3,
            dx_mul: 0.5,
            order: Q2F::ORDER,
            packed: true,
            lanes: lanes_supported().then_some(Q2F::LANES),
        },
        QuantFormat::Q4 => PanelKind::Simd {
            corr: -8,
            dx_mul: 1.0,
            order: Q4F::ORDER,
            packed: true,
            lanes: lanes_supported().then_some(Q4F::LANES),
        },
        // Weights are biased to unsigned (q + 128), so the offset term is -128 sum.
        QuantFormat::Q8 => PanelKind::Simd {
            corr: -128,
            dx_mul: 1.0,
            order: Q8F::ORDER,
            packed: true,
            lanes: None,
        },
        _ => PanelKind::Blocks,
    }
}

/// Lanes `0..m` set.
#[inline]
fn lanes(m: usize) -> __mmask16 {
    if m >= 16 {
        0xffff
    } else {
        ((1u32 << m) - 1) as __mmask16
    }
}

/// A quantized row format as the AVX-512 kernels see it. All methods read
/// inside one row of `cols` weights starting at `row`.
trait Fmt {
    /// Order in which `codes` returns a pair of blocks (the panel uses the same).
    const ORDER: PairOrder;
    /// Bytes per row.
    fn row_bytes(cols: usize) -> usize;
    /// Whether rows have a scale (`row_scale` is not always 1).
    const ROW_SCALED: bool;
    /// Factor applied to the row's sum (Q2: the row scale `d`).
    unsafe fn row_scale(row: *const u8) -> f32;
    /// Weight scales of blocks `g0 .. g0 + m` (m <= 16) in lanes `0..m`, zeros above.
    unsafe fn scales(row: *const u8, cols: usize, g0: usize, m: usize) -> __m512;
    /// Unsigned codes of blocks `b` and `b + 1` (`b + 1 < nb`), or of block `b`
    /// alone in the low half when `pair` is false (the high half must be finite
    /// garbage-free: its scale lane is zero).
    unsafe fn codes(row: *const u8, cols: usize, b: usize, pair: bool) -> __m512i;
}

struct Q2F;
struct Q4F;
struct Q8F;

impl Fmt for Q2F {
    const ORDER: PairOrder = PairOrder::Qword;
    const ROW_SCALED: bool = true;

    fn row_bytes(cols: usize) -> usize {
        q2_row_layout(cols).2
    }

    #[inline(always)]
    unsafe fn row_scale(row: *const u8) -> f32 {
        // SAFETY: the row starts with its 4-byte scale.
        f32::from_le_bytes(unsafe { *(row as *const [u8; 4]) })
    }

    #[inline(always)]
    unsafe fn scales(row: *const u8, cols: usize, g0: usize, m: usize) -> __m512 {
        let s0 = q2_row_layout(cols).1;
        // SAFETY: reads the ceil(m/2) sub-scale bytes of blocks g0.. (masked load).
        unsafe {
            let sc = row.add(s0 + g0 / 2);
            let v = _mm_cvtepu8_epi16(_mm_maskz_loadu_epi8(lanes(m.div_ceil(2)), sc as *const i8));
            let k = _mm_or_si128(
                _mm_and_si128(v, _mm_set1_epi16(15)),
                _mm_slli_epi16(_mm_srli_epi16(v, 4), 8),
            );
            _mm512_cvtepi32_ps(_mm512_maskz_cvtepu8_epi32(lanes(m), k))
        }
    }

    #[inline(always)]
    unsafe fn codes(row: *const u8, _cols: usize, b: usize, pair: bool) -> __m512i {
        // SAFETY: reads 16 (pair) or 8 code bytes of blocks b, b+1 inside the row.
        unsafe {
            let p = row.add(Q2_ROW_HEADER + b * 8) as *const __m128i;
            let c = if pair {
                _mm_loadu_si128(p)
            } else {
                _mm_loadl_epi64(p)
            };
            // Qwords [b, b+1, b, b+1, ...] (PairOrder::Qword), rotated so that bit
            // pair g/2 of every byte lands at bits 1-2: the doubled code 2c.
            let c = _mm512_broadcast_i32x4(c);
            let c = _mm512_rolv_epi64(c, _mm512_set_epi64(59, 59, 61, 61, 63, 63, 1, 1));
            _mm512_and_si512(c, _mm512_set1_epi8(6))
        }
    }
}

/// f16 scales of blocks `g0 .. g0 + m` (m <= 16) of a Q4/Q8 row, as f32 (zeros above m).
#[inline(always)]
unsafe fn row_scales(row: *const u8, g0: usize, m: usize) -> __m512 {
    // SAFETY: the row starts with its nb >= g0 + m f16 scales; the load is masked.
    unsafe {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
            lanes(m),
            row.add(2 * g0) as *const i16,
        ))
    }
}

impl Fmt for Q4F {
    const ORDER: PairOrder = PairOrder::Half;
    const ROW_SCALED: bool = false;

    fn row_bytes(cols: usize) -> usize {
        cols / QK * 18
    }

    #[inline(always)]
    unsafe fn row_scale(_row: *const u8) -> f32 {
        1.0
    }

    #[inline(always)]
    unsafe fn scales(row: *const u8, _cols: usize, g0: usize, m: usize) -> __m512 {
        // SAFETY: forwarded.
        unsafe { row_scales(row, g0, m) }
    }

    #[inline(always)]
    unsafe fn codes(row: *const u8, cols: usize, b: usize, pair: bool) -> __m512i {
        // SAFETY: reads the 16 code bytes of block b (32 of b, b + 1 when `pair`).
        unsafe {
            let p = row.add(scales_bytes(cols / QK) + 16 * b);
            let v = if pair {
                _mm256_loadu_si256(p as *const __m256i)
            } else {
                _mm256_zextsi128_si256(_mm_loadu_si128(p as *const __m128i))
            };
            // [q_b, q_b+1, q_b >> 4, q_b+1 >> 4] (PairOrder::Half): low nibbles are
            // elements 0..16, high nibbles 16..32.
            let w = _mm512_broadcast_i64x4(v);
            let w = _mm512_srlv_epi64(w, _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0));
            _mm512_and_si512(w, _mm512_set1_epi8(0x0f))
        }
    }
}

impl Fmt for Q8F {
    const ORDER: PairOrder = PairOrder::Natural;
    const ROW_SCALED: bool = false;

    fn row_bytes(cols: usize) -> usize {
        cols / QK * 34
    }

    #[inline(always)]
    unsafe fn row_scale(_row: *const u8) -> f32 {
        1.0
    }

    #[inline(always)]
    unsafe fn scales(row: *const u8, _cols: usize, g0: usize, m: usize) -> __m512 {
        // SAFETY: forwarded.
        unsafe { row_scales(row, g0, m) }
    }

    #[inline(always)]
    unsafe fn codes(row: *const u8, cols: usize, b: usize, pair: bool) -> __m512i {
        // SAFETY: reads the 32 value bytes of block b (64 of b, b + 1 when `pair`).
        unsafe {
            let p = row.add(scales_bytes(cols / QK) + 32 * b);
            let w = if pair {
                _mm512_loadu_si512(p as *const _)
            } else {
                _mm512_zextsi256_si512(_mm256_loadu_si256(p as *const __m256i))
            };
            _mm512_xor_si512(w, _mm512_set1_epi8(-128))
        }
    }
}

/// The lane sums of four vectors, `[sum a, sum b, sum c, sum d]`.
#[inline(always)]
unsafe fn reduce4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
    // SAFETY: an inline helper of kernels that run only where
    // detection found the CPU features these intrinsics need.
    unsafe {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], then [a, b, c, d] partials.
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        let s = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(ab, cd),
            _mm512_shuffle_ps::<0xee>(ab, cd),
        );
        let lo = _mm512_castps512_ps256(s);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
        let s = _mm256_add_ps(lo, hi);
        _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
    }
}

/// `R` rows (at `w`, `F::row_bytes` apart) times `C` panel columns from `j0`,
/// blocks `b0 ..` (`b0` a multiple of 16): per pair of blocks, each row's
/// codes are unpacked once and used for every column; each (row, column)
/// keeps one f32 accumulator, returned before the row scale.
#[inline(always)]
unsafe fn pair_acc<F: Fmt, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    p: &ActPanel,
    j0: usize,
    b0: usize,
) -> [[__m512; C]; R] {
    let nb = cols / QK;
    let rb = F::row_bytes(cols);
    // SAFETY: rows are whole rows of the matrix (caller); panel reads stay in
    // its padded columns.
    unsafe {
        let row = |r: usize| w.add(r * rb);
        let lane_blocks = F::ORDER.lane_blocks();
        let idx0 = _mm512_loadu_si512(lane_blocks.as_ptr() as *const _);
        let two = _mm512_set1_epi32(2);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut kd = [[_mm512_setzero_ps(); C]; R];
        let mut g0 = b0;
        while g0 < nb {
            let m = (nb - g0).min(16);
            for (r, kd) in kd.iter_mut().enumerate() {
                let ws = F::scales(row(r), cols, g0, m);
                for (c, kd) in kd.iter_mut().enumerate() {
                    *kd = _mm512_mul_ps(ws, _mm512_loadu_ps(p.dx(j0 + c)[g0..].as_ptr()));
                }
            }
            let end = g0 + m;
            let mut idx = idx0;
            let mut b = g0;
            while b < end {
                let pair = b + 1 < end;
                let mut seed = [_mm512_setzero_si512(); C];
                let mut x = [_mm512_setzero_si512(); C];
                for c in 0..C {
                    seed[c] = _mm512_loadu_si512(p.seed(j0 + c).add(b * 8) as *const _);
                    x[c] = _mm512_loadu_si512(p.xs(j0 + c).add(b * QK) as *const _);
                }
                for r in 0..R {
                    let u = F::codes(row(r), cols, b, pair);
                    for c in 0..C {
                        let s = _mm512_dpbusd_epi32(seed[c], u, x[c]);
                        let k = _mm512_permutexvar_ps(idx, kd[r][c]);
                        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), k, acc[r][c]);
                    }
                }
                idx = _mm512_add_epi32(idx, two);
                b += 2;
            }
            g0 = end;
        }
        acc
    }
}

/// Write the sums of `R` rows' accumulators (times the row scales) to column
/// `j` of `out`, rows `r0 ..`.
#[inline(always)]
unsafe fn put_rows<F: Fmt, const R: usize>(
    acc: [__m512; R],
    w: *const u8,
    cols: usize,
    out: &OutTile<'_>,
    j: usize,
    r0: usize,
) {
    let rb = F::row_bytes(cols);
    // SAFETY: `w` holds R whole rows (caller), who owns rows r0 .. r0 + R of `out`.
    unsafe {
        if R == 4 {
            let mut v = [0.0f32; 4];
            _mm_storeu_ps(
                v.as_mut_ptr(),
                reduce4(acc[0], acc[1 % R], acc[2 % R], acc[3 % R]),
            );
            for (r, v) in v.iter().enumerate() {
                out.put(j, r0 + r, F::row_scale(w.add(r * rb)) * v);
            }
            return;
        }
        for r in 0..R {
            out.put(
                j,
                r0 + r,
                F::row_scale(w.add(r * rb)) * _mm512_reduce_add_ps(acc[r]),
            );
        }
    }
}

/// `R` rows (at `w`, `F::row_bytes` apart) times `C` panel columns from `j0`
/// (see `pair_acc`), written to `out`.
#[inline(always)]
unsafe fn tile<F: Fmt, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    p: &ActPanel,
    j0: usize,
    out: &OutTile<'_>,
    r0: usize,
) {
    // SAFETY: forwarded (rows, panel columns and output rows from the caller).
    unsafe {
        let acc = pair_acc::<F, R, C>(w, cols, p, j0, 0);
        for c in 0..C {
            let col: [__m512; R] = std::array::from_fn(|r| acc[r][c]);
            put_rows::<F, R>(col, w, cols, out, j0 + c, r0);
        }
    }
}

/// Every row of `w` times every panel column: 4 rows x 1 column tiles for a
/// single column (hides the accumulator latency), 2 rows x 4 columns for
/// batches (each row's codes unpacked once per 4 columns, each column's
/// activations loaded once per 2 rows).
/// Rows a single-vector kernel prefetches ahead of the row it computes.
const PREFETCH_ROWS: usize = 32;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn gemm<F: Fmt>(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    let rb = F::row_bytes(cols);
    let rows = w.len() / rb;
    let n = p.n();
    let base = w.as_ptr();
    // SAFETY: every tile gets whole rows inside `w` and columns inside the panel;
    // the caller owns rows r0 .. r0 + rows of `out`.
    unsafe {
        if n == 1 {
            // One vector streams the weights from memory once: prefetch a few
            // rows ahead so the loads overlap the arithmetic.
            let end = base.add(rows * rb);
            let ahead = PREFETCH_ROWS * rb;
            let mut r = 0;
            while r + 4 <= rows {
                let next = base.wrapping_add((r + 4) * rb + ahead);
                let mut q = base.wrapping_add(r * rb + ahead);
                while q < next && q < end {
                    _mm_prefetch::<_MM_HINT_T0>(q as *const i8);
                    q = q.wrapping_add(64);
                }
                tile::<F, 4, 1>(base.add(r * rb), cols, p, 0, out, r0 + r);
                r += 4;
            }
            while r < rows {
                tile::<F, 1, 1>(base.add(r * rb), cols, p, 0, out, r0 + r);
                r += 1;
            }
            return;
        }
        // Column groups outermost: a group's activations (and the rows' weights)
        // stay in L1 while every row of this call passes over them.
        let mut j = 0;
        while j < n {
            let c = (n - j).min(4);
            let mut r = 0;
            while r + 2 <= rows {
                let wr = base.add(r * rb);
                match c {
                    4 => tile::<F, 2, 4>(wr, cols, p, j, out, r0 + r),
                    3 => tile::<F, 2, 3>(wr, cols, p, j, out, r0 + r),
                    2 => tile::<F, 2, 2>(wr, cols, p, j, out, r0 + r),
                    _ => tile::<F, 2, 1>(wr, cols, p, j, out, r0 + r),
                }
                r += 2;
            }
            if r < rows {
                let wr = base.add(r * rb);
                match c {
                    4 => tile::<F, 1, 4>(wr, cols, p, j, out, r0 + r),
                    3 => tile::<F, 1, 3>(wr, cols, p, j, out, r0 + r),
                    2 => tile::<F, 1, 2>(wr, cols, p, j, out, r0 + r),
                    _ => tile::<F, 1, 1>(wr, cols, p, j, out, r0 + r),
                }
            }
            j += c;
        }
    }
}

/// Rows of a packed tile: one per int32 lane.
const PACK_ROWS: usize = 16;
/// Columns per packed register tile: that many independent `vpdpbusd`
/// chains hide its latency.
const PACK_COLS: usize = 8;

/// Up to 16 rows repacked so that a 32-bit lane is a row: per block, 8
/// vectors (vector `k` holds codes `4k .. 4k + 4` of every row) and the 16
/// rows' block scales. The AVX2 family's unpacking gives the codes (doubled
/// for Q2, biased by 128 for Q8, as this family's panel expects).
struct Packed {
    codes: Vec<__m512i>,
    scales: Vec<__m512>,
}

impl Packed {
    /// Pack rows `0 .. m` at `w` (`m <= 16`); lanes `m..` hold zeros.
    #[inline(always)]
    unsafe fn fill<F: avx2::Unpack>(&mut self, w: *const u8, cols: usize, m: usize) {
        let nb = cols / QK;
        let rb = <F as avx2::Fmt>::row_bytes(cols);
        // SAFETY: rows 0..m are whole rows inside the matrix, and the CPU has
        // the features of this module's kernels (caller).
        unsafe {
            self.codes.clear();
            self.codes.resize(nb * 8, _mm512_setzero_si512());
            self.scales.clear();
            self.scales.resize(nb, _mm512_setzero_ps());
            for b in 0..nb {
                let mut lo = [_mm256_setzero_si256(); 8];
                let mut hi = [_mm256_setzero_si256(); 8];
                let mut sc = [0.0f32; 16];
                for r in 0..m {
                    let row = w.add(r * rb);
                    let v = F::block(row, cols, b);
                    if r < 8 {
                        lo[r] = v;
                    } else {
                        hi[r - 8] = v;
                    }
                    sc[r] = F::block_scale(row, cols, b);
                }
                avx2::transpose8(&mut lo);
                if m > 8 {
                    avx2::transpose8(&mut hi);
                }
                for k in 0..8 {
                    self.codes[b * 8 + k] =
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo[k]), hi[k]);
                }
                self.scales[b] = _mm512_loadu_ps(sc.as_ptr());
            }
        }
    }
}

/// The packed rows times `C` panel columns from `j0`, written to rows
/// `r0 .. r0 + m` of `out`: per block, each column's activations are
/// broadcast 4 at a time against the 16 rows' codes (8 `vpdpbusd` into an
/// accumulator seeded with the block's offset term), then converted and
/// scaled into one float accumulator per column.
#[inline(always)]
unsafe fn packed_tile<const C: usize>(
    pk: &Packed,
    nb: usize,
    p: &ActPanel,
    j0: usize,
    out: &OutTile<'_>,
    r0: usize,
    m: usize,
) {
    let n = p.n();
    let (xt, bt, dt) = (p.xt().as_ptr(), p.bt().as_ptr(), p.dt().as_ptr());
    // SAFETY: the interleaved panel holds nb * 8 * n values and nb * n seeds
    // and scales, and j0 + C <= n; the caller owns rows r0 .. r0 + m of `out`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..nb {
            // The C columns' dwords sit side by side: one pointer per step.
            let sb = bt.add(b * n + j0);
            let mut s: [__m512i; C] = std::array::from_fn(|c| _mm512_set1_epi32(*sb.add(c)));
            for k in 0..8 {
                let wv = _mm512_load_si512(pk.codes.as_ptr().add(b * 8 + k) as *const _);
                let xr = xt.add((b * 8 + k) * n + j0);
                for c in 0..C {
                    s[c] = _mm512_dpbusd_epi32(s[c], wv, _mm512_set1_epi32(*xr.add(c)));
                }
            }
            let ws = *pk.scales.get_unchecked(b);
            let db = dt.add(b * n + j0);
            for c in 0..C {
                let k = _mm512_mul_ps(ws, _mm512_set1_ps(*db.add(c)));
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[c]), k, acc[c]);
            }
        }
        for c in 0..C {
            let mut v = [0.0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), acc[c]);
            for (r, v) in v.iter().enumerate().take(m) {
                out.put(j0 + c, r0 + r, *v);
            }
        }
    }
}

/// Every row of `w` times every panel column through [`Packed`] tiles of 16
/// rows and register tiles of 16 rows x `PACK_COLS` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,f16c")]
unsafe fn gemm_packed<F: avx2::Unpack>(
    w: &[u8],
    cols: usize,
    p: &ActPanel,
    out: &OutTile<'_>,
    r0: usize,
) {
    let rb = <F as avx2::Fmt>::row_bytes(cols);
    let rows = w.len() / rb;
    let nb = cols / QK;
    let n = p.n();
    let mut pk = Packed {
        codes: Vec::new(),
        scales: Vec::new(),
    };
    // SAFETY: tiles get whole rows inside `w` and columns inside the panel;
    // the caller owns rows r0 .. r0 + rows of `out`.
    unsafe {
        let mut r = 0;
        while r < rows {
            let m = (rows - r).min(PACK_ROWS);
            pk.fill::<F>(w.as_ptr().add(r * rb), cols, m);
            let mut j = 0;
            while j < n {
                let c = (n - j).min(PACK_COLS);
                let r1 = r0 + r;
                match c {
                    8 => packed_tile::<8>(&pk, nb, p, j, out, r1, m),
                    7 => packed_tile::<7>(&pk, nb, p, j, out, r1, m),
                    6 => packed_tile::<6>(&pk, nb, p, j, out, r1, m),
                    5 => packed_tile::<5>(&pk, nb, p, j, out, r1, m),
                    4 => packed_tile::<4>(&pk, nb, p, j, out, r1, m),
                    3 => packed_tile::<3>(&pk, nb, p, j, out, r1, m),
                    2 => packed_tile::<2>(&pk, nb, p, j, out, r1, m),
                    _ => packed_tile::<1>(&pk, nb, p, j, out, r1, m),
                }
                j += c;
            }
            r += m;
        }
    }
}

/// A format whose single-vector kernel puts one block per int32 lane.
trait LaneFmt: Fmt {
    /// First element (of 4) of each of the 8 code vectors `lane_codes`
    /// returns, for the panel's lane layout.
    const LANES: [u8; 8];
    /// Code bytes per block.
    const CODE_BYTES: usize;
    /// Scale bytes per two blocks.
    const SCALE_BYTES2: usize;
    /// Where the codes of block `b` of the row start (blocks are consecutive).
    unsafe fn codes_at(row: *const u8, cols: usize, b: usize) -> *const u8;
    /// Where the scales of block `b` (even) of the row start.
    unsafe fn scales_at(row: *const u8, cols: usize, b: usize) -> *const u8;
    /// The unsigned codes of 16 consecutive blocks (their code bytes at `p`)
    /// as 8 vectors: lane `l` of vector `v` holds elements `LANES[v] ..
    /// LANES[v] + 4` of block `l`.
    unsafe fn codes16(p: *const u8) -> [__m512i; 8];
    /// Weight scales of 16 consecutive blocks (their scale bytes at `p`), lane `l` = block `l`.
    unsafe fn scales16(p: *const u8) -> __m512;
}

/// Whether the single-vector lane kernels can run: they also use GFNI
/// (`gf2p8affineqb` extracts bit fields) and VBMI (`vpmultishiftqb`).
fn lanes_supported() -> bool {
    std::is_x86_feature_detected!("gfni") && std::is_x86_feature_detected!("avx512vbmi")
}

/// A `gf2p8affineqb` matrix that moves bit `from + i` of every byte to bit
/// `to + i`, for `i < len`, and clears the other bits.
const fn bit_field(from: u32, to: u32, len: u32) -> i64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < len {
        // Result bit j is the parity of (matrix byte 7 - j) & input byte.
        m |= (1u64 << (from + i)) << (8 * (7 - (to + i)));
        i += 1;
    }
    m as i64
}

/// `permutex2var` indices: dword `2l + odd` of the 32 dwords of (a, b).
const EVEN_ODD: [[i32; 16]; 2] = {
    let mut t = [[0i32; 16]; 2];
    let mut l = 0;
    while l < 16 {
        t[0][l] = 2 * l as i32;
        t[1][l] = 2 * l as i32 + 1;
        l += 1;
    }
    t
};

impl LaneFmt for Q2F {
    // Bit pair k of byte j is element j + 8k: the low dword of a block
    // (bytes 0..4) gives elements 8k .. 8k + 4, the high one 8k + 4 ...
    const LANES: [u8; 8] = [0, 8, 16, 24, 4, 12, 20, 28];
    const CODE_BYTES: usize = 8;
    const SCALE_BYTES2: usize = 1;

    #[inline(always)]
    unsafe fn codes_at(row: *const u8, _cols: usize, b: usize) -> *const u8 {
        row.wrapping_add(Q2_ROW_HEADER + 8 * b)
    }

    #[inline(always)]
    unsafe fn scales_at(row: *const u8, cols: usize, b: usize) -> *const u8 {
        row.wrapping_add(q2_row_layout(cols).1 + b / 2)
    }

    #[inline(always)]
    unsafe fn codes16(p: *const u8) -> [__m512i; 8] {
        // SAFETY: reads the 8 code bytes of each of 16 blocks at p.
        unsafe {
            let a = _mm512_loadu_si512(p as *const _);
            let b = _mm512_loadu_si512(p.add(64) as *const _);
            let lo = _mm512_permutex2var_epi32(
                a,
                _mm512_loadu_si512(EVEN_ODD[0].as_ptr() as *const _),
                b,
            );
            let hi = _mm512_permutex2var_epi32(
                a,
                _mm512_loadu_si512(EVEN_ODD[1].as_ptr() as *const _),
                b,
            );
            // Doubled codes 2c: bit pair k moved to bits 1-2 of its byte.
            let k = |k: u32| _mm512_set1_epi64(bit_field(2 * k, 1, 2));
            let f = |v: __m512i, k: __m512i| _mm512_gf2p8affine_epi64_epi8::<0>(v, k);
            [
                f(lo, k(0)),
                f(lo, k(1)),
                f(lo, k(2)),
                f(lo, k(3)),
                f(hi, k(0)),
                f(hi, k(1)),
                f(hi, k(2)),
                f(hi, k(3)),
            ]
        }
    }

    #[inline(always)]
    unsafe fn scales16(p: *const u8) -> __m512 {
        // SAFETY: reads the 8 sub-scale bytes of 16 blocks at p.
        unsafe {
            let v = _mm512_set1_epi64((p as *const i64).read_unaligned());
            // Dword lane l: the 8 bits from bit 4l, then its low nibble.
            let ctrl = _mm512_loadu_si512(NIBBLE_CTRL.as_ptr() as *const _);
            let k = _mm512_and_si512(_mm512_multishift_epi64_epi8(ctrl, v), _mm512_set1_epi32(15));
            _mm512_cvtepi32_ps(k)
        }
    }
}

/// `vpmultishiftqb` control: byte 0 of dword lane `l` takes the 8 bits from bit `4 l`.
const NIBBLE_CTRL: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut l = 0;
    while l < 16 {
        t[4 * l] = 4 * l as u8;
        l += 1;
    }
    t
};

/// `permutex2var` indices of the Q4 16 x 4 dword transpose (see `Q4F::lane_codes`).
const Q4_T: [[i32; 16]; 4] = {
    let mut t = [[0i32; 16]; 4];
    let mut l = 0;
    while l < 16 {
        // Stage 1 (dwords dw0 and dw0 + 1 of 8 blocks from two loads of 4):
        // lane l = dword dw0 + l / 8 of block l % 8.
        let blk = l % 8;
        let src = (blk / 4) * 16 + (blk % 4) * 4 + l / 8;
        t[0][l] = src as i32;
        t[1][l] = src as i32 + 2;
        // Stage 2 (dword d of 16 blocks from two stage-1 vectors).
        t[2][l] = if l < 8 { l } else { 16 + l - 8 } as i32;
        t[3][l] = t[2][l] + 8;
        l += 1;
    }
    t
};

impl LaneFmt for Q4F {
    // Dword d of a block's 16 bytes: low nibbles are elements 4d .. 4d + 4,
    // high nibbles 16 + 4d ...
    const LANES: [u8; 8] = [0, 4, 8, 12, 16, 20, 24, 28];
    const CODE_BYTES: usize = 16;
    const SCALE_BYTES2: usize = 4;

    #[inline(always)]
    unsafe fn codes_at(row: *const u8, cols: usize, b: usize) -> *const u8 {
        row.wrapping_add(scales_bytes(cols / QK) + 16 * b)
    }

    #[inline(always)]
    unsafe fn scales_at(row: *const u8, _cols: usize, b: usize) -> *const u8 {
        row.wrapping_add(2 * b)
    }

    #[inline(always)]
    unsafe fn codes16(p: *const u8) -> [__m512i; 8] {
        // SAFETY: reads the 16 code bytes of each of 16 blocks at p.
        unsafe {
            let ld = |j: usize| _mm512_loadu_si512(p.add(64 * j) as *const _);
            let (v0, v1, v2, v3) = (ld(0), ld(1), ld(2), ld(3));
            let idx = |i: usize| _mm512_loadu_si512(Q4_T[i].as_ptr() as *const _);
            let p0 = _mm512_permutex2var_epi32(v0, idx(0), v1);
            let p1 = _mm512_permutex2var_epi32(v0, idx(1), v1);
            let q0 = _mm512_permutex2var_epi32(v2, idx(0), v3);
            let q1 = _mm512_permutex2var_epi32(v2, idx(1), v3);
            let w = [
                _mm512_permutex2var_epi32(p0, idx(2), q0),
                _mm512_permutex2var_epi32(p0, idx(3), q0),
                _mm512_permutex2var_epi32(p1, idx(2), q1),
                _mm512_permutex2var_epi32(p1, idx(3), q1),
            ];
            let f = _mm512_set1_epi8(0x0f);
            let high = _mm512_set1_epi64(bit_field(4, 0, 4));
            let h = |v: __m512i| _mm512_gf2p8affine_epi64_epi8::<0>(v, high);
            [
                _mm512_and_si512(w[0], f),
                _mm512_and_si512(w[1], f),
                _mm512_and_si512(w[2], f),
                _mm512_and_si512(w[3], f),
                h(w[0]),
                h(w[1]),
                h(w[2]),
                h(w[3]),
            ]
        }
    }

    #[inline(always)]
    unsafe fn scales16(p: *const u8) -> __m512 {
        // SAFETY: reads the 16 f16 scales at p.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// `R` rows (at `w`, `F::row_bytes` apart) times the single column of a
/// lane-layout panel: per whole group of 16 blocks and row, 8 `vpdpbusd`
/// into one int32 vector whose lanes are the 16 blocks, then one convert and
/// one FMA with the blocks' weight x activation scales; the blocks after the
/// last whole group go through `pair_acc` when `pair_tail`. The cache lines in `prefetch`
/// (a range of addresses: rows further on) are touched a few per group, so
/// that the hints spread over the arithmetic (issued all at once, they
/// stall on the line-fill buffers: 24 against 29 tokens/s decoding the AFM
/// shape).
#[inline(always)]
unsafe fn lane_tile<F: LaneFmt, const R: usize>(
    w: *const u8,
    cols: usize,
    p: &ActPanel,
    prefetch: (usize, usize),
    pair_tail: bool,
) -> [__m512; R] {
    let nb = cols / QK;
    let full = nb / 16;
    // Lines of `prefetch` (addresses) to touch per group.
    let step = (prefetch.1 - prefetch.0)
        .div_ceil(full.max(1))
        .next_multiple_of(64);
    let mut pf = prefetch.0;
    let rb = F::row_bytes(cols);
    let (xl, sl, dl) = p.lanes();
    assert!(xl.len() >= full * 128 && sl.len() >= full * 16 && dl.len() >= full * 16);
    // SAFETY: rows are whole rows of the matrix (caller); the panel holds
    // `full` whole groups (checked); prefetches are hints.
    unsafe {
        let row = |r: usize| w.add(r * rb);
        let mut acc = if pair_tail && full * 16 < nb {
            let a = pair_acc::<F, R, 1>(w, cols, p, 0, full * 16);
            std::array::from_fn(|r| a[r][0])
        } else {
            [_mm512_setzero_ps(); R]
        };
        for g in 0..full {
            let stop = (pf + step).min(prefetch.1);
            while pf < stop {
                _mm_prefetch::<_MM_HINT_T0>(pf as *const i8);
                pf += 64;
            }
            let x = xl.as_ptr().add(g * 128);
            let seed = _mm512_loadu_si512(sl.as_ptr().add(g * 16) as *const _);
            let dx = _mm512_loadu_ps(dl.as_ptr().add(g * 16));
            for r in 0..R {
                let u = F::codes16(F::codes_at(row(r), cols, g * 16));
                let s = dot_group16(&u, x, seed);
                let k = _mm512_mul_ps(F::scales16(F::scales_at(row(r), cols, g * 16)), dx);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), k, acc[r]);
            }
        }
        // Rows without a whole group (or rounding) leave lines to touch.
        while pf < prefetch.1 {
            _mm_prefetch::<_MM_HINT_T0>(pf as *const i8);
            pf += 64;
        }
        acc
    }
}

/// `seed + sum_v u[v] . x[v]` per int32 lane, `x` the 8 activation vectors
/// of a lane group: 8 `vpdpbusd` in two chains of 4 (a chain of 8 shows its
/// latency when the weights are in cache).
#[inline(always)]
unsafe fn dot_group16(u: &[__m512i; 8], x: *const i32, seed: __m512i) -> __m512i {
    // SAFETY: x points at 8 x 16 dwords of the panel (caller).
    unsafe {
        let mut s0 = seed;
        let mut s1 = _mm512_setzero_si512();
        for v in 0..4 {
            s0 = _mm512_dpbusd_epi32(s0, u[v], _mm512_loadu_si512(x.add(16 * v) as *const _));
            s1 = _mm512_dpbusd_epi32(
                s1,
                u[v + 4],
                _mm512_loadu_si512(x.add(16 * (v + 4)) as *const _),
            );
        }
        _mm512_add_epi32(s0, s1)
    }
}

/// The last `T` blocks (from `b0`, a multiple of 16) of 16 rows, `16 / T`
/// rows per register: lane `l` of group `q` is block `b0 + l % T` of row
/// `q * 16 / T + l / T` (the panel's last group repeats the `T` blocks to
/// match). Returns the 16 rows' sums (before the row scales) in lanes 0..16.
#[inline(always)]
unsafe fn tail16<F: LaneFmt, const T: usize>(
    row: impl Fn(usize) -> *const u8,
    cols: usize,
    b0: usize,
    p: &ActPanel,
) -> __m512 {
    let (xl, sl, dl) = p.lanes();
    let g = b0 / 16;
    assert!(xl.len() >= (g + 1) * 128 && sl.len() >= (g + 1) * 16 && dl.len() >= (g + 1) * 16);
    let per = 16 / T;
    let (cb, sb) = (T * F::CODE_BYTES, T / 2 * F::SCALE_BYTES2);
    // SAFETY: each row's last T blocks (codes and scales) are inside the
    // row; the buffers hold 16 blocks' codes (at most 256 bytes) and scales
    // (at most 32); the panel holds group g (checked).
    unsafe {
        let x = xl.as_ptr().add(g * 128);
        let seed = _mm512_loadu_si512(sl.as_ptr().add(g * 16) as *const _);
        let dx = _mm512_loadu_ps(dl.as_ptr().add(g * 16));
        let mut parts = [_mm512_setzero_ps(); T];
        for (q, part) in parts.iter_mut().enumerate() {
            let mut codes = [0u8; 256];
            let mut scales = [0u8; 32];
            for i in 0..per {
                let r = row(q * per + i);
                std::ptr::copy_nonoverlapping(
                    F::codes_at(r, cols, b0),
                    codes.as_mut_ptr().add(i * cb),
                    cb,
                );
                std::ptr::copy_nonoverlapping(
                    F::scales_at(r, cols, b0),
                    scales.as_mut_ptr().add(i * sb),
                    sb,
                );
            }
            let u = F::codes16(codes.as_ptr());
            let k = _mm512_mul_ps(F::scales16(scales.as_ptr()), dx);
            *part = _mm512_mul_ps(_mm512_cvtepi32_ps(dot_group16(&u, x, seed)), k);
        }
        // Sum each row's T lanes: pairs of neighbouring lanes, log2(T) times.
        let even = _mm512_loadu_si512(EVEN_ODD[0].as_ptr() as *const _);
        let odd = _mm512_loadu_si512(EVEN_ODD[1].as_ptr() as *const _);
        let mut n = T;
        while n > 1 {
            for j in 0..n / 2 {
                let (a, b) = (parts[2 * j], parts[2 * j + 1]);
                parts[j] = _mm512_add_ps(
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                );
            }
            n /= 2;
        }
        parts[0]
    }
}

/// The lane sums of 16 vectors: lane `i` = sum of `a[i]`.
///
/// Plain loops, no closures: a closure does not inherit its caller's target
/// features, so the intrinsics in it would become calls.
#[inline(always)]
unsafe fn reduce16(a: &[__m512; 16]) -> __m512 {
    // SAFETY: an inline helper of kernels that run only where
    // detection found the CPU features these intrinsics need.
    unsafe {
        // Pairs, then quads as in `reduce4`: c[i] holds rows 4i .. 4i + 4 in
        // each 128-bit lane; then the 128-bit lanes are summed across.
        let mut b = [_mm512_setzero_ps(); 8];
        for i in 0..8 {
            let (x, y) = (a[2 * i], a[2 * i + 1]);
            b[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        let mut c = [_mm512_setzero_ps(); 4];
        for i in 0..4 {
            let (x, y) = (b[2 * i], b[2 * i + 1]);
            c[i] = _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(x, y),
                _mm512_shuffle_ps::<0xee>(x, y),
            );
        }
        let e01 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(c[0], c[1]),
            _mm512_shuffle_f32x4::<0xee>(c[0], c[1]),
        );
        let e23 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(c[2], c[3]),
            _mm512_shuffle_f32x4::<0xee>(c[2], c[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(e01, e23),
            _mm512_shuffle_f32x4::<0xdd>(e01, e23),
        )
    }
}

/// Every row of `w` times the single column of a lane-layout panel: 16 rows
/// per step (four tiles of 4, one reduction), prefetching `PREFETCH_ROWS`
/// rows ahead.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni,avx2,f16c")]
unsafe fn gemv_lanes<F: LaneFmt>(
    w: &[u8],
    cols: usize,
    p: &ActPanel,
    out: &OutTile<'_>,
    r0: usize,
) {
    let rb = F::row_bytes(cols);
    let rows = w.len() / rb;
    let base = w.as_ptr();
    // SAFETY: every tile gets whole rows inside `w`; prefetches are hints
    // inside `w`; the caller owns rows r0 .. r0 + rows of `out`.
    unsafe {
        let end = base.add(rows * rb) as usize;
        let ahead = PREFETCH_ROWS * rb;
        let nb = cols / QK;
        let b0 = nb / 16 * 16;
        // Tails of 2, 4 or 8 blocks run 16 / t rows per register (`tail16`),
        // others block pair by block pair in each row (`pair_acc`).
        let t = nb - b0;
        let pair_tail = !lane_tail_in_groups(nb);
        let mut r = 0;
        // 16 rows per step: four tiles of 4, one reduction of 16 (a
        // reduction per tile ends each tile in a long dependency chain).
        // The last rows go one at a time through the same reduction, so a
        // row's sum does not depend on how the rows were split.
        while r < rows {
            let m = (rows - r).min(16);
            let mut acc = [_mm512_setzero_ps(); 16];
            if m == 16 {
                for t in 0..4 {
                    let rt = r + 4 * t;
                    // The rows PREFETCH_ROWS ahead, spread over the tile's groups.
                    let from = base as usize + rt * rb + ahead;
                    let pf = (from.min(end), (from + 4 * rb).min(end));
                    let a = lane_tile::<F, 4>(base.add(rt * rb), cols, p, pf, pair_tail);
                    acc[4 * t..4 * t + 4].copy_from_slice(&a);
                }
            } else {
                for (i, acc) in acc[..m].iter_mut().enumerate() {
                    [*acc] = lane_tile::<F, 1>(base.add((r + i) * rb), cols, p, (0, 0), pair_tail);
                }
            }
            let mut sums = reduce16(&acc);
            // Rows past m repeat row r (their sums are dropped).
            let row = |i: usize| base.add((r + if i < m { i } else { 0 }) * rb);
            let tail = match t {
                2 => Some(tail16::<F, 2>(row, cols, b0, p)),
                4 => Some(tail16::<F, 4>(row, cols, b0, p)),
                8 => Some(tail16::<F, 8>(row, cols, b0, p)),
                _ => None,
            };
            if let Some(tail) = tail {
                sums = _mm512_add_ps(sums, tail);
            }
            let d = if F::ROW_SCALED {
                let d: [f32; 16] = std::array::from_fn(|i| {
                    if i < m {
                        F::row_scale(base.add((r + i) * rb))
                    } else {
                        0.0
                    }
                });
                _mm512_mul_ps(sums, _mm512_loadu_ps(d.as_ptr()))
            } else {
                sums
            };
            _mm512_mask_storeu_ps(out.run_ptr(0, r0 + r, m), lanes(m), d);
            r += m;
        }
    }
}

/// # Safety
/// See [`super::GemmFn`]; also requires the CPU features (checked by the table's users).
unsafe fn q2_gemm(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    check();
    // SAFETY: features checked; contract forwarded.
    unsafe {
        if p.n() >= PACK_MIN_N {
            gemm_packed::<avx2::Q2F>(w, cols, p, out, r0)
        } else if p.n() == 1 && !p.lanes().0.is_empty() {
            gemv_lanes::<Q2F>(w, cols, p, out, r0)
        } else {
            gemm::<Q2F>(w, cols, p, out, r0)
        }
    }
}

/// # Safety
/// See [`super::GemmFn`].
unsafe fn q4_gemm(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    check();
    // SAFETY: features checked; contract forwarded.
    unsafe {
        if p.n() >= PACK_MIN_N {
            gemm_packed::<avx2::Q4F>(w, cols, p, out, r0)
        } else if p.n() == 1 && !p.lanes().0.is_empty() {
            gemv_lanes::<Q4F>(w, cols, p, out, r0)
        } else {
            gemm::<Q4F>(w, cols, p, out, r0)
        }
    }
}

/// # Safety
/// See [`super::GemmFn`].
unsafe fn q8_gemm(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    check();
    // SAFETY: features checked; contract forwarded.
    unsafe {
        if p.n() >= PACK_MIN_N {
            gemm_packed::<avx2::Q8F>(w, cols, p, out, r0)
        } else {
            gemm::<Q8F>(w, cols, p, out, r0)
        }
    }
}

/// Rows of format `F` against int8 activations through `gemm` on a
/// single-column panel of `kind`, after checking the slice contract.
fn gemv_checked<F: Fmt>(
    gemm: super::GemmFn,
    kind: PanelKind,
    rows: &[u8],
    cols: usize,
    act: &[Q8ActBlock],
    out: &mut [f32],
) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && act.len() == cols / QK
            && rows.len() == out.len() * F::row_bytes(cols)
    );
    gemv_via(gemm, kind, rows, cols, act, out);
}

/// Q2 rows against int8 activations.
pub fn q2_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    gemv_checked::<Q2F>(q2_gemm, panel(QuantFormat::Q2), rows, cols, act, out);
}

/// Q4 rows against int8 activations.
pub fn q4_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    gemv_checked::<Q4F>(q4_gemm, panel(QuantFormat::Q4), rows, cols, act, out);
}

/// Q8 rows against int8 activations.
pub fn q8_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    gemv_checked::<Q8F>(q8_gemm, panel(QuantFormat::Q8), rows, cols, act, out);
}

/// `kind` without the lane layout: a single vector then takes the block-pair
/// matvec (4 rows x 1 column), as on CPUs without GFNI/VBMI.
fn without_lanes(kind: PanelKind) -> PanelKind {
    match kind {
        PanelKind::Simd {
            corr,
            dx_mul,
            order,
            packed,
            ..
        } => PanelKind::Simd {
            corr,
            dx_mul,
            order,
            packed,
            lanes: None,
        },
        k => k,
    }
}

/// [`q2_q8`] through the block-pair matvec that CPUs without GFNI/VBMI run
/// (so that tests cover it on any AVX-512 VNNI CPU).
#[doc(hidden)]
pub fn q2_q8_pairs(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    let kind = without_lanes(panel(QuantFormat::Q2));
    gemv_checked::<Q2F>(q2_gemm, kind, rows, cols, act, out);
}

/// [`q4_q8`] through the block-pair matvec (see [`q2_q8_pairs`]).
#[doc(hidden)]
pub fn q4_q8_pairs(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    let kind = without_lanes(panel(QuantFormat::Q4));
    gemv_checked::<Q4F>(q4_gemm, kind, rows, cols, act, out);
}

/// A float weight format as the AVX-512 kernels see it.
trait FloatFmt {
    const BYTES: usize;
    /// 16 weights from element `i` of the row (masked to `m` lanes).
    unsafe fn load(row: *const u8, i: usize, m: __mmask16) -> __m512;
}

struct F32F;
struct F16F;

impl FloatFmt for F32F {
    const BYTES: usize = 4;

    #[inline(always)]
    unsafe fn load(row: *const u8, i: usize, m: __mmask16) -> __m512 {
        // SAFETY: the caller passes lanes inside the row.
        unsafe { _mm512_maskz_loadu_ps(m, (row as *const f32).add(i)) }
    }
}

impl FloatFmt for F16F {
    const BYTES: usize = 2;

    #[inline(always)]
    unsafe fn load(row: *const u8, i: usize, m: __mmask16) -> __m512 {
        // SAFETY: the caller passes lanes inside the row.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (row as *const i16).add(i))) }
    }
}

/// `R` float rows times `C` columns of `x` from `j0`: one accumulator per
/// (row, column), each weight and activation vector loaded once per tile.
#[inline(always)]
unsafe fn float_tile<F: FloatFmt, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    x: &[f32],
    j0: usize,
    out: &OutTile<'_>,
    r0: usize,
) {
    // SAFETY: whole rows (caller), x columns j0 .. j0 + C exist (caller), lanes
    // past `cols` are masked; the caller owns rows r0 .. r0 + R of `out`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        while i < cols {
            let m = lanes(cols - i);
            let mut xv = [_mm512_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm512_maskz_loadu_ps(m, x.as_ptr().add((j0 + c) * cols + i));
            }
            for r in 0..R {
                let wv = F::load(w.add(r * cols * F::BYTES), i, m);
                for c in 0..C {
                    acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
            i += 16;
        }
        for c in 0..C {
            if R == 4 {
                let mut v = [0.0f32; 4];
                _mm_storeu_ps(
                    v.as_mut_ptr(),
                    reduce4(acc[0][c], acc[1][c], acc[2][c], acc[3][c]),
                );
                for (r, v) in v.iter().enumerate() {
                    out.put(j0 + c, r0 + r, *v);
                }
            } else {
                for r in 0..R {
                    out.put(j0 + c, r0 + r, _mm512_reduce_add_ps(acc[r][c]));
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn float_gemm<F: FloatFmt>(w: &[u8], cols: usize, x: &[f32], out: &OutTile<'_>, r0: usize) {
    let rb = cols * F::BYTES;
    let rows = w.len() / rb;
    let n = x.len() / cols;
    let base = w.as_ptr();
    // SAFETY: tiles get whole rows inside `w` and columns inside `x`; the caller
    // owns rows r0 .. r0 + rows of `out`.
    unsafe {
        let mut j = 0;
        while j < n {
            let c = (n - j).min(4);
            let mut r = 0;
            while r + 4 <= rows {
                let wr = base.add(r * rb);
                match c {
                    4 => float_tile::<F, 4, 4>(wr, cols, x, j, out, r0 + r),
                    3 => float_tile::<F, 4, 3>(wr, cols, x, j, out, r0 + r),
                    2 => float_tile::<F, 4, 2>(wr, cols, x, j, out, r0 + r),
                    _ => float_tile::<F, 4, 1>(wr, cols, x, j, out, r0 + r),
                }
                r += 4;
            }
            while r < rows {
                let wr = base.add(r * rb);
                match c {
                    4 => float_tile::<F, 1, 4>(wr, cols, x, j, out, r0 + r),
                    3 => float_tile::<F, 1, 3>(wr, cols, x, j, out, r0 + r),
                    2 => float_tile::<F, 1, 2>(wr, cols, x, j, out, r0 + r),
                    _ => float_tile::<F, 1, 1>(wr, cols, x, j, out, r0 + r),
                }
                r += 1;
            }
            j += c;
        }
    }
}

/// # Safety
/// See [`super::FloatGemmFn`].
unsafe fn f32_gemm(w: &[u8], cols: usize, x: &[f32], out: &OutTile<'_>, r0: usize) {
    check();
    assert!(
        w.len().is_multiple_of(cols * 4)
            && x.len().is_multiple_of(cols)
            && x.len() / cols == out.n()
    );
    // SAFETY: features and sizes checked; contract forwarded.
    unsafe { float_gemm::<F32F>(w, cols, x, out, r0) }
}

/// # Safety
/// See [`super::FloatGemmFn`].
unsafe fn f16_gemm(w: &[u8], cols: usize, x: &[f32], out: &OutTile<'_>, r0: usize) {
    check();
    assert!(
        w.len().is_multiple_of(cols * 2)
            && x.len().is_multiple_of(cols)
            && x.len() / cols == out.n()
    );
    // SAFETY: features and sizes checked; contract forwarded.
    unsafe { float_gemm::<F16F>(w, cols, x, out, r0) }
}

/// A quantized row format for the f32-activation kernels: one block at a time,
/// expanded to floats in natural element order.
trait DeqFmt: Fmt {
    /// Block `b`'s scale (Q2: the sub-scale `k`).
    unsafe fn scale(row: *const u8, cols: usize, b: usize) -> f32;
    /// Block `b`'s 32 values before scaling, elements 0..16 and 16..32.
    unsafe fn values(row: *const u8, cols: usize, b: usize) -> (__m512, __m512);
}

/// Bytes 0..16 and 16..32 of `v` as f32 (unsigned).
#[inline(always)]
unsafe fn u8x32_to_f32(v: __m256i) -> (__m512, __m512) {
    // SAFETY: an inline helper of kernels that run only where
    // detection found the CPU features these intrinsics need.
    unsafe {
        (
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(v))),
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256::<1>(v))),
        )
    }
}

impl DeqFmt for Q2F {
    #[inline(always)]
    unsafe fn scale(row: *const u8, cols: usize, b: usize) -> f32 {
        // SAFETY: the sub-scale byte of block b is inside the row.
        let v = unsafe { *row.add(q2_row_layout(cols).1 + b / 2) };
        ((v >> (4 * (b % 2))) & 15) as f32
    }

    #[inline(always)]
    unsafe fn values(row: *const u8, _cols: usize, b: usize) -> (__m512, __m512) {
        // SAFETY: the 8 code bytes of block b are inside the row.
        unsafe {
            let q = (row.add(Q2_ROW_HEADER + b * 8) as *const u64).read_unaligned();
            let c = _mm256_srlv_epi64(_mm256_set1_epi64x(q as i64), _mm256_set_epi64x(6, 4, 2, 0));
            let (lo, hi) = u8x32_to_f32(_mm256_and_si256(c, _mm256_set1_epi8(3)));
            let h = _mm512_set1_ps(1.5);
            (_mm512_sub_ps(lo, h), _mm512_sub_ps(hi, h))
        }
    }
}

impl DeqFmt for Q4F {
    #[inline(always)]
    unsafe fn scale(row: *const u8, _cols: usize, b: usize) -> f32 {
        // SAFETY: the row starts with its f16 scales.
        f16_to_f32(unsafe { (row.add(2 * b) as *const u16).read_unaligned() })
    }

    #[inline(always)]
    unsafe fn values(row: *const u8, cols: usize, b: usize) -> (__m512, __m512) {
        // SAFETY: the 16 code bytes of block b are inside the row.
        unsafe {
            let q = _mm_loadu_si128(row.add(scales_bytes(cols / QK) + 16 * b) as *const __m128i);
            let m = _mm_set1_epi8(0x0f);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, m)));
            let hi =
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m)));
            let e = _mm512_set1_ps(8.0);
            (_mm512_sub_ps(lo, e), _mm512_sub_ps(hi, e))
        }
    }
}

impl DeqFmt for Q8F {
    #[inline(always)]
    unsafe fn scale(row: *const u8, _cols: usize, b: usize) -> f32 {
        // SAFETY: the row starts with its f16 scales.
        f16_to_f32(unsafe { (row.add(2 * b) as *const u16).read_unaligned() })
    }

    #[inline(always)]
    unsafe fn values(row: *const u8, cols: usize, b: usize) -> (__m512, __m512) {
        // SAFETY: the 32 value bytes of block b are inside the row.
        unsafe {
            let p = row.add(scales_bytes(cols / QK) + 32 * b);
            let lo = _mm_loadu_si128(p as *const __m128i);
            let hi = _mm_loadu_si128(p.add(16) as *const __m128i);
            (
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
            )
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn deq_rows<F: DeqFmt>(w: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let rb = F::row_bytes(cols);
    // SAFETY: whole rows of `w` (checked by the caller) and 32 floats of `x` per block.
    unsafe {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
            let rp = row.as_ptr();
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for b in 0..cols / QK {
                let (lo, hi) = F::values(rp, cols, b);
                let s = _mm512_set1_ps(F::scale(rp, cols, b));
                let xp = x.as_ptr().add(b * QK);
                a0 = _mm512_fmadd_ps(_mm512_mul_ps(lo, s), _mm512_loadu_ps(xp), a0);
                a1 = _mm512_fmadd_ps(_mm512_mul_ps(hi, s), _mm512_loadu_ps(xp.add(16)), a1);
            }
            *o = F::row_scale(rp) * _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    }
}

/// Q2 rows against f32 activations (weights expanded to f32 on the fly).
pub fn q2_f32(rows: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && x.len() == cols
            && rows.len() == out.len() * Q2F::row_bytes(cols)
    );
    // SAFETY: features and sizes checked.
    unsafe { deq_rows::<Q2F>(rows, cols, x, out) }
}

/// Q4 rows against f32 activations.
pub fn q4_f32(rows: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && x.len() == cols
            && rows.len() == out.len() * Q4F::row_bytes(cols)
    );
    // SAFETY: features and sizes checked.
    unsafe { deq_rows::<Q4F>(rows, cols, x, out) }
}

/// Q8 rows against f32 activations.
pub fn q8_f32(rows: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && x.len() == cols
            && rows.len() == out.len() * Q8F::row_bytes(cols)
    );
    // SAFETY: features and sizes checked.
    unsafe { deq_rows::<Q8F>(rows, cols, x, out) }
}

/// Quantize activations into int8 blocks, bit-identical to
/// [`super::scalar::quantize_act`]; false if `x` holds NaN or inf.
pub fn quantize_act(x: &[f32], out: &mut [Q8ActBlock]) -> bool {
    check();
    assert_eq!(x.len(), out.len() * QK);
    // SAFETY: features checked; sizes checked.
    unsafe { quantize_act_impl(x, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_act_impl(x: &[f32], out: &mut [Q8ActBlock]) -> bool {
    let mut finite = 0xffffu16;
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        // SAFETY: 32 floats per block, 16 bytes stored per half of `qs`.
        unsafe {
            let v0 = _mm512_loadu_ps(xs.as_ptr());
            let v1 = _mm512_loadu_ps(xs.as_ptr().add(16));
            // x - x is 0 exactly for finite x, NaN otherwise.
            let z = _mm512_setzero_ps();
            finite &= _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_sub_ps(v0, v0), z)
                & _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_sub_ps(v1, v1), z);
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = super::scalar::act_scale(amax);
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
            let scaled = |v: __m512| {
                _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, _mm512_set1_ps(id)), lo), hi)
            };
            // Round to nearest even (the MXCSR default), as the scalar reference.
            let q0 = _mm512_cvtps_epi32(scaled(v0));
            let q1 = _mm512_cvtps_epi32(scaled(v1));
            _mm_storeu_si128(
                blk.qs.as_mut_ptr() as *mut __m128i,
                _mm512_cvtsepi32_epi8(q0),
            );
            _mm_storeu_si128(
                blk.qs.as_mut_ptr().add(16) as *mut __m128i,
                _mm512_cvtsepi32_epi8(q1),
            );
            blk.d = d;
            blk.sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
    finite == 0xffff
}

/// f32 rows against f32 activations.
pub fn f32_f32(rows: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
    check();
    assert!(x.len() == cols && rows.len() == out.len() * cols);
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols)) {
        // SAFETY: features checked; equal lengths.
        *o = unsafe { dot_impl(row, x) };
    }
}

/// `sum a[i] * b[i]`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    check();
    assert_eq!(a.len(), b.len());
    // SAFETY: features checked; equal lengths.
    unsafe { dot_impl(a, b) }
}

#[target_feature(enable = "avx512f")]
unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: full loads for i + 64 <= n / i + 16 <= n, the tail is a masked load.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let j = i + 16 * k;
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(j)), _mm512_loadu_ps(pb.add(j)), *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i)),
                _mm512_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 16;
        }
        if i < n {
            let m = lanes(n - i);
            acc[1] = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, pa.add(i)),
                _mm512_maskz_loadu_ps(m, pb.add(i)),
                acc[1],
            );
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}

/// f16 rows against f32 activations.
pub fn f16_f32(rows: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
    check();
    assert!(x.len() == cols && rows.len() == out.len() * cols);
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(cols)) {
        // SAFETY: features checked; equal lengths.
        *o = unsafe { dot_f16_impl(row, x) };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_f16_impl(h: &[u16], x: &[f32]) -> f32 {
    let n = h.len();
    let (ph, px) = (h.as_ptr(), x.as_ptr());
    // SAFETY: full loads for i + 32 <= n / i + 16 <= n, the tail is a masked load.
    unsafe {
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(ph.add(i) as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(ph.add(i + 16) as *const __m256i));
            a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(px.add(i)), a0);
            a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(px.add(i + 16)), a1);
            i += 32;
        }
        while i < n {
            let m = lanes(n - i);
            let w = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, ph.add(i) as *const i16));
            a0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, px.add(i)), a0);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn deq_to<F: DeqFmt>(row: &[u8], out: &mut [f32]) {
    let cols = out.len();
    // SAFETY: the caller checked row.len() == row_bytes(cols); each block
    // writes 32 floats inside `out`.
    unsafe {
        let rp = row.as_ptr();
        let rs = F::row_scale(rp);
        for b in 0..cols / QK {
            let (lo, hi) = F::values(rp, cols, b);
            let s = _mm512_set1_ps(rs * F::scale(rp, cols, b));
            let op = out.as_mut_ptr().add(b * QK);
            _mm512_storeu_ps(op, _mm512_mul_ps(lo, s));
            _mm512_storeu_ps(op.add(16), _mm512_mul_ps(hi, s));
        }
    }
}

/// Dequantize one Q2/Q4/Q8 row, bit-identical to the scalar reference
/// (`row.len()` must be the format's row size for `out.len()` columns).
/// Returns false for other formats (the caller falls back to scalar).
pub fn dequantize_row(format: crate::QuantFormat, row: &[u8], out: &mut [f32]) -> bool {
    check();
    let cols = out.len();
    if !cols.is_multiple_of(QK) {
        return false;
    }
    // SAFETY: features checked; sizes asserted per format.
    unsafe {
        match format {
            crate::QuantFormat::Q2 => {
                assert_eq!(row.len(), Q2F::row_bytes(cols));
                deq_to::<Q2F>(row, out)
            }
            crate::QuantFormat::Q4 => {
                assert_eq!(row.len(), Q4F::row_bytes(cols));
                deq_to::<Q4F>(row, out)
            }
            crate::QuantFormat::Q8 => {
                assert_eq!(row.len(), Q8F::row_bytes(cols));
                deq_to::<Q8F>(row, out)
            }
            _ => return false,
        }
    }
    true
}
