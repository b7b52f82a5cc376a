//! What the commands share: the model and sampling flags, the value enums,
//! progress on stderr, loading an engine, and streaming a generation.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use twain::engine::{
    cached_conversion, default_model_path_for, Conversion, Engine, LoadOptions, DEFAULT_PRESET,
};
use twain::{Event, GenerateOptions, Sampler};
use twain_convert::Preset;
use twain_core::{KvDtype, LinearDelta, Transformer};

/// A `--preset` value: [`Preset`] by its command-line name.
// No doc comments on the variants: clap would print them in `--help`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PresetArg {
    Afm,
    AfmMix,
    Q4,
    Q8,
    F16,
    F32,
}

impl From<PresetArg> for Preset {
    fn from(p: PresetArg) -> Preset {
        match p {
            PresetArg::Afm => Preset::Afm,
            PresetArg::AfmMix => Preset::AfmMix,
            PresetArg::Q4 => Preset::Q4,
            PresetArg::Q8 => Preset::Q8,
            PresetArg::F16 => Preset::F16,
            PresetArg::F32 => Preset::F32,
        }
    }
}

/// A `--kv-cache` value: [`KvDtype`] by its command-line name (and the
/// aliases [`KvDtype::from_name`] accepts).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvCacheArg {
    #[value(aliases = ["i8", "q8"])]
    Int8,
    F16,
    F32,
}

impl From<KvCacheArg> for KvDtype {
    fn from(k: KvCacheArg) -> KvDtype {
        match k {
            KvCacheArg::Int8 => KvDtype::Int8,
            KvCacheArg::F16 => KvDtype::F16,
            KvCacheArg::F32 => KvDtype::F32,
        }
    }
}

#[derive(clap::Args, Clone)]
pub(crate) struct ModelArgs {
    /// Model file: GGUF, twain native, or a Hugging Face directory. Default:
    /// SmolLM2-135M-Instruct, fetched and converted on first use.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Re-quantize with this preset (afm, q4, q8, f16, f32). For the default
    /// model it picks the cached conversion (default q4).
    #[arg(long, hide_possible_values = true)]
    pub preset: Option<PresetArg>,
    /// Retrofit a KV-sharing plan, e.g. 5:3.
    #[arg(long)]
    pub kv_share: Option<String>,
    /// KV-cache type: int8 (default), f16, f32.
    #[arg(long, default_value = "int8", hide_possible_values = true)]
    pub kv_cache: KvCacheArg,
    /// LoRA adapter (PEFT directory, GGUF LoRA or twain native), applied
    /// unmerged over the base.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Multiplier on the adapter's alpha / r.
    #[arg(long, default_value_t = 1.0)]
    pub adapter_scale: f32,
}

#[derive(clap::Args, Clone)]
pub(crate) struct SampleArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens with this much probability.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop sequence (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

/// `--kv-share A:B` as `(A, B)`.
pub(crate) fn parse_share(s: &Option<String>) -> anyhow::Result<Option<(usize, usize)>> {
    let Some(s) = s else { return Ok(None) };
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("--kv-share {s:?}: expected A:B such as 5:3"))?;
    let a = a
        .trim()
        .parse()
        .map_err(|_| anyhow!("--kv-share {s:?}: {a:?} is not a number"))?;
    let b = b
        .trim()
        .parse()
        .map_err(|_| anyhow!("--kv-share {s:?}: {b:?} is not a number"))?;
    Ok(Some((a, b)))
}

/// Progress of a long step on stderr: an indicatif bar on a terminal, plain
/// lines elsewhere (a log, CI, a pipe), where the bar would be hidden and a
/// first run would print nothing for minutes. Callbacks with `total == 0`
/// are stage notices (one line each); others report tensors done, printed
/// off a terminal at every 10 %.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    last_tenth: Option<usize>,
}

pub(crate) fn progress_bar(msg: &str) -> Progress {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        pb
    });
    Progress {
        bar,
        label: msg.to_string(),
        last_tenth: None,
    }
}

impl Progress {
    pub(crate) fn update(&mut self, done: usize, total: usize, name: &str) {
        if total == 0 {
            match &self.bar {
                Some(pb) => pb.println(format!("twain: {name}")),
                None => eprintln!("twain: {name}"),
            }
            return;
        }
        match &self.bar {
            Some(pb) => {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            }
            None => {
                let tenth = 10 * done / total;
                if self.last_tenth.is_none_or(|t| tenth > t) {
                    self.last_tenth = Some(tenth);
                    eprintln!("twain: {}: {done}/{total} ({}%)", self.label, 10 * tenth);
                }
            }
        }
    }

    pub(crate) fn finish_and_clear(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

pub(crate) fn convert_progress(pb: &mut Progress) -> impl FnMut(usize, usize, &str) + '_ {
    move |done, total, name| pb.update(done, total, name)
}

/// Resolve the model path (default model: fetch + convert into the cache).
pub(crate) fn resolve_model(args: &ModelArgs) -> anyhow::Result<PathBuf> {
    match &args.model {
        Some(p) => Ok(p.clone()),
        None => {
            let preset = args.preset.map_or(DEFAULT_PRESET, Preset::from);
            let mut pb = progress_bar("converting the default model");
            let mut cb = convert_progress(&mut pb);
            let kv = parse_share(&args.kv_share)?;
            let path = default_model_path_for(preset, kv, Some(&mut cb)).map_err(|e| {
                anyhow!("{e}\n(pass a model file instead with --model PATH: a GGUF, a Hugging Face directory or a twain native file)")
            })?;
            drop(cb);
            pb.finish_and_clear();
            Ok(path)
        }
    }
}

pub(crate) fn load_engine(args: &ModelArgs, skip: bool) -> anyhow::Result<Engine> {
    let mut path = resolve_model(args)?;
    let mut preset = match (&args.model, args.preset) {
        (Some(_), Some(p)) => Some(Preset::from(p)),
        _ => None,
    };
    let mut kv_share = match args.model {
        Some(_) => parse_share(&args.kv_share)?,
        // The default model's cached file already has the plan.
        None => None,
    };
    if args.model.is_some() && twain::engine::is_gguf(&path) {
        // A GGUF keeps its own precision unless --preset asks for less; the
        // conversion is cached, so the next run maps the native file.
        let mut pb = progress_bar("converting");
        let mut cb = convert_progress(&mut pb);
        let conv = Conversion {
            preset,
            kv_share,
            ..Default::default()
        };
        path = cached_conversion(&path, &twain_io::cache_dir(), conv, Some(&mut cb))
            .with_context(|| path.display().to_string())?;
        drop(cb);
        pb.finish_and_clear();
        (preset, kv_share) = (None, None);
    }
    let mut pb = progress_bar("loading");
    let mut cb = convert_progress(&mut pb);
    let engine = Engine::load(
        &path,
        LoadOptions::default()
            .preset(preset)
            .kv_share(kv_share)
            .kv_dtype(args.kv_cache.into())
            .skip_shared_prefill(skip)
            .progress(Some(&mut cb)),
    )
    .with_context(|| path.display().to_string())?;
    drop(cb);
    pb.finish_and_clear();
    Ok(engine)
}

/// The adapter of `--adapter` (scaled by `--adapter-scale`), if any.
pub(crate) fn adapter_of(
    args: &ModelArgs,
    engine: &Engine,
) -> anyhow::Result<Option<Arc<dyn LinearDelta>>> {
    let Some(path) = &args.adapter else {
        return Ok(None);
    };
    let a = engine
        .load_adapter(path)
        .with_context(|| path.display().to_string())?;
    let a = Arc::unwrap_or_clone(a).with_scale(args.adapter_scale);
    Ok(Some(Arc::new(a)))
}

/// A session over `engine` with `--adapter` applied.
pub(crate) fn session_of(
    args: &ModelArgs,
    engine: &Engine,
) -> anyhow::Result<twain::Session<Arc<Transformer>>> {
    let mut s = engine.session();
    if let Some(a) = adapter_of(args, engine)? {
        s.set_adapter(Some(a))?;
    }
    Ok(s)
}

pub(crate) fn sampler(a: &SampleArgs) -> anyhow::Result<Sampler> {
    if a.temperature <= 0.0 && a.top_k.is_none() && a.top_p.is_none() {
        return Ok(Sampler::greedy());
    }
    let mut b = Sampler::builder().temperature(a.temperature).seed(a.seed);
    if let Some(k) = a.top_k {
        b = b.top_k(k);
    }
    if let Some(p) = a.top_p {
        b = b.top_p(p);
    }
    Ok(b.build()?)
}

pub(crate) fn gen_opts(a: &SampleArgs) -> GenerateOptions {
    GenerateOptions::default()
        .max_tokens(a.max_tokens)
        .stop(a.stop.clone())
        .cancel(None)
}

/// Print a generation's text to stdout as it comes, then a newline.
pub(crate) fn stream(g: twain::Generation<'_, Arc<Transformer>>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for ev in g {
        match ev? {
            Event::Text(t) => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Event::End(_) | Event::Token(_) => {}
        }
    }
    let _ = out.write_all(b"\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// Every preset is on the command line under the name files record.
    #[test]
    fn preset_names_match_the_library() {
        assert_eq!(PresetArg::value_variants().len(), Preset::ALL.len());
        for p in PresetArg::value_variants() {
            let name = p.to_possible_value().unwrap();
            assert_eq!(name.get_name(), Preset::from(*p).name());
            assert_eq!(Preset::from_name(name.get_name()), Some(Preset::from(*p)));
        }
    }

    /// The KV-cache names (aliases too) mean what the library says.
    #[test]
    fn kv_cache_names_match_the_library() {
        for s in ["int8", "i8", "q8", "f16", "f32"] {
            let k = KvCacheArg::from_str(s, false).unwrap();
            assert_eq!(Some(KvDtype::from(k)), KvDtype::from_name(s), "{s}");
        }
    }
}
