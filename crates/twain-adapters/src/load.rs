//! Reading and writing adapter files: Hugging Face PEFT directories, llama.cpp GGUF LoRA, and
//! twain's native safetensors form.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use twain_core::ModelConfig;
use twain_core::RopeLayout;
use twain_io::gguf::{write_gguf, GgufTensorData};
use twain_io::{GgmlType, GgufFile, MetaValue};

use crate::lora::parse_target;
use crate::{AdapterError, LoraAdapter};

/// Value of the `format` metadata entry of a native adapter file.
pub const NATIVE_FORMAT: &str = "twain-lora";

/// Hugging Face module names (last path component) twain can adapt.
const HF_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LoraAdapter {
    /// Load an adapter of any supported kind, detected from the path: a directory (or a file
    /// in one) with `adapter_config.json` is a PEFT adapter, a file starting with `GGUF` a
    /// llama.cpp LoRA, any other safetensors file a native adapter.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AdapterError> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::load_peft(path);
        }
        let mut head = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(|e| AdapterError::os(path, e))?;
        let is_gguf = std::io::Read::read_exact(&mut f, &mut head).is_ok() && &head == b"GGUF";
        drop(f);
        if is_gguf {
            return Self::from_gguf(&GgufFile::open(path)?);
        }
        if let Some(dir) = path.parent() {
            if dir.join("adapter_config.json").is_file() {
                return Self::load_peft(dir);
            }
        }
        Self::load_native(path)
    }

    /// [`load`](Self::load), then [`adapt_to`](Self::adapt_to) the base's `config`
    /// (permutes PEFT q/k deltas for an interleaved-RoPE GGUF llama base).
    pub fn load_for(path: impl AsRef<Path>, config: &ModelConfig) -> Result<Self, AdapterError> {
        let mut a = Self::load(path)?;
        a.adapt_to(config)?;
        Ok(a)
    }

    /// Load a Hugging Face PEFT LoRA directory: `adapter_config.json` (`r`, `lora_alpha`,
    /// `target_modules`, `rank_pattern`, `alpha_pattern`, `use_rslora`) and
    /// `adapter_model.safetensors` (F32/F16/BF16 tensors named like
    /// `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`). Its q/k rows are in
    /// the Hugging Face (half-split) RoPE layout.
    pub fn load_peft(dir: impl AsRef<Path>) -> Result<Self, AdapterError> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("adapter_config.json");
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|e| AdapterError::os(&cfg_path, e))?;
        let cfg: PeftConfig = serde_json::from_str(&text).map_err(|e| {
            AdapterError::malformed(&cfg_path, format!("invalid adapter_config.json: {e}"))
        })?;
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| AdapterError::os(&st_path, e))?;
        peft_from_parts(&cfg_path, &cfg, &st_path, &bytes)
    }

    /// Read a llama.cpp GGUF LoRA (`general.type = adapter`, `adapter.type = lora`,
    /// `adapter.lora.alpha`; tensors `blk.N.attn_q.weight.lora_a` (r x in) and `.lora_b`
    /// (out x r) in row-major terms). scaling = alpha / r, or 1 when alpha is 0 or absent
    /// (as llama.cpp does). The q/k layout follows `general.architecture` (`llama`:
    /// interleaved; otherwise unknown, taken to match the base).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, AdapterError> {
        let path = g.path().to_path_buf();
        match g.get("general.type").and_then(MetaValue::as_str) {
            Some("adapter") => {}
            other => {
                return Err(AdapterError::malformed(
                    &path,
                    format!("general.type is {other:?}, expected \"adapter\""),
                ))
            }
        }
        if let Some(t) = g.get("adapter.type") {
            if t.as_str() != Some("lora") {
                return Err(AdapterError::Unsupported {
                    path,
                    what: format!("adapter.type {t:?} (only lora)"),
                });
            }
        }
        let alpha = match g.get("adapter.lora.alpha") {
            None => 0.0,
            Some(v) => v.as_f64().ok_or_else(|| {
                AdapterError::malformed(&path, "adapter.lora.alpha is not a number")
            })? as f32,
        };
        let layout = match g.get("general.architecture").and_then(MetaValue::as_str) {
            Some("llama") => Some(RopeLayout::Interleaved),
            Some("qwen2" | "qwen3") => Some(RopeLayout::HalfSplit),
            _ => None,
        };
        // Each half is kept by its index in the file's tensor list: looking a
        // name up again (`tensor_info`) scans the list, quadratic over a
        // file with many pairs.
        let infos = g.tensors();
        let mut pairs: BTreeMap<String, [Option<usize>; 2]> = BTreeMap::new();
        for (index, info) in infos.iter().enumerate() {
            let (base, slot) = if let Some(b) = info.name.strip_suffix(".lora_a") {
                (b, 0)
            } else if let Some(b) = info.name.strip_suffix(".lora_b") {
                (b, 1)
            } else {
                return Err(AdapterError::UnknownModule {
                    path,
                    name: info.name.clone(),
                });
            };
            if parse_target(base).is_none() {
                return Err(AdapterError::UnknownModule {
                    path,
                    name: info.name.clone(),
                });
            }
            pairs.entry(base.to_string()).or_default()[slot] = Some(index);
        }
        let mut ad = LoraAdapter::new()
            .with_source(&path)
            .with_rope_layout(layout);
        for (target, [a, b]) in pairs {
            let (a, b) = both(&path, &target, a, b, ".lora_a", ".lora_b")?;
            let (ia, ib) = (&infos[a], &infos[b]);
            let (a, b) = (&ia.name, &ib.name);
            let (sa, sb) = (ia.shape(), ib.shape());
            let (r, cols) = matrix(&path, a, &sa)?;
            let (rows, rb) = matrix(&path, b, &sb)?;
            if rb != r {
                return Err(AdapterError::RankMismatch {
                    path,
                    target,
                    what: format!("{a} is {r}x{cols} (r x in), {b} is {rows}x{rb} (out x r)"),
                });
            }
            let va = g.dequantize_info(ia)?;
            let vb = g.dequantize_info(ib)?;
            let scaling = if alpha != 0.0 { alpha / r as f32 } else { 1.0 };
            ad.insert(&target, rows, cols, r, scaling, va, vb)?;
        }
        Ok(ad)
    }

    /// Read twain's native adapter file (see [`write_native`](Self::write_native)).
    pub fn load_native(path: impl AsRef<Path>) -> Result<Self, AdapterError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| AdapterError::os(path, e))?;
        Self::native_from_bytes(path, &bytes)
    }

    fn native_from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, AdapterError> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| AdapterError::malformed(path, format!("not a safetensors file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| AdapterError::malformed(path, format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).map(String::as_str);
        if get("format") != Some(NATIVE_FORMAT) {
            return Err(AdapterError::malformed(
                path,
                format!("metadata format is {:?}, expected {NATIVE_FORMAT:?} (and no adapter_config.json beside it)", get("format")),
            ));
        }
        let num = |k: &str| -> Result<f32, AdapterError> {
            get(k)
                .ok_or_else(|| AdapterError::malformed(path, format!("metadata {k} missing")))?
                .parse::<f32>()
                .map_err(|e| AdapterError::malformed(path, format!("metadata {k}: {e}")))
        };
        let alpha = num("alpha")?;
        // `r` is informational (each target's rank is its tensors' shape) but must be there.
        num("r")?;
        let scales: BTreeMap<String, f32> = match get("scales") {
            None => BTreeMap::new(),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| AdapterError::malformed(path, format!("metadata scales: {e}")))?,
        };
        let layout = match get("rope_layout") {
            None => None,
            Some("half_split") => Some(RopeLayout::HalfSplit),
            Some("interleaved") => Some(RopeLayout::Interleaved),
            Some(o) => {
                return Err(AdapterError::malformed(
                    path,
                    format!("metadata rope_layout {o:?}"),
                ))
            }
        };
        let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
        for name in st.names() {
            let (base, slot) = if let Some(b) = name.strip_suffix(".lora_a") {
                (b, 0)
            } else if let Some(b) = name.strip_suffix(".lora_b") {
                (b, 1)
            } else {
                return Err(AdapterError::UnknownModule {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                });
            };
            if parse_target(base).is_none() {
                return Err(AdapterError::UnknownModule {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                });
            }
            pairs.entry(base.to_string()).or_default()[slot] = Some(name.to_string());
        }
        let mut ad = LoraAdapter::new()
            .with_source(path)
            .with_rope_layout(layout);
        for (target, [a, b]) in pairs {
            let (a, b) = both(path, &target, a, b, ".lora_a", ".lora_b")?;
            let (va, (r, cols)) = read_st(path, &st, &a)?;
            let (vb, (rows, rb)) = read_st(path, &st, &b)?;
            if rb != r {
                return Err(AdapterError::RankMismatch {
                    path: path.to_path_buf(),
                    target,
                    what: format!("{a} is {r}x{cols}, {b} is {rows}x{rb}"),
                });
            }
            let scaling = scales.get(&target).copied().unwrap_or(alpha / r as f32);
            ad.insert(&target, rows, cols, r, scaling, va, vb)?;
        }
        Ok(ad)
    }

    /// The native file's bytes: a safetensors container with F32 tensors `<target>.lora_a`
    /// (r x cols) and `<target>.lora_b` (rows x r) and metadata `format = twain-lora`, `alpha`,
    /// `r` (scaling = alpha / r of each target), `scales` (a JSON map of the targets whose
    /// scaling differs from that) and `rope_layout` (`half_split` / `interleaved`, when known).
    /// The user multiplier is baked into the scalings.
    pub fn to_native_bytes(&self) -> Result<Vec<u8>, AdapterError> {
        let first = self.targets().next().and_then(|n| self.target(n));
        let (r0, alpha0) = first.map_or((1, 1.0), |t| {
            (t.rank(), t.scaling() * self.scale() * t.rank() as f32)
        });
        let mut scales = BTreeMap::new();
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for name in self.targets() {
            let t = self.target(name).unwrap();
            let s = t.scaling() * self.scale();
            if s != alpha0 / t.rank() as f32 {
                scales.insert(name.to_string(), s);
            }
            let (rows, cols) = t.shape();
            data.push((
                format!("{name}.lora_a"),
                vec![t.rank(), cols],
                le_bytes(t.a()),
            ));
            data.push((
                format!("{name}.lora_b"),
                vec![rows, t.rank()],
                le_bytes(&t.b()),
            ));
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), NATIVE_FORMAT.to_string());
        meta.insert("alpha".to_string(), alpha0.to_string());
        meta.insert("r".to_string(), r0.to_string());
        if !scales.is_empty() {
            meta.insert(
                "scales".to_string(),
                serde_json::to_string(&scales).unwrap(),
            );
        }
        if let Some(l) = self.rope_layout() {
            let s = match l {
                RopeLayout::HalfSplit => "half_split",
                RopeLayout::Interleaved => "interleaved",
            };
            meta.insert("rope_layout".to_string(), s.to_string());
        }
        let views = data
            .iter()
            .map(|(n, shape, bytes)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AdapterError::malformed(self.source(), e.to_string()))?;
        safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| AdapterError::malformed(self.source(), e.to_string()))
    }

    /// The adapter as a llama.cpp GGUF LoRA for a base with `config` (what
    /// `convert_lora_to_gguf.py` writes): `general.architecture = config.arch`,
    /// `general.type = adapter`, `adapter.type = lora`, one `adapter.lora.alpha` (the first
    /// target's scaling x rank; targets with another scaling get it folded into B), F32 tensors
    /// `<target>.lora_a` (ggml dims [cols, r]) and `<target>.lora_b` ([r, rows]). For arch
    /// `llama` the q/k B rows are written in llama.cpp's interleaved layout, else half-split.
    /// The user multiplier is baked in.
    pub fn to_gguf_bytes(&self, config: &ModelConfig) -> Result<Vec<u8>, AdapterError> {
        let mut fitted = self.clone();
        let mut c = config.clone();
        c.rope_layout = if config.arch == "llama" {
            RopeLayout::Interleaved
        } else {
            RopeLayout::HalfSplit
        };
        fitted.adapt_to(&c)?;
        let first = fitted.targets().next().and_then(|n| fitted.target(n));
        let alpha = first.map_or(1.0, |t| t.scaling() * fitted.scale() * t.rank() as f32);
        let mut owned = Vec::new();
        for name in fitted.targets() {
            let t = fitted.target(name).unwrap();
            let (rows, cols) = t.shape();
            let r = t.rank();
            let s = t.scaling() * fitted.scale();
            let want = if alpha != 0.0 { alpha / r as f32 } else { 1.0 };
            let fold = if want != 0.0 { s / want } else { 0.0 };
            let b: Vec<f32> = t.b().iter().map(|v| v * fold).collect();
            owned.push((
                format!("{name}.lora_a"),
                vec![cols as u64, r as u64],
                le_bytes(t.a()),
            ));
            owned.push((
                format!("{name}.lora_b"),
                vec![r as u64, rows as u64],
                le_bytes(&b),
            ));
        }
        let tensors: Vec<GgufTensorData<'_>> = owned
            .iter()
            .map(|(n, dims, data)| GgufTensorData {
                name: n,
                ggml_type: GgmlType::F32,
                dims: dims.clone(),
                data,
            })
            .collect();
        Ok(write_gguf(
            &[
                (
                    "general.architecture",
                    MetaValue::String(config.arch.clone()),
                ),
                ("general.type", MetaValue::String("adapter".into())),
                ("adapter.type", MetaValue::String("lora".into())),
                ("adapter.lora.alpha", MetaValue::F32(alpha)),
            ],
            &tensors,
        )?)
    }

    /// Write the native file (see [`to_native_bytes`](Self::to_native_bytes)).
    pub fn write_native(&self, path: impl AsRef<Path>) -> Result<(), AdapterError> {
        let path = path.as_ref();
        let bytes = self.to_native_bytes()?;
        twain_io::write_atomic(path, &bytes).map_err(|e| AdapterError::os(path, e))
    }
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Both halves of a pair, or which one is missing.
fn both<T>(
    path: &Path,
    target: &str,
    a: Option<T>,
    b: Option<T>,
    sa: &str,
    sb: &str,
) -> Result<(T, T), AdapterError> {
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        (None, _) => Err(AdapterError::MissingTensor {
            path: path.to_path_buf(),
            tensor: format!("{target}{sa}"),
        }),
        (_, None) => Err(AdapterError::MissingTensor {
            path: path.to_path_buf(),
            tensor: format!("{target}{sb}"),
        }),
    }
}

/// (rows, cols) of a 2-D shape.
fn matrix(path: &Path, name: &str, shape: &[usize]) -> Result<(usize, usize), AdapterError> {
    match *shape {
        [r, c] => Ok((r, c)),
        _ => Err(AdapterError::bad_tensor(
            path,
            name,
            format!("expected a matrix, shape is {shape:?}"),
        )),
    }
}

/// A 2-D F32/F16/BF16 safetensors tensor as f32 and its (rows, cols).
fn read_st(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
) -> Result<(Vec<f32>, (usize, usize)), AdapterError> {
    let v = st
        .tensor(name)
        .map_err(|e| AdapterError::bad_tensor(path, name, e.to_string()))?;
    let dims = matrix(path, name, v.shape())?;
    let d = v.data();
    let vals: Vec<f32> = match v.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(AdapterError::bad_tensor(
                path,
                name,
                format!("dtype {other:?} (expected F32, F16 or BF16)"),
            ))
        }
    };
    if vals.len() != dims.0 * dims.1 {
        return Err(AdapterError::bad_tensor(
            path,
            name,
            "data length does not match shape",
        ));
    }
    Ok((vals, dims))
}

/// The fields of PEFT's `adapter_config.json` twain reads.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: Option<usize>,
    lora_alpha: Option<f64>,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    alpha_pattern: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    bias: Option<String>,
}

/// The value of the first pattern key matching `module` (the module's path equals the key or
/// ends with `.key`), PEFT's rule for rank_pattern / alpha_pattern without regexes.
fn pattern<T: Copy>(p: &Option<BTreeMap<String, T>>, module: &str) -> Option<T> {
    let p = p.as_ref()?;
    p.iter()
        .filter(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

fn peft_from_parts(
    cfg_path: &Path,
    cfg: &PeftConfig,
    st_path: &Path,
    bytes: &[u8],
) -> Result<LoraAdapter, AdapterError> {
    if let Some(t) = &cfg.peft_type {
        if t != "LORA" {
            return Err(AdapterError::Unsupported {
                path: cfg_path.to_path_buf(),
                what: format!("peft_type {t} (only LORA)"),
            });
        }
    }
    let unsupported = |what: &str| AdapterError::Unsupported {
        path: cfg_path.to_path_buf(),
        what: what.to_string(),
    };
    if cfg.use_dora {
        return Err(unsupported("use_dora (DoRA adapters)"));
    }
    if cfg.fan_in_fan_out {
        return Err(unsupported("fan_in_fan_out (Conv1D layers)"));
    }
    if let Some(b) = cfg.bias.as_deref().filter(|b| *b != "none") {
        return Err(unsupported(&format!("bias {b:?} (trained biases)")));
    }
    if let Some(m) = cfg.modules_to_save.as_ref().filter(|m| !m.is_empty()) {
        return Err(unsupported(&format!(
            "modules_to_save {m:?} (fully trained modules)"
        )));
    }
    if let Some(serde_json::Value::Array(mods)) = &cfg.target_modules {
        for m in mods {
            let s = m.as_str().unwrap_or_default();
            let last = s.rsplit('.').next().unwrap_or(s);
            if !HF_MODULES.contains(&last) {
                return Err(AdapterError::UnknownModule {
                    path: cfg_path.to_path_buf(),
                    name: m.to_string().trim_matches('"').to_string(),
                });
            }
        }
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| AdapterError::malformed(st_path, format!("not a safetensors file: {e}")))?;
    // module path (e.g. model.layers.0.self_attn.q_proj) -> [A name, B name]
    let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
    for name in st.names() {
        let unknown = || AdapterError::UnknownModule {
            path: st_path.to_path_buf(),
            name: name.to_string(),
        };
        let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
        let (module, slot, tail) = if let Some((m, t)) = rest.split_once(".lora_A.") {
            (m, 0, t)
        } else if let Some((m, t)) = rest.split_once(".lora_B.") {
            (m, 1, t)
        } else {
            return Err(unknown());
        };
        if tail != "weight" && !tail.ends_with(".weight") {
            return Err(unknown());
        }
        pairs.entry(module.to_string()).or_default()[slot] = Some(name.to_string());
    }
    let mut ad = LoraAdapter::new()
        .with_source(st_path)
        .with_rope_layout(Some(RopeLayout::HalfSplit));
    for (module, [a, b]) in pairs {
        let Some(target) = twain_io::canonical_name(&format!("{module}.weight"))
            .filter(|t| parse_target(t).is_some())
        else {
            return Err(AdapterError::UnknownModule {
                path: st_path.to_path_buf(),
                name: a.or(b).unwrap_or(module),
            });
        };
        let (a, b) = both(
            st_path,
            &format!("base_model.model.{module}"),
            a,
            b,
            ".lora_A.weight",
            ".lora_B.weight",
        )?;
        let (va, (r, cols)) = read_st(st_path, &st, &a)?;
        let (vb, (rows, rb)) = read_st(st_path, &st, &b)?;
        if rb != r {
            return Err(AdapterError::RankMismatch {
                path: st_path.to_path_buf(),
                target,
                what: format!("{a} has rank {r} ({r}x{cols}), {b} has rank {rb} ({rows}x{rb})"),
            });
        }
        let want_r = pattern(&cfg.rank_pattern, &module).or(cfg.r);
        if let Some(w) = want_r {
            if w != r {
                return Err(AdapterError::RankMismatch {
                    path: st_path.to_path_buf(),
                    target,
                    what: format!("adapter_config.json says r = {w}, {a} has rank {r}"),
                });
            }
        }
        let alpha = pattern(&cfg.alpha_pattern, &module)
            .or(cfg.lora_alpha)
            .unwrap_or(8.0) as f32;
        let scaling = if cfg.use_rslora {
            alpha / (r as f32).sqrt()
        } else {
            alpha / r as f32
        };
        ad.insert(&target, rows, cols, r, scaling, va, vb)?;
    }
    Ok(ad)
}
