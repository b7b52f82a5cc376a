//! The `twain` command line: generate, chat, convert, inspect, bench, perplexity.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use twain::engine::{
    cached_conversion, default_model_path_for, Conversion, Engine, LoadOptions, DEFAULT_PRESET,
};
use twain::{Event, GenerateOptions, Model, Sampler};
use twain_convert::Preset;
use twain_core::{KvDtype, LinearDelta, Transformer};

mod perplexity;
mod recover;

#[derive(Parser)]
#[command(
    name = "twain",
    version,
    about = "Run small language models on-device (2-bit weights, int8 KV cache, KV sharing)"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Model file: GGUF, twain native, or a Hugging Face directory. Default:
    /// SmolLM2-135M-Instruct, fetched and converted on first use.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Re-quantize with this preset (afm, q4, q8, f16, f32). For the default
    /// model it picks the cached conversion (default q4).
    #[arg(long)]
    preset: Option<String>,
    /// Retrofit a KV-sharing plan, e.g. 5:3.
    #[arg(long)]
    kv_share: Option<String>,
    /// KV-cache type: int8 (default), f16, f32.
    #[arg(long, default_value = "int8")]
    kv_cache: String,
    /// LoRA adapter (PEFT directory, GGUF LoRA or twain native), applied
    /// unmerged over the base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Multiplier on the adapter's alpha / r.
    #[arg(long, default_value_t = 1.0)]
    adapter_scale: f32,
}

#[derive(clap::Args, Clone)]
struct SampleArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens with this much probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a completion of PROMPT to stdout (as a user message unless --raw).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// Feed the prompt as-is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// Answer with JSON valid under the JSON Schema in FILE (guided generation).
        #[arg(long, value_name = "FILE", conflicts_with = "raw")]
        schema: Option<PathBuf>,
        /// The prompt.
        prompt: String,
    },
    /// Interactive multi-turn chat on stdin/stdout.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// System message.
        #[arg(long)]
        system: Option<String>,
    },
    /// Convert a GGUF / Hugging Face / native model into a twain native file.
    Convert {
        /// Input model.
        input: PathBuf,
        /// Output native file.
        output: PathBuf,
        /// afm (2-bit linears, 4-bit embeddings), q4, q8, f16, f32.
        #[arg(long, default_value = "afm")]
        preset: String,
        /// Retrofit a KV-sharing plan, e.g. 5:3.
        #[arg(long)]
        kv_share: Option<String>,
        /// Skip calibration: nearest rounding, no rotations, no statistics.
        #[arg(long)]
        no_calibrate: bool,
        /// Fuse incoherence rotations (the afm default; other presets off).
        #[arg(long, conflicts_with = "no_rotate")]
        rotate: bool,
        /// Do not fuse rotations (afm rotates by default).
        #[arg(long)]
        no_rotate: bool,
        /// Round to the nearest codes instead of with error feedback.
        #[arg(long)]
        no_error_feedback: bool,
        /// Bake this LoRA adapter into the weights before quantizing.
        #[arg(long)]
        adapter: Option<PathBuf>,
    },
    /// Describe a model file: formats, sizes, bits per weight, KV plan.
    Inspect {
        /// Model file.
        path: PathBuf,
        /// Machine-readable output (always lists every tensor).
        #[arg(long)]
        json: bool,
        /// List every tensor with its format and shape.
        #[arg(long)]
        tensors: bool,
    },
    /// Measure prefill and decode speed.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length.
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        /// Tokens to decode.
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Repetitions (the best is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Run every layer on every prompt token (no KV-sharing prefill skip).
        #[arg(long)]
        no_skip: bool,
        /// Instead of a model file, random weights at a reference shape:
        /// `afm` (56 layers, 35 own K/V, d 2048, 2-bit weights, 4-bit
        /// embeddings) or `afm-unshared` (the same without KV sharing), or a
        /// native file written by `--save` (memory-mapped: its load time).
        #[arg(long)]
        synthetic: Option<String>,
        /// With `--synthetic afm|afm-unshared`: also write the random model to
        /// this native file.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Apply a random LoRA adapter of this rank to every linear layer
        /// (alpha 16), to measure the cost of an unmerged adapter.
        #[arg(long)]
        random_adapter: Option<usize>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Recover a converted model's accuracy by distillation from its f32
    /// source (quantization-aware training of the 2-bit matrices).
    Recover(recover::RecoverArgs),
    /// Perplexity over a text file (and KL divergence against a base model).
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// Text file.
        #[arg(long)]
        file: PathBuf,
        /// Window length.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Base model for KL divergence and top-1 agreement.
        #[arg(long)]
        kl_base: Option<PathBuf>,
        /// Preset for the base model (default f32).
        #[arg(long, default_value = "f32")]
        kl_base_preset: String,
        /// Only the first N windows.
        #[arg(long)]
        max_chunks: Option<usize>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Fetch and convert the default model; print its path.
    Fetch {
        /// Preset.
        #[arg(long)]
        preset: Option<String>,
    },
}

type Res<T> = Result<T, String>;

fn main() {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("twain: cannot set {n} threads: {e}");
            std::process::exit(2);
        }
    }
    if let Err(e) = run(cli.command) {
        eprintln!("twain: {e}");
        std::process::exit(1);
    }
}

fn parse_preset(s: &str) -> Res<Preset> {
    Preset::from_name(s).ok_or_else(|| format!("unknown preset {s:?} (afm, q4, q8, f16, f32)"))
}

fn parse_share(s: &Option<String>) -> Res<Option<(usize, usize)>> {
    let Some(s) = s else { return Ok(None) };
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("--kv-share {s:?}: expected A:B such as 5:3"))?;
    let a = a
        .trim()
        .parse()
        .map_err(|_| format!("--kv-share {s:?}: {a:?} is not a number"))?;
    let b = b
        .trim()
        .parse()
        .map_err(|_| format!("--kv-share {s:?}: {b:?} is not a number"))?;
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

fn convert_progress(pb: &mut Progress) -> impl FnMut(usize, usize, &str) + '_ {
    move |done, total, name| pb.update(done, total, name)
}

/// Resolve the model path (default model: fetch + convert into the cache).
fn resolve_model(args: &ModelArgs) -> Res<PathBuf> {
    match &args.model {
        Some(p) => Ok(p.clone()),
        None => {
            let preset = match &args.preset {
                Some(p) => parse_preset(p)?,
                None => DEFAULT_PRESET,
            };
            let mut pb = progress_bar("converting the default model");
            let mut cb = convert_progress(&mut pb);
            let kv = parse_share(&args.kv_share)?;
            let path = default_model_path_for(preset, kv, Some(&mut cb)).map_err(|e| {
                format!("{e}\n(pass a model file instead with --model PATH: a GGUF, a Hugging Face directory or a twain native file)")
            })?;
            drop(cb);
            pb.finish_and_clear();
            Ok(path)
        }
    }
}

fn load_engine(args: &ModelArgs, skip: bool) -> Res<Engine> {
    let mut path = resolve_model(args)?;
    let mut preset = match (&args.model, &args.preset) {
        (Some(_), Some(p)) => Some(parse_preset(p)?),
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
            .map_err(|e| format!("{}: {e}", path.display()))?;
        drop(cb);
        pb.finish_and_clear();
        (preset, kv_share) = (None, None);
    }
    let kv_dtype = KvDtype::from_name(&args.kv_cache)
        .ok_or_else(|| format!("unknown --kv-cache {:?} (int8, f16, f32)", args.kv_cache))?;
    let mut pb = progress_bar("loading");
    let mut cb = convert_progress(&mut pb);
    let engine = Engine::load(
        &path,
        LoadOptions {
            preset,
            kv_share,
            kv_dtype,
            skip_shared_prefill: skip,
            progress: Some(&mut cb),
            ..Default::default()
        },
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(cb);
    pb.finish_and_clear();
    Ok(engine)
}

/// The adapter of `--adapter` (scaled by `--adapter-scale`), if any.
fn adapter_of(args: &ModelArgs, engine: &Engine) -> Res<Option<Arc<dyn LinearDelta>>> {
    let Some(path) = &args.adapter else {
        return Ok(None);
    };
    let a = engine
        .load_adapter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let a = Arc::unwrap_or_clone(a).with_scale(args.adapter_scale);
    Ok(Some(Arc::new(a)))
}

/// A session over `engine` with `--adapter` applied.
fn session_of(args: &ModelArgs, engine: &Engine) -> Res<twain::Session<Arc<Transformer>>> {
    let mut s = engine.session();
    if let Some(a) = adapter_of(args, engine)? {
        s.set_adapter(Some(a)).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// A random rank-`rank` LoRA adapter on every linear layer of `model` (alpha 16), for benchmarks.
fn random_adapter(model: &Transformer, rank: usize) -> Res<Arc<dyn LinearDelta>> {
    let mut a = twain::adapters::LoraAdapter::new();
    let mut rng = twain_convert::synthetic::SplitMix::new(7);
    for l in 0..model.config().n_layers {
        for m in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let name = format!("blk.{l}.{m}.weight");
            let Some((rows, cols)) = model.linear_shape(&name) else {
                continue;
            };
            let av: Vec<f32> = (0..rank * cols).map(|_| 0.01 * rng.uniform()).collect();
            let bv: Vec<f32> = (0..rows * rank).map(|_| 0.01 * rng.uniform()).collect();
            a.insert(&name, rows, cols, rank, 16.0 / rank as f32, av, bv)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Arc::new(a))
}

fn sampler(a: &SampleArgs) -> Res<Sampler> {
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
    b.build().map_err(|e| e.to_string())
}

fn gen_opts(a: &SampleArgs) -> GenerateOptions {
    GenerateOptions {
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        cancel: None,
    }
}

/// `twain generate --schema FILE`: stream JSON that the schema constrains.
fn generate_json(
    session: &mut twain::Session<std::sync::Arc<Transformer>>,
    file: &std::path::Path,
    prompt: &str,
    sample: &SampleArgs,
) -> Res<()> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
    let opts = twain::GuidedOptions {
        generate: gen_opts(sample),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    let mut g = session
        .respond_json_stream(prompt, &schema, opts)
        .map_err(|e| e.to_string())?;
    let mut end = None;
    for ev in g.by_ref() {
        match ev.map_err(|e| e.to_string())? {
            Event::Text(t) => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Event::End(r) => end = Some(r),
            Event::Token(_) => {}
        }
    }
    let _ = out.write_all(b"\n");
    match end {
        Some(twain::EndReason::EndOfTurn) => Ok(()),
        other => Err(format!(
            "the JSON is incomplete ({other:?}); raise --max-tokens"
        )),
    }
}

fn stream(g: twain::Generation<'_, std::sync::Arc<Transformer>>) -> Res<()> {
    let mut out = std::io::stdout().lock();
    for ev in g {
        match ev.map_err(|e| e.to_string())? {
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

fn run(cmd: Command) -> Res<()> {
    match cmd {
        Command::Generate {
            model,
            sample,
            raw,
            schema,
            prompt,
        } => {
            let engine = load_engine(&model, true)?;
            let mut session = session_of(&model, &engine)?;
            session.set_sampler(sampler(&sample)?);
            if let Some(file) = schema {
                return generate_json(&mut session, &file, &prompt, &sample);
            }
            let g = if raw {
                session.complete(&prompt, gen_opts(&sample))
            } else {
                session.respond(&prompt, gen_opts(&sample))
            }
            .map_err(|e| e.to_string())?;
            stream(g)
        }
        Command::Chat {
            model,
            sample,
            system,
        } => {
            let engine = load_engine(&model, true)?;
            let mut session = session_of(&model, &engine)?;
            if let Some(s) = system {
                session = session.with_system(s);
            }
            session.set_sampler(sampler(&sample)?);
            eprintln!(
                "twain chat: {} — type a message, an empty line or Ctrl-D ends.",
                engine.model.info().name
            );
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    break;
                }
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    break;
                }
                match session.respond(line, gen_opts(&sample)) {
                    Ok(g) => stream(g)?,
                    Err(e) => eprintln!("twain: {e}"),
                }
            }
            Ok(())
        }
        Command::Convert {
            input,
            output,
            preset,
            kv_share,
            no_calibrate,
            rotate,
            no_rotate,
            no_error_feedback,
            adapter,
        } => convert_cmd(
            &input,
            &output,
            parse_preset(&preset)?,
            parse_share(&kv_share)?,
            Ptq {
                calibrate: !no_calibrate,
                rotate: if rotate {
                    Some(true)
                } else if no_rotate {
                    Some(false)
                } else {
                    None
                },
                error_feedback: !no_error_feedback,
            },
            adapter.as_deref(),
        ),
        Command::Inspect {
            path,
            json,
            tensors,
        } => inspect(&path, json, tensors),
        Command::Bench {
            model,
            prompt_tokens,
            gen_tokens,
            reps,
            no_skip,
            synthetic,
            save,
            random_adapter,
            json,
        } => {
            if save.is_some() && synthetic.is_none() {
                return Err("--save needs --synthetic afm or afm-unshared".into());
            }
            bench(
                &model,
                synthetic.as_deref(),
                save.as_deref(),
                random_adapter,
                prompt_tokens,
                gen_tokens,
                reps,
                !no_skip,
                json,
            )
        }
        Command::Recover(args) => recover::run(args),
        Command::Perplexity {
            model,
            file,
            ctx,
            kl_base,
            kl_base_preset,
            max_chunks,
            json,
        } => {
            let engine = load_engine(&model, true)?;
            let base = match kl_base {
                Some(p) => Some(load_engine(
                    &ModelArgs {
                        model: Some(p),
                        preset: Some(kl_base_preset),
                        kv_share: None,
                        kv_cache: "f32".into(),
                        adapter: None,
                        adapter_scale: 1.0,
                    },
                    true,
                )?),
                None => None,
            };
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let r = perplexity::run(&engine, base.as_ref(), &text, ctx, max_chunks)?;
            if json {
                println!("{}", r.to_json());
            } else {
                println!("{}", r.to_text());
            }
            Ok(())
        }
        Command::Fetch { preset } => {
            let preset = match preset {
                Some(p) => parse_preset(&p)?,
                None => DEFAULT_PRESET,
            };
            let path = resolve_model(&ModelArgs {
                model: None,
                preset: Some(preset.name().into()),
                kv_share: None,
                kv_cache: "int8".into(),
                adapter: None,
                adapter_scale: 1.0,
            })?;
            println!("{}", path.display());
            Ok(())
        }
    }
}

/// The post-training choices of `twain convert`.
struct Ptq {
    calibrate: bool,
    /// `None`: the preset's recommendation.
    rotate: Option<bool>,
    error_feedback: bool,
}

fn convert_cmd(
    input: &Path,
    output: &Path,
    preset: Preset,
    kv_share: Option<(usize, usize)>,
    ptq: Ptq,
    adapter: Option<&Path>,
) -> Res<()> {
    let t0 = Instant::now();
    let mut loaded = twain_io::load_model(input).map_err(|e| e.to_string())?;
    if let Some(a) = adapter {
        let lora =
            twain::adapters::LoraAdapter::load(a).map_err(|e| format!("{}: {e}", a.display()))?;
        twain::adapters::merge_into(&lora, &mut loaded)
            .map_err(|e| format!("{}: {e}", a.display()))?;
        loaded
            .provenance
            .insert("twain.adapter".into(), a.display().to_string());
    }
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&loaded).map_err(|e| e.to_string())?;
    let json = tokenizer.to_json().map_err(|e| e.to_string())?;
    let mut opts = if ptq.calibrate {
        twain_convert::ptq::PtqOptions::recommended(preset)
    } else {
        twain_convert::ptq::PtqOptions::plain()
    };
    match ptq.rotate {
        Some(true) => opts.rotate = Some(Default::default()),
        Some(false) => opts.rotate = None,
        None => {}
    }
    if !ptq.error_feedback {
        opts.error_feedback = None;
    }
    opts.kv_share = kv_share;
    if opts.calibrates(preset) {
        eprintln!(
            "{} on the built-in text ({})",
            opts.describe(),
            twain_convert::calib::CALIBRATION_NAME
        );
    }
    let mut pb = progress_bar(&format!("quantizing ({})", preset.name()));
    let mut cb = convert_progress(&mut pb);
    opts.progress = Some(&mut cb);
    let mut m = twain_convert::ptq::quantize_model(loaded, &tokenizer, preset, opts)
        .map_err(|e| e.to_string())?;
    drop(cb);
    pb.finish_and_clear();
    if m.gguf.is_none() {
        m.tokenizer_json = Some(json);
    }
    m.provenance
        .insert("twain.preset".into(), preset.name().into());
    m.provenance
        .insert("twain.source".into(), input.display().to_string());
    if let Some((a, b)) = kv_share {
        m.provenance
            .insert("twain.kv_share".into(), format!("{a}:{b}"));
    }
    twain_io::write_native(output, &twain_io::NativeModel::from_loaded(&m), &mut |_| {})
        .map_err(|e| e.to_string())?;
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} MiB) in {:.1} s",
        output.display(),
        size as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(path: &Path, json: bool, tensors: bool) -> Res<()> {
    let loaded = twain_io::load_model(path).map_err(|e| e.to_string())?;
    let c = loaded.config.clone();
    // (name, stored format, shape, params, bytes, what twain makes of it).
    struct Row {
        name: String,
        format: String,
        shape: Vec<usize>,
        n: usize,
        bytes: usize,
        kept: Option<twain_io::keep::Kept>,
    }
    let rows: Vec<Row> = match &loaded.gguf {
        // A GGUF's own tensor types (the loader's f32 copies are not what
        // the file holds), and what loading it without --preset keeps.
        Some(g) if twain::engine::is_gguf(path) => g
            .tensors()
            .iter()
            .map(|i| Row {
                name: i.name.clone(),
                format: i.ggml_type.name().to_string(),
                shape: i.shape(),
                n: i.n_elements(),
                bytes: i.file_range.len(),
                kept: Some(twain_io::keep::planned(i.ggml_type, &i.name, &i.shape())),
            })
            .collect(),
        _ => loaded
            .tensors
            .values()
            .map(|t| Row {
                name: t.name().to_string(),
                format: t.format().name().to_string(),
                shape: t.shape().to_vec(),
                n: t.n_elements(),
                bytes: t.bytes().map(|b| b.len()).unwrap_or(0),
                kept: None,
            })
            .collect(),
    };
    let kept_name = |k: twain_io::keep::Kept| {
        format!(
            "{} ({})",
            k.format().name(),
            if k.is_exact() {
                "kept bit-exact"
            } else {
                "widened"
            }
        )
    };
    let mut keeps: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for r in &rows {
        if let Some(k) = r.kept {
            *keeps.entry((r.format.clone(), kept_name(k))).or_default() += 1;
        }
    }
    let mut by_format: std::collections::BTreeMap<String, (usize, usize, usize)> =
        Default::default();
    let mut total_bytes = 0usize;
    let mut total_params = 0usize;
    // Decoder linears: what "bits per weight" of a preset counts.
    let (mut dec_bytes, mut dec_params) = (0usize, 0usize);
    for t in &rows {
        let (n, b) = (t.n, t.bytes);
        if twain_convert::hessian::input_of(&t.name).is_some() && t.name.starts_with("blk.") {
            dec_bytes += b;
            dec_params += n;
        }
        let e = by_format.entry(t.format.clone()).or_default();
        e.0 += 1;
        e.1 += n;
        e.2 += b;
        total_bytes += b;
        total_params += n;
    }
    let owners = c
        .kv_source
        .iter()
        .enumerate()
        .filter(|(l, s)| l == *s)
        .count();
    let kv_row = |d: KvDtype| 2 * owners * c.n_kv_heads * d.row_bytes(c.head_dim);
    let plan: Vec<String> = c
        .kv_source
        .iter()
        .enumerate()
        .filter(|(l, s)| l != *s)
        .map(|(l, s)| format!("{l}->{s}"))
        .collect();
    if json {
        let formats: Vec<serde_json::Value> = by_format
            .iter()
            .map(|(f, (count, n, b))| serde_json::json!({"format": f, "tensors": count, "params": n, "bytes": b, "bits_per_weight": 8.0 * *b as f64 / *n as f64}))
            .collect();
        let v = serde_json::json!({
            "path": path.display().to_string(),
            "arch": c.arch, "layers": c.n_layers, "d_model": c.d_model, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim, "ffn": c.ffn_hidden, "vocab": c.vocab_size, "context": c.context_length,
            "params": total_params, "bytes": total_bytes, "bits_per_weight": 8.0 * total_bytes as f64 / total_params as f64,
            "formats": formats,
            "decoder_linear_bits_per_weight": 8.0 * dec_bytes as f64 / dec_params.max(1) as f64,
            "tensors": rows.iter().map(|t| {
                let mut v = serde_json::json!({
                    "name": t.name, "format": t.format, "shape": t.shape, "bytes": t.bytes,
                });
                if let Some(k) = t.kept {
                    v["twain_format"] = k.format().name().into();
                    v["exact"] = k.is_exact().into();
                }
                v
            }).collect::<Vec<_>>(),
            "kept": keeps.iter().map(|((from, to), n)| serde_json::json!({"from": from, "to": to, "tensors": n})).collect::<Vec<_>>(),
            "kv_owning_layers": owners, "kv_sharing": plan,
            "kv_cache_bytes_per_token": {"int8": kv_row(KvDtype::Int8), "f16": kv_row(KvDtype::F16), "f32": kv_row(KvDtype::F32)},
            "provenance": loaded.provenance,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    println!("{}", path.display());
    println!(
        "  arch {} | {} layers | d {} | heads {}/{} x {} | ffn {} | vocab {} | context {}",
        c.arch,
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_hidden,
        c.vocab_size,
        c.context_length
    );
    println!(
        "  {:.1} M params, {:.1} MiB, {:.2} bits/weight",
        total_params as f64 / 1e6,
        total_bytes as f64 / 1048576.0,
        8.0 * total_bytes as f64 / total_params as f64
    );
    for (f, (count, n, b)) in &by_format {
        println!(
            "  {f:>5}: {count:>4} tensors, {:>8.2} M params, {:>8.2} MiB, {:.3} bits/weight",
            *n as f64 / 1e6,
            *b as f64 / 1048576.0,
            8.0 * *b as f64 / *n as f64
        );
    }
    println!(
        "  decoder linears: {:.3} bits/weight (every scale counted)",
        8.0 * dec_bytes as f64 / dec_params.max(1) as f64
    );
    if !keeps.is_empty() {
        println!(
            "  loaded without --preset (the file's own precision; --preset converts further):"
        );
        for ((from, to), n) in &keeps {
            println!("    {from:>5} -> {to}: {n} tensors");
        }
    }
    if tensors {
        for t in &rows {
            let to = t
                .kept
                .map_or(String::new(), |k| format!(" -> {}", kept_name(k)));
            println!("    {:<28} {:>5} {:?}{to}", t.name, t.format, t.shape);
        }
    }
    println!(
        "  KV: {owners} of {} layers own K/V{}",
        c.n_layers,
        if plan.is_empty() {
            String::new()
        } else {
            format!(" (shared: {})", plan.join(" "))
        }
    );
    println!(
        "  KV cache per token: int8 {} B, f16 {} B, f32 {} B",
        kv_row(KvDtype::Int8),
        kv_row(KvDtype::F16),
        kv_row(KvDtype::F32)
    );
    for (k, v) in &loaded.provenance {
        println!("  {k}: {v}");
    }
    Ok(())
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn synthetic_model(
    name: &str,
    skip: bool,
    kv_cache: &str,
    save: Option<&Path>,
) -> Res<Transformer> {
    let kv_dtype = KvDtype::from_name(kv_cache)
        .ok_or_else(|| format!("unknown --kv-cache {kv_cache:?} (int8, f16, f32)"))?;
    let mut config = twain_convert::synthetic::afm_config();
    let loaded = match name {
        "afm" | "afm-unshared" => {
            if name == "afm-unshared" {
                config.kv_source = (0..config.n_layers).collect();
            }
            eprintln!(
                "building random weights at the {name} shape (2-bit linears, 4-bit embeddings)..."
            );
            let m = twain_convert::synthetic::random_model(&config, Preset::Afm, 1)
                .map_err(|e| e.to_string())?;
            if let Some(out) = save {
                twain_io::write_native(out, &twain_io::NativeModel::from_loaded(&m), &mut |_| {})
                    .map_err(|e| e.to_string())?;
                eprintln!("wrote {}", out.display());
            }
            m
        }
        path if Path::new(path).is_file() => {
            if save.is_some() {
                return Err("--save goes with --synthetic afm or afm-unshared".into());
            }
            twain_io::load_model(path).map_err(|e| e.to_string())?
        }
        other => {
            return Err(format!(
                "unknown --synthetic {other:?} (afm, afm-unshared, or a file written by --save)"
            ))
        }
    };
    Transformer::from_loaded(
        loaded,
        twain_core::TransformerOptions {
            kv_dtype,
            skip_shared_prefill: skip,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn bench(
    args: &ModelArgs,
    synthetic: Option<&str>,
    save: Option<&Path>,
    random_adapter_rank: Option<usize>,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    skip: bool,
    json: bool,
) -> Res<()> {
    let t0 = Instant::now();
    let (model, adapter) = match synthetic {
        Some(name) => (
            std::sync::Arc::new(synthetic_model(name, skip, &args.kv_cache, save)?),
            None,
        ),
        None => {
            let engine = load_engine(args, skip)?;
            let adapter = adapter_of(args, &engine)?;
            (engine.model, adapter)
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    let adapter = match random_adapter_rank {
        Some(r) => Some(random_adapter(&model, r)?),
        None => adapter,
    };
    let model = &model;
    let new_state = || -> Res<twain_core::State> {
        let mut s = model.new_state();
        if adapter.is_some() {
            model
                .set_adapter(&mut s, adapter.clone())
                .map_err(|e| e.to_string())?;
        }
        Ok(s)
    };
    let vocab = model.info().vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut logits = vec![0.0f32; vocab as usize];
    let (mut best_pp, mut best_tg) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps.max(1) {
        let mut state = new_state()?;
        let t = Instant::now();
        model
            .forward(&mut state, &prompt, &mut logits)
            .map_err(|e| e.to_string())?;
        best_pp = best_pp.min(t.elapsed().as_secs_f64());
        let mut state = new_state()?;
        model
            .forward(&mut state, &prompt[..1], &mut logits)
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let mut tok = 1u32;
        for _ in 0..gen_tokens {
            model
                .forward(&mut state, &[tok], &mut logits)
                .map_err(|e| e.to_string())?;
            tok = twain_sample::argmax(&logits).unwrap_or(1);
        }
        best_tg = best_tg.min(t.elapsed().as_secs_f64());
    }
    let threads = rayon::current_num_threads();
    let pp = prompt_tokens as f64 / best_pp;
    let tg = gen_tokens as f64 / best_tg;
    let wbytes = model.weight_bytes();
    let rss = peak_rss_mib().unwrap_or(0.0);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": model.info().name, "threads": threads, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                "prefill_tok_s": pp, "decode_tok_s": tg, "ttft_ms": best_pp * 1e3, "load_s": load_s,
                "peak_rss_mib": rss, "weight_bytes": wbytes, "decode_weight_gb_s": wbytes as f64 * tg / 1e9,
                "kv_bytes_per_token": model.kv_bytes_per_token(), "skip_shared_prefill": skip, "kernels": twain_quant::backend_name(), "adapter": adapter.is_some(),
            })
        );
    } else {
        println!(
            "threads {threads} | kernels {}",
            twain_quant::backend_name()
        );
        println!(
            "prefill {prompt_tokens} tokens: {pp:.1} tok/s (time to first token {:.1} ms)",
            best_pp * 1e3
        );
        println!(
            "decode {gen_tokens} tokens: {tg:.1} tok/s ({:.1} GB/s of weights)",
            wbytes as f64 * tg / 1e9
        );
        println!(
            "load {load_s:.2} s | peak RSS {rss:.0} MiB | weights {:.1} MiB | KV {} B/token",
            wbytes as f64 / 1048576.0,
            model.kv_bytes_per_token()
        );
    }
    Ok(())
}
