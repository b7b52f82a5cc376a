//! `twain recover`: distill a converted (2-bit) model back towards its f32
//! source, and write the recovered model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use twain_train::{reconstruct, train, BlockLoss, BlockOptions, Student, Targets, TrainOptions};

use crate::common::parse_share;

#[derive(clap::Args)]
pub(crate) struct RecoverArgs {
    /// The converted model to recover (a twain native file, e.g. from
    /// `twain convert --preset afm`).
    student: PathBuf,
    /// Its f32 source (the teacher): the GGUF / HF model it was converted from.
    teacher: PathBuf,
    /// Where to write the recovered model (twain native).
    output: PathBuf,
    /// Training stages in order: `block` (block-wise reconstruction of each
    /// layer's output, cheap), `distill` (end-to-end KL distillation), or
    /// `block,distill`.
    #[arg(long, default_value = "block")]
    stages: String,
    /// Retrofit this KV-sharing plan (e.g. 5:3) onto the student before
    /// training: its block-2 layers drop their K/V projections and learn to
    /// read block 1's last cache.
    #[arg(long)]
    kv_share: Option<String>,
    /// Block stage: calibration sequences.
    #[arg(long, default_value_t = 128)]
    block_seqs: usize,
    /// Block stage: passes over them per block.
    #[arg(long, default_value_t = 2)]
    block_epochs: usize,
    /// Block stage: sequences per step.
    #[arg(long, default_value_t = 2)]
    block_batch: usize,
    /// Block stage: peak learning rate of the latent weights (in units of
    /// their group's step).
    #[arg(long, default_value_t = 3e-3)]
    block_lr_weights: f64,
    /// Block stage: peak learning rate of the group scales.
    #[arg(long, default_value_t = 1e-4)]
    block_lr_scales: f64,
    /// Block stage: peak learning rate of the norm and row gains.
    #[arg(long, default_value_t = 1e-2)]
    block_lr_norms: f64,
    /// Block stage: the error trained on, `mse` (the whole stream's
    /// squared error, dominated by massive activations) or `token` (each
    /// token's over its energy, as the next norm sees it; measured equal).
    #[arg(long, default_value = "mse")]
    block_loss: String,
    /// Distill stage: optimizer steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Peak learning rate of the 2-bit matrices' latent weights.
    #[arg(long, default_value_t = 2e-5)]
    lr_weights: f64,
    /// Peak learning rate of the group scales (learnable clipping).
    #[arg(long, default_value_t = 2e-5)]
    lr_scales: f64,
    /// Peak learning rate of the norm gains.
    #[arg(long, default_value_t = 1e-4)]
    lr_norms: f64,
    /// What to train: any of weights (latent 2-bit weights), scales (group
    /// scales), norms (norm gains), rows (a gain per matrix row), comma-separated.
    /// Without weights the 2-bit codes are frozen: they stay bit-identical
    /// through training and export, and only scales, norms and row gains move.
    #[arg(long, default_value = "weights,scales,norms,rows")]
    train: String,
    /// Seed of the data order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Extra training text (repeatable): only text the teacher wrote itself
    /// (`examples/selfgen`) or corpus text, never evaluation text.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Checkpoint file (default: OUTPUT.ckpt).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Minutes between checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
    /// Continue from the checkpoint (it must belong to this same run).
    #[arg(long)]
    resume: bool,
}

pub(crate) fn run(a: RecoverArgs) -> anyhow::Result<()> {
    let mut targets = Targets::none();
    for t in a.train.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match t {
            "weights" => targets.weights = true,
            "scales" => targets.scales = true,
            "norms" => targets.norms = true,
            "rows" => targets.rows = true,
            other => {
                bail!("--train: unknown target {other:?} (weights, scales, norms, rows)")
            }
        }
    }
    let (mut block, mut distill) = (false, false);
    for st in a.stages.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match st {
            "block" if !distill => block = true,
            "distill" => distill = true,
            other => {
                bail!("--stages: {other:?} is not a stage here (block, distill, in that order)")
            }
        }
    }
    if !block && !distill {
        bail!("--stages: no stage (block, distill)");
    }
    let checkpoint = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| a.output.with_extension("ckpt"));
    let block_checkpoint = checkpoint.with_extension("block.ckpt");
    let ours: Vec<&PathBuf> = [(block, &block_checkpoint), (distill, &checkpoint)]
        .into_iter()
        .filter_map(|(on, p)| on.then_some(p))
        .collect();
    if let (Some(p), false) = (ours.iter().find(|p| p.exists()), a.resume) {
        bail!(
            "{} exists: pass --resume to continue that run, or remove it",
            p.display()
        );
    }
    if a.resume && !ours.iter().any(|p| p.exists()) {
        bail!(
            "--resume: no checkpoint at {}",
            ours.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    let mut base = twain_io::load_model(&a.student)?;
    if let Some((x, y)) = parse_share(&a.kv_share)? {
        if base
            .config
            .kv_source
            .iter()
            .enumerate()
            .any(|(l, &s)| s != l)
        {
            bail!(
                "--kv-share {x}:{y}: {} already shares K/V",
                a.student.display()
            );
        }
        let plan = twain_core::KvPlan::shared(base.config.n_layers, x, y)
            .with_context(|| format!("--kv-share {x}:{y}"))?;
        twain_convert::apply_plan(&mut base, &plan)?;
        base.provenance
            .insert("twain.kv_share".into(), format!("{x}:{y}"));
    }
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&base)?;
    let mut data = twain_convert::calib::training_tokens(&tokenizer)?;
    for p in &a.data {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        data.extend(tokenizer.encode(&text, false)?);
    }
    let student = Student::new(&base, targets)?;
    // The f32 source in the student's basis: the block stage's teacher, and
    // where the latent weights spread from.
    let mut source = twain_io::load_model(&a.teacher)?;
    twain_convert::rotate::rotate_like(&mut source, &base)?;
    student.spread_latent(&source)?;
    let mut provenance = Vec::new();
    if block {
        let teacher = Student::new(&source, Targets::none())?;
        drop(source);
        provenance.push(block_stage(
            &a,
            &teacher,
            &student,
            &data,
            &block_checkpoint,
        )?);
    } else {
        drop(source);
    }
    if !distill {
        return finish(&a, &student, &base, provenance, None);
    }
    let teacher = twain_convert::calib::load_reference(&a.teacher)?;
    let mut opts = TrainOptions::default();
    opts.steps = a.steps;
    opts.seq_len = a.seq_len;
    opts.batch = a.batch;
    opts.lr_weights = a.lr_weights;
    opts.lr_scales = a.lr_scales;
    opts.lr_norms = a.lr_norms;
    opts.seed = a.seed;
    opts.checkpoint = Some(checkpoint.clone());
    opts.checkpoint_every = Duration::from_secs_f64(60.0 * a.checkpoint_minutes.max(0.0));
    eprintln!(
        "training {} values of {} on {} tokens ({} per step, {} steps); checkpoint {}",
        student.trained_values(),
        a.student.display(),
        data.len(),
        opts.tokens_per_step(),
        opts.steps,
        checkpoint.display()
    );
    let pb = ProgressBar::new(opts.steps as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // Without a terminal (a job in the background), a log line per 10 steps.
    let log = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = std::time::Instant::now();
    // The loss of one step depends on its windows: show the mean of the
    // last ten.
    let mut recent = std::collections::VecDeque::new();
    let summary = train(&student, &teacher, &data, &opts, &mut |p| {
        recent.push_back(p.loss);
        if recent.len() > 10 {
            recent.pop_front();
        }
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        if log && (p.step % 10 == 0 || p.checkpointed || p.step == p.steps) {
            eprintln!(
                "step {}/{} tokens {} KL {:.4} (last 10: {mean:.4}) {:.1} tokens/s elapsed {:.0}s{}",
                p.step,
                p.steps,
                p.tokens,
                p.loss,
                p.tokens_per_s,
                t0.elapsed().as_secs_f64(),
                if p.checkpointed { " checkpointed" } else { "" }
            );
        }
        pb.set_position(p.step as u64);
        pb.set_message(format!(
            "{} tokens, KL {:.4} (last 10: {mean:.4}), {:.0} tokens/s{}",
            p.tokens,
            p.loss,
            p.tokens_per_s,
            if p.checkpointed { ", checkpointed" } else { "" }
        ));
        std::ops::ControlFlow::Continue(())
    })?;
    pb.finish();
    provenance.push(format!(
        "distilled {} steps x {} tokens, seed {}",
        opts.steps,
        opts.tokens_per_step(),
        opts.seed,
    ));
    finish(
        &a,
        &student,
        &base,
        provenance,
        Some(format!(
            "{:.0} tokens/s, resumed from step {}",
            summary.tokens_per_s, summary.resumed_from
        )),
    )
}

/// Write the recovered model with what was done in its provenance.
fn finish(
    a: &RecoverArgs,
    student: &Student,
    base: &twain_io::LoadedModel,
    stages: Vec<String>,
    note: Option<String>,
) -> anyhow::Result<()> {
    let provenance = BTreeMap::from([(
        "twain.recovered".to_string(),
        format!("{}; targets {}", stages.join("; then "), a.train),
    )]);
    let bytes = twain_train::export::write_model(student, base, &a.output, provenance)?;
    eprintln!(
        "wrote {} ({bytes} bytes){}",
        a.output.display(),
        note.map(|n| format!("; {n}")).unwrap_or_default()
    );
    Ok(())
}

/// The block-wise stage: every layer trained to reproduce the f32 layer's
/// output. Returns its provenance line.
fn block_stage(
    a: &RecoverArgs,
    teacher: &Student,
    student: &Student,
    data: &[u32],
    checkpoint: &std::path::Path,
) -> anyhow::Result<String> {
    let mut opts = BlockOptions::default();
    opts.seqs = a.block_seqs;
    opts.seq_len = a.seq_len;
    opts.batch = a.block_batch;
    opts.epochs = a.block_epochs;
    opts.lr_weights = a.block_lr_weights;
    opts.lr_scales = a.block_lr_scales;
    opts.lr_norms = a.block_lr_norms;
    opts.loss = match a.block_loss.as_str() {
        "token" => BlockLoss::Token,
        "mse" => BlockLoss::Mse,
        other => bail!("--block-loss {other:?}: expected `token` or `mse`"),
    };
    opts.seed = a.seed;
    opts.checkpoint = Some(checkpoint.to_path_buf());
    let layers = student.config().n_layers;
    let steps = opts.steps_per_block();
    eprintln!(
        "block stage: {layers} blocks x {steps} steps of {} tokens ({} sequences, {} epochs); checkpoint {}",
        opts.batch * opts.seq_len,
        opts.seqs,
        opts.epochs,
        checkpoint.display()
    );
    let pb = ProgressBar::new((layers * steps) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] [{bar:30}] {pos}/{len} steps, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let log = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let t0 = std::time::Instant::now();
    let summary = reconstruct(student, teacher, data, &opts, &mut |p| {
        pb.set_position((p.layer * p.steps + p.step) as u64);
        pb.set_message(format!(
            "block {}/{}, error {:.4}, {:.0} tokens/s",
            p.layer + 1,
            p.layers,
            p.loss,
            p.tokens_per_s
        ));
        if let Some(r) = p.finished {
            let line = format!(
                "block {}/{}: relative error {:.4} -> {:.4}, {:.0} tokens/s, elapsed {:.0}s",
                r.layer + 1,
                p.layers,
                r.before,
                r.after,
                p.tokens_per_s,
                t0.elapsed().as_secs_f64()
            );
            if log {
                eprintln!("{line}");
            } else {
                pb.println(line);
            }
        }
        std::ops::ControlFlow::Continue(())
    })?;
    pb.finish();
    eprintln!(
        "block stage done: {} blocks ({} from the checkpoint)",
        summary.blocks, summary.resumed_from
    );
    Ok(format!(
        "block-wise reconstruction {} sequences x {} tokens, {} epochs, seed {}",
        opts.seqs, opts.seq_len, opts.epochs, opts.seed
    ))
}
