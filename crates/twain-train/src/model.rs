//! The differentiable twain: the Llama-family forward of twain-core (GQA,
//! RoPE in either pair layout, optional QK-norm and q/k/v bias, SwiGLU, the
//! KV-sharing plan, the post-training rotations) in candle, over weights
//! that are fixed, trainable, or fake-quantized on twain's Q2 grid.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var, D};
use twain_core::{KvPlan, ModelConfig, RopeLayout};
use twain_io::LoadedModel;
use twain_quant::blocks::QK;
use twain_quant::{grid, QuantFormat};

use crate::fakequant::{
    fake_q2, fake_q2_frozen, q2_linear, q2_linear_frozen, ConstLinear, Rotate, SoftCrossEntropy,
};
use crate::TrainError;

/// What a [`Student`] trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Targets {
    /// The latent weights of every Q2 matrix (quantization-aware training).
    /// Without them the codes are frozen: every Q2 matrix keeps its stored
    /// 2-bit codes bit for bit (never re-rounded, whatever the scales do),
    /// and only its scales, row gains and the norms train.
    pub weights: bool,
    /// The group scales of every Q2 matrix (learnable clipping).
    pub scales: bool,
    /// The RMSNorm gains (attention, FFN, QK and final norms).
    pub norms: bool,
    /// A gain on every output row of every Q2 matrix (exact in the file:
    /// it multiplies the row's f32 scale).
    pub rows: bool,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            weights: true,
            scales: true,
            norms: true,
            rows: true,
        }
    }
}

impl Targets {
    /// Train nothing (a forward-only model).
    pub fn none() -> Self {
        Self {
            weights: false,
            scales: false,
            norms: false,
            rows: false,
        }
    }
}

/// A parameter: fixed or trained.
#[derive(Debug, Clone)]
enum Param {
    Fixed(Tensor),
    Train(Var),
}

impl Param {
    fn new(t: Tensor, train: bool) -> Result<Self, TrainError> {
        Ok(if train {
            Param::Train(Var::from_tensor(&t)?)
        } else {
            Param::Fixed(t)
        })
    }

    fn t(&self) -> &Tensor {
        match self {
            Param::Fixed(t) => t,
            Param::Train(v) => v.as_tensor(),
        }
    }
}

/// A matrix (rows x cols) of the model as the forward uses it.
#[derive(Debug, Clone)]
enum Weight {
    /// Used as stored (dequantized to f32 once).
    Dense(Param),
    /// Q2, fake-quantized: latent weights, continuous group scales, the
    /// fixed row scales of the stored rows, when trained, a gain on every
    /// row (rows x 1) and, when the weights do not train, the stored codes
    /// (frozen: the forward uses them, not the latent weights).
    Q2 {
        w: Param,
        s: Param,
        d: Arc<Vec<f32>>,
        a: Option<Var>,
        codes: Option<Arc<Vec<u8>>>,
    },
}

impl Weight {
    fn value(&self) -> Result<Tensor, TrainError> {
        Ok(match self {
            Weight::Dense(p) => p.t().clone(),
            Weight::Q2 { w, s, d, a, codes } => {
                let q = match codes {
                    Some(codes) => fake_q2_frozen(w.t(), s.t(), d.clone(), codes.clone())?,
                    None => fake_q2(w.t(), s.t(), d.clone())?,
                };
                match a {
                    Some(a) => q.broadcast_mul(a.as_tensor())?,
                    None => q,
                }
            }
        })
    }
}

struct Layer {
    attn_norm: Param,
    ffn_norm: Param,
    wq: Weight,
    wk: Option<Weight>,
    wv: Option<Weight>,
    wo: Weight,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Param>,
    k_norm: Option<Param>,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// What every layer of one batch shares: its shape, the RoPE tables and
/// the causal mask.
pub struct Window {
    batch: usize,
    len: usize,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl Window {
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens per sequence.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a window holds at least one token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One Q2 matrix of a [`Student`] as it stands (for the export).
pub(crate) struct Q2Matrix<'a> {
    /// The tensor's name.
    pub name: String,
    /// Latent weights, rows x cols.
    pub w: &'a Tensor,
    /// Continuous group scales, rows x cols/32.
    pub s: &'a Tensor,
    /// Row gains, rows x 1, if trained.
    pub a: Option<&'a Tensor>,
    /// The frozen codes, rows x cols, if the codes are frozen.
    pub codes: Option<&'a [u8]>,
}

/// A model being trained: every tensor of a twain model file, Q2 matrices
/// fake-quantized, in candle on the CPU.
pub struct Student {
    config: ModelConfig,
    plan: KvPlan,
    embed: Tensor,
    lm_head: Option<Tensor>,
    final_norm: Param,
    /// Signs of the residual rotation `x -> (x D) H`.
    rot_residual: Option<Arc<Vec<f32>>>,
    /// Signs of the down projection's input rotation.
    rot_down: Option<Arc<Vec<f32>>>,
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    /// Trained parameters by tensor name (`.scales` for group scales).
    vars: BTreeMap<String, Var>,
    device: Device,
}

fn dense(model: &LoadedModel, name: &str, device: &Device) -> Result<Tensor, TrainError> {
    let t = model.tensor(name)?;
    let data = t.to_f32()?;
    Ok(Tensor::from_vec(data, t.shape(), device)?)
}

/// The signs `D` of the rotation `x -> (x D) H_n` stored as `name`.
fn rotation(model: &LoadedModel, name: &str) -> Result<Option<Arc<Vec<f32>>>, TrainError> {
    let Some(t) = model.tensors.get(name) else {
        return Ok(None);
    };
    let signs = t.to_f32()?;
    if !twain_quant::hadamard::supported(signs.len()) {
        return Err(TrainError::Model(format!(
            "{name}: no Hadamard transform of width {}",
            signs.len()
        )));
    }
    Ok(Some(Arc::new(signs)))
}

fn rotate(x: &Tensor, signs: &Arc<Vec<f32>>, inverse: bool) -> Result<Tensor, TrainError> {
    Ok(x.apply_op1(Rotate {
        signs: signs.clone(),
        inverse,
    })?)
}

impl Student {
    /// The model in `loaded` (any twain formats), with `targets` trained.
    /// Q2 matrices are fake-quantized from their stored codes and scales, so
    /// before any step the forward computes what the file holds.
    pub fn new(loaded: &LoadedModel, targets: Targets) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        let c = loaded.config.clone();
        let plan = twain_core::validate_config(&c)?;
        let mut vars = BTreeMap::new();
        let mut weight = |name: String| -> Result<Weight, TrainError> {
            let t = loaded.tensor(&name)?;
            let (rows, cols) = match t.shape() {
                [r, c] => (*r, *c),
                s => {
                    return Err(TrainError::Model(format!(
                        "{name}: shape {s:?} is not a matrix"
                    )))
                }
            };
            if t.format() != QuantFormat::Q2 {
                return Ok(Weight::Dense(Param::Fixed(dense(loaded, &name, &device)?)));
            }
            let m = t.matrix()?;
            let nb = cols / QK;
            let (mut d, mut s) = (Vec::with_capacity(rows), Vec::with_capacity(rows * nb));
            // Without trained weights the codes are frozen as stored.
            let mut codes = (!targets.weights).then(|| Vec::with_capacity(rows * cols));
            for r in 0..rows {
                let row = m.row_data(r)?;
                let rd = grid::q2_row_scale(row).unwrap_or(0.0);
                d.push(rd);
                // The continuous scale starts at what the row stores.
                s.extend(grid::group_scales(QuantFormat::Q2, row, cols)?);
                if let Some(codes) = &mut codes {
                    codes.extend(grid::codes(QuantFormat::Q2, row, cols)?);
                }
            }
            let w = Tensor::from_vec(m.dequantize(), (rows, cols), &device)?;
            let s = Tensor::from_vec(s, (rows, nb), &device)?;
            let w = Param::new(w, targets.weights)?;
            let s = Param::new(s, targets.scales)?;
            if let Param::Train(v) = &w {
                vars.insert(name.clone(), v.clone());
            }
            if let Param::Train(v) = &s {
                vars.insert(format!("{name}.scales"), v.clone());
            }
            let a = if targets.rows {
                let v =
                    Var::from_tensor(&Tensor::ones((rows, 1), candle_core::DType::F32, &device)?)?;
                vars.insert(format!("{name}.rows"), v.clone());
                Some(v)
            } else {
                None
            };
            Ok(Weight::Q2 {
                w,
                s,
                d: Arc::new(d),
                a,
                codes: codes.map(Arc::new),
            })
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            let owns = plan.owns(l);
            let wq = weight(p("attn_q.weight"))?;
            let wk = if owns {
                Some(weight(p("attn_k.weight"))?)
            } else {
                None
            };
            let wv = if owns {
                Some(weight(p("attn_v.weight"))?)
            } else {
                None
            };
            let wo = weight(p("attn_output.weight"))?;
            let gate = weight(p("ffn_gate.weight"))?;
            let up = weight(p("ffn_up.weight"))?;
            let down = weight(p("ffn_down.weight"))?;
            let bias = |s: &str, on: bool| -> Result<Option<Tensor>, TrainError> {
                if on {
                    Ok(Some(dense(loaded, &p(s), &device)?))
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv) = (
                bias("attn_q.bias", c.qkv_bias)?,
                bias("attn_k.bias", c.qkv_bias && owns)?,
                bias("attn_v.bias", c.qkv_bias && owns)?,
            );
            layers.push(Layer {
                attn_norm: Param::Fixed(dense(loaded, &p("attn_norm.weight"), &device)?),
                ffn_norm: Param::Fixed(dense(loaded, &p("ffn_norm.weight"), &device)?),
                wq,
                wk,
                wv,
                wo,
                bq,
                bk,
                bv,
                q_norm: if c.qk_norm {
                    Some(Param::Fixed(dense(
                        loaded,
                        &p("attn_q_norm.weight"),
                        &device,
                    )?))
                } else {
                    None
                },
                k_norm: if c.qk_norm && owns {
                    Some(Param::Fixed(dense(
                        loaded,
                        &p("attn_k_norm.weight"),
                        &device,
                    )?))
                } else {
                    None
                },
                gate,
                up,
                down,
            });
        }
        let mut norm = |name: String| -> Result<Param, TrainError> {
            let p = Param::new(dense(loaded, &name, &device)?, targets.norms)?;
            if let Param::Train(v) = &p {
                vars.insert(name, v.clone());
            }
            Ok(p)
        };
        for (l, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = norm(format!("blk.{l}.attn_norm.weight"))?;
            layer.ffn_norm = norm(format!("blk.{l}.ffn_norm.weight"))?;
            if layer.q_norm.is_some() {
                layer.q_norm = Some(norm(format!("blk.{l}.attn_q_norm.weight"))?);
            }
            if layer.k_norm.is_some() {
                layer.k_norm = Some(norm(format!("blk.{l}.attn_k_norm.weight"))?);
            }
        }
        let final_norm = norm("output_norm.weight".to_string())?;
        let embed = dense(loaded, "token_embd.weight", &device)?;
        let lm_head = if c.tied_embeddings {
            None
        } else {
            Some(dense(loaded, "output.weight", &device)?)
        };
        let rot_residual = rotation(loaded, "rotation.residual")?;
        let rot_down = rotation(loaded, "rotation.ffn_down")?;
        let inv_freq = twain_core::rope::inv_freqs(c.head_dim, c.rope_theta, c.rope_scaling);
        Ok(Student {
            config: c,
            plan,
            embed,
            lm_head,
            final_norm,
            rot_residual,
            rot_down,
            layers,
            inv_freq,
            vars,
            device,
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The trained parameters by name (Q2 latent weights under the tensor's
    /// name, their group scales under `NAME.scales`, norm gains).
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Number of trained values.
    pub fn trained_values(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// The Q2 matrices: name, latent weights, continuous scales, row gains,
    /// frozen codes.
    pub(crate) fn q2_matrices(&self) -> Vec<Q2Matrix<'_>> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let named = [
                ("attn_q", Some(&layer.wq)),
                ("attn_k", layer.wk.as_ref()),
                ("attn_v", layer.wv.as_ref()),
                ("attn_output", Some(&layer.wo)),
                ("ffn_gate", Some(&layer.gate)),
                ("ffn_up", Some(&layer.up)),
                ("ffn_down", Some(&layer.down)),
            ];
            for (n, w) in named {
                if let Some(Weight::Q2 { w, s, a, codes, .. }) = w {
                    out.push(Q2Matrix {
                        name: format!("blk.{l}.{n}.weight"),
                        w: w.t(),
                        s: s.t(),
                        a: a.as_ref().map(|a| a.as_tensor()),
                        codes: codes.as_deref().map(|c| c.as_slice()),
                    });
                }
            }
        }
        out
    }

    /// The units in which a trained value's learning rate is given, per
    /// element (`None`: absolute units). A latent weight moves in units of
    /// its group's quantization step (the stored scale), a group scale in
    /// units of its row's scale step (the row scale), so one learning rate
    /// means the same on every matrix whatever its magnitude; a norm gain
    /// moves in absolute units.
    pub(crate) fn lr_units(&self, name: &str) -> Result<Option<Vec<f32>>, TrainError> {
        let (base, scales) = match name.strip_suffix(".scales") {
            Some(b) => (b, true),
            None => (name, false),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let named = [
                ("attn_q", Some(&layer.wq)),
                ("attn_k", layer.wk.as_ref()),
                ("attn_v", layer.wv.as_ref()),
                ("attn_output", Some(&layer.wo)),
                ("ffn_gate", Some(&layer.gate)),
                ("ffn_up", Some(&layer.up)),
                ("ffn_down", Some(&layer.down)),
            ];
            for (n, wt) in named {
                let Some(Weight::Q2 { w, s, d, .. }) = wt else {
                    continue;
                };
                if base != format!("blk.{l}.{n}.weight") {
                    continue;
                }
                let (rows, cols) = w.t().dims2()?;
                let nb = cols / QK;
                if scales {
                    return Ok(Some(
                        d.iter()
                            .flat_map(|&dr| std::iter::repeat_n(dr, nb))
                            .collect(),
                    ));
                }
                let sv = s.t().flatten_all()?.to_vec1::<f32>()?;
                let mut u = Vec::with_capacity(rows * cols);
                for r in 0..rows {
                    for b in 0..nb {
                        let st = crate::fakequant::stored_scale(d[r], sv[r * nb + b]).max(d[r]);
                        u.extend(std::iter::repeat_n(st, QK));
                    }
                }
                return Ok(Some(u));
            }
        }
        Ok(None)
    }

    /// Spread the latent weights inside their quantization bins towards
    /// `source`'s full-precision values (the f32 model rotated like this
    /// one): each latent weight moves from its grid point by `source`'s
    /// offset, clamped to stay in the same bin, so the forward (the stored
    /// codes) is unchanged. Latent weights that all start at grid points are
    /// half a step from every boundary and would all flip at once under a
    /// common gradient; spread out, they cross one by one, those closest to
    /// a boundary first. Returns the number of matrices spread.
    pub fn spread_latent(&self, source: &LoadedModel) -> Result<usize, TrainError> {
        let mut n = 0;
        for (name, w, s, d) in self.q2_all() {
            let Param::Train(var) = w else { continue };
            let Some(src) = source.tensors.get(&name) else {
                return Err(TrainError::Model(format!(
                    "{name}: not in the source model"
                )));
            };
            let (rows, cols) = var.dims2()?;
            if src.shape() != [rows, cols] {
                return Err(TrainError::Model(format!(
                    "{name}: the source holds {:?}, the student {rows}x{cols}",
                    src.shape()
                )));
            }
            let full = src.to_f32()?;
            let mut lat = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let sv = s.t().flatten_all()?.to_vec1::<f32>()?;
            let nb = cols / QK;
            for r in 0..rows {
                for c in 0..cols {
                    let sc = crate::fakequant::stored_scale(d[r], sv[r * nb + c / QK]);
                    let i = r * cols + c;
                    if sc > 0.0 && full[i].is_finite() {
                        let off = (full[i] - lat[i]).clamp(-0.45 * sc, 0.45 * sc);
                        lat[i] += off;
                    }
                }
            }
            var.set(&Tensor::from_vec(lat, (rows, cols), &self.device)?)?;
            n += 1;
        }
        Ok(n)
    }

    fn q2_all(&self) -> Vec<(String, &Param, &Param, &Arc<Vec<f32>>)> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let named = [
                ("attn_q", Some(&layer.wq)),
                ("attn_k", layer.wk.as_ref()),
                ("attn_v", layer.wv.as_ref()),
                ("attn_output", Some(&layer.wo)),
                ("ffn_gate", Some(&layer.gate)),
                ("ffn_up", Some(&layer.up)),
                ("ffn_down", Some(&layer.down)),
            ];
            for (n, w) in named {
                if let Some(Weight::Q2 { w, s, d, .. }) = w {
                    out.push((format!("blk.{l}.{n}.weight"), w, s, d));
                }
            }
        }
        out
    }

    /// The norm gains the model holds now, by tensor name.
    pub(crate) fn norms(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("output_norm.weight".to_string(), self.final_norm.t())];
        for (l, layer) in self.layers.iter().enumerate() {
            out.push((format!("blk.{l}.attn_norm.weight"), layer.attn_norm.t()));
            out.push((format!("blk.{l}.ffn_norm.weight"), layer.ffn_norm.t()));
            if let Some(q) = &layer.q_norm {
                out.push((format!("blk.{l}.attn_q_norm.weight"), q.t()));
            }
            if let Some(k) = &layer.k_norm {
                out.push((format!("blk.{l}.attn_k_norm.weight"), k.t()));
            }
        }
        out
    }

    /// The KV-sharing plan the student follows.
    pub fn plan(&self) -> &KvPlan {
        &self.plan
    }

    /// The names of layer `l`'s trained parameters.
    pub fn layer_vars(&self, l: usize) -> Vec<String> {
        let prefix = format!("blk.{l}.");
        self.vars
            .keys()
            .filter(|n| n.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// The tables a batch of `batch` sequences of `len` tokens each, starting
    /// at position 0, needs in every layer.
    pub fn window(&self, batch: usize, len: usize) -> Result<Window, TrainError> {
        if batch == 0 || len == 0 {
            return Err(TrainError::Data(format!(
                "{batch} sequences of {len} tokens is no batch"
            )));
        }
        if len > self.config.context_length {
            return Err(TrainError::Data(format!(
                "sequences of {len} tokens exceed the context of {}",
                self.config.context_length
            )));
        }
        let (cos, sin) = self.rope_tables(len)?;
        Ok(Window {
            batch,
            len,
            cos,
            sin,
            mask: causal_mask(len, &self.device)?,
        })
    }

    /// The residual stream entering layer 0 for `tokens` (rows x d): the
    /// embedding rows, rotated as the model's residual is.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor, TrainError> {
        let vocab = self.config.vocab_size;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(TrainError::Data(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        if let Some(sg) = &self.rot_residual {
            x = rotate(&x, sg, false)?;
        }
        Ok(x)
    }

    /// Layer `l` on the residual stream `x` (batch * len rows of `w`).
    /// `caches` holds every layer's K/V (batch x kv heads x len x head dim):
    /// a layer that owns K/V writes its own, a layer that does not reads
    /// its source's.
    pub fn block(
        &self,
        l: usize,
        x: &Tensor,
        w: &Window,
        caches: &mut [Option<(Tensor, Tensor)>],
    ) -> Result<Tensor, TrainError> {
        let layer = self.layers.get(l).ok_or_else(|| {
            TrainError::Model(format!("no layer {l} in {} layers", self.layers.len()))
        })?;
        if caches.len() != self.layers.len() {
            return Err(TrainError::Model(format!(
                "{} caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        self.layer(l, layer, x, w.batch, w.len, &w.cos, &w.sin, &w.mask, caches)
    }

    /// Logits (rows x vocab) of the residual stream `x` after the last layer.
    pub fn head(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let mut x = x.clone();
        if let Some(sg) = &self.rot_residual {
            x = rotate(&x, sg, true)?;
        }
        let x = rms_norm(&x, self.final_norm.t(), self.config.rms_eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        const_linear(&x, head)
    }

    /// Logits (batch * len x vocab) of `tokens`, `batch` sequences of `len`
    /// tokens each starting at position 0, every layer on every position.
    pub fn forward(&self, tokens: &[u32], batch: usize) -> Result<Tensor, TrainError> {
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(TrainError::Data(format!(
                "{} tokens do not split into {batch} sequences",
                tokens.len()
            )));
        }
        let w = self.window(batch, tokens.len() / batch)?;
        let mut x = self.embed(tokens)?;
        let mut caches: Vec<Option<(Tensor, Tensor)>> = vec![None; self.config.n_layers];
        for l in 0..self.layers.len() {
            x = self.block(l, &x, &w, &mut caches)?;
        }
        self.head(&x)
    }

    fn rope_tables(&self, len: usize) -> Result<(Tensor, Tensor), TrainError> {
        let half = self.inv_freq.len();
        let mut ang = Vec::with_capacity(len * half);
        for p in 0..len {
            twain_core::rope::angles(p, &self.inv_freq, &mut ang);
        }
        let sin: Vec<f32> = ang.iter().map(|a| a.0).collect();
        let cos: Vec<f32> = ang.iter().map(|a| a.1).collect();
        Ok((
            Tensor::from_vec(cos, (len, half), &self.device)?,
            Tensor::from_vec(sin, (len, half), &self.device)?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: usize,
        layer: &Layer,
        x: &Tensor,
        batch: usize,
        len: usize,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        caches: &mut [Option<(Tensor, Tensor)>],
    ) -> Result<Tensor, TrainError> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let eps = c.rms_eps;
        let h = rms_norm(x, layer.attn_norm.t(), eps)?;
        let mut q = linear(&h, &layer.wq, layer.bq.as_ref())?.reshape((batch, len, nh, hd))?;
        if let Some(w) = &layer.q_norm {
            q = rms_norm(&q, w.t(), eps)?;
        }
        let q = (rope(&q, cos, sin, c.rope_layout)? * (1.0 / (hd as f64).sqrt()))?;
        if let (Some(wk), Some(wv)) = (&layer.wk, &layer.wv) {
            let mut k = linear(&h, wk, layer.bk.as_ref())?.reshape((batch, len, nkv, hd))?;
            if let Some(w) = &layer.k_norm {
                k = rms_norm(&k, w.t(), eps)?;
            }
            let k = rope(&k, cos, sin, c.rope_layout)?;
            let v = linear(&h, wv, layer.bv.as_ref())?.reshape((batch, len, nkv, hd))?;
            // batch x kv head x len x hd
            caches[l] = Some((
                k.transpose(1, 2)?.contiguous()?,
                v.transpose(1, 2)?.contiguous()?,
            ));
        }
        let src = self.plan.source(l);
        let (k, v) = caches[src].clone().ok_or_else(|| {
            TrainError::Model(format!(
                "layer {l} reads layer {src}'s cache, which is empty"
            ))
        })?;
        let group = nh / nkv;
        let expand = |t: &Tensor| -> Result<Tensor, TrainError> {
            if group == 1 {
                return Ok(t.clone());
            }
            Ok(t.unsqueeze(2)?
                .expand((batch, nkv, group, len, hd))?
                .reshape((batch, nh, len, hd))?)
        };
        let (k, v) = (expand(&k)?, expand(&v)?);
        let q = q.transpose(1, 2)?.contiguous()?; // batch x head x len x hd
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let p = softmax_last(&scores)?;
        let att = p
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch * len, nh * hd))?;
        let x = (x + linear(&att, &layer.wo, None)?)?;
        let h = rms_norm(&x, layer.ffn_norm.t(), eps)?;
        let g = linear(&h, &layer.gate, None)?;
        let u = linear(&h, &layer.up, None)?;
        let mut a = (g.silu()? * u)?;
        if let Some(sg) = &self.rot_down {
            a = rotate(&a, sg, false)?;
        }
        Ok((x + linear(&a, &layer.down, None)?)?)
    }
}

fn linear(x: &Tensor, w: &Weight, b: Option<&Tensor>) -> Result<Tensor, TrainError> {
    let y = match w {
        Weight::Dense(Param::Fixed(w)) => const_linear(x, w)?,
        Weight::Q2 { w, s, d, a, codes } => {
            let y = match codes {
                Some(codes) => q2_linear_frozen(x, w.t(), s.t(), d.clone(), codes.clone())?,
                None => q2_linear(x, w.t(), s.t(), d.clone())?,
            };
            match a {
                // Row r of the matrix is output column r.
                Some(a) => y.broadcast_mul(&a.as_tensor().t()?.squeeze(0)?)?,
                None => y,
            }
        }
        _ => x.matmul(&w.value()?.t()?)?,
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `x W^T` for a fixed `W` (no gradient computed for it).
fn const_linear(x: &Tensor, w: &Tensor) -> Result<Tensor, TrainError> {
    Ok(x.apply_op1(ConstLinear { w: w.clone() })?)
}

/// `-(1/rows) sum p log softmax(logits)` for fixed target rows `p`.
pub(crate) fn soft_cross_entropy(logits: &Tensor, p: Vec<f32>) -> Result<Tensor, TrainError> {
    Ok(logits.apply_op1(SoftCrossEntropy { p: Arc::new(p) })?)
}

/// RMSNorm over the last dimension with gain `w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor, TrainError> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps as f64)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension (composed of differentiable ops).
fn softmax_last(x: &Tensor) -> Result<Tensor, TrainError> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

fn causal_mask(len: usize, dev: &Device) -> Result<Tensor, TrainError> {
    let m: Vec<f32> = (0..len * len)
        .map(|i| if i % len > i / len { -1e30 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(m, (len, len), dev)?)
}

/// RoPE on `x` (batch x len x heads x hd) with tables (len x hd/2).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor, TrainError> {
    let (b, t, h, hd) = x.dims4()?;
    let half = hd / 2;
    let (x0, x1, tab_shape, dim) = match layout {
        RopeLayout::Interleaved => {
            let x = x.reshape((b, t, h, half, 2))?;
            (
                x.narrow(4, 0, 1)?,
                x.narrow(4, 1, 1)?,
                (1, t, 1, half, 1),
                4,
            )
        }
        RopeLayout::HalfSplit => {
            let x = x.reshape((b, t, h, 2, half))?;
            (
                x.narrow(3, 0, 1)?,
                x.narrow(3, 1, 1)?,
                (1, t, 1, 1, half),
                3,
            )
        }
    };
    let cos = cos.reshape(tab_shape)?;
    let sin = sin.reshape(tab_shape)?;
    let o0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let o1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Ok(Tensor::cat(&[&o0, &o1], dim)?.reshape((b, t, h, hd))?)
}
