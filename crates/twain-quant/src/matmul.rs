//! `y = x W^T`: validation, activation quantization and splitting rows over rayon.

use crate::blocks::{Q8ActBlock, QK};
use crate::kernels::{self, ActPanel, GemmFn, Kernels, OutTile};
use crate::{QMatrixRef, QuantError, QuantFormat};
use rayon::prelude::*;

/// Whether a kernel call may split its work over the rayon thread pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parallelism {
    /// One thread.
    Sequential,
    /// Split rows over the current rayon pool.
    #[default]
    Rayon,
}

/// Below this many multiply-adds a call runs on the calling thread: the rayon
/// fork/join costs a few microseconds, about what a 576x576 2-bit matvec takes.
pub const PAR_MIN_WORK: usize = 1 << 18;

/// The same threshold for a single vector (`matvec`, decode), which is split
/// over the spinning pool (`pool.rs`, about a microsecond to start): about
/// 2 us of work for the kernel family in use, 2^16 multiply-adds with AVX2
/// (on Zen 3, 2-thread SmolLM2 decode 103 tok/s unsplit, 134 at 2^18, 145 at
/// 2^16), 2^18 with AVX-512 VNNI (scaled by kernel speed, not measured on
/// the pool), 2^14 scalar. Read from `TWAIN_PAR_MIN_MATVEC` once when set.
pub static PAR_MIN_WORK_MATVEC: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("TWAIN_PAR_MIN_MATVEC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(match kernels::best().backend {
            kernels::Backend::Avx512Vnni => 1 << 18,
            kernels::Backend::Avx2 => 1 << 16,
            kernels::Backend::Scalar => 1 << 14,
        })
});

/// Rows per tile of a batched call: a tile's weights stay in L1/L2 while every
/// batch column passes over them. Matvec calls a kernel once per chunk.
const ROW_TILE: usize = 32;

/// Rows per task unit of [`matmul_many`]: one packed tile of the AVX-512 kernels.
const UNIT: usize = 16;

/// Activations for the quantized formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActMode {
    Int8,
    F32,
}

/// y = x W^T for a batch: `x` is n x cols row-major (n = x.len() / cols),
/// `y` is n x rows row-major. Quantized formats run on int8-quantized
/// activations (one int8 block per 32 inputs) with the fastest kernel this CPU has.
pub fn matmul(
    w: &QMatrixRef<'_>,
    x: &[f32],
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), QuantError> {
    run(kernels::best(), w, x, y, par, ActMode::Int8)
}

/// `matmul` with n = 1.
pub fn matvec(
    w: &QMatrixRef<'_>,
    x: &[f32],
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), QuantError> {
    if x.len() != w.cols() {
        return Err(QuantError::Shape(format!(
            "matvec: x has {} values, matrix has {} columns",
            x.len(),
            w.cols()
        )));
    }
    matmul(w, x, y, par)
}

/// [`matmul`] with f32 activations for every format: quantized weights are
/// expanded on the fly instead of quantizing `x` to int8 (slower, no activation rounding).
pub fn matmul_f32(
    w: &QMatrixRef<'_>,
    x: &[f32],
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), QuantError> {
    run(kernels::best(), w, x, y, par, ActMode::F32)
}

/// [`matmul`] with an explicit kernel family (see [`Kernels::get`]).
pub fn matmul_with(
    k: &Kernels,
    w: &QMatrixRef<'_>,
    x: &[f32],
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), QuantError> {
    run(k, w, x, y, par, ActMode::Int8)
}

/// [`matmul_f32`] with an explicit kernel family.
pub fn matmul_f32_with(
    k: &Kernels,
    w: &QMatrixRef<'_>,
    x: &[f32],
    y: &mut [f32],
    par: Parallelism,
) -> Result<(), QuantError> {
    run(k, w, x, y, par, ActMode::F32)
}

/// `ys[i] = x W_i^T` for several matrices over the same input (a layer's q,
/// k and v projections, or its gate and up): for a batch, `x` is quantized
/// once per activation layout and the row tiles of every matrix are split
/// over the threads together, in one fork/join instead of one per matrix.
/// Same results as calling [`matmul`] for each.
pub fn matmul_many(
    ws: &[QMatrixRef<'_>],
    x: &[f32],
    ys: &mut [&mut [f32]],
    par: Parallelism,
) -> Result<(), QuantError> {
    matmul_many_with(kernels::best(), ws, x, ys, par)
}

/// [`matmul_many`] with an explicit kernel family.
pub fn matmul_many_with(
    k: &Kernels,
    ws: &[QMatrixRef<'_>],
    x: &[f32],
    ys: &mut [&mut [f32]],
    par: Parallelism,
) -> Result<(), QuantError> {
    if ws.len() != ys.len() {
        return Err(QuantError::Shape(format!(
            "matmul_many: {} matrices but {} outputs",
            ws.len(),
            ys.len()
        )));
    }
    let Some(first) = ws.first() else {
        return Ok(());
    };
    let cols = first.cols();
    for (w, y) in ws.iter().zip(ys.iter()) {
        if w.cols() != cols {
            return Err(QuantError::Shape(format!(
                "matmul_many: matrices of {cols} and {} columns share one input",
                w.cols()
            )));
        }
        check_shapes(w, x, y)?;
    }
    let n = x.len() / cols;
    let gemms: Option<Vec<GemmFn>> = ws.iter().map(|w| int8_gemm(k, w.format())).collect();
    let Some(gemms) = gemms else {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            run(k, w, x, y, par, ActMode::Int8)?;
        }
        return Ok(());
    };
    // One panel per distinct layout (usually one; the last takes the blocks).
    let mut kinds: Vec<kernels::PanelKind> = Vec::new();
    let which: Vec<usize> = ws
        .iter()
        .map(|w| {
            let kind = (k.panel)(w.format());
            kinds.iter().position(|p| *p == kind).unwrap_or_else(|| {
                kinds.push(kind);
                kinds.len() - 1
            })
        })
        .collect();
    let mut acts = Some(quantize_activations(k, x, cols)?);
    let panels: Vec<ActPanel> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let blocks = if i + 1 == kinds.len() {
                acts.take().unwrap_or_default()
            } else {
                acts.clone().unwrap_or_default()
            };
            ActPanel::new(blocks, cols / QK, kind)
        })
        .collect();
    let outs: Vec<OutTile<'_>> = ys
        .iter_mut()
        .zip(ws)
        .map(|(y, w)| OutTile::new(y, w.rows(), n))
        .collect();
    let threads = rayon::current_num_threads();
    let work: usize = ws
        .iter()
        .map(|w| w.rows().saturating_mul(cols).saturating_mul(n))
        .sum();
    if n == 1 {
        // One vector (decode): the rows of all the matrices, one after the
        // other, split into one contiguous share per thread (whole units of
        // 16 rows) on the spinning pool, so that q/k/v or gate/up cost one
        // fork/join; rayon when another caller holds the pool. A matvec is
        // memory-bound and short: below PAR_MIN_WORK_MATVEC it stays on
        // this thread.
        let total: usize = ws.iter().map(|w| w.rows()).sum();
        let part = |lo: usize, hi: usize| {
            let mut base = 0;
            for (i, w) in ws.iter().enumerate() {
                let (a, b) = (lo.max(base), hi.min(base + w.rows()));
                if a < b {
                    let (r0, r1, rb) = (a - base, b - base, w.row_bytes());
                    let (gemm, panel) = (gemms[i], &panels[which[i]]);
                    // SAFETY: this share owns rows r0..r1 of output i (shares are disjoint).
                    unsafe { gemm(&w.data()[r0 * rb..r1 * rb], cols, panel, &outs[i], r0) };
                }
                base += w.rows();
            }
        };
        if par == Parallelism::Sequential
            || threads <= 1
            || work < *PAR_MIN_WORK_MATVEC
            || total < 2 * UNIT
        {
            part(0, total);
            return Ok(());
        }
        let per = total.div_ceil(threads).next_multiple_of(UNIT);
        let parts = total.div_ceil(per);
        let share = |c: usize| part(c * per, ((c + 1) * per).min(total));
        if !crate::pool::run(threads, parts, &share) {
            (0..parts).into_par_iter().for_each(share);
        }
        return Ok(());
    }
    let parallel = par == Parallelism::Rayon && threads > 1 && work >= PAR_MIN_WORK;
    // Tasks of whole units of 16 rows (one packed tile), about 4 per thread
    // over all the matrices together.
    let units: usize = ws.iter().map(|w| w.rows().div_ceil(UNIT)).sum();
    let per = if parallel {
        units.div_ceil(threads * 4).max(1) * UNIT
    } else {
        usize::MAX
    };
    let mut tasks = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let mut r0 = 0;
        while r0 < w.rows() {
            let r1 = r0.saturating_add(per).min(w.rows());
            tasks.push((i, r0, r1));
            r0 = r1;
        }
    }
    let exec = |&(i, r0, r1): &(usize, usize, usize)| {
        let (w, panel) = (&ws[i], &panels[which[i]]);
        let (data, rb) = (w.data(), w.row_bytes());
        let mut t0 = r0;
        while t0 < r1 {
            let t1 = (t0 + ROW_TILE).min(r1);
            // SAFETY: this task owns rows r0..r1 of output i (tasks are disjoint).
            unsafe { gemms[i](&data[t0 * rb..t1 * rb], cols, panel, &outs[i], t0) };
            t0 = t1;
        }
    };
    if parallel {
        tasks.par_iter().for_each(exec);
    } else {
        tasks.iter().for_each(exec);
    }
    Ok(())
}

/// Quantize `n x cols` activations into `n * cols / 32` int8 blocks.
pub fn quantize_activations(
    k: &Kernels,
    x: &[f32],
    cols: usize,
) -> Result<Vec<Q8ActBlock>, QuantError> {
    if cols == 0 || !cols.is_multiple_of(QK) || x.is_empty() || !x.len().is_multiple_of(cols) {
        return Err(QuantError::Shape(format!(
            "activations: {} values do not split into rows of {cols} (a multiple of 32)",
            x.len()
        )));
    }
    let mut acts = vec![bytemuck::Zeroable::zeroed(); x.len() / QK];
    let ok = if x.len() >= 1 << 16 {
        acts.par_chunks_mut(cols / QK)
            .zip(x.par_chunks(cols))
            .map(|(a, xs)| (k.quantize_act)(xs, a))
            .reduce(|| true, |a, b| a && b)
    } else {
        (k.quantize_act)(x, &mut acts)
    };
    if !ok {
        return Err(QuantError::Value("activations contain NaN or inf".into()));
    }
    Ok(acts)
}

/// The shapes of `y = x W^T` agree.
fn check_shapes(w: &QMatrixRef<'_>, x: &[f32], y: &[f32]) -> Result<(), QuantError> {
    let (rows, cols, fmt) = (w.rows(), w.cols(), w.format());
    if x.is_empty() || !x.len().is_multiple_of(cols) {
        return Err(QuantError::Shape(format!(
            "matmul {fmt} {rows}x{cols}: x has {} values, not a positive multiple of {cols}",
            x.len()
        )));
    }
    let n = x.len() / cols;
    if y.len() != n * rows {
        return Err(QuantError::Shape(format!(
            "matmul {fmt} {rows}x{cols}: y has {} values, expected {n} x {rows}",
            y.len()
        )));
    }
    Ok(())
}

/// The family's batched kernel over int8 activations, for the quantized formats.
fn int8_gemm(k: &Kernels, fmt: QuantFormat) -> Option<GemmFn> {
    match fmt {
        QuantFormat::Q2 => Some(k.q2_gemm),
        QuantFormat::Q4 => Some(k.q4_gemm),
        QuantFormat::Q8 => Some(k.q8_gemm),
        _ => None,
    }
}

fn run(
    k: &Kernels,
    w: &QMatrixRef<'_>,
    x: &[f32],
    y: &mut [f32],
    par: Parallelism,
    mode: ActMode,
) -> Result<(), QuantError> {
    check_shapes(w, x, y)?;
    if mode == ActMode::Int8 && int8_gemm(k, w.format()).is_some() {
        // The quantized formats: one code path for one or many matrices.
        return matmul_many_with(k, std::slice::from_ref(w), x, &mut [y], par);
    }
    float_rows(k, w, x, y, par);
    Ok(())
}

/// `y = x W^T` on validated shapes through the float kernels (f32/f16, or
/// quantized weights against f32 activations), rows split over the threads.
/// One column streams the weights through the per-row dot kernels; batches
/// use the register-tiled float kernels where the family has them.
fn float_rows(k: &Kernels, w: &QMatrixRef<'_>, x: &[f32], y: &mut [f32], par: Parallelism) {
    let (rows, cols, fmt) = (w.rows(), w.cols(), w.format());
    let n = x.len() / cols;
    let data = w.data();
    let rb = w.row_bytes();
    let float_gemm = match fmt {
        QuantFormat::F32 if n > 1 => k.f32_gemm,
        QuantFormat::F16 if n > 1 => k.f16_gemm,
        _ => None,
    };
    let out = OutTile::new(y, rows, n);
    // Rows per kernel call: a whole chunk for one column; for a batch, tiles
    // whose weights stay in cache while every column passes over them.
    let tile = if n == 1 { rows } else { ROW_TILE };
    let chunk = |r0: usize, r1: usize| {
        let mut buf = Vec::new();
        let mut t0 = r0;
        while t0 < r1 {
            let t1 = (t0 + tile).min(r1);
            let wr = &data[t0 * rb..t1 * rb];
            if let Some(fg) = float_gemm {
                // SAFETY: this chunk owns rows r0..r1 of `out` (chunks are disjoint).
                unsafe { fg(wr, cols, x, &out, t0) };
            } else {
                buf.resize(t1 - t0, 0.0);
                let o = &mut buf[..];
                for j in 0..n {
                    let xj = &x[j * cols..(j + 1) * cols];
                    match fmt {
                        QuantFormat::F32 => (k.f32_f32)(bytemuck::cast_slice(wr), cols, xj, o),
                        QuantFormat::F16 => (k.f16_f32)(bytemuck::cast_slice(wr), cols, xj, o),
                        QuantFormat::Q8 => (k.q8_f32)(wr, cols, xj, o),
                        QuantFormat::Q4 => (k.q4_f32)(wr, cols, xj, o),
                        QuantFormat::Q2 => (k.q2_f32)(wr, cols, xj, o),
                    }
                    for (i, v) in o.iter().enumerate() {
                        // SAFETY: this chunk owns rows r0..r1 of `out`.
                        unsafe { out.put(j, t0 + i, *v) };
                    }
                }
            }
            t0 = t1;
        }
    };
    let work = rows.saturating_mul(cols).saturating_mul(n);
    let threads = rayon::current_num_threads();
    // One vector (decode) is memory-bound and short: waking the pool costs
    // more than it saves below a larger size, and one chunk per thread is
    // enough. Batches split finer for balance.
    let (min_work, per_thread) = if n == 1 {
        (*PAR_MIN_WORK_MATVEC, 1)
    } else {
        (PAR_MIN_WORK, 4)
    };
    if par == Parallelism::Sequential || work < min_work || threads <= 1 || rows < 2 * 8 {
        chunk(0, rows);
        return;
    }
    if n == 1 {
        // One vector: one chunk of whole row tiles per thread on the spinning
        // pool; rayon below when another caller holds it.
        let units = rows.div_ceil(8);
        let per = units.div_ceil(units.min(threads)) * 8;
        let run = |c: usize| {
            let r0 = c * per;
            chunk(r0, (r0 + per).min(rows));
        };
        if crate::pool::run(threads, rows.div_ceil(per), &run) {
            return;
        }
    }
    // Whole row tiles of 8.
    let units = rows.div_ceil(8);
    let per = units.div_ceil(units.min(threads * per_thread)) * 8;
    (0..rows.div_ceil(per)).into_par_iter().for_each(|c| {
        let r0 = c * per;
        chunk(r0, (r0 + per).min(rows));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quantize, QuantizeOptions};

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_format_matvec_close_to_f32() {
        let (rows, cols) = (40, 96);
        let w = pseudo(rows * cols, 1);
        let x = pseudo(cols * 3, 2);
        let mut exact = vec![0.0f32; rows * 3];
        for j in 0..3 {
            for r in 0..rows {
                exact[j * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[j * cols + c]).sum();
            }
        }
        for (fmt, tol) in [
            (QuantFormat::F32, 1e-4),
            (QuantFormat::F16, 1e-2),
            (QuantFormat::Q8, 0.15),
            (QuantFormat::Q4, 0.8),
            (QuantFormat::Q2, 3.0),
        ] {
            let q = quantize(fmt, rows, cols, &w, &QuantizeOptions::default()).unwrap();
            let deq = q.as_ref().dequantize();
            for par in [Parallelism::Sequential, Parallelism::Rayon] {
                let mut y = vec![0.0f32; rows * 3];
                matmul(&q.as_ref(), &x, &mut y, par).unwrap();
                let mut y2 = vec![0.0f32; rows * 3];
                matmul_f32(&q.as_ref(), &x, &mut y2, par).unwrap();
                for j in 0..3 {
                    for r in 0..rows {
                        let i = j * rows + r;
                        let dq: f32 = (0..cols).map(|c| deq[r * cols + c] * x[j * cols + c]).sum();
                        assert!((y2[i] - dq).abs() < 1e-3, "{fmt} f32 act {} vs {dq}", y2[i]);
                        assert!((y[i] - dq).abs() < 0.05, "{fmt} int8 act {} vs {dq}", y[i]);
                        assert!(
                            (y[i] - exact[i]).abs() < tol,
                            "{fmt}: {} vs {}",
                            y[i],
                            exact[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rayon_split_equals_sequential() {
        let (rows, cols) = (1000, 640);
        let w = pseudo(rows * cols, 3);
        for n in [1, 3] {
            let x = pseudo(cols * n, 4);
            assert!(rows * cols * n >= PAR_MIN_WORK);
            for fmt in QuantFormat::ALL {
                let q = quantize(fmt, rows, cols, &w, &QuantizeOptions::default()).unwrap();
                let mut a = vec![0.0f32; rows * n];
                let mut b = vec![1.0f32; rows * n];
                matmul(&q.as_ref(), &x, &mut a, Parallelism::Sequential).unwrap();
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap()
                    .install(|| matmul(&q.as_ref(), &x, &mut b, Parallelism::Rayon))
                    .unwrap();
                assert_eq!(a, b, "{fmt} n={n}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let q = quantize(
            QuantFormat::Q2,
            2,
            32,
            &[0.5; 64],
            &QuantizeOptions::default(),
        )
        .unwrap();
        let mut y = [0.0f32; 2];
        assert!(matvec(&q.as_ref(), &[1.0; 31], &mut y, Parallelism::Rayon).is_err());
        assert!(matvec(&q.as_ref(), &[], &mut y, Parallelism::Rayon).is_err());
        assert!(matvec(&q.as_ref(), &[1.0; 32], &mut y[..1], Parallelism::Rayon).is_err());
        assert!(matvec(&q.as_ref(), &[f32::NAN; 32], &mut y, Parallelism::Rayon).is_err());
        assert!(matvec(&q.as_ref(), &[1.0; 32], &mut y, Parallelism::Rayon).is_ok());
    }
}
