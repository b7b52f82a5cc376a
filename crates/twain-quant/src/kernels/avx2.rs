//! AVX2 + FMA + F16C kernels.
//!
//! Q2 and Q4 rows run a pair of blocks (64 weights) per step: codes are
//! unpacked to 2 x 32 unsigned bytes in `PairOrder::Half`, multiplied with
//! the int8 activations by two `vpmaddubsw`, added as int16 (no overflow: at
//! most 4 x 15 x 127 x 2) and widened by one `vpmaddwd` into 8 int32 lanes,
//! 4 per block. Four pairs (a group of 8 blocks) are folded by three `vphaddd`
//! into one vector of 8 block sums in `GROUP_ORDER`, which is seeded with the
//! blocks' offset terms, converted to f32 once and multiplied by the 8 blocks'
//! weight-times-activation scales: the float work is per 8 blocks, not per block.
//!
//! Q8 runs one block per step the same way without the grouping (its int16
//! products would overflow a sum of two).

// Register tiles are indexed by (row, column) in several arrays at once.
#![allow(clippy::needless_range_loop)]
use super::scalar::q2_row_layout;
use super::{
    gemv_via, scalar, ActPanel, Backend, Kernels, OutTile, PairOrder, PanelKind, PACK_MIN_N,
};
use crate::blocks::{f16_to_f32, scales_bytes, Q8ActBlock, Q2_ROW_HEADER, QK};
use crate::QuantFormat;
use std::arch::x86_64::*;

/// Whether this CPU has AVX2, FMA and F16C.
pub fn is_supported() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// The AVX2 table.
pub static KERNELS: Kernels = Kernels {
    backend: Backend::Avx2,
    q2_q8,
    q4_q8,
    q8_q8,
    q2_f32,
    q4_f32,
    q8_f32,
    f32_f32,
    f16_f32,
    quantize_act,
    dot_f32,
    axpy_f32,
    dot_i8_f32,
    axpy_i8,
    q2_gemm,
    q4_gemm,
    q8_gemm,
    panel,
    f32_gemm: Some(f32_gemm),
    f16_gemm: Some(f16_gemm),
};

fn check() {
    assert!(
        is_supported(),
        "AVX2 kernels called on a CPU without AVX2/FMA/F16C"
    );
}

fn panel(f: QuantFormat) -> PanelKind {
    match f {
        // Doubled codes: the offset term -1.5 sum becomes -3 sum; 0.5 goes into dx.
        QuantFormat::Q2 => PanelKind::Simd {
            corr: -3,
            dx_mul: 0.5,
            order: PairOrder::Half,
            packed: true,
            lanes: None,
        },
        QuantFormat::Q4 => PanelKind::Simd {
            corr: -8,
            dx_mul: 1.0,
            order: PairOrder::Half,
            packed: true,
            lanes: None,
        },
        // Signed x signed via the sign trick: no offset term.
        QuantFormat::Q8 => PanelKind::Simd {
            corr: 0,
            dx_mul: 1.0,
            order: PairOrder::Natural,
            packed: false,
            lanes: None,
        },
        _ => PanelKind::Blocks,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// A quantized row format as the AVX2 kernels see it (one block per step).
pub(super) trait Fmt {
    fn row_bytes(cols: usize) -> usize;
    /// Factor applied to the row's sum (Q2: the row scale `d`).
    unsafe fn row_scale(row: *const u8) -> f32;
    /// Weight scale of block `b`.
    unsafe fn scale(row: *const u8, cols: usize, b: usize) -> f32;
    /// Block `b`'s 32 values before scaling, as 4 x 8 floats in element order.
    unsafe fn values(row: *const u8, cols: usize, b: usize) -> [__m256; 4];
}

/// The 32 bytes of `v` as 4 x 8 f32 (signed or unsigned).
#[inline(always)]
unsafe fn bytes_to_f32<const SIGNED: bool>(v: __m256i) -> [__m256; 4] {
    // SAFETY: an inline helper of kernels that run only where
    // detection found the CPU features these intrinsics need.
    unsafe {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256::<1>(v);
        let cvt = |q: __m128i| {
            let i = if SIGNED {
                _mm256_cvtepi8_epi32(q)
            } else {
                _mm256_cvtepu8_epi32(q)
            };
            _mm256_cvtepi32_ps(i)
        };
        [
            cvt(lo),
            cvt(_mm_srli_si128::<8>(lo)),
            cvt(hi),
            cvt(_mm_srli_si128::<8>(hi)),
        ]
    }
}

pub(super) struct Q2F;
pub(super) struct Q4F;
pub(super) struct Q8F;

impl Fmt for Q2F {
    fn row_bytes(cols: usize) -> usize {
        q2_row_layout(cols).2
    }

    #[inline(always)]
    unsafe fn row_scale(row: *const u8) -> f32 {
        // SAFETY: the row starts with its 4-byte scale.
        f32::from_le_bytes(unsafe { *(row as *const [u8; 4]) })
    }

    #[inline(always)]
    unsafe fn scale(row: *const u8, cols: usize, b: usize) -> f32 {
        // SAFETY: the sub-scale byte of block b is inside the row.
        let v = unsafe { *row.add(q2_row_layout(cols).1 + b / 2) };
        ((v >> (4 * (b % 2))) & 15) as f32
    }

    #[inline(always)]
    unsafe fn values(row: *const u8, _cols: usize, b: usize) -> [__m256; 4] {
        // SAFETY: the 8 code bytes of block b are inside the row.
        unsafe {
            let q = (row.add(Q2_ROW_HEADER + b * 8) as *const u64).read_unaligned();
            let c = _mm256_srlv_epi64(_mm256_set1_epi64x(q as i64), _mm256_set_epi64x(6, 4, 2, 0));
            let v = bytes_to_f32::<false>(_mm256_and_si256(c, _mm256_set1_epi8(3)));
            v.map(|v| _mm256_sub_ps(v, _mm256_set1_ps(1.5)))
        }
    }
}

impl Fmt for Q4F {
    fn row_bytes(cols: usize) -> usize {
        cols / QK * 18
    }

    #[inline(always)]
    unsafe fn row_scale(_row: *const u8) -> f32 {
        1.0
    }

    #[inline(always)]
    unsafe fn scale(row: *const u8, _cols: usize, b: usize) -> f32 {
        // SAFETY: the row starts with its f16 scales.
        unsafe {
            let h = (row.add(2 * b) as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
        }
    }

    #[inline(always)]
    unsafe fn values(row: *const u8, cols: usize, b: usize) -> [__m256; 4] {
        // SAFETY: the 16 code bytes of block b are inside the row.
        unsafe {
            let q = _mm_loadu_si128(row.add(scales_bytes(cols / QK) + 16 * b) as *const __m128i);
            let u = _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
                _mm256_set1_epi8(0x0f),
            );
            bytes_to_f32::<false>(u).map(|v| _mm256_sub_ps(v, _mm256_set1_ps(8.0)))
        }
    }
}

impl Fmt for Q8F {
    fn row_bytes(cols: usize) -> usize {
        cols / QK * 34
    }

    #[inline(always)]
    unsafe fn row_scale(_row: *const u8) -> f32 {
        1.0
    }

    #[inline(always)]
    unsafe fn scale(row: *const u8, _cols: usize, b: usize) -> f32 {
        // SAFETY: the row starts with its f16 scales.
        unsafe {
            let h = (row.add(2 * b) as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
        }
    }

    #[inline(always)]
    unsafe fn values(row: *const u8, cols: usize, b: usize) -> [__m256; 4] {
        // SAFETY: the 32 value bytes of block b are inside the row.
        unsafe {
            let q = _mm256_loadu_si256(row.add(scales_bytes(cols / QK) + 32 * b) as *const __m256i);
            bytes_to_f32::<true>(q)
        }
    }
}

/// A format whose blocks unpack to 32 unsigned codes (Q2, Q4, and Q8 biased
/// by 128): what the packed kernels transpose.
pub(super) trait Unpack: Fmt {
    /// Unsigned codes of block `b` in element order (32 bytes).
    unsafe fn block(row: *const u8, cols: usize, b: usize) -> __m256i;
    /// Weight scale of block `b` times the row scale.
    unsafe fn block_scale(row: *const u8, cols: usize, b: usize) -> f32;
}

impl Unpack for Q8F {
    #[inline(always)]
    unsafe fn block(row: *const u8, cols: usize, b: usize) -> __m256i {
        // SAFETY: reads the 32 code bytes of block b; q + 128 as unsigned.
        unsafe {
            let q = _mm256_loadu_si256(row.add(scales_bytes(cols / QK) + 32 * b) as *const __m256i);
            _mm256_xor_si256(q, _mm256_set1_epi8(-128))
        }
    }

    #[inline(always)]
    unsafe fn block_scale(row: *const u8, cols: usize, b: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { Self::scale(row, cols, b) }
    }
}

/// A format that runs in groups of 8 blocks (Q2, Q4).
pub(super) trait Grouped: Unpack {
    /// Unsigned codes of blocks `b` and `b + 1` in [`PairOrder::Half`]:
    /// (elements 0..16 of b, of b + 1), (elements 16..32 of b, of b + 1);
    /// block b + 1's halves are zero when `pair` is false.
    unsafe fn pair(row: *const u8, cols: usize, b: usize, pair: bool) -> (__m256i, __m256i);
    /// Weight scales of blocks `g0 .. g0 + m` (`g0` a multiple of 8, `m <= 8`)
    /// in [`super::GROUP_ORDER`], zeros for blocks past `m`.
    unsafe fn gscales(row: *const u8, cols: usize, g0: usize, m: usize) -> __m256;
}

/// Lane `i` set (all ones) where `GROUP_ORDER[i] < m`.
#[inline(always)]
unsafe fn group_mask(m: usize) -> __m256 {
    // SAFETY: plain arithmetic on registers.
    unsafe {
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(m as i32),
            _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7),
        ))
    }
}

impl Unpack for Q2F {
    #[inline(always)]
    unsafe fn block(row: *const u8, _cols: usize, b: usize) -> __m256i {
        // SAFETY: reads the 8 code bytes of block b.
        unsafe {
            let q = (row.add(Q2_ROW_HEADER + b * 8) as *const u64).read_unaligned();
            let c = _mm256_srlv_epi64(_mm256_set1_epi64x(q as i64), _mm256_set_epi64x(6, 4, 2, 0));
            let c = _mm256_and_si256(c, _mm256_set1_epi8(3));
            _mm256_add_epi8(c, c)
        }
    }

    #[inline(always)]
    unsafe fn block_scale(row: *const u8, cols: usize, b: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { Self::row_scale(row) * Self::scale(row, cols, b) }
    }
}

impl Grouped for Q2F {
    #[inline(always)]
    unsafe fn pair(row: *const u8, _cols: usize, b: usize, pair: bool) -> (__m256i, __m256i) {
        // SAFETY: reads the 8 code bytes of block b (16 of b, b + 1 when `pair`).
        unsafe {
            let p = row.add(Q2_ROW_HEADER + b * 8) as *const __m128i;
            let q = if pair {
                _mm_loadu_si128(p)
            } else {
                _mm_loadl_epi64(p)
            };
            // Qwords [q_b, q_b, q_b+1, q_b+1]; qword i of a block holds elements
            // 8i..8i+8 at bits 2i..2i+1 of each byte. Doubled codes 2c come out
            // of shifts by 2i - 1 and a mask of 6.
            let v = _mm256_permute4x64_epi64::<0b01_01_00_00>(_mm256_castsi128_si256(q));
            let six = _mm256_set1_epi8(6);
            let lo = _mm256_srlv_epi64(_mm256_slli_epi64::<1>(v), _mm256_set_epi64x(2, 0, 2, 0));
            let hi = _mm256_srlv_epi64(v, _mm256_set_epi64x(5, 3, 5, 3));
            (_mm256_and_si256(lo, six), _mm256_and_si256(hi, six))
        }
    }

    #[inline(always)]
    unsafe fn gscales(row: *const u8, cols: usize, g0: usize, m: usize) -> __m256 {
        let (_, s0, end) = q2_row_layout(cols);
        // SAFETY: reads the 4 sub-scale bytes of blocks g0 .. g0 + 8; for a
        // shorter group, the 4 bytes ending at the row's end when the row has
        // them (shifted down to start at block g0), else a copy.
        unsafe {
            let at = s0 + g0 / 2;
            let bits = if at + 4 <= end {
                (row.add(at) as *const u32).read_unaligned()
            } else if end >= 4 {
                (row.add(end - 4) as *const u32).read_unaligned() >> (8 * (at + 4 - end))
            } else {
                let mut b = [0u8; 4];
                std::ptr::copy_nonoverlapping(row.add(at), b.as_mut_ptr(), end - at);
                u32::from_le_bytes(b)
            };
            let v = _mm256_srlv_epi32(
                _mm256_set1_epi32(bits as i32),
                _mm256_setr_epi32(0, 8, 16, 24, 4, 12, 20, 28),
            );
            let s = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
            if m == 8 {
                s
            } else {
                _mm256_and_ps(s, group_mask(m))
            }
        }
    }
}

impl Unpack for Q4F {
    #[inline(always)]
    unsafe fn block(row: *const u8, cols: usize, b: usize) -> __m256i {
        // SAFETY: reads the 16 code bytes of block b.
        unsafe {
            let q = _mm_loadu_si128(row.add(scales_bytes(cols / QK) + 16 * b) as *const __m128i);
            _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
                _mm256_set1_epi8(0x0f),
            )
        }
    }

    #[inline(always)]
    unsafe fn block_scale(row: *const u8, cols: usize, b: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe { Self::scale(row, cols, b) }
    }
}

impl Grouped for Q4F {
    #[inline(always)]
    unsafe fn pair(row: *const u8, cols: usize, b: usize, pair: bool) -> (__m256i, __m256i) {
        // SAFETY: reads the 16 code bytes of block b (32 of b, b + 1 when `pair`).
        unsafe {
            let p = row.add(scales_bytes(cols / QK) + 16 * b);
            let v = if pair {
                _mm256_loadu_si256(p as *const __m256i)
            } else {
                _mm256_zextsi128_si256(_mm_loadu_si128(p as *const __m128i))
            };
            // Low nibbles are elements 0..16, high nibbles 16..32.
            let m = _mm256_set1_epi8(0x0f);
            (
                _mm256_and_si256(v, m),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
            )
        }
    }

    #[inline(always)]
    unsafe fn gscales(row: *const u8, _cols: usize, g0: usize, m: usize) -> __m256 {
        // SAFETY: reads 16 bytes from the scale of block g0: inside the row,
        // whose nb * 2 scale bytes are followed by nb * 16 code bytes. Lanes
        // past m (codes read as f16, possibly inf or NaN) are masked to zero.
        unsafe {
            let h = _mm_loadu_si128(row.add(2 * g0) as *const __m128i);
            let s = _mm256_permutevar8x32_ps(
                _mm256_cvtph_ps(h),
                _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7),
            );
            if m == 8 {
                s
            } else {
                _mm256_and_ps(s, group_mask(m))
            }
        }
    }
}

/// One group of `m` blocks from `g0` (a multiple of 8) of `R` rows times `C`
/// panel columns from `j0`, added to `acc`. Called with `m = 8` as a literal
/// for full groups so the block conditions fold away; `x` loads are left
/// inside the loops so they become memory operands and the pair sums fit the
/// 16 registers (acc, two half-group sums, the unpacked pair).
#[inline(always)]
unsafe fn group<F: Grouped, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    p: &ActPanel,
    j0: usize,
    g0: usize,
    m: usize,
    acc: &mut [[__m256; C]; R],
) {
    let rb = F::row_bytes(cols);
    let gi = g0 / 8;
    // SAFETY: as in `gtile`.
    unsafe {
        let row = |r: usize| w.add(r * rb);
        let ones = _mm256_set1_epi16(1);
        let zero = _mm256_setzero_si256();
        let mut t = [[zero; C]; R];
        let mut u = [[zero; C]; R];
        for k in 0..4 {
            let b = g0 + 2 * k;
            if 2 * k >= m {
                break;
            }
            let pair = 2 * k + 1 < m;
            for r in 0..R {
                let (lo, hi) = F::pair(row(r), cols, b, pair);
                for c in 0..C {
                    let xp = p.xs(j0 + c).add(b * QK) as *const __m256i;
                    let s = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xp)),
                        _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xp.add(1))),
                    );
                    let v = _mm256_madd_epi16(s, ones);
                    match k {
                        0 => t[r][c] = v,
                        1 => t[r][c] = _mm256_hadd_epi32(t[r][c], v),
                        2 => u[r][c] = v,
                        _ => u[r][c] = _mm256_hadd_epi32(u[r][c], v),
                    }
                }
            }
        }
        // Groups of fewer than 3 pairs: fold the missing pairs' zeros.
        if m <= 2 {
            for r in 0..R {
                for c in 0..C {
                    t[r][c] = _mm256_hadd_epi32(t[r][c], zero);
                }
            }
        }
        if m <= 6 {
            for r in 0..R {
                for c in 0..C {
                    u[r][c] = _mm256_hadd_epi32(u[r][c], zero);
                }
            }
        }
        let mut ws = [_mm256_setzero_ps(); R];
        for r in 0..R {
            ws[r] = F::gscales(row(r), cols, g0, m);
        }
        for c in 0..C {
            let seed = _mm256_loadu_si256(p.gseed(j0 + c).add(gi * 8) as *const __m256i);
            let dx = _mm256_loadu_ps(p.gdx(j0 + c).add(gi * 8));
            for r in 0..R {
                let s = _mm256_add_epi32(_mm256_hadd_epi32(t[r][c], u[r][c]), seed);
                acc[r][c] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(ws[r], dx), acc[r][c]);
            }
        }
    }
}

/// `R` rows times `C` panel columns from `j0` in groups of 8 blocks (see the
/// module docs), one f32 accumulator per (row, column).
#[inline(always)]
unsafe fn gtile<F: Grouped, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    p: &ActPanel,
    j0: usize,
    out: &OutTile<'_>,
    r0: usize,
) {
    let nb = cols / QK;
    let rb = F::row_bytes(cols);
    // SAFETY: whole rows (caller); panel reads stay inside its padded columns
    // (the pair loads read the pad block when nb is odd); the caller owns rows
    // r0 .. r0 + R of `out`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let full = nb / 8;
        for gi in 0..full {
            group::<F, R, C>(w, cols, p, j0, 8 * gi, 8, &mut acc);
        }
        if !nb.is_multiple_of(8) {
            group::<F, R, C>(w, cols, p, j0, 8 * full, nb % 8, &mut acc);
        }
        for r in 0..R {
            let d = F::row_scale(w.add(r * rb));
            for c in 0..C {
                out.put(j0 + c, r0 + r, d * hsum(acc[r][c]));
            }
        }
    }
}

/// Rows of a packed tile: one per int32 lane.
const PACK_ROWS: usize = 8;
/// Columns per packed register tile: 4 int16 sums, 4 float accumulators,
/// the codes, the broadcast activations and the scales fit the 16 registers
/// (6 columns spill: 113 against 126 GFLOP/s on Zen 3).
const PACK_COLS: usize = 4;

/// Up to 8 rows repacked so that a 32-bit lane is a row: per block, 8 vectors
/// (vector `k` holds codes `4k .. 4k + 4` of every row) and the 8 rows' scales.
struct Packed {
    codes: Vec<__m256i>,
    scales: Vec<__m256>,
}

/// Transpose 8 vectors of 8 dwords in place.
#[inline(always)]
pub(super) unsafe fn transpose8(v: &mut [__m256i; 8]) {
    // SAFETY: register shuffles only.
    unsafe {
        let t: [__m256i; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[i & !1], v[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
        // t[0] = a0 b0 a1 b1 | a4 b4 a5 b5, t[1] = a2 b2 a3 b3 | ...
        let u: [__m256i; 8] = std::array::from_fn(|i| {
            let base = (i / 4) * 4;
            let (a, b) = (t[base + (i % 2)], t[base + 2 + (i % 2)]);
            if (i / 2) % 2 == 0 {
                _mm256_unpacklo_epi64(a, b)
            } else {
                _mm256_unpackhi_epi64(a, b)
            }
        });
        // u[0] = col 0 of rows 0-3 | col 4, u[2] = col 1 | col 5, u[1] = col 2 | col 6,
        // u[3] = col 3 | col 7; u[4..8] the same for rows 4-7.
        let order = [0, 2, 1, 3];
        for k in 0..4 {
            let (a, b) = (u[order[k]], u[4 + order[k]]);
            v[k] = _mm256_permute2x128_si256::<0x20>(a, b);
            v[k + 4] = _mm256_permute2x128_si256::<0x31>(a, b);
        }
    }
}

impl Packed {
    /// Pack rows `0 .. m` at `w` (`m <= 8`); lanes `m..` hold zeros.
    #[inline(always)]
    unsafe fn fill<F: Unpack>(&mut self, w: *const u8, cols: usize, m: usize) {
        let nb = cols / QK;
        let rb = F::row_bytes(cols);
        // SAFETY: rows 0..m are whole rows inside the matrix, and the CPU has
        // the features of this module's kernels (caller).
        unsafe {
            self.codes.clear();
            self.codes.resize(nb * 8, _mm256_setzero_si256());
            self.scales.clear();
            self.scales.resize(nb, _mm256_setzero_ps());
            for b in 0..nb {
                let mut v = [_mm256_setzero_si256(); 8];
                let mut sc = [0.0f32; 8];
                for r in 0..m {
                    v[r] = F::block(w.add(r * rb), cols, b);
                    sc[r] = F::block_scale(w.add(r * rb), cols, b);
                }
                transpose8(&mut v);
                self.codes[b * 8..b * 8 + 8].copy_from_slice(&v);
                self.scales[b] = _mm256_loadu_ps(sc.as_ptr());
            }
        }
    }
}

/// The packed rows times `C` panel columns from `j0`, written to rows
/// `r0 .. r0 + m` of `out`: per block, each column's activations are
/// broadcast 4 at a time against the 8 rows' codes, the 8 `vpmaddubsw`
/// products summed as int16 (at most 8 x 2 x 15 x 127 < 2^15), widened once,
/// seeded with the block's offset term and scaled into one float accumulator.
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
    // SAFETY: panel reads stay inside its padded columns; the caller owns rows
    // r0 .. r0 + m of `out`.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let n = p.n();
        let (xt, bt, dt) = (p.xt().as_ptr(), p.bt().as_ptr(), p.dt().as_ptr());
        let mut acc = [_mm256_setzero_ps(); C];
        for b in 0..nb {
            let mut s = [_mm256_setzero_si256(); C];
            for k in 0..8 {
                let wv = _mm256_load_si256(pk.codes.as_ptr().add(b * 8 + k));
                // The C columns' dwords sit side by side.
                let xr = xt.add((b * 8 + k) * n + j0);
                for c in 0..C {
                    let x = _mm256_set1_epi32(*xr.add(c));
                    s[c] = _mm256_add_epi16(s[c], _mm256_maddubs_epi16(wv, x));
                }
            }
            let ws = pk.scales[b];
            let (sb, db) = (bt.add(b * n + j0), dt.add(b * n + j0));
            for c in 0..C {
                let i =
                    _mm256_add_epi32(_mm256_madd_epi16(s[c], ones), _mm256_set1_epi32(*sb.add(c)));
                let k = _mm256_mul_ps(ws, _mm256_set1_ps(*db.add(c)));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), k, acc[c]);
            }
        }
        for c in 0..C {
            let mut v = [0.0f32; 8];
            _mm256_storeu_ps(v.as_mut_ptr(), acc[c]);
            for (r, v) in v.iter().enumerate().take(m) {
                out.put(j0 + c, r0 + r, *v);
            }
        }
    }
}

/// Every row of `w` times every panel column through [`Packed`] tiles of 8
/// rows and register tiles of 8 rows x `PACK_COLS` columns.
#[inline(always)]
unsafe fn gemm_packed<F: Grouped>(
    w: &[u8],
    cols: usize,
    p: &ActPanel,
    out: &OutTile<'_>,
    r0: usize,
) {
    let rb = F::row_bytes(cols);
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
                match c {
                    4 => packed_tile::<4>(&pk, nb, p, j, out, r0 + r, m),
                    3 => packed_tile::<3>(&pk, nb, p, j, out, r0 + r, m),
                    2 => packed_tile::<2>(&pk, nb, p, j, out, r0 + r, m),
                    _ => packed_tile::<1>(&pk, nb, p, j, out, r0 + r, m),
                }
                j += c;
            }
            r += m;
        }
    }
}

/// Rows per single-vector tile of the grouped kernel (best of 2, 3, 4 on Zen 3).
const GEMV_ROWS: usize = 3;
/// Columns per batch tile of the grouped kernel: 4 accumulators, 8 half-group
/// sums and the unpacked pair fill the 16 registers.
const GEMM_COLS: usize = 4;

/// [`gemm`] for the grouped formats: `GEMV_ROWS` rows x 1 column for a single
/// vector (prefetching ahead), 1 row x `GEMM_COLS` columns for batches.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ggemm<F: Grouped>(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    let rb = F::row_bytes(cols);
    let rows = w.len() / rb;
    let n = p.n();
    let base = w.as_ptr();
    // SAFETY: every tile gets whole rows inside `w` and columns inside the panel;
    // the caller owns rows r0 .. r0 + rows of `out`.
    unsafe {
        if n == 1 {
            let end = base.add(rows * rb);
            let ahead = PREFETCH_ROWS * rb;
            let mut r = 0;
            while r + GEMV_ROWS <= rows {
                let next = base.wrapping_add((r + GEMV_ROWS) * rb + ahead);
                let mut q = base.wrapping_add(r * rb + ahead);
                while q < next && q < end {
                    _mm_prefetch::<_MM_HINT_T0>(q as *const i8);
                    q = q.wrapping_add(64);
                }
                gtile::<F, GEMV_ROWS, 1>(base.add(r * rb), cols, p, 0, out, r0 + r);
                r += GEMV_ROWS;
            }
            while r < rows {
                gtile::<F, 1, 1>(base.add(r * rb), cols, p, 0, out, r0 + r);
                r += 1;
            }
            return;
        }
        if n >= PACK_MIN_N {
            gemm_packed::<F>(w, cols, p, out, r0);
            return;
        }
        // Column groups outermost: a group's activations stay in L1 while every
        // row of this call passes over them.
        let mut j = 0;
        while j + GEMM_COLS <= n {
            for r in 0..rows {
                gtile::<F, 1, GEMM_COLS>(base.add(r * rb), cols, p, j, out, r0 + r);
            }
            j += GEMM_COLS;
        }
        let rest = n - j;
        for r in 0..rows {
            let wr = base.add(r * rb);
            match rest {
                3 => gtile::<F, 1, 3>(wr, cols, p, j, out, r0 + r),
                2 => gtile::<F, 1, 2>(wr, cols, p, j, out, r0 + r),
                1 => gtile::<F, 1, 1>(wr, cols, p, j, out, r0 + r),
                _ => {}
            }
        }
    }
}

impl Q8F {
    /// 8 int32 partial sums of block `b`'s values times the 32 int8 values `x`.
    #[inline(always)]
    unsafe fn dot(row: *const u8, cols: usize, b: usize, x: __m256i) -> __m256i {
        // SAFETY: the 32 value bytes of block b are inside the row.
        unsafe {
            let q = _mm256_loadu_si256(row.add(scales_bytes(cols / QK) + 32 * b) as *const __m256i);
            // |w| (unsigned) times x with w's sign: exact, |w| <= 127.
            let s = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
            _mm256_madd_epi16(s, _mm256_set1_epi16(1))
        }
    }
}

/// `R` Q8 rows times `C` panel columns from `j0`, one f32 accumulator each.
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    p: &ActPanel,
    j0: usize,
    out: &OutTile<'_>,
    r0: usize,
) {
    type F = Q8F;
    let nb = cols / QK;
    let rb = F::row_bytes(cols);
    // SAFETY: whole rows (caller), panel reads inside its padded columns, the
    // caller owns rows r0 .. r0 + R of `out`.
    unsafe {
        let row = |r: usize| w.add(r * rb);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..nb {
            let mut seed = [_mm256_setzero_si256(); C];
            let mut x = [_mm256_setzero_si256(); C];
            let mut dx = [0.0f32; C];
            for c in 0..C {
                seed[c] = _mm256_loadu_si256(p.seed(j0 + c).add(b * 8) as *const __m256i);
                x[c] = _mm256_loadu_si256(p.xs(j0 + c).add(b * QK) as *const __m256i);
                dx[c] = p.dx(j0 + c)[b];
            }
            for r in 0..R {
                let ws = F::scale(row(r), cols, b);
                for c in 0..C {
                    let s = _mm256_add_epi32(F::dot(row(r), cols, b, x[c]), seed[c]);
                    acc[r][c] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(s),
                        _mm256_set1_ps(ws * dx[c]),
                        acc[r][c],
                    );
                }
            }
        }
        for r in 0..R {
            let d = F::row_scale(row(r));
            for c in 0..C {
                out.put(j0 + c, r0 + r, d * hsum(acc[r][c]));
            }
        }
    }
}

/// Rows a single-vector kernel prefetches ahead of the row it computes.
const PREFETCH_ROWS: usize = 32;

/// Q8 rows times every panel column: 4 rows x 1 column for a single vector,
/// 1 row x 4 columns for batches.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_q8(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    type F = Q8F;
    let rb = F::row_bytes(cols);
    let rows = w.len() / rb;
    let n = p.n();
    let base = w.as_ptr();
    // SAFETY: every tile gets whole rows inside `w` and columns inside the panel;
    // the caller owns rows r0 .. r0 + rows of `out`.
    unsafe {
        if n == 1 {
            // Prefetch rows ahead of the one computed (see avx512.rs).
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
                tile::<4, 1>(base.add(r * rb), cols, p, 0, out, r0 + r);
                r += 4;
            }
            while r < rows {
                tile::<1, 1>(base.add(r * rb), cols, p, 0, out, r0 + r);
                r += 1;
            }
            return;
        }
        // Column groups outermost: a group's activations stay in L1 while every
        // row of this call passes over them.
        let mut j = 0;
        while j + 4 <= n {
            for r in 0..rows {
                tile::<1, 4>(base.add(r * rb), cols, p, j, out, r0 + r);
            }
            j += 4;
        }
        while j < n {
            for r in 0..rows {
                tile::<1, 1>(base.add(r * rb), cols, p, j, out, r0 + r);
            }
            j += 1;
        }
    }
}

/// # Safety
/// See [`super::GemmFn`].
unsafe fn q2_gemm(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    check();
    // SAFETY: features checked; contract forwarded.
    unsafe { ggemm::<Q2F>(w, cols, p, out, r0) }
}

/// # Safety
/// See [`super::GemmFn`].
unsafe fn q4_gemm(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    check();
    // SAFETY: features checked; contract forwarded.
    unsafe { ggemm::<Q4F>(w, cols, p, out, r0) }
}

/// # Safety
/// See [`super::GemmFn`].
unsafe fn q8_gemm(w: &[u8], cols: usize, p: &ActPanel, out: &OutTile<'_>, r0: usize) {
    check();
    // SAFETY: features checked; contract forwarded.
    unsafe { gemm_q8(w, cols, p, out, r0) }
}

/// Q2 rows against int8 activations.
pub fn q2_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && act.len() == cols / QK
            && rows.len() == out.len() * Q2F::row_bytes(cols)
    );
    gemv_via(q2_gemm, panel(QuantFormat::Q2), rows, cols, act, out);
}

/// Q4 rows against int8 activations.
pub fn q4_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && act.len() == cols / QK
            && rows.len() == out.len() * Q4F::row_bytes(cols)
    );
    gemv_via(q4_gemm, panel(QuantFormat::Q4), rows, cols, act, out);
}

/// Q8 rows against int8 activations.
pub fn q8_q8(rows: &[u8], cols: usize, act: &[Q8ActBlock], out: &mut [f32]) {
    check();
    assert!(
        cols.is_multiple_of(QK)
            && act.len() == cols / QK
            && rows.len() == out.len() * Q8F::row_bytes(cols)
    );
    gemv_via(q8_gemm, panel(QuantFormat::Q8), rows, cols, act, out);
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn deq_rows<F: Fmt>(w: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
    let rb = F::row_bytes(cols);
    // SAFETY: whole rows of `w` (checked by the caller) and 32 floats of `x` per block.
    unsafe {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(rb)) {
            let rp = row.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..cols / QK {
                let v = F::values(rp, cols, b);
                let s = _mm256_set1_ps(F::scale(rp, cols, b));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(b * QK + 8 * i));
                    *a = _mm256_fmadd_ps(_mm256_mul_ps(v[i], s), xv, *a);
                }
            }
            let t = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            *o = F::row_scale(rp) * hsum(t);
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

#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_act_impl(x: &[f32], out: &mut [Q8ActBlock]) -> bool {
    let mut finite = -1i32;
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        // SAFETY: 32 floats per block, 32 bytes stored to `qs`.
        unsafe {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
            let z = _mm256_setzero_ps();
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_setzero_ps();
            for v in &v {
                // x - x is 0 exactly for finite x, NaN otherwise.
                finite &= _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_sub_ps(*v, *v), z))
                    | !0xff;
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *v));
            }
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let d = scalar::act_scale(_mm_cvtss_f32(m));
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
            // Round to nearest even (the MXCSR default), as the scalar reference.
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                _mm256_cvtps_epi32(_mm256_min_ps(
                    _mm256_max_ps(_mm256_mul_ps(v[i], id), lo),
                    hi,
                ))
            });
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let p = _mm256_permutevar8x32_epi32(p, _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0));
            _mm256_storeu_si256(blk.qs.as_mut_ptr() as *mut __m256i, p);
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            blk.d = d;
            blk.sum = _mm_cvtsi128_si32(s);
        }
    }
    finite == -1
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

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: vector loads only while i + 32 <= n / i + 8 <= n; the tail is scalar.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(j)), _mm256_loadu_ps(pb.add(j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut t = hsum(s);
        while i < n {
            t += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        t
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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_impl(h: &[u16], x: &[f32]) -> f32 {
    let n = h.len();
    let (ph, px) = (h.as_ptr(), x.as_ptr());
    // SAFETY: vector loads only while i + 16 <= n / i + 8 <= n; the tail is scalar.
    unsafe {
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i + 8) as *const __m128i));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(px.add(i)), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(px.add(i + 8)), a1);
            i += 16;
        }
        while i + 8 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i) as *const __m128i));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(px.add(i)), a0);
            i += 8;
        }
        let mut t = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            t += f16_to_f32(*ph.add(i)) * *px.add(i);
            i += 1;
        }
        t
    }
}

/// `y[i] += alpha * x[i]` (multiply then add, bit-identical to the scalar reference).
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    check();
    assert_eq!(x.len(), y.len());
    // SAFETY: features checked; equal lengths.
    unsafe { axpy_impl(alpha, x, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_impl(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    let mut i = 0;
    // SAFETY: vector accesses only while i + 8 <= n.
    unsafe {
        let a = _mm256_set1_ps(alpha);
        while i + 8 <= n {
            let py = y.as_mut_ptr().add(i);
            let v = _mm256_add_ps(
                _mm256_loadu_ps(py),
                _mm256_mul_ps(a, _mm256_loadu_ps(x.as_ptr().add(i))),
            );
            _mm256_storeu_ps(py, v);
            i += 8;
        }
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

/// `sum q[i] * x[i]` (no scale).
pub fn dot_i8_f32(q: &[i8], x: &[f32]) -> f32 {
    check();
    assert_eq!(q.len(), x.len());
    // SAFETY: features checked; equal lengths.
    unsafe { dot_i8_impl(q, x) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_impl(q: &[i8], x: &[f32]) -> f32 {
    let n = q.len();
    let mut i = 0;
    // SAFETY: 8-byte / 8-float loads only while i + 8 <= n; the tail is scalar.
    unsafe {
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        while i + 16 <= n {
            let q0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().add(i) as *const __m128i));
            let q1 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().add(i + 8) as *const __m128i));
            a0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(q0),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(q1),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                a1,
            );
            i += 16;
        }
        while i + 8 <= n {
            let q0 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().add(i) as *const __m128i));
            a0 = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(q0),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                a0,
            );
            i += 8;
        }
        let mut t = hsum(_mm256_add_ps(a0, a1));
        for j in i..n {
            t += q[j] as f32 * x[j];
        }
        t
    }
}

/// `y[i] += alpha * q[i]` (multiply then add, bit-identical to the scalar reference).
pub fn axpy_i8(alpha: f32, q: &[i8], y: &mut [f32]) {
    check();
    assert_eq!(q.len(), y.len());
    // SAFETY: features checked; equal lengths.
    unsafe { axpy_i8_impl(alpha, q, y) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_i8_impl(alpha: f32, q: &[i8], y: &mut [f32]) {
    let n = q.len();
    let mut i = 0;
    // SAFETY: vector accesses only while i + 8 <= n.
    unsafe {
        let a = _mm256_set1_ps(alpha);
        while i + 8 <= n {
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                q.as_ptr().add(i) as *const __m128i
            )));
            let py = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(py, _mm256_add_ps(_mm256_loadu_ps(py), _mm256_mul_ps(a, v)));
            i += 8;
        }
    }
    for j in i..n {
        y[j] += alpha * q[j] as f32;
    }
}

/// A float weight format as the AVX2 batched kernels see it.
trait FloatFmt {
    const BYTES: usize;
    /// 8 weights from element `i` of the row.
    unsafe fn load8(row: *const u8, i: usize) -> __m256;
    /// Weight `i` of the row.
    unsafe fn load1(row: *const u8, i: usize) -> f32;
}

struct F32F;
struct F16F;

impl FloatFmt for F32F {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> __m256 {
        // SAFETY: the caller passes 8 elements inside the row.
        unsafe { _mm256_loadu_ps((row as *const f32).add(i)) }
    }
    #[inline(always)]
    unsafe fn load1(row: *const u8, i: usize) -> f32 {
        // SAFETY: the caller passes an element inside the row.
        unsafe { (row as *const f32).add(i).read_unaligned() }
    }
}

impl FloatFmt for F16F {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(row: *const u8, i: usize) -> __m256 {
        // SAFETY: the caller passes 8 elements inside the row.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128((row as *const u16).add(i) as *const __m128i)) }
    }
    #[inline(always)]
    unsafe fn load1(row: *const u8, i: usize) -> f32 {
        // SAFETY: the caller passes an element inside the row.
        f16_to_f32(unsafe { (row as *const u16).add(i).read_unaligned() })
    }
}

/// `R` float rows times `C` columns of `x` from `j0`: one accumulator per
/// (row, column), each weight and activation vector loaded once per tile
/// (4 x 3 accumulators + 3 activations + 1 weight = 16 registers).
#[inline(always)]
unsafe fn float_tile<F: FloatFmt, const R: usize, const C: usize>(
    w: *const u8,
    cols: usize,
    x: &[f32],
    j0: usize,
    out: &OutTile<'_>,
    r0: usize,
) {
    // SAFETY: whole rows (caller), x columns j0 .. j0 + C exist (caller), the
    // vector loop stays below `cols`; the caller owns rows r0 .. r0 + R of `out`.
    unsafe {
        let rb = cols * F::BYTES;
        let xp = x.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        while i + 8 <= cols {
            let mut xv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm256_loadu_ps(xp.add((j0 + c) * cols + i));
            }
            for r in 0..R {
                let wv = F::load8(w.add(r * rb), i);
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
            i += 8;
        }
        for r in 0..R {
            for c in 0..C {
                let mut s = hsum(acc[r][c]);
                for k in i..cols {
                    s += F::load1(w.add(r * rb), k) * *xp.add((j0 + c) * cols + k);
                }
                out.put(j0 + c, r0 + r, s);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
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
            let c = (n - j).min(3);
            let mut r = 0;
            while r + 4 <= rows {
                let wr = base.add(r * rb);
                match c {
                    3 => float_tile::<F, 4, 3>(wr, cols, x, j, out, r0 + r),
                    2 => float_tile::<F, 4, 2>(wr, cols, x, j, out, r0 + r),
                    _ => float_tile::<F, 4, 1>(wr, cols, x, j, out, r0 + r),
                }
                r += 4;
            }
            while r < rows {
                let wr = base.add(r * rb);
                match c {
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
