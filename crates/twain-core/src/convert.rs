//! Re-quantizing a loaded model into twain formats (presets), and
//! retrofitting a KV-sharing plan.

use std::collections::BTreeMap;

use twain_io::{LoadedModel, ModelConfig, Tensor};
use twain_quant::{quantize, QuantFormat, QuantizeOptions};

use crate::CoreError;

/// A recipe: which format each kind of tensor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The reference system's recipe: 2-bit decoder linears, 4-bit embeddings.
    Afm,
    /// 4-bit decoder linears and embeddings.
    Q4,
    /// int8 decoder linears and embeddings.
    Q8,
    /// Everything in f16 (norms stay f32).
    F16,
    /// Everything in f32.
    F32,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 5] = [
        Preset::Afm,
        Preset::Q4,
        Preset::Q8,
        Preset::F16,
        Preset::F32,
    ];

    /// Name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Afm => "afm",
            Preset::Q4 => "q4",
            Preset::Q8 => "q8",
            Preset::F16 => "f16",
            Preset::F32 => "f32",
        }
    }

    /// Inverse of [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Format of the embedding table (and tied LM head).
    pub fn embedding_format(self) -> QuantFormat {
        match self {
            Preset::Afm | Preset::Q4 => QuantFormat::Q4,
            Preset::Q8 => QuantFormat::Q8,
            Preset::F16 => QuantFormat::F16,
            Preset::F32 => QuantFormat::F32,
        }
    }

    /// Format of decoder linear weights.
    pub fn linear_format(self) -> QuantFormat {
        match self {
            Preset::Afm => QuantFormat::Q2,
            Preset::Q4 => QuantFormat::Q4,
            Preset::Q8 => QuantFormat::Q8,
            Preset::F16 => QuantFormat::F16,
            Preset::F32 => QuantFormat::F32,
        }
    }

    /// The format `preset` gives a tensor with this canonical name and shape.
    pub fn format_for(self, name: &str, shape: &[usize]) -> QuantFormat {
        if shape.len() != 2 || name.ends_with(".bias") || name.contains("norm") {
            return QuantFormat::F32;
        }
        let f = if name == "token_embd.weight" || name == "output.weight" {
            self.embedding_format()
        } else {
            self.linear_format()
        };
        // Fall back to a wider format for rows the block size cannot split.
        let cols = shape[1];
        for cand in [f, QuantFormat::Q8, QuantFormat::F16] {
            if cand.row_bytes(cols).is_ok() {
                return cand;
            }
        }
        QuantFormat::F32
    }
}

/// A KV-sharing plan "first a of every a+b layers own K/V": layers
/// `0..n1` own K/V and layers `n1..L` read layer `n1 - 1`, with
/// `n1 = round(a / (a + b) * L)`.
pub fn kv_share_plan(n_layers: usize, a: usize, b: usize) -> Result<Vec<usize>, CoreError> {
    if a == 0 || n_layers == 0 {
        return Err(CoreError::Config(format!(
            "KV-share ratio {a}:{b} on {n_layers} layers leaves no layer owning K/V"
        )));
    }
    let n1 = ((a as f64 / (a + b) as f64) * n_layers as f64).round() as usize;
    let n1 = n1.clamp(1, n_layers);
    Ok((0..n_layers)
        .map(|l| if l < n1 { l } else { n1 - 1 })
        .collect())
}

/// Progress callback: (done, total, tensor name).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Options for [`convert`].
#[derive(Default)]
pub struct ConvertOptions<'a> {
    /// Retrofit this KV-sharing ratio (e.g. (5, 3)); block-2 layers lose their K/V projections.
    pub kv_share: Option<(usize, usize)>,
    /// Per-tensor importance (mean squared input per column) from calibration.
    pub importance: BTreeMap<String, Vec<f32>>,
    /// Called after each tensor with (done, total, name).
    pub progress: Option<Progress<'a>>,
    /// Override the preset's format for the embedding table / LM head.
    pub embedding_format: Option<QuantFormat>,
}

/// Re-quantize every tensor of `model` per `preset` (and retrofit a plan).
pub fn convert(
    mut model: LoadedModel,
    preset: Preset,
    mut opts: ConvertOptions<'_>,
) -> Result<LoadedModel, CoreError> {
    if let Some((a, b)) = opts.kv_share {
        let plan = kv_share_plan(model.config.n_layers, a, b)?;
        apply_plan(&mut model, plan)?;
    }
    let names: Vec<String> = model.tensors.keys().cloned().collect();
    let total = names.len();
    for (i, name) in names.iter().enumerate() {
        let t = &model.tensors[name];
        let shape = t.shape().to_vec();
        let mut target = preset.format_for(name, &shape);
        if let Some(f) = opts.embedding_format {
            if (name == "token_embd.weight" || name == "output.weight")
                && f.row_bytes(shape[1]).is_ok()
            {
                target = f;
            }
        }
        if t.format() != target {
            let data = t.to_f32()?;
            let new = if target == QuantFormat::F32 || shape.len() != 2 {
                Tensor::from_f32(name.clone(), shape, data)?
            } else {
                let qopts = QuantizeOptions {
                    importance: opts.importance.get(name).cloned(),
                    no_clip_search: false,
                };
                let m = quantize(target, shape[0], shape[1], &data, &qopts).map_err(|e| {
                    CoreError::Tensor {
                        name: name.clone(),
                        problem: e.to_string(),
                    }
                })?;
                Tensor::from_qmatrix(name.clone(), shape, m)?
            };
            model.tensors.insert(name.clone(), new);
        }
        if let Some(p) = opts.progress.as_mut() {
            p(i + 1, total, name);
        }
    }
    Ok(model)
}

/// Set `plan` as the model's KV sources and drop the K/V projections of
/// layers that no longer own them.
pub fn apply_plan(model: &mut LoadedModel, plan: Vec<usize>) -> Result<(), CoreError> {
    let cfg: &mut ModelConfig = &mut model.config;
    if plan.len() != cfg.n_layers {
        return Err(CoreError::Config(format!(
            "plan has {} entries for {} layers",
            plan.len(),
            cfg.n_layers
        )));
    }
    for (l, &s) in plan.iter().enumerate() {
        if s != l {
            for n in [
                "attn_k.weight",
                "attn_v.weight",
                "attn_k.bias",
                "attn_v.bias",
            ] {
                model.tensors.remove(&format!("blk.{l}.{n}"));
            }
        }
    }
    cfg.kv_source = plan;
    crate::transformer::validate_config(cfg)
}
