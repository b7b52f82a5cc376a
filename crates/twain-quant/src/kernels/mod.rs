//! Kernel families and run-time dispatch.
//!
//! Every family fills one [`Kernels`] table of plain function pointers with the
//! same signatures as [`scalar`], the reference. The fastest family this CPU
//! supports is detected once ([`best`], cached in a `OnceLock`) and used by
//! [`crate::matmul`]; tests and benchmarks can list the supported families with
//! [`available`] and pick one with [`Kernels::get`] and [`crate::matmul_with`],
//! or call a family's functions directly (`kernels::avx512::q2_q8`, ...).
//!
//! Slice contracts shared by the public kernels (`nb = cols / 32`,
//! `r = out.len()`): `act.len() == nb`, `x.len() == cols`, and the weight slice
//! holds exactly `r` rows (`QuantFormat::row_bytes(cols)` bytes each for the
//! quantized formats). They check these and panic on a mismatch; the public
//! `matmul`/`matvec` validate first and return errors instead.
//!
//! Inside `matmul`, quantized formats go through each family's batched kernel
//! (crate-private `*_gemm`): activations are quantized and laid out once per
//! call ([`ActPanel`]), rows are split into chunks over rayon, and a chunk runs
//! register tiles. AVX-512: for one column (matvec, decode) Q2/Q4 put one
//! block per int32 lane, 16 blocks per `vpdpbusd` chain (with GFNI and VBMI;
//! else, and for Q8, 4 rows x 1 column over block pairs), 2 rows x 4 columns
//! (batches under 8 columns), and from 8 columns up (Q2/Q4/Q8) a packed kernel
//! that transposes 16 rows so that each 32-bit lane is a row and runs 8
//! `vpdpbusd` per block and column against broadcast activations. AVX2:
//! Q2/Q4 in groups of 8 blocks with 3 rows x 1 column (matvec) or 1 row x 4
//! columns (small batches), and from 8 columns up a packed kernel that
//! transposes 8 rows so that each 32-bit lane is a row (see `avx2.rs`).

use crate::blocks::{Q8ActBlock, QK};
use crate::QuantFormat;
use std::marker::PhantomData;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

/// A kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable scalar reference.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI, plus AVX2/FMA/F16C.
    Avx512Vnni,
}

impl Backend {
    /// Every family this crate knows, slowest first.
    pub const ALL: [Backend; 3] = [Backend::Scalar, Backend::Avx2, Backend::Avx512Vnni];

    /// Short name ("scalar", "avx2", "avx512vnni").
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512Vnni => "avx512vnni",
        }
    }

    /// Whether this CPU can run the family.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => avx2::is_supported(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => avx512::is_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Q2 rows x int8 activations.
pub type Q2Q8Fn = fn(&[u8], usize, &[Q8ActBlock], &mut [f32]);
/// Q4 rows x int8 activations.
pub type Q4Q8Fn = fn(&[u8], usize, &[Q8ActBlock], &mut [f32]);
/// Q8 rows x int8 activations.
pub type Q8Q8Fn = fn(&[u8], usize, &[Q8ActBlock], &mut [f32]);
/// Q2 rows x f32 activations.
pub type Q2F32Fn = fn(&[u8], usize, &[f32], &mut [f32]);
/// Q4 rows x f32 activations.
pub type Q4F32Fn = fn(&[u8], usize, &[f32], &mut [f32]);
/// Q8 rows x f32 activations.
pub type Q8F32Fn = fn(&[u8], usize, &[f32], &mut [f32]);
/// f32 rows x f32 activations.
pub type F32F32Fn = fn(&[f32], usize, &[f32], &mut [f32]);
/// f16 (bits) rows x f32 activations.
pub type F16F32Fn = fn(&[u16], usize, &[f32], &mut [f32]);

/// One kernel family's table (ggml's type-traits table, by role).
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// The family.
    pub backend: Backend,
    /// Q2 x int8.
    pub q2_q8: Q2Q8Fn,
    /// Q4 x int8.
    pub q4_q8: Q4Q8Fn,
    /// Q8 x int8.
    pub q8_q8: Q8Q8Fn,
    /// Q2 x f32.
    pub q2_f32: Q2F32Fn,
    /// Q4 x f32.
    pub q4_f32: Q4F32Fn,
    /// Q8 x f32.
    pub q8_f32: Q8F32Fn,
    /// f32 x f32.
    pub f32_f32: F32F32Fn,
    /// f16 x f32.
    pub f16_f32: F16F32Fn,
    /// Activation quantizer; false on NaN/inf.
    pub quantize_act: fn(&[f32], &mut [Q8ActBlock]) -> bool,
    /// sum a*b.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// y += alpha x.
    pub axpy_f32: fn(f32, &[f32], &mut [f32]),
    /// sum q*x (unscaled).
    pub dot_i8_f32: fn(&[i8], &[f32]) -> f32,
    /// y += alpha q.
    pub axpy_i8: fn(f32, &[i8], &mut [f32]),
    /// Batched Q2 kernel used by `matmul`.
    pub(crate) q2_gemm: GemmFn,
    /// Batched Q4 kernel used by `matmul`.
    pub(crate) q4_gemm: GemmFn,
    /// Batched Q8 kernel used by `matmul`.
    pub(crate) q8_gemm: GemmFn,
    /// How this family wants activations laid out for a weight format.
    pub(crate) panel: fn(QuantFormat) -> PanelKind,
    /// Batched f32 kernel (None: `matmul` calls `f32_f32` per column).
    pub(crate) f32_gemm: Option<FloatGemmFn>,
    /// Batched f16 kernel (None: `matmul` calls `f16_f32` per column).
    pub(crate) f16_gemm: Option<FloatGemmFn>,
}

/// A batched float kernel: rows `r0 ..` (their bytes in `w`) times the `n`
/// columns of `x` (`n x cols`, row-major), written to `out`.
///
/// # Safety
/// No other thread may write the rows `r0 ..` of `out` during the call.
pub(crate) type FloatGemmFn =
    unsafe fn(w: &[u8], cols: usize, x: &[f32], out: &OutTile<'_>, r0: usize);

/// A batched quantized kernel: rows `r0 .. r0 + w.len() / row_bytes` of the
/// matrix (their bytes in `w`) times every column of `panel`, written to `out`.
///
/// # Safety
/// No other thread may write the rows `r0 ..` of `out` during the call.
pub(crate) type GemmFn =
    unsafe fn(w: &[u8], cols: usize, panel: &ActPanel, out: &OutTile<'_>, r0: usize);

/// The scalar reference table.
pub static SCALAR: Kernels = Kernels {
    backend: Backend::Scalar,
    q2_q8: scalar::q2_q8,
    q4_q8: scalar::q4_q8,
    q8_q8: scalar::q8_q8,
    q2_f32: scalar::q2_f32,
    q4_f32: scalar::q4_f32,
    q8_f32: scalar::q8_f32,
    f32_f32: scalar::f32_f32,
    f16_f32: scalar::f16_f32,
    quantize_act: scalar::quantize_act,
    dot_f32: scalar::dot_f32,
    axpy_f32: scalar::axpy_f32,
    dot_i8_f32: scalar::dot_i8_f32,
    axpy_i8: scalar::axpy_i8,
    q2_gemm: scalar::q2_gemm,
    q4_gemm: scalar::q4_gemm,
    q8_gemm: scalar::q8_gemm,
    panel: |_| PanelKind::Blocks,
    f32_gemm: None,
    f16_gemm: None,
};

impl Kernels {
    /// The table of `backend`, or None when this CPU cannot run it.
    pub fn get(backend: Backend) -> Option<&'static Kernels> {
        if !backend.is_supported() {
            return None;
        }
        match backend {
            Backend::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => Some(&avx2::KERNELS),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => Some(&avx512::KERNELS),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }
}

/// The families this CPU supports, slowest first (always starts with scalar).
pub fn available() -> Vec<Backend> {
    Backend::ALL
        .into_iter()
        .filter(|b| b.is_supported())
        .collect()
}

/// The fastest supported family, detected once and cached.
/// `TWAIN_QUANT_BACKEND=scalar|avx2|avx512vnni` forces a (supported) family.
pub fn best() -> &'static Kernels {
    static BEST: OnceLock<&'static Kernels> = OnceLock::new();
    BEST.get_or_init(|| {
        if let Ok(name) = std::env::var("TWAIN_QUANT_BACKEND") {
            if let Some(k) = Backend::ALL
                .into_iter()
                .find(|b| b.name() == name)
                .and_then(Kernels::get)
            {
                return k;
            }
        }
        let b = *available().last().unwrap_or(&Backend::Scalar);
        Kernels::get(b).unwrap_or(&SCALAR)
    })
}

/// Activation layout a kernel family wants.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum PanelKind {
    /// The [`Q8ActBlock`]s as they are.
    Blocks,
    /// Also the SIMD layout of [`ActPanel`]: seeds `corr * sum`, scales
    /// `d * dx_mul`, the values of each pair of blocks in `order`.
    Simd {
        corr: i32,
        dx_mul: f32,
        order: PairOrder,
        /// The family runs a packed kernel from [`PACK_MIN_N`] columns up:
        /// such batches get the column-interleaved layout (`xt`, `bt`, `dt`)
        /// instead of the per-column one.
        packed: bool,
        /// The family's single-vector kernel puts one block per int32 lane
        /// (16 blocks per register): a single column then gets the lane
        /// layout (`xl`, `sl`, `dl`), in which vector `v` of a group of 16
        /// blocks holds elements `lanes[v] .. lanes[v] + 4` of every block,
        /// as well as the per-column one (for the blocks after the last
        /// whole group).
        lanes: Option<[u8; 8]>,
    },
}

/// Batches of at least this many columns run the packed kernels (Q2/Q4).
pub(crate) const PACK_MIN_N: usize = 8;

/// Whether the lane kernels run every block of a row of `nb` blocks in lane
/// groups: whole groups of 16, then a tail of 2, 4 or 8 blocks for 16 / t
/// rows at once (other tails go block pair by block pair, from the
/// per-column layout).
pub(crate) const fn lane_tail_in_groups(nb: usize) -> bool {
    matches!(nb % 16, 0 | 2 | 4 | 8)
}

/// Order of the 64 int8 values of a pair of blocks `(b, b + 1)`, `b` even, in
/// an [`ActPanel`]: chunks of `chunk()` bytes alternate between the two blocks,
/// matching the order in which a kernel unpacks two blocks of weight codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairOrder {
    /// Block b's 32 values, then block b + 1's.
    Natural,
    /// 8-byte chunks: b[0..8], b+1[0..8], b[8..16], ... (Q2 with a 128-bit broadcast).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Qword,
    /// 16-byte chunks: b[0..16], b+1[0..16], b[16..32], b+1[16..32] (Q4 with a 256-bit broadcast).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Half,
}

impl PairOrder {
    /// Bytes per chunk.
    pub(crate) const fn chunk(self) -> usize {
        match self {
            PairOrder::Natural => 32,
            PairOrder::Qword => 8,
            PairOrder::Half => 16,
        }
    }

    /// (block 0 or 1, element) of byte `o` (0..64) of a pair.
    const fn source(self, o: usize) -> (usize, usize) {
        let ch = self.chunk();
        let ci = o / ch;
        (ci % 2, (ci / 2) * ch + o % ch)
    }

    /// For each of the 16 int32 lanes of a pair, the block (0 or 1) it sums.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) const fn lane_blocks(self) -> [i32; 16] {
        let mut out = [0i32; 16];
        let mut l = 0;
        while l < 16 {
            out[l] = ((4 * l / self.chunk()) % 2) as i32;
            l += 1;
        }
        out
    }
}

/// Block order within a group of 8 blocks in `ActPanel::gseed`/`gdx`: the
/// order in which two rounds of `vphaddd` leave the per-block sums of four
/// pair vectors (see `avx2.rs`).
pub(crate) const GROUP_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// int8 activations of a batch (`n` columns of `nb` blocks), laid out once per
/// call for the kernels: the blocks, and for SIMD families contiguous int8
/// values per column (each pair of blocks in the order its kernel unpacks codes), per-block scales
/// (times `dx_mul`) and int32 accumulator seeds (`corr * sum`, the block's
/// offset term, in the first lane of the block's first chunk of its pair).
/// Each column is padded by one zero block (the scales by 16) so two-block
/// loads at the last block stay in bounds.
#[derive(Debug, Default)]
pub struct ActPanel {
    n: usize,
    nb: usize,
    pub(crate) blocks: Vec<Q8ActBlock>,
    pub(crate) xs: Vec<i8>,
    pub(crate) dx: Vec<f32>,
    pub(crate) seed: Vec<i32>,
    /// Per column, per group of 8 blocks, `corr * sum` of the blocks in
    /// [`GROUP_ORDER`] (zeros past the last block), `n * ng * 8` (SIMD layouts only).
    pub(crate) gseed: Vec<i32>,
    /// The scales (`d * dx_mul`) in the same layout as `gseed`.
    pub(crate) gdx: Vec<f32>,
    /// Packed batches: the int8 values 4 at a time with the columns
    /// interleaved, dword `(b * 8 + k) * n + j` = values `4k .. 4k + 4` of
    /// block `b` of column `j`, so a register tile finds its columns' dwords
    /// side by side.
    pub(crate) xt: Vec<i32>,
    /// Packed batches: `corr * sum` at `b * n + j`.
    pub(crate) bt: Vec<i32>,
    /// Packed batches: `d * dx_mul` at `b * n + j`.
    pub(crate) dt: Vec<f32>,
    /// Lane layout (one column): per group `g` of 16 blocks, 8 vectors of 16
    /// dwords; dword `(g * 8 + v) * 16 + l` = elements `lanes[v] ..
    /// lanes[v] + 4` of block `16 g + l` (zeros past the last block, or for
    /// a last group of t = 2, 4 or 8 blocks, block `16 g + l % t`).
    pub(crate) xl: Vec<i32>,
    /// Lane layout: `corr * sum` of the block of lane `l` of group `g` at `g * 16 + l`.
    pub(crate) sl: Vec<i32>,
    /// Lane layout: `d * dx_mul` of the block of lane `l` of group `g` at `g * 16 + l`.
    pub(crate) dl: Vec<f32>,
}

impl ActPanel {
    pub(crate) fn new(blocks: Vec<Q8ActBlock>, nb: usize, kind: PanelKind) -> Self {
        use rayon::prelude::*;
        let n = blocks.len() / nb.max(1);
        let mut p = ActPanel {
            n,
            nb,
            blocks,
            ..ActPanel::default()
        };
        let PanelKind::Simd {
            corr,
            dx_mul,
            order,
            packed,
            lanes,
        } = kind
        else {
            return p;
        };
        if let (Some(starts), 1) = (lanes, n) {
            let ng = nb.div_ceil(16);
            p.xl.resize(ng * 8 * 16, 0);
            p.sl.resize(ng * 16, 0);
            p.dl.resize(ng * 16, 0.0);
            // A last group of t = 2, 4 or 8 blocks repeats them across its
            // 16 lanes (lane l = block l % t): the kernels run such tails
            // for 16 / t rows at once.
            let full = nb / 16;
            let t = nb - 16 * full;
            let repeat = t > 0 && lane_tail_in_groups(nb);
            for slot in 0..ng * 16 {
                let (g, l) = (slot / 16, slot % 16);
                let b = if repeat && g == full {
                    16 * full + l % t
                } else {
                    slot
                };
                let Some(a) = p.blocks.get(b) else { continue };
                for (v, &e) in starts.iter().enumerate() {
                    let q = &a.qs[e as usize..e as usize + 4];
                    p.xl[(g * 8 + v) * 16 + l] =
                        i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
                }
                p.sl[slot] = corr * a.sum;
                p.dl[slot] = a.d * dx_mul;
            }
            if lane_tail_in_groups(nb) {
                return p;
            }
            // The per-column layout below serves the blocks after the last
            // whole group of 16.
        }
        if packed && n >= PACK_MIN_N && nb > 0 {
            p.xt.resize(n * nb * 8, 0);
            p.bt.resize(n * nb, 0);
            p.dt.resize(n * nb, 0.0);
            let blocks = &p.blocks;
            let fill = |(b, ((xt, bt), dt)): (usize, BlockParts<'_>)| {
                for j in 0..n {
                    let a = &blocks[j * nb + b];
                    for (k, q) in a.qs.chunks_exact(4).enumerate() {
                        xt[k * n + j] =
                            i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
                    }
                    bt[j] = corr * a.sum;
                    dt[j] = a.d * dx_mul;
                }
            };
            if n * nb >= 1 << 10 {
                p.xt.par_chunks_mut(8 * n)
                    .zip(p.bt.par_chunks_mut(n))
                    .zip(p.dt.par_chunks_mut(n))
                    .enumerate()
                    .for_each(fill);
            } else {
                p.xt.chunks_mut(8 * n)
                    .zip(p.bt.chunks_mut(n))
                    .zip(p.dt.chunks_mut(n))
                    .enumerate()
                    .for_each(fill);
            }
            return p;
        }
        let ng = nb.div_ceil(8);
        p.xs.resize(n * (nb + 1) * QK, 0);
        p.dx.resize(n * (nb + 16), 0.0);
        p.seed.resize(n * (nb + 1) * 8, 0);
        p.gseed.resize(n * ng * 8, 0);
        p.gdx.resize(n * ng * 8, 0.0);
        if n == 0 || nb == 0 {
            return p;
        }
        // Each column's parts are disjoint slices: fill them per column, over
        // rayon for large batches (this runs on every batched call).
        let fill = |((((blk, xs), dx), seed), (gseed, gdx)): ColumnParts<'_>| {
            fill_column(blk, corr, dx_mul, order, xs, dx, seed, gseed, gdx)
        };
        if n * nb >= 1 << 10 {
            p.blocks
                .par_chunks(nb)
                .zip(p.xs.par_chunks_mut((nb + 1) * QK))
                .zip(p.dx.par_chunks_mut(nb + 16))
                .zip(p.seed.par_chunks_mut((nb + 1) * 8))
                .zip(
                    p.gseed
                        .par_chunks_mut(ng * 8)
                        .zip(p.gdx.par_chunks_mut(ng * 8)),
                )
                .for_each(fill);
        } else {
            p.blocks
                .chunks(nb)
                .zip(p.xs.chunks_mut((nb + 1) * QK))
                .zip(p.dx.chunks_mut(nb + 16))
                .zip(p.seed.chunks_mut((nb + 1) * 8))
                .zip(p.gseed.chunks_mut(ng * 8).zip(p.gdx.chunks_mut(ng * 8)))
                .for_each(fill);
        }
        p
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Blocks per column.
    pub fn nb(&self) -> usize {
        self.nb
    }

    /// The blocks of column `j`.
    pub(crate) fn column(&self, j: usize) -> &[Q8ActBlock] {
        &self.blocks[j * self.nb..(j + 1) * self.nb]
    }

    /// Padded int8 values of column `j` (`(nb + 1) * 32`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn xs(&self, j: usize) -> *const i8 {
        self.xs[j * (self.nb + 1) * QK..].as_ptr()
    }

    /// Padded scales of column `j` (`nb + 16`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn dx(&self, j: usize) -> &[f32] {
        &self.dx[j * (self.nb + 16)..(j + 1) * (self.nb + 16)]
    }

    /// Grouped seeds of column `j` (`ng * 8`, see `gseed`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn gseed(&self, j: usize) -> *const i32 {
        let ng = self.nb.div_ceil(8);
        self.gseed[j * ng * 8..].as_ptr()
    }

    /// Grouped scales of column `j` (`ng * 8`, see `gdx`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn gdx(&self, j: usize) -> *const f32 {
        let ng = self.nb.div_ceil(8);
        self.gdx[j * ng * 8..].as_ptr()
    }

    /// The column-interleaved values of a packed batch (see `xt`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn xt(&self) -> &[i32] {
        &self.xt
    }

    /// The column-interleaved seeds of a packed batch (see `bt`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn bt(&self) -> &[i32] {
        &self.bt
    }

    /// The column-interleaved scales of a packed batch (see `dt`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn dt(&self) -> &[f32] {
        &self.dt
    }

    /// The lane layout's values, seeds and scales (see `xl`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn lanes(&self) -> (&[i32], &[i32], &[f32]) {
        (&self.xl, &self.sl, &self.dl)
    }

    /// Padded seeds of column `j` (`(nb + 1) * 8`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn seed(&self, j: usize) -> *const i32 {
        self.seed[j * (self.nb + 1) * 8..].as_ptr()
    }
}

/// The interleaved parts of one block of a packed panel (`xt`, `bt`, `dt`).
type BlockParts<'a> = ((&'a mut [i32], &'a mut [i32]), &'a mut [f32]);

/// The parts of one panel column, as zipped slices yield them.
type ColumnParts<'a> = (
    (
        ((&'a [Q8ActBlock], &'a mut [i8]), &'a mut [f32]),
        &'a mut [i32],
    ),
    (&'a mut [i32], &'a mut [f32]),
);

/// One column of an [`ActPanel`]: `blk` are its `nb` blocks, the other
/// slices its parts (see the fields).
#[allow(clippy::too_many_arguments)]
fn fill_column(
    blk: &[Q8ActBlock],
    corr: i32,
    dx_mul: f32,
    order: PairOrder,
    xs: &mut [i8],
    dx: &mut [f32],
    seed: &mut [i32],
    gseed: &mut [i32],
    gdx: &mut [f32],
) {
    let nb = blk.len();
    for (g, (gs, gd)) in gseed.chunks_mut(8).zip(gdx.chunks_mut(8)).enumerate() {
        for (lane, &o) in GROUP_ORDER.iter().enumerate() {
            if let Some(a) = blk.get(8 * g + o) {
                gs[lane] = corr * a.sum;
                gd[lane] = a.d * dx_mul;
            }
        }
    }
    let ch = order.chunk();
    for b in (0..nb).step_by(2) {
        let pair = [blk.get(b), blk.get(b + 1)];
        let dst = &mut xs[b * QK..(b + 2) * QK];
        for (ci, d) in dst.chunks_exact_mut(ch).enumerate() {
            let (which, el) = order.source(ci * ch);
            if let Some(a) = pair[which] {
                d.copy_from_slice(&a.qs[el..el + ch]);
            }
        }
        for (which, a) in pair.iter().enumerate() {
            if let Some(a) = a {
                seed[b * 8 + which * ch / 4] = corr * a.sum;
                dx[b + which] = a.d * dx_mul;
            }
        }
    }
}

/// The output of a batched call: `n` columns of `rows` values, column `j` at
/// `j * rows` (y = x W^T, row-major n x rows), shared by the row chunks of
/// one call, each writing only its own rows.
#[derive(Debug)]
pub struct OutTile<'a> {
    ptr: *mut f32,
    rows: usize,
    n: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: writes go through `put`, whose contract makes concurrent writers
// touch disjoint elements; the borrow of `y` lasts as long as the tile.
unsafe impl Send for OutTile<'_> {}
// SAFETY: as above.
unsafe impl Sync for OutTile<'_> {}

impl<'a> OutTile<'a> {
    /// A tile over `y` (`y.len() == n * rows`).
    pub(crate) fn new(y: &'a mut [f32], rows: usize, n: usize) -> Self {
        assert_eq!(y.len(), rows * n);
        OutTile {
            ptr: y.as_mut_ptr(),
            rows,
            n,
            _y: PhantomData,
        }
    }

    /// Columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Where `y[j][r .. r + len]` is, for a kernel to store into.
    ///
    /// # Safety
    /// No other thread writes those elements while the caller does.
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) unsafe fn run_ptr(&self, j: usize, r: usize, len: usize) -> *mut f32 {
        assert!(j < self.n && r + len <= self.rows);
        // SAFETY: in bounds (checked).
        unsafe { self.ptr.add(j * self.rows + r) }
    }

    /// Write `y[j][r] = v`.
    ///
    /// # Safety
    /// No other thread writes element `(j, r)` concurrently.
    #[inline]
    pub(crate) unsafe fn put(&self, j: usize, r: usize, v: f32) {
        assert!(j < self.n && r < self.rows);
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { *self.ptr.add(j * self.rows + r) = v }
    }
}

/// Run a batched kernel on whole `rows` of `cols` for a single activation
/// vector (the public per-family matvec entry points).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn gemv_via(
    gemm: GemmFn,
    kind: PanelKind,
    rows: &[u8],
    cols: usize,
    act: &[Q8ActBlock],
    out: &mut [f32],
) {
    let nb = cols / QK;
    let panel = ActPanel::new(act.to_vec(), nb, kind);
    let len = out.len();
    let tile = OutTile::new(out, len, 1);
    // SAFETY: this thread owns `out`.
    unsafe { gemm(rows, cols, &panel, &tile, 0) }
}
