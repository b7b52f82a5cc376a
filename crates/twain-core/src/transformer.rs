//! The decoder: embedding, layers (attention with GQA, RoPE, optional QK-norm
//! and q/k/v bias; SwiGLU FFN), final norm, LM head; with the KV-sharing plan.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use twain_io::{LoadedModel, Tensor};
use twain_model::{BoxError, Model, ModelError, ModelInfo, SpecialTokens, TokenId};
use twain_quant::{matmul, matmul_many, Parallelism};

use crate::kv::{KvDtype, LayerCache};
use crate::{arch, rope, CoreError, KvPlan, ModelConfig};

/// Build-time options of a [`Transformer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransformerOptions {
    /// Element type of the KV cache (int8 by default).
    pub kv_dtype: KvDtype,
    /// Prompt tokens processed per matrix-matrix pass in prefill.
    pub prefill_chunk: usize,
    /// Run layers after the last K/V-owning layer on the last prompt token
    /// only (the KV-sharing prefill saving). Off = the naive computation.
    pub skip_shared_prefill: bool,
    /// Cap on the context length (defaults to the model's).
    pub context_length: Option<usize>,
}

impl Default for TransformerOptions {
    fn default() -> Self {
        Self {
            kv_dtype: KvDtype::Int8,
            prefill_chunk: 256,
            skip_shared_prefill: true,
            context_length: None,
        }
    }
}

twain_model::setters!(TransformerOptions {
    kv_dtype: KvDtype,
    prefill_chunk: usize,
    skip_shared_prefill: bool,
    context_length: Option<usize>,
});

struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    wq: Tensor,
    wk: Option<Tensor>,
    wv: Option<Tensor>,
    wo: Tensor,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    /// Index into the state's caches of the cache this layer reads.
    cache: usize,
}

/// Inputs of the linear layers seen during a forward pass, for calibration
/// (importance-weighted quantization): called with the tensor name and the
/// n x cols input matrix and cols.
pub type Observer<'a> = &'a mut dyn FnMut(&str, &[f32], usize);

/// A Llama-family decoder in any twain weight format, with a KV-sharing plan.
pub struct Transformer {
    config: ModelConfig,
    info: ModelInfo,
    opts: TransformerOptions,
    embed: Tensor,
    lm_head: Option<Tensor>,
    final_norm: Vec<f32>,
    /// Signs `D` of the residual rotation `x D H` (`rotation.residual`).
    rot_residual: Option<Vec<f32>>,
    /// Signs of the online rotation of the down projection's input.
    rot_down: Option<Vec<f32>>,
    /// Any rotation was fused into the weights (adapters do not apply).
    rotated: bool,
    layers: Vec<Layer>,
    plan: KvPlan,
    inv_freq: Vec<f32>,
    id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Per-sequence state: KV caches of the owning layers and the position.
#[derive(Debug, Clone)]
pub struct State {
    model_id: u64,
    pos: usize,
    caches: Vec<LayerCache>,
    tokens_processed: u64,
    scratch: Scratch,
    adapter: Option<Arc<dyn LinearDelta>>,
}

/// A per-state addition to the model's linear layers, applied unmerged over
/// the (compressed) base weights: LoRA adapters implement it (crate
/// twain-adapters). One loaded model serves many states, each with its own
/// delta or none.
pub trait LinearDelta: Send + Sync + std::fmt::Debug {
    /// `y += delta_W x` for the linear layer `tensor` (canonical name such as
    /// `blk.3.attn_q.weight`): `x` is n x cols, `y` is n x rows, row-major.
    /// Layers the delta does not touch are left alone.
    fn apply(&self, tensor: &str, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), BoxError>;

    /// Check that the delta fits a model: every target exists with the shape
    /// `shape_of` reports (rows, cols), and no target is a K/V projection of a
    /// layer that reads another layer's cache. The error names the tensor.
    fn validate(&self, shape_of: &dyn Fn(&str) -> Option<(usize, usize)>) -> Result<(), BoxError>;
}

/// Activation buffers reused across layers and calls.
#[derive(Debug, Clone, Default)]
struct Scratch {
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    /// RoPE (sin, cos) of positions `angles_at.0 .. + angles_at.1`, shared
    /// by every layer of a forward call.
    angles: Vec<(f32, f32)>,
    angles_at: (usize, usize),
    /// Keys and values of each kv head as f32 for batched attention.
    kvf: Vec<f32>,
}

fn buf(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

thread_local! {
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl State {
    /// Bytes held by the KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.caches.iter().map(|c| c.bytes()).sum()
    }
    /// Tokens the model has run forward over with this state since it was made
    /// (counts prefill and decode work; not reduced by `truncate`).
    pub fn tokens_processed(&self) -> u64 {
        self.tokens_processed
    }
    /// Number of positions in the sequence.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// The adapter this state runs with, if any.
    pub fn adapter(&self) -> Option<&Arc<dyn LinearDelta>> {
        self.adapter.as_ref()
    }
}

/// Tensors under canonical names, taken out one by one with their shapes
/// checked: what a [`Transformer`] is built from.
struct TensorSource {
    tensors: std::collections::BTreeMap<String, Tensor>,
}

impl TensorSource {
    fn take_opt(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    fn take(&mut self, name: &str) -> Result<Tensor, CoreError> {
        self.take_opt(name).ok_or_else(|| CoreError::Tensor {
            name: name.to_string(),
            problem: "missing from the model file".into(),
        })
    }

    /// A matrix of exactly `shape` (rows, cols).
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor, CoreError> {
        let t = self.take(name)?;
        if t.shape() != shape {
            return Err(CoreError::Tensor {
                name: name.to_string(),
                problem: format!("expected shape {:?}, file has {:?}", shape, t.shape()),
            });
        }
        Ok(t)
    }

    /// A vector of `len` values, required when `required`.
    fn vector_opt(&mut self, name: &str, len: usize) -> Result<Option<Vec<f32>>, CoreError> {
        let Some(t) = self.take_opt(name) else {
            return Ok(None);
        };
        let numel: usize = t.shape().iter().product();
        if numel != len {
            return Err(CoreError::Tensor {
                name: name.to_string(),
                problem: format!("expected {len} values, file has shape {:?}", t.shape()),
            });
        }
        Ok(Some(t.to_f32()?))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, CoreError> {
        self.vector_opt(name, len)?
            .ok_or_else(|| CoreError::Tensor {
                name: name.to_string(),
                problem: "missing from the model file (the config requires it)".into(),
            })
    }

    /// `name` when `wanted`, and an error if it is present when not.
    fn vector_if(
        &mut self,
        wanted: bool,
        name: &str,
        len: usize,
    ) -> Result<Option<Vec<f32>>, CoreError> {
        if wanted {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Layer {
    /// The layer's linear weights (K/V only where it owns them).
    fn linears(&self) -> impl Iterator<Item = &Tensor> {
        [
            Some(&self.wq),
            self.wk.as_ref(),
            self.wv.as_ref(),
            Some(&self.wo),
            Some(&self.w_gate),
            Some(&self.w_up),
            Some(&self.w_down),
        ]
        .into_iter()
        .flatten()
    }

    /// Layer `l`'s weights: attention (K/V parts only when the plan says the
    /// layer owns its cache) and FFN.
    fn load(
        src: &mut TensorSource,
        c: &ModelConfig,
        plan: &KvPlan,
        l: usize,
    ) -> Result<Self, CoreError> {
        let p = format!("blk.{l}.");
        let (d, hd) = (c.d_model, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let owns = plan.owns(l);
        let kv = |src: &mut TensorSource, n: &str| -> Result<Option<Tensor>, CoreError> {
            owns.then(|| src.matrix(&format!("{p}{n}.weight"), [kv_dim, d]))
                .transpose()
        };
        Ok(Layer {
            attn_norm: src.vector(&format!("{p}attn_norm.weight"), d)?,
            wq: src.matrix(&format!("{p}attn_q.weight"), [q_dim, d])?,
            wk: kv(src, "attn_k")?,
            wv: kv(src, "attn_v")?,
            wo: src.matrix(&format!("{p}attn_output.weight"), [d, q_dim])?,
            bq: src.vector_if(c.qkv_bias, &format!("{p}attn_q.bias"), q_dim)?,
            bk: src.vector_if(c.qkv_bias && owns, &format!("{p}attn_k.bias"), kv_dim)?,
            bv: src.vector_if(c.qkv_bias && owns, &format!("{p}attn_v.bias"), kv_dim)?,
            q_norm: src.vector_if(c.qk_norm, &format!("{p}attn_q_norm.weight"), hd)?,
            // Only a layer that computes K normalises it.
            k_norm: src.vector_if(c.qk_norm && owns, &format!("{p}attn_k_norm.weight"), hd)?,
            ffn_norm: src.vector(&format!("{p}ffn_norm.weight"), d)?,
            w_gate: src.matrix(&format!("{p}ffn_gate.weight"), [c.ffn_hidden, d])?,
            w_up: src.matrix(&format!("{p}ffn_up.weight"), [c.ffn_hidden, d])?,
            w_down: src.matrix(&format!("{p}ffn_down.weight"), [d, c.ffn_hidden])?,
            cache: plan.cache_index(l),
        })
    }
}

impl Transformer {
    /// Build from a loaded model description (any mix of twain formats).
    pub fn from_loaded(model: LoadedModel, opts: TransformerOptions) -> Result<Self, CoreError> {
        let c = model.config.clone();
        let plan = arch::check_tensors(&c, &model.tensors)?;
        let mut src = TensorSource {
            tensors: model.tensors,
        };
        let d = c.d_model;
        let embed = src.matrix("token_embd.weight", [c.vocab_size, d])?;
        let lm_head = if c.tied_embeddings {
            None
        } else {
            Some(src.matrix("output.weight", [c.vocab_size, d])?)
        };
        let final_norm = src.vector("output_norm.weight", d)?;
        let rot_residual = rotation_signs(&mut src, "rotation.residual", d)?;
        let rot_down = rotation_signs(&mut src, "rotation.ffn_down", c.ffn_hidden)?;
        // Offline-only rotations leave a marker (the per-head V/O signs).
        let rot_heads = rotation_signs(&mut src, "rotation.heads", c.head_dim)?;
        let rotated = rot_residual.is_some() || rot_down.is_some() || rot_heads.is_some();
        let layers = (0..c.n_layers)
            .map(|l| Layer::load(&mut src, &c, &plan, l))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inv_freq = rope::inv_freqs(c.head_dim, c.rope_theta, c.rope_scaling);
        // Llama 3.1 GGUFs carry their RoPE scaling as per-frequency divisors.
        if let Some(f) = src.vector_opt("rope_freqs.weight", c.head_dim / 2)? {
            for (a, b) in inv_freq.iter_mut().zip(&f) {
                *a /= b;
            }
        }
        let context_length = opts
            .context_length
            .map_or(c.context_length, |n| n.min(c.context_length));
        let info = ModelInfo {
            name: c.arch.clone(),
            vocab_size: c.vocab_size,
            context_length,
            special: SpecialTokens::default(),
        };
        Ok(Self {
            config: c,
            info,
            opts: TransformerOptions {
                prefill_chunk: opts.prefill_chunk.max(1),
                ..opts
            },
            embed,
            lm_head,
            final_norm,
            rot_residual,
            rot_down,
            rotated,
            layers,
            plan,
            inv_freq,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The model description.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The KV-sharing plan.
    pub fn kv_plan(&self) -> &KvPlan {
        &self.plan
    }

    /// The options it was built with.
    pub fn options(&self) -> &TransformerOptions {
        &self.opts
    }

    /// Set the special tokens reported by [`Model::info`] (they come from the tokenizer).
    pub fn set_special_tokens(&mut self, special: SpecialTokens) {
        self.info.special = special;
    }

    /// KV-cache bytes one token occupies with this model's plan and cache type.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.plan.n_caches()
            * self.config.n_kv_heads
            * self.opts.kv_dtype.row_bytes(self.config.head_dim)
    }

    /// Number of layers that own a K/V cache.
    pub fn kv_owning_layers(&self) -> usize {
        self.plan.n_caches()
    }

    /// Weight bytes of all tensors (what decode reads per token, plus one embedding row).
    pub fn weight_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.matrix().map(|m| m.data().len()).unwrap_or(0);
        let mut n = bytes(&self.embed) + self.lm_head.as_ref().map_or(0, bytes);
        n += self.linear_footprint().0;
        n
    }

    /// Bytes and weights of the decoder's linear layers (every scale counted;
    /// embeddings and LM head excluded): bits per weight = 8 bytes / weights.
    pub fn linear_footprint(&self) -> (usize, usize) {
        let (mut bytes, mut weights) = (0, 0);
        for t in self.layers.iter().flat_map(Layer::linears) {
            bytes += t.matrix().map(|m| m.data().len()).unwrap_or(0);
            weights += t.shape().iter().product::<usize>();
        }
        (bytes, weights)
    }

    /// (rows, cols) of a linear layer's weight, by canonical name.
    pub fn linear_shape(&self, name: &str) -> Option<(usize, usize)> {
        let (l, rest) = name.strip_prefix("blk.")?.split_once('.')?;
        let layer = self.layers.get(l.parse::<usize>().ok()?)?;
        let t = match rest {
            "attn_q.weight" => Some(&layer.wq),
            "attn_k.weight" => layer.wk.as_ref(),
            "attn_v.weight" => layer.wv.as_ref(),
            "attn_output.weight" => Some(&layer.wo),
            "ffn_gate.weight" => Some(&layer.w_gate),
            "ffn_up.weight" => Some(&layer.w_up),
            "ffn_down.weight" => Some(&layer.w_down),
            _ => None,
        }?;
        match t.shape() {
            [r, c] => Some((*r, *c)),
            _ => None,
        }
    }

    /// Run `state` with `adapter` (or none) from now on. The adapter is
    /// validated against this model first (an error leaves the state as it
    /// was). The KV cache was computed with the previous adapter's
    /// projections, so it is cleared: the state restarts at position 0.
    pub fn set_adapter(
        &self,
        state: &mut State,
        adapter: Option<Arc<dyn LinearDelta>>,
    ) -> Result<(), CoreError> {
        self.check_state(state)?;
        if adapter.is_some() && self.rotated {
            return Err(CoreError::Adapter(
                "this model was converted with incoherence rotations (rotation.* tensors): \
                 adapters trained on the original weights do not apply to its rotated basis; \
                 convert without rotations (twain convert --no-rotate) to use them"
                    .into(),
            ));
        }
        if let Some(a) = &adapter {
            a.validate(&|name| self.linear_shape(name))
                .map_err(CoreError::Adapter)?;
        }
        self.rollback(state, 0);
        state.adapter = adapter;
        Ok(())
    }

    fn check_state(&self, state: &State) -> Result<(), ModelError> {
        if state.model_id != self.id {
            return Err(ModelError::ForeignState(
                "the state was created by another Transformer".into(),
            ));
        }
        Ok(())
    }

    /// Append `tokens` and return the logits of every new position
    /// (tokens.len() x vocab). Runs every layer on every position (no
    /// block-2 skip), as perplexity needs.
    pub fn forward_all(
        &self,
        state: &mut State,
        tokens: &[TokenId],
    ) -> Result<Vec<f32>, ModelError> {
        self.check_state(state)?;
        let v = self.info.vocab_size;
        self.info.check_forward(state.pos, tokens, v)?;
        let mut out = vec![0.0f32; tokens.len() * v];
        let start = state.pos;
        let r = self.run(state, tokens, Output::All(&mut out), None);
        if r.is_err() {
            self.rollback(state, start);
        }
        r.map(|_| out).map_err(Into::into)
    }

    /// Like [`Model::forward`], calling `observer` with the input of every
    /// linear layer (for calibration).
    pub fn forward_observed(
        &self,
        state: &mut State,
        tokens: &[TokenId],
        logits: &mut [f32],
        observer: Observer<'_>,
    ) -> Result<(), ModelError> {
        self.check_state(state)?;
        self.info.check_forward(state.pos, tokens, logits.len())?;
        let start = state.pos;
        let r = self.run(state, tokens, Output::Last(logits), Some(observer));
        if r.is_err() {
            self.rollback(state, start);
        }
        r.map_err(Into::into)
    }

    fn rollback(&self, state: &mut State, len: usize) {
        for c in &mut state.caches {
            c.truncate(len);
        }
        state.pos = len;
    }

    fn run(
        &self,
        state: &mut State,
        tokens: &[TokenId],
        out: Output<'_>,
        observer: Option<Observer<'_>>,
    ) -> Result<(), CoreError> {
        // A batch makes dozens of parallel calls per layer: from a thread
        // outside the rayon pool each one is handed to a worker and back (two
        // context switches), so run the whole batch on a worker. One token
        // (decode) stays on the caller: its matvecs use the spinning pool.
        if tokens.len() > 1 && observer.is_none() && rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.run_batch(state, tokens, out, None));
        }
        self.run_batch(state, tokens, out, observer)
    }

    fn run_batch(
        &self,
        state: &mut State,
        tokens: &[TokenId],
        mut out: Output<'_>,
        mut observer: Option<Observer<'_>>,
    ) -> Result<(), CoreError> {
        let all = matches!(out, Output::All(_));
        let skip = self.opts.skip_shared_prefill && !all;
        let chunk = self.opts.prefill_chunk;
        let n_total = tokens.len();
        let mut done = 0;
        while done < n_total {
            let n = chunk.min(n_total - done);
            let toks = &tokens[done..done + n];
            let is_last_chunk = done + n == n_total;
            let p0 = state.pos;
            let d = self.config.d_model;
            let mut x = vec![0.0f32; n * d];
            let embed = self.embed.matrix()?;
            for (i, &t) in toks.iter().enumerate() {
                embed.dequantize_row(t as usize, &mut x[i * d..(i + 1) * d])?;
            }
            if let Some(sg) = &self.rot_residual {
                // The residual stream lives in the rotated basis x D H.
                rotate_rows(&mut x, sg, false)?;
            }
            let obs = &mut observer;
            for (l, layer) in self.layers.iter().enumerate() {
                if skip && self.plan.prefill_skip_start().is_some_and(|s| l >= s) {
                    if !is_last_chunk {
                        break;
                    }
                    // Only the last token's state matters from here on.
                    if x.len() > d {
                        x.drain(..x.len() - d);
                    }
                    let last = x.len() / d;
                    self.layer_forward(l, layer, &mut x, last, p0 + n - last, state, obs)?;
                } else {
                    self.layer_forward(l, layer, &mut x, n, p0, state, obs)?;
                }
            }
            state.pos = p0 + n;
            state.tokens_processed += n as u64;
            let rows = x.len() / d;
            if let Some(sg) = &self.rot_residual {
                if is_last_chunk || matches!(out, Output::All(_)) {
                    rotate_rows(&mut x, sg, true)?;
                }
            }
            match &mut out {
                Output::Last(logits) if is_last_chunk => {
                    self.head(&x[(rows - 1) * d..], logits, obs)?;
                }
                Output::All(all_logits) => {
                    let v = self.info.vocab_size;
                    let mut normed = vec![0.0f32; rows * d];
                    for i in 0..rows {
                        rms_norm(
                            &x[i * d..(i + 1) * d],
                            &self.final_norm,
                            self.config.rms_eps,
                            &mut normed[i * d..(i + 1) * d],
                        );
                    }
                    let head = self.lm_head.as_ref().unwrap_or(&self.embed).matrix()?;
                    matmul(
                        &head,
                        &normed,
                        &mut all_logits[done * v..(done + rows) * v],
                        Parallelism::Rayon,
                    )?;
                }
                _ => {}
            }
            done += n;
        }
        Ok(())
    }

    fn head(
        &self,
        x: &[f32],
        logits: &mut [f32],
        obs: &mut Option<Observer<'_>>,
    ) -> Result<(), CoreError> {
        let d = self.config.d_model;
        let mut normed = vec![0.0f32; d];
        rms_norm(x, &self.final_norm, self.config.rms_eps, &mut normed);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        if let Some(o) = obs {
            o(head.name(), &normed, d);
        }
        matmul(&head.matrix()?, &normed, logits, Parallelism::Rayon)?;
        Ok(())
    }

    /// Run layer `l` on `n` rows of `x` at positions p0..p0+n.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        _l: usize,
        layer: &Layer,
        x: &mut [f32],
        n: usize,
        p0: usize,
        state: &mut State,
        obs: &mut Option<Observer<'_>>,
    ) -> Result<(), CoreError> {
        let c = &self.config;
        let (d, hd) = (c.d_model, c.head_dim);
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let q_dim = nh * hd;
        let kv_dim = nkv * hd;
        let eps = c.rms_eps;
        let State {
            caches,
            scratch,
            adapter,
            ..
        } = state;
        let ad = adapter.as_deref();

        let xb = buf(&mut scratch.xb, n * d);
        per_row(xb, d, |i, out| {
            rms_norm(&x[i * d..(i + 1) * d], &layer.attn_norm, eps, out)
        });
        let q = buf(&mut scratch.q, n * q_dim);
        let owns_kv = layer.wk.is_some() && layer.wv.is_some();
        let kv_len = if owns_kv { n * kv_dim } else { 0 };
        let k = buf(&mut scratch.k, kv_len);
        let v = buf(&mut scratch.v, kv_len);
        if let (Some(wk), Some(wv)) = (layer.wk.as_ref(), layer.wv.as_ref()) {
            // One input, three projections: quantized once, one fork/join.
            linear_many(
                &[&layer.wq, wk, wv],
                xb,
                &mut [&mut *q, &mut *k, &mut *v],
                obs,
                ad,
            )?;
            add_bias(k, layer.bk.as_deref());
            add_bias(v, layer.bv.as_deref());
        } else {
            linear(&layer.wq, xb, q, obs, ad)?;
        }
        add_bias(q, layer.bq.as_deref());
        let scale = 1.0 / (hd as f32).sqrt();
        // sin/cos once per position, shared by every head of q and k and by
        // every layer of this call.
        let half = self.inv_freq.len();
        if scratch.angles_at != (p0, n) || scratch.angles.len() != n * half {
            scratch.angles.clear();
            for i in 0..n {
                rope::angles(p0 + i, &self.inv_freq, &mut scratch.angles);
            }
            scratch.angles_at = (p0, n);
        }
        let angles = &scratch.angles;
        per_row(q, q_dim, |i, qi| {
            let ang = &angles[i * half..(i + 1) * half];
            for qh in qi.chunks_mut(hd) {
                if let Some(w) = &layer.q_norm {
                    rms_norm_inplace(qh, w, eps);
                }
                rope::apply_angles(qh, ang, c.rope_layout);
                qh.iter_mut().for_each(|v| *v *= scale);
            }
        });
        if owns_kv {
            let cache = &mut caches[layer.cache];
            debug_assert_eq!(cache.len(), p0);
            for i in 0..n {
                let ki = &mut k[i * kv_dim..(i + 1) * kv_dim];
                for h in 0..nkv {
                    let kh = &mut ki[h * hd..(h + 1) * hd];
                    if let Some(w) = &layer.k_norm {
                        rms_norm_inplace(kh, w, eps);
                    }
                    rope::apply_angles(kh, &angles[i * half..(i + 1) * half], c.rope_layout);
                }
                cache.push(ki, &v[i * kv_dim..(i + 1) * kv_dim])?;
            }
        }
        // Attention: every (row, head) pair independently.
        let cache = &caches[layer.cache];
        let group = nh / nkv;
        let att = buf(&mut scratch.att, n * q_dim);
        let max_len = p0 + n;
        let work = n * nh * max_len * hd;
        let q = &*q;
        if n >= 8 && twain_quant::attn::attend_causal16_is_simd(hd) {
            // A batch: each kv head's keys and values once as f32, then blocks
            // of 16 query rows per head, the rows in the lanes of the kernel.
            let span = max_len * hd;
            let kvf = buf(&mut scratch.kvf, 2 * nkv * span);
            kvf.par_chunks_mut(span)
                .enumerate()
                .for_each(|(c, dst)| cache.head_f32(c / 2, max_len, c % 2 == 1, dst));
            let kvf = &*kvf;
            att.par_chunks_mut(16 * q_dim)
                .enumerate()
                .for_each(|(b, out)| {
                    let i0 = 16 * b;
                    let limits: Vec<usize> =
                        (0..out.len() / q_dim).map(|i| p0 + i0 + i + 1).collect();
                    SCORES.with(|s| {
                        let mut s = s.borrow_mut();
                        for h in 0..nh {
                            let g = h / group;
                            twain_quant::attn::attend_causal16(
                                &q[i0 * q_dim + h * hd..],
                                q_dim,
                                &kvf[2 * g * span..(2 * g + 1) * span],
                                &kvf[(2 * g + 1) * span..(2 * g + 2) * span],
                                hd,
                                &limits,
                                &mut out[h * hd..],
                                q_dim,
                                &mut s,
                            );
                        }
                    });
                });
        } else {
            let job = |(idx, out): (usize, &mut [f32])| {
                let (i, h) = (idx / nh, idx % nh);
                let qh = &q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                SCORES.with(|s| {
                    let mut scores = s.borrow_mut();
                    if scores.len() < max_len {
                        scores.resize(max_len, 0.0);
                    }
                    cache.attend(qh, h / group, p0 + i, &mut scores, out);
                });
            };
            // One row (decode) splits only long contexts: waking the pool costs
            // more than attending a few hundred positions (measured on Zen 3:
            // 2-thread decode 99 -> 115 tok/s with the higher bar).
            let min_work = if n == 1 { 1 << 21 } else { 1 << 16 };
            if work > min_work {
                att.par_chunks_mut(hd).enumerate().for_each(job);
            } else {
                att.chunks_mut(hd).enumerate().for_each(job);
            }
        }
        let o = buf(&mut scratch.o, n * d);
        linear(&layer.wo, att, o, obs, ad)?;
        add_rows(x, o, d);

        // SwiGLU FFN.
        per_row(xb, d, |i, out| {
            rms_norm(&x[i * d..(i + 1) * d], &layer.ffn_norm, eps, out)
        });
        let f = c.ffn_hidden;
        let g = buf(&mut scratch.g, n * f);
        let u = buf(&mut scratch.u, n * f);
        linear_many(
            &[&layer.w_gate, &layer.w_up],
            xb,
            &mut [&mut *g, &mut *u],
            obs,
            ad,
        )?;
        let u = &*u;
        per_row(g, f, |i, gi| {
            twain_quant::attn::swiglu(gi, &u[i * f..(i + 1) * f])
        });
        if let Some(sg) = &self.rot_down {
            // Online Hadamard of the down input; its inverse is in w_down.
            rotate_rows(g, sg, false)?;
        }
        linear(&layer.w_down, g, o, obs, ad)?;
        add_rows(x, o, d);
        Ok(())
    }
}

enum Output<'a> {
    Last(&'a mut [f32]),
    All(&'a mut [f32]),
}

fn linear(
    w: &Tensor,
    x: &[f32],
    y: &mut [f32],
    obs: &mut Option<Observer<'_>>,
    delta: Option<&dyn LinearDelta>,
) -> Result<(), CoreError> {
    linear_many(&[w], x, &mut [y], obs, delta)
}

/// `y_i = x W_i^T` for tensors over one input (see [`matmul_many`]), with
/// the observer told of each input and the adapter's delta added.
fn linear_many(
    ws: &[&Tensor],
    x: &[f32],
    ys: &mut [&mut [f32]],
    obs: &mut Option<Observer<'_>>,
    delta: Option<&dyn LinearDelta>,
) -> Result<(), CoreError> {
    let mats = ws
        .iter()
        .map(|w| w.matrix())
        .collect::<Result<Vec<_>, _>>()?;
    for w in ws {
        let cols = w.shape().get(1).copied().unwrap_or(x.len());
        if let Some(o) = obs {
            o(w.name(), x, cols);
        }
    }
    matmul_many(&mats, x, ys, Parallelism::Rayon)?;
    if let Some(d) = delta {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            let cols = w.shape().get(1).copied().unwrap_or(x.len());
            d.apply(w.name(), x, x.len() / cols.max(1), y)
                .map_err(|source| CoreError::AdapterApply {
                    tensor: w.name().to_string(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// Signs of an online rotation, if the model has one: each +1 or -1, of a
/// width the Hadamard transform supports.
fn rotation_signs(
    src: &mut TensorSource,
    name: &str,
    len: usize,
) -> Result<Option<Vec<f32>>, CoreError> {
    let Some(s) = src.vector_opt(name, len)? else {
        return Ok(None);
    };
    let bad = |problem: String| CoreError::Tensor {
        name: name.to_string(),
        problem,
    };
    if !twain_quant::hadamard::supported(len) {
        return Err(bad(format!(
            "a rotation of width {len} (the Hadamard transform takes 2^k * 12^j, j <= 2)"
        )));
    }
    if let Some(i) = s.iter().position(|&v| v != 1.0 && v != -1.0) {
        return Err(bad(format!("entry {i} is {}, not +1 or -1", s[i])));
    }
    Ok(Some(s))
}

/// Rotate every row of `x` (rows of `signs.len()`): `x <- x D H`, or with
/// `inverse` `x <- x H^T D`.
fn rotate_rows(x: &mut [f32], signs: &[f32], inverse: bool) -> Result<(), CoreError> {
    let n = signs.len();
    let job = |row: &mut [f32]| -> Result<(), twain_quant::QuantError> {
        if inverse {
            twain_quant::hadamard::transform_transposed(row)?;
            row.iter_mut().zip(signs).for_each(|(a, b)| *a *= b);
        } else {
            row.iter_mut().zip(signs).for_each(|(a, b)| *a *= b);
            twain_quant::hadamard::transform(row)?;
        }
        Ok(())
    };
    if x.len() >= 1 << 15 {
        x.par_chunks_mut(n).try_for_each(job)?;
    } else {
        x.chunks_mut(n).try_for_each(job)?;
    }
    Ok(())
}

/// `f(i, row)` for each `len`-value row of `x`, over rayon when the batch is
/// large enough to pay for it (prefill), on this thread otherwise (decode).
fn per_row(x: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if x.len() >= 1 << 15 {
        x.par_chunks_mut(len).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        x.chunks_mut(len).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// `x += o`, row by row.
fn add_rows(x: &mut [f32], o: &[f32], len: usize) {
    per_row(x, len, |i, r| {
        r.iter_mut()
            .zip(&o[i * len..(i + 1) * len])
            .for_each(|(a, b)| *a += b)
    });
}

fn add_bias(y: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in y.chunks_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(a, c)| *a += c);
        }
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &a), &b) in out.iter_mut().zip(x).zip(w) {
        *o = a * inv * b;
    }
}

fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (a, &b) in x.iter_mut().zip(w) {
        *a *= inv * b;
    }
}

impl Model for Transformer {
    type State = State;

    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_state(&self) -> State {
        State {
            model_id: self.id,
            pos: 0,
            caches: (0..self.plan.n_caches())
                .map(|_| {
                    LayerCache::new(
                        self.opts.kv_dtype,
                        self.config.n_kv_heads,
                        self.config.head_dim,
                    )
                })
                .collect(),
            tokens_processed: 0,
            scratch: Scratch::default(),
            adapter: None,
        }
    }

    fn forward(
        &self,
        state: &mut State,
        tokens: &[TokenId],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        self.check_state(state)?;
        self.info.check_forward(state.pos, tokens, logits.len())?;
        let start = state.pos;
        let r = self.run(state, tokens, Output::Last(logits), None);
        if r.is_err() {
            self.rollback(state, start);
        }
        r.map_err(Into::into)
    }

    fn position(&self, state: &State) -> usize {
        state.pos
    }

    fn truncate(&self, state: &mut State, len: usize) -> Result<(), ModelError> {
        self.check_state(state)?;
        if len > state.pos {
            return Err(ModelError::TruncateBeyondEnd {
                len,
                position: state.pos,
            });
        }
        self.rollback(state, len);
        Ok(())
    }
}
