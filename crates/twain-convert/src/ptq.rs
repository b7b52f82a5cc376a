//! The post-training quantization pipeline: what `twain convert` and the
//! default model run. From a full-precision model: retrofit a KV plan
//! (optional), fuse the rotations (optional), measure the input second
//! moments of every linear on the calibration text with the f32 model,
//! then quantize every tensor with error feedback under them.

use std::collections::BTreeMap;
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_io::LoadedModel;

use rayon::prelude::*;
use twain_io::Tensor;
use twain_quant::QuantFormat;
use twain_tokenizer::Tokenizer;

use crate::gptq::{gptq, proxy_loss, GptqOptions};
use crate::hessian::{input_of, Hessian};
use crate::rotate::{rotate, RotateOptions};
use crate::AFM_MIX_BUDGET;
use crate::{calib, convert, hessian, ConvertError, ConvertOptions, Preset, Progress};

/// What [`quantize_model`] does besides the preset's formats.
#[non_exhaustive]
pub struct PtqOptions<'a> {
    /// Retrofit this KV-sharing ratio (e.g. (5, 3)) first.
    pub kv_share: Option<(usize, usize)>,
    /// Fuse incoherence rotations before measuring and quantizing.
    pub rotate: Option<RotateOptions>,
    /// Round the decoder linears with error feedback (otherwise nearest
    /// rounding, the clipping search weighted by the measured statistics).
    pub error_feedback: Option<GptqOptions>,
    /// Override the preset's embedding format.
    pub embedding_format: Option<QuantFormat>,
    /// Measure input statistics even without error feedback or rotations
    /// (they weigh the clipping search of nearest rounding).
    pub statistics: bool,
    /// Calibration tokens (the built-in text when `None`).
    pub calibration: Option<Vec<u32>>,
    /// Progress of the tensor conversion: (done, total, tensor name).
    pub progress: Option<Progress<'a>>,
}

impl PtqOptions<'_> {
    /// What measures best per preset (docs/quality.md): `afm` and `afm-mix`
    /// rotate and round with act-order error feedback; `q4` uses error
    /// feedback without rotations (so PEFT adapters, trained in the original
    /// basis, still apply); `q8` rounds to nearest (its KL divergence is
    /// already within noise of llama.cpp Q8_0, and it converts in seconds);
    /// f16 and f32 are exact conversions.
    pub fn recommended(preset: Preset) -> Self {
        let (rot, ef) = match preset {
            Preset::Afm | Preset::AfmMix => (
                Some(RotateOptions::default()),
                Some(GptqOptions {
                    act_order: true,
                    ..Default::default()
                }),
            ),
            Preset::Q4 => (None, Some(GptqOptions::default())),
            Preset::Q8 | Preset::F16 | Preset::F32 => (None, None),
        };
        Self {
            kv_share: None,
            rotate: rot,
            error_feedback: ef,
            embedding_format: None,
            statistics: !matches!(preset, Preset::Q8 | Preset::F16 | Preset::F32),
            calibration: None,
            progress: None,
        }
    }

    /// Nearest rounding without statistics or rotations (today's fast path).
    pub fn plain() -> Self {
        Self {
            kv_share: None,
            rotate: None,
            error_feedback: None,
            embedding_format: None,
            statistics: false,
            calibration: None,
            progress: None,
        }
    }

    /// Whether calibration statistics are measured.
    pub fn calibrates(&self, preset: Preset) -> bool {
        self.error_feedback.is_some()
            || self.rotate.is_some()
            || preset == Preset::AfmMix
            || (self.statistics && !matches!(preset, Preset::F16 | Preset::F32))
    }

    /// A one-line description for provenance (`twain.ptq`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.rotate {
            parts.push(format!(
                "rotations (residual {}, ffn_down {}, heads {}, seed {:#x})",
                r.residual, r.ffn_down, r.heads, r.seed
            ));
        }
        if let Some(g) = &self.error_feedback {
            parts.push(format!(
                "error feedback (damp {}, act-order {})",
                g.damp, g.act_order
            ));
        }
        if parts.is_empty() {
            "nearest rounding".into()
        } else {
            parts.join(" + ")
        }
    }
}

/// Convert a full-precision `source` (as read from GGUF or safetensors) to
/// `preset` with the post-training steps `opts` asks for.
pub fn quantize_model(
    mut source: LoadedModel,
    tokenizer: &Tokenizer,
    preset: Preset,
    opts: PtqOptions<'_>,
) -> Result<LoadedModel, ConvertError> {
    if let Some((a, b)) = opts.kv_share {
        let plan = twain_core::KvPlan::shared(source.config.n_layers, a, b)?;
        crate::apply_plan(&mut source, &plan)?;
    }
    if let Some(r) = &opts.rotate {
        rotate(&mut source, r)?;
    }
    let mut describe = opts.describe();
    let hessians = if opts.calibrates(preset) {
        let tokens = match opts.calibration {
            Some(t) => t,
            None => calib::calibration_tokens(tokenizer)?,
        };
        let teacher = Transformer::from_loaded(
            source.clone(),
            TransformerOptions::default().kv_dtype(KvDtype::F32),
        )?;
        Some(hessian::collect(
            &teacher,
            &tokens,
            calib::CALIBRATION_WINDOW,
            |_, _| {},
        )?)
    } else {
        None
    };
    let mut overrides = BTreeMap::new();
    if preset == Preset::AfmMix {
        let hs = hessians.as_ref().expect("afm-mix always calibrates");
        let gopts = opts.error_feedback.clone().unwrap_or_default();
        let (chosen, bits) = allocate(&mut source, hs, &gopts, AFM_MIX_BUDGET)?;
        describe += &format!(
            "; {} of the decoder linears at q4 ({bits:.3} bits/weight, budget {AFM_MIX_BUDGET})",
            chosen.len()
        );
        for name in chosen {
            overrides.insert(name, QuantFormat::Q4);
        }
    }
    let mut outer = opts.progress;
    let mut progress = |done: usize, total: usize, name: &str| {
        if let Some(p) = outer.as_mut() {
            p(done, total, name)
        }
    };
    let mut m = convert(
        source,
        preset,
        ConvertOptions {
            hessians: hessians.as_ref(),
            error_feedback: opts.error_feedback,
            embedding_format: opts.embedding_format,
            progress: Some(&mut progress),
            formats: overrides,
            ..Default::default()
        },
    )?;
    m.provenance.insert("twain.ptq".into(), describe);
    if hessians.is_some() {
        m.provenance
            .insert("twain.calibration".into(), calib::CALIBRATION_NAME.into());
    }
    Ok(m)
}

/// Bit allocation: quantize every decoder linear both at q2 and at q4 with
/// error feedback, then keep at q4 the tensors that save the most layer
/// proxy loss per extra byte until the decoder reaches `budget` bits per
/// weight. The chosen q4 (and the q2) matrices replace the f32 tensors in
/// `model`; returns the names kept at q4 and the decoder's bits per weight.
fn allocate(
    model: &mut LoadedModel,
    hs: &BTreeMap<String, Hessian>,
    gopts: &GptqOptions,
    budget: f64,
) -> Result<(Vec<String>, f64), ConvertError> {
    struct Cand {
        name: String,
        shape: Vec<usize>,
        q2: twain_quant::QMatrix,
        q4: twain_quant::QMatrix,
        gain: f64,
    }
    let names: Vec<String> = model
        .tensors
        .keys()
        .filter(|n| n.starts_with("blk.") && input_of(n).is_some())
        .cloned()
        .collect();
    let mut cands = Vec::new();
    for name in names {
        let t = &model.tensors[&name];
        let shape = t.shape().to_vec();
        let (rows, cols) = (shape[0], shape[1]);
        let h = input_of(&name)
            .and_then(|k| hs.get(&k))
            .filter(|h| h.cols == cols)
            .ok_or_else(|| ConvertError::Calibration(format!("no statistics for {name}")))?;
        let w = t.to_f32()?;
        let pair: Vec<Result<(twain_quant::QMatrix, f64), ConvertError>> =
            [QuantFormat::Q2, QuantFormat::Q4]
                .into_par_iter()
                .map(|f| {
                    let q = gptq(f, rows, cols, &w, &h.h, gopts)?;
                    let l = proxy_loss(&w, &q, &h.h);
                    Ok((q, l))
                })
                .collect();
        let mut it = pair.into_iter();
        let (q2, l2) = it.next().expect("two")?;
        let (q4, l4) = it.next().expect("two")?;
        let extra = (q4.data().len() - q2.data().len()).max(1) as f64;
        cands.push(Cand {
            name,
            shape,
            q2,
            q4,
            gain: (l2 - l4) / extra,
        });
    }
    let weights: usize = cands.iter().map(|c| c.shape[0] * c.shape[1]).sum();
    let mut bytes: usize = cands.iter().map(|c| c.q2.data().len()).sum();
    let limit = (budget * weights as f64 / 8.0) as usize;
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].gain.total_cmp(&cands[a].gain));
    let mut keep = vec![false; cands.len()];
    for i in order {
        let extra = cands[i].q4.data().len() - cands[i].q2.data().len();
        if bytes + extra <= limit {
            bytes += extra;
            keep[i] = true;
        }
    }
    let mut chosen = Vec::new();
    for (c, k) in cands.into_iter().zip(keep) {
        let m = if k { c.q4 } else { c.q2 };
        if k {
            chosen.push(c.name.clone());
        }
        model
            .tensors
            .insert(c.name.clone(), Tensor::from_qmatrix(c.name, c.shape, m)?);
    }
    Ok((chosen, 8.0 * bytes as f64 / weights as f64))
}
