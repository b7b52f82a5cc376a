//! [`LoraAdapter`]: low-rank deltas on the linear layers, applied unmerged or merged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use twain_core::BoxError;
use twain_core::RopeLayout;
use twain_core::{LinearDelta, LoadedModel, ModelConfig};
use twain_io::Tensor;

use crate::AdapterError;

/// Linear layers an adapter may target (the part of the canonical name after `blk.{i}.`).
pub const MODULES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// `(layer, module)` of a canonical target name such as `blk.3.attn_q.weight`, or `None`
/// when it is not a linear layer twain can adapt.
pub fn parse_target(name: &str) -> Option<(usize, &str)> {
    let (l, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = l.parse().ok()?;
    if layer.to_string() != l {
        return None;
    }
    let module = rest.strip_suffix(".weight")?;
    MODULES.contains(&module).then_some((layer, module))
}

/// One adapted weight `W` (rows x cols): `delta_W = scaling * B A` with A (rank x cols) and
/// B (rows x rank).
#[derive(Clone)]
pub struct LoraTarget {
    rows: usize,
    cols: usize,
    rank: usize,
    scaling: f32,
    /// rank x cols, row-major.
    a: Vec<f32>,
    /// B transposed: rank x rows, row-major (so applying B is `rank` axpys over contiguous rows).
    b_t: Vec<f32>,
}

impl std::fmt::Debug for LoraTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraTarget")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("rank", &self.rank)
            .field("scaling", &self.scaling)
            .finish()
    }
}

impl LoraTarget {
    /// (rows, cols) of the weight it adapts.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// The rank r.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// The file's scaling of `B A` (alpha / r, or alpha / sqrt(r) for rsLoRA), without the
    /// adapter's user multiplier.
    pub fn scaling(&self) -> f32 {
        self.scaling
    }
    /// A, rank x cols, row-major.
    pub fn a(&self) -> &[f32] {
        &self.a
    }
    /// B, rows x rank, row-major (a copy).
    pub fn b(&self) -> Vec<f32> {
        let mut b = vec![0.0; self.rows * self.rank];
        for k in 0..self.rank {
            for j in 0..self.rows {
                b[j * self.rank + k] = self.b_t[k * self.rows + j];
            }
        }
        b
    }

    /// `y += s * B (A x)` for the n rows of `x` (n x cols) and `y` (n x rows): per row, the
    /// r-vector `A x` first, then r axpys with B's columns. Large batches (prefill) run their
    /// rows in parallel.
    fn apply(&self, s: f32, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let work = n * self.rank * (rows + cols);
        if n >= 2 && work >= 1 << 20 {
            let per = n.div_ceil(4 * rayon::current_num_threads()).max(1);
            y.par_chunks_mut(per * rows)
                .zip(x.par_chunks(per * cols))
                .for_each(|(yc, xc)| self.apply_rows(s, xc, yc));
        } else {
            self.apply_rows(s, x, y);
        }
    }

    fn apply_rows(&self, s: f32, x: &[f32], y: &mut [f32]) {
        let (r, rows, cols) = (self.rank, self.rows, self.cols);
        let mut h = vec![0.0f32; r];
        for (xi, yi) in x.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
            for (hk, ak) in h.iter_mut().zip(self.a.chunks_exact(cols)) {
                *hk = s * dot(ak, xi);
            }
            for (&c, bk) in h.iter().zip(self.b_t.chunks_exact(rows)) {
                if c != 0.0 {
                    yi.iter_mut().zip(bk).for_each(|(a, b)| *a += c * b);
                }
            }
        }
    }

    /// `scaling * mult * B A`, rows x cols.
    fn delta(&self, mult: f32) -> Vec<f32> {
        let s = self.scaling * mult;
        let mut d = vec![0.0f32; self.rows * self.cols];
        for (k, ak) in self.a.chunks_exact(self.cols).enumerate() {
            let bk = &self.b_t[k * self.rows..(k + 1) * self.rows];
            for (dj, &b) in d.chunks_exact_mut(self.cols).zip(bk) {
                let c = s * b;
                dj.iter_mut().zip(ak).for_each(|(o, a)| *o += c * a);
            }
        }
        d
    }
}

/// Dot product with 8 independent accumulators (autovectorizes).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A LoRA adapter: for each target weight `W` (canonical name such as `blk.3.attn_q.weight`),
/// `W' = W + mult * scaling * B A`, where `scaling = alpha / r` comes from the file (per target,
/// so PEFT's `rank_pattern` / `alpha_pattern` are honoured) and `mult` is the user multiplier
/// ([`with_scale`](Self::with_scale), 1 by default).
///
/// It implements [`LinearDelta`], so it runs unmerged over any (compressed) base through
/// `Transformer::set_adapter`; [`merge_into`] bakes it into f32 weights instead.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    source: PathBuf,
    targets: BTreeMap<String, LoraTarget>,
    mult: f32,
    layout: Option<RopeLayout>,
}

impl Default for LoraAdapter {
    /// Same as [`LoraAdapter::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl LoraAdapter {
    /// An empty adapter (no targets), user multiplier 1, q/k row layout unknown (assumed to
    /// match the base).
    pub fn new() -> Self {
        Self {
            source: PathBuf::new(),
            targets: BTreeMap::new(),
            mult: 1.0,
            layout: None,
        }
    }

    /// Name the file this adapter came from (used in error messages).
    pub fn with_source(mut self, source: impl Into<PathBuf>) -> Self {
        self.source = source.into();
        self
    }

    /// The file this adapter came from (empty when built in memory).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Multiply every delta by `mult` (1 = as trained, 0 = off).
    pub fn with_scale(mut self, mult: f32) -> Self {
        self.mult = mult;
        self
    }

    /// The user multiplier.
    pub fn scale(&self) -> f32 {
        self.mult
    }

    /// Declare the RoPE pair layout the adapter's attn_q / attn_k B rows are in
    /// (`None` = unknown, assumed to match the base).
    pub fn with_rope_layout(mut self, layout: Option<RopeLayout>) -> Self {
        self.layout = layout;
        self
    }

    /// The RoPE pair layout of the attn_q / attn_k B rows, if known.
    pub fn rope_layout(&self) -> Option<RopeLayout> {
        self.layout
    }

    /// Add (or replace) the target `name` (canonical, e.g. `blk.0.attn_q.weight`) with
    /// A (`rank` x `cols`, row-major), B (`rows` x `rank`, row-major) and `scaling`
    /// (usually alpha / rank).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        rank: usize,
        scaling: f32,
        a: Vec<f32>,
        b: Vec<f32>,
    ) -> Result<(), AdapterError> {
        if parse_target(name).is_none() {
            return Err(AdapterError::UnknownModule {
                path: self.source.clone(),
                name: name.to_string(),
            });
        }
        if rank == 0 || rows == 0 || cols == 0 {
            return Err(AdapterError::bad_tensor(
                &self.source,
                name,
                format!("empty LoRA pair: rank {rank}, {rows}x{cols}"),
            ));
        }
        let sized = |len: usize, r: usize, c: usize| r.checked_mul(c) == Some(len);
        if !sized(a.len(), rank, cols) {
            return Err(AdapterError::bad_tensor(
                &self.source,
                name,
                format!("A has {} values, expected {rank}x{cols}", a.len()),
            ));
        }
        if !sized(b.len(), rows, rank) {
            return Err(AdapterError::bad_tensor(
                &self.source,
                name,
                format!("B has {} values, expected {rows}x{rank}", b.len()),
            ));
        }
        if !scaling.is_finite() || a.iter().chain(&b).any(|v| !v.is_finite()) {
            return Err(AdapterError::bad_tensor(
                &self.source,
                name,
                "non-finite values or scaling",
            ));
        }
        let mut b_t = vec![0.0; rows * rank];
        for j in 0..rows {
            for k in 0..rank {
                b_t[k * rows + j] = b[j * rank + k];
            }
        }
        self.targets.insert(
            name.to_string(),
            LoraTarget {
                rows,
                cols,
                rank,
                scaling,
                a,
                b_t,
            },
        );
        Ok(())
    }

    /// Canonical names of the target weights, sorted.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(String::as_str)
    }

    /// One target, by canonical name.
    pub fn target(&self, name: &str) -> Option<&LoraTarget> {
        self.targets.get(name)
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// No targets.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Bytes of A and B held in memory.
    pub fn bytes(&self) -> usize {
        self.targets
            .values()
            .map(|t| 4 * (t.a.len() + t.b_t.len()))
            .sum()
    }

    /// The dense delta `mult * scaling * B A` (rows x cols) of one target.
    pub fn delta(&self, name: &str) -> Option<Vec<f32>> {
        self.targets.get(name).map(|t| t.delta(self.mult))
    }

    /// Make the adapter fit a base with `config`: when the adapter's attn_q / attn_k rows are
    /// in one RoPE pair layout (PEFT adapters: Hugging Face half-split) and the base's in the
    /// other (llama.cpp's interleaved GGUF llama), permute B's rows per head the way llama.cpp
    /// permutes the weights (interleaved row `2i` <- half-split row `i`, `2i+1` <- `i + hd/2`).
    /// An adapter of unknown layout is taken to match the base. Afterwards the adapter's layout
    /// is the base's.
    pub fn adapt_to(&mut self, config: &ModelConfig) -> Result<(), AdapterError> {
        let want = config.rope_layout;
        if let Some(have) = self.layout {
            if have != want {
                let hd = config.head_dim;
                for (name, t) in self.targets.iter_mut() {
                    let Some((_, m)) = parse_target(name) else {
                        continue;
                    };
                    if m != "attn_q" && m != "attn_k" {
                        continue;
                    }
                    if hd == 0 || !hd.is_multiple_of(2) || !t.rows.is_multiple_of(hd) {
                        return Err(AdapterError::WrongShape {
                            path: self.source.clone(),
                            target: name.clone(),
                            expected: (t.rows.next_multiple_of(hd.max(1)), t.cols),
                            found: (t.rows, t.cols),
                        });
                    }
                    for bk in t.b_t.chunks_exact_mut(t.rows) {
                        for head in bk.chunks_exact_mut(hd) {
                            let old = head.to_vec();
                            for i in 0..hd / 2 {
                                match want {
                                    RopeLayout::Interleaved => {
                                        head[2 * i] = old[i];
                                        head[2 * i + 1] = old[i + hd / 2];
                                    }
                                    RopeLayout::HalfSplit => {
                                        head[i] = old[2 * i];
                                        head[i + hd / 2] = old[2 * i + 1];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        self.layout = Some(want);
        Ok(())
    }

    /// Check the adapter against a model whose linear layers have the (rows, cols) `shape_of`
    /// reports (`None` for a layer the model lacks): every target must exist with the delta's
    /// shape, and no target may be the K/V projection of a layer that shares another layer's
    /// cache (`shape_of` is `None` for it while the layer's attn_q exists).
    pub fn check(
        &self,
        shape_of: &dyn Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<(), AdapterError> {
        for (name, t) in &self.targets {
            match shape_of(name) {
                Some(shape) if shape == (t.rows, t.cols) => {}
                Some(expected) => {
                    return Err(AdapterError::WrongShape {
                        path: self.source.clone(),
                        target: name.clone(),
                        expected,
                        found: (t.rows, t.cols),
                    })
                }
                None => {
                    let shared = match parse_target(name) {
                        Some((l, "attn_k" | "attn_v")) => {
                            shape_of(&format!("blk.{l}.attn_q.weight")).is_some()
                        }
                        _ => false,
                    };
                    return Err(if shared {
                        AdapterError::SharedKv {
                            path: self.source.clone(),
                            target: name.clone(),
                        }
                    } else {
                        AdapterError::MissingTarget {
                            path: self.source.clone(),
                            target: name.clone(),
                        }
                    });
                }
            }
        }
        Ok(())
    }

    /// [`check`](Self::check) against a loaded model's tensors.
    pub fn check_model(&self, model: &LoadedModel) -> Result<(), AdapterError> {
        self.check(&|n| model_shape(model, n))
    }
}

fn model_shape(model: &LoadedModel, name: &str) -> Option<(usize, usize)> {
    match model.tensors.get(name)?.shape() {
        [r, c] => Some((*r, *c)),
        _ => None,
    }
}

impl LinearDelta for LoraAdapter {
    fn apply(&self, tensor: &str, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), BoxError> {
        let Some(t) = self.targets.get(tensor) else {
            return Ok(());
        };
        if x.len() != n * t.cols || y.len() != n * t.rows {
            return Err(AdapterError::BadTensor {
                path: PathBuf::new(),
                tensor: tensor.to_string(),
                what: format!(
                    "LoRA target is {}x{}, got input of {} values and output of {} for {n} rows",
                    t.rows,
                    t.cols,
                    x.len(),
                    y.len()
                ),
            }
            .into());
        }
        let s = t.scaling * self.mult;
        if s != 0.0 {
            t.apply(s, x, n, y);
        }
        Ok(())
    }

    fn validate(&self, shape_of: &dyn Fn(&str) -> Option<(usize, usize)>) -> Result<(), BoxError> {
        Ok(self.check(shape_of)?)
    }
}

/// Bake `adapter` into `model`'s weights: `W += mult * scaling * B A` for every target, the
/// result stored as f32 (quantized weights are dequantized first; re-quantize afterwards for
/// export). The adapter is first fitted to the model's RoPE layout ([`LoraAdapter::adapt_to`]).
/// The model is untouched when the adapter does not fit it.
pub fn merge_into(adapter: &LoraAdapter, model: &mut LoadedModel) -> Result<(), AdapterError> {
    let mut fitted;
    let ad = if adapter
        .layout
        .is_some_and(|l| l != model.config.rope_layout)
    {
        fitted = adapter.clone();
        fitted.adapt_to(&model.config)?;
        &fitted
    } else {
        adapter
    };
    ad.check_model(model)?;
    let mut merged = Vec::with_capacity(ad.len());
    for (name, t) in &ad.targets {
        let w = model.tensor(name)?;
        let mut v = w.to_f32()?;
        let d = t.delta(ad.mult);
        v.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        merged.push(Tensor::from_f32(name.clone(), vec![t.rows, t.cols], v)?);
    }
    for t in merged {
        model.tensors.insert(t.name().to_string(), t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twain_convert::synthetic::{tiny_config, SplitMix};

    fn random(rows: usize, cols: usize, r: usize, seed: u64) -> LoraAdapter {
        let mut rng = SplitMix::new(seed);
        let a = (0..r * cols).map(|_| rng.uniform()).collect();
        let b = (0..rows * r).map(|_| rng.uniform()).collect();
        let mut ad = LoraAdapter::new();
        ad.insert("blk.0.attn_q.weight", rows, cols, r, 0.5, a, b)
            .unwrap();
        ad
    }

    #[test]
    fn parse_target_accepts_only_linear_layers() {
        assert_eq!(
            parse_target("blk.12.ffn_down.weight"),
            Some((12, "ffn_down"))
        );
        for bad in [
            "blk.01.attn_q.weight",
            "blk.0.attn_q.bias",
            "blk.0.attn_norm.weight",
            "token_embd.weight",
            "blk.x.attn_q.weight",
        ] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }

    #[test]
    fn apply_matches_dense_delta() {
        let (rows, cols, r, n) = (24, 20, 3, 5);
        let ad = random(rows, cols, r, 9).with_scale(1.5);
        let d = ad.delta("blk.0.attn_q.weight").unwrap();
        let mut rng = SplitMix::new(1);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform()).collect();
        let mut y = vec![1.0f32; n * rows];
        ad.apply("blk.0.attn_q.weight", &x, n, &mut y).unwrap();
        for i in 0..n {
            for j in 0..rows {
                let want: f32 = 1.0
                    + (0..cols)
                        .map(|c| d[j * cols + c] * x[i * cols + c])
                        .sum::<f32>();
                assert!((y[i * rows + j] - want).abs() < 1e-4);
            }
        }
        // Other layers are left alone; wrong sizes are an error, not a panic.
        let mut z = vec![0.0; n * rows];
        ad.apply("blk.0.attn_k.weight", &x, n, &mut z).unwrap();
        assert!(z.iter().all(|&v| v == 0.0));
        assert!(ad.apply("blk.0.attn_q.weight", &x, n + 1, &mut z).is_err());
    }

    #[test]
    fn parallel_batches_match_row_by_row() {
        let (rows, cols, r, n) = (512, 512, 32, 40);
        assert!(n * r * (rows + cols) >= 1 << 20, "takes the parallel path");
        let ad = random(rows, cols, r, 4);
        let mut rng = SplitMix::new(2);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform()).collect();
        let mut batched = vec![0.0f32; n * rows];
        ad.apply("blk.0.attn_q.weight", &x, n, &mut batched)
            .unwrap();
        for i in 0..n {
            let mut one = vec![0.0f32; rows];
            ad.apply(
                "blk.0.attn_q.weight",
                &x[i * cols..(i + 1) * cols],
                1,
                &mut one,
            )
            .unwrap();
            assert_eq!(one, batched[i * rows..(i + 1) * rows]);
        }
    }

    #[test]
    fn layout_permutation_round_trips() {
        let mut config = tiny_config(1);
        let hd = config.head_dim;
        let ad = random(4 * hd, 8, 2, 3).with_rope_layout(Some(RopeLayout::HalfSplit));
        let b0 = ad.target("blk.0.attn_q.weight").unwrap().b();
        config.rope_layout = RopeLayout::Interleaved;
        let mut inter = ad.clone();
        inter.adapt_to(&config).unwrap();
        let b1 = inter.target("blk.0.attn_q.weight").unwrap().b();
        // Interleaved row 2i of head 1 is half-split row i; row 2i+1 is row i + hd/2.
        let r = 2;
        for i in 0..hd / 2 {
            let (h, src0, src1) = (hd, hd + i, hd + i + hd / 2);
            assert_eq!(
                b1[(h + 2 * i) * r..(h + 2 * i + 1) * r],
                b0[src0 * r..(src0 + 1) * r]
            );
            assert_eq!(
                b1[(h + 2 * i + 1) * r..(h + 2 * i + 2) * r],
                b0[src1 * r..(src1 + 1) * r]
            );
        }
        config.rope_layout = RopeLayout::HalfSplit;
        inter.adapt_to(&config).unwrap();
        assert_eq!(inter.target("blk.0.attn_q.weight").unwrap().b(), b0);
        // Unknown layout: taken to match, nothing moves.
        let mut unknown = ad.clone().with_rope_layout(None);
        config.rope_layout = RopeLayout::Interleaved;
        unknown.adapt_to(&config).unwrap();
        assert_eq!(unknown.target("blk.0.attn_q.weight").unwrap().b(), b0);
        assert_eq!(unknown.rope_layout(), Some(RopeLayout::Interleaved));
    }

    #[test]
    fn default_is_new() {
        assert_eq!(LoraAdapter::default().scale(), 1.0);
    }

    #[test]
    fn insert_checks_sizes() {
        let mut ad = LoraAdapter::new();
        let e = ad
            .insert(
                "blk.0.ffn_up.weight",
                4,
                4,
                2,
                1.0,
                vec![0.0; 7],
                vec![0.0; 8],
            )
            .unwrap_err();
        assert!(matches!(e, AdapterError::BadTensor { .. }), "{e}");
        let e = ad
            .insert(
                "blk.0.ffn_up.weight",
                4,
                4,
                2,
                1.0,
                vec![f32::NAN; 8],
                vec![0.0; 8],
            )
            .unwrap_err();
        assert!(matches!(e, AdapterError::BadTensor { .. }), "{e}");
        assert!(ad.is_empty());
    }
}
