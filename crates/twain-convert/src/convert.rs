//! Re-quantizing a loaded model into twain formats (presets), and
//! retrofitting a KV-sharing plan.

use std::collections::BTreeMap;

use twain_core::KvPlan;
use twain_io::{LoadedModel, Tensor};
use twain_quant::{grid, quantize, QuantFormat, QuantizeOptions};

use crate::gptq::{gptq, GptqOptions};
use crate::hessian::{input_of, Hessian};
use crate::{ConvertError, Preset};

/// Progress callback: (done, total, tensor name).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Options for [`convert`].
#[derive(Default)]
pub struct ConvertOptions<'a> {
    /// Retrofit this KV-sharing ratio (e.g. (5, 3)); block-2 layers lose their K/V projections.
    pub kv_share: Option<(usize, usize)>,
    /// Per-tensor importance (mean squared input per column) from calibration.
    pub importance: BTreeMap<String, Vec<f32>>,
    /// Input second moments of the linears from calibration
    /// ([`hessian::collect`](crate::hessian::collect)): their diagonals weigh
    /// the clipping search of tensors without an `importance` entry.
    pub hessians: Option<&'a BTreeMap<String, Hessian>>,
    /// Round decoder linears with error feedback under their `hessians`
    /// ([`gptq`](crate::gptq::gptq)) instead of to the nearest codes.
    pub error_feedback: Option<GptqOptions>,
    /// Called after each tensor with (done, total, name).
    pub progress: Option<Progress<'a>>,
    /// Formats of single tensors, overriding the preset (bit allocation).
    /// A tensor already in its target format is kept as it is.
    pub formats: BTreeMap<String, QuantFormat>,
    /// Override the preset's format for the embedding table / LM head.
    pub embedding_format: Option<QuantFormat>,
}

/// Re-quantize every tensor of `model` per `preset` (and retrofit a plan).
pub fn convert(
    mut model: LoadedModel,
    preset: Preset,
    mut opts: ConvertOptions<'_>,
) -> Result<LoadedModel, ConvertError> {
    if let Some((a, b)) = opts.kv_share {
        let plan = KvPlan::shared(model.config.n_layers, a, b)?;
        apply_plan(&mut model, &plan)?;
    }
    let names: Vec<String> = model.tensors.keys().cloned().collect();
    let total = names.len();
    for (i, name) in names.iter().enumerate() {
        let t = &model.tensors[name];
        let shape = t.shape().to_vec();
        let mut target = opts
            .formats
            .get(name)
            .copied()
            .unwrap_or_else(|| preset.format_for(name, &shape));
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
                let h = opts
                    .hessians
                    .and_then(|hs| hs.get(&input_of(name)?))
                    .filter(|h| h.cols == shape[1]);
                let feedback = opts
                    .error_feedback
                    .as_ref()
                    .filter(|_| name.starts_with("blk.") && grid::has_grid(target) && h.is_some());
                let m = match (feedback, h) {
                    (Some(g), Some(h)) => gptq(target, shape[0], shape[1], &data, &h.h, g)
                        .map_err(|e| match e {
                            ConvertError::Quant(source) => ConvertError::Tensor {
                                name: name.clone(),
                                source,
                            },
                            e => e,
                        })?,
                    _ => {
                        let qopts = QuantizeOptions {
                            importance: opts
                                .importance
                                .get(name)
                                .cloned()
                                .or_else(|| h.map(|h| h.mean_square())),
                            no_clip_search: false,
                        };
                        quantize(target, shape[0], shape[1], &data, &qopts).map_err(|e| {
                            ConvertError::Tensor {
                                name: name.clone(),
                                source: e,
                            }
                        })?
                    }
                };
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

/// Set `plan` as the model's KV sources and drop the K/V projections (and
/// their biases and k-norms) of layers that no longer own them.
pub fn apply_plan(model: &mut LoadedModel, plan: &KvPlan) -> Result<(), ConvertError> {
    let cfg = &mut model.config;
    if plan.n_layers() != cfg.n_layers {
        return Err(ConvertError::Plan(format!(
            "plan has {} layers, the model {}",
            plan.n_layers(),
            cfg.n_layers
        )));
    }
    for l in 0..plan.n_layers() {
        if !plan.owns(l) {
            for n in KvPlan::kv_tensor_names(l) {
                model.tensors.remove(&n);
            }
        }
    }
    cfg.kv_source = plan.sources().to_vec();
    twain_core::validate_config(cfg)?;
    Ok(())
}
