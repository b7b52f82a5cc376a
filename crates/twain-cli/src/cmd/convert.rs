//! `twain convert`: a GGUF / Hugging Face / native model into a twain
//! native file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use twain_convert::Preset;

use crate::common::{convert_progress, parse_share, progress_bar, PresetArg};

#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    /// Input model.
    input: PathBuf,
    /// Output native file.
    output: PathBuf,
    /// afm (2-bit linears, 4-bit embeddings), q4, q8, f16, f32.
    #[arg(long, default_value = "afm", hide_possible_values = true)]
    preset: PresetArg,
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
}

pub(crate) fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let preset = Preset::from(a.preset);
    let kv_share = parse_share(&a.kv_share)?;
    let (input, output) = (&a.input, &a.output);
    let t0 = Instant::now();
    let mut loaded = twain_io::load_model(input)?;
    if let Some(ad) = &a.adapter {
        let lora =
            twain::adapters::LoraAdapter::load(ad).with_context(|| ad.display().to_string())?;
        twain::adapters::merge_into(&lora, &mut loaded)
            .with_context(|| ad.display().to_string())?;
        loaded
            .provenance
            .insert("twain.adapter".into(), ad.display().to_string());
    }
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&loaded)?;
    let json = tokenizer.to_json()?;
    let mut opts = if a.no_calibrate {
        twain_convert::ptq::PtqOptions::plain()
    } else {
        twain_convert::ptq::PtqOptions::recommended(preset)
    };
    // Neither flag: the preset's recommendation.
    if a.rotate {
        opts.rotate = Some(Default::default());
    } else if a.no_rotate {
        opts.rotate = None;
    }
    if a.no_error_feedback {
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
    let mut m = twain_convert::ptq::quantize_model(loaded, &tokenizer, preset, opts)?;
    drop(cb);
    pb.finish_and_clear();
    if m.gguf.is_none() {
        m.tokenizer_json = Some(json);
    }
    m.provenance
        .insert("twain.preset".into(), preset.name().into());
    m.provenance
        .insert("twain.source".into(), input.display().to_string());
    if let Some((x, y)) = kv_share {
        m.provenance
            .insert("twain.kv_share".into(), format!("{x}:{y}"));
    }
    twain_io::write_native(output, &twain_io::NativeModel::from_loaded(&m), &mut |_| {})?;
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} MiB) in {:.1} s",
        output.display(),
        size as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
