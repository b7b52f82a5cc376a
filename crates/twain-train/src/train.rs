//! End-to-end distillation: the student's next-token distribution is pulled
//! to the f32 teacher's full distribution (KL(teacher || student), every
//! position of every window), with Adam, a warm-up and a cosine decay.
//! Teacher logits come from twain-core's forward on the fly, so no logits are
//! stored. Checkpoints hold everything a run's future depends on (the trained
//! values, Adam's moments, the step), so a resumed run computes what an
//! uninterrupted one would.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use rayon::prelude::*;
use twain_convert::synthetic::SplitMix;
use twain_core::Transformer;
use twain_model::Model;

use crate::fakequant::with_f32;
use crate::model::soft_cross_entropy;
use crate::{Student, TrainError};

/// Settings of a training run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrainOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate of the Q2 latent weights, in units of their
    /// group's quantization step.
    pub lr_weights: f64,
    /// Peak learning rate of the group scales, in units of their row's
    /// scale step.
    pub lr_scales: f64,
    /// Peak learning rate of the norm gains and row gains.
    pub lr_norms: f64,
    /// Steps of linear warm-up.
    pub warmup: usize,
    /// Seed of the data order.
    pub seed: u64,
    /// Where to keep the checkpoint (one file, replaced atomically).
    pub checkpoint: Option<PathBuf>,
    /// Time between checkpoints (one is always written at the end).
    pub checkpoint_every: Duration,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 1000,
            seq_len: 256,
            batch: 2,
            lr_weights: 2e-5,
            lr_scales: 2e-5,
            lr_norms: 1e-4,
            warmup: 20,
            seed: 1,
            checkpoint: None,
            checkpoint_every: Duration::from_secs(300),
        }
    }
}

impl TrainOptions {
    /// Tokens per step.
    pub fn tokens_per_step(&self) -> usize {
        self.seq_len * self.batch
    }

    fn lr_factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            return (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        // Cosine from 1 down to 0.1.
        0.1 + 0.45 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Where a run stands, for progress displays.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Steps of the run.
    pub steps: usize,
    /// Tokens trained on so far (resumed steps included).
    pub tokens: u64,
    /// Mean KL divergence (nats per position) of the last step.
    pub loss: f64,
    /// Tokens per second over this process's steps.
    pub tokens_per_s: f64,
    /// A checkpoint was just written.
    pub checkpointed: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TrainSummary {
    /// Steps done in total (fewer than asked when progress broke off).
    pub steps: usize,
    /// The step this process started from (0 unless resumed).
    pub resumed_from: usize,
    /// Loss of each step this process ran.
    pub losses: Vec<f64>,
    /// Tokens per second of this process.
    pub tokens_per_s: f64,
}

/// Adam moments of every trained tensor.
pub(crate) struct Adam {
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    pub(crate) fn new(student: &Student) -> Self {
        let zeros = || -> BTreeMap<String, Vec<f32>> {
            student
                .vars()
                .iter()
                .map(|(n, v)| (n.clone(), vec![0.0; v.elem_count()]))
                .collect()
        };
        Adam {
            m: zeros(),
            v: zeros(),
        }
    }

    /// One Adam step (`t` counts from 1) on every variable with a gradient.
    pub(crate) fn step(
        &mut self,
        student: &Student,
        grads: &candle_core::backprop::GradStore,
        t: usize,
        lr: impl Fn(&str) -> f64,
    ) -> Result<(), TrainError> {
        let bc1 = 1.0 - BETA1.powi(t as i32);
        let bc2 = 1.0 - BETA2.powi(t as i32);
        for (name, var) in student.vars() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = self.m.get_mut(name).expect("moments of every var");
            let v = self.v.get_mut(name).expect("moments of every var");
            let step = (lr(name) / bc1) as f32;
            let units = student.lr_units(name)?;
            let bc2s = bc2.sqrt() as f32;
            let (b1, b2) = (BETA1 as f32, BETA2 as f32);
            let g = g.contiguous()?;
            let mut w = vec![0.0f32; var.elem_count()];
            with_f32(&g, |g| {
                with_f32(var.as_tensor(), |w0| {
                    let ones = [1.0f32; 4096];
                    w.par_chunks_mut(4096)
                        .zip(w0.par_chunks(4096))
                        .zip(m.par_chunks_mut(4096))
                        .zip(v.par_chunks_mut(4096))
                        .zip(g.par_chunks(4096))
                        .enumerate()
                        .for_each(|(k, ((((w, w0), m), v), g))| {
                            let u = match &units {
                                Some(u) => &u[k * 4096..k * 4096 + w.len()],
                                None => &ones[..w.len()],
                            };
                            for i in 0..w.len() {
                                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                                w[i] =
                                    w0[i] - step * u[i] * m[i] / (v[i].sqrt() / bc2s + EPS as f32);
                            }
                        });
                })
            })??;
            var.set(&Tensor::from_vec(w, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// A checkpoint on disk: the trained values, Adam's moments, the step, and a
/// fingerprint of the run it belongs to.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Steps done.
    pub step: usize,
    /// The run it belongs to (model, trained tensors, data, settings).
    pub fingerprint: String,
}

impl Checkpoint {
    /// Read only the header of the checkpoint at `path`.
    pub fn peek(path: &Path) -> Result<Checkpoint, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(path, format!("not a checkpoint: {e}")))?;
        header(path, meta.metadata())
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn header(
    path: &Path,
    meta: &Option<std::collections::HashMap<String, String>>,
) -> Result<Checkpoint, TrainError> {
    let meta = meta.as_ref().ok_or_else(|| bad(path, "no metadata"))?;
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(path, "no step"))?;
    let fingerprint = meta
        .get("fingerprint")
        .cloned()
        .ok_or_else(|| bad(path, "no fingerprint"))?;
    Ok(Checkpoint { step, fingerprint })
}

/// FNV-1a of token ids, so a checkpoint of other data is refused.
pub(crate) fn data_hash(data: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &t in data {
        h = (h ^ t as u64).wrapping_mul(0x100000001b3);
    }
    h
}

/// A description of the run that a checkpoint must match to be resumed.
fn fingerprint(student: &Student, data: &[u32], opts: &TrainOptions) -> String {
    let c = student.config();
    let vars: Vec<String> = student
        .vars()
        .iter()
        .map(|(n, v)| format!("{n}{:?}", v.dims()))
        .collect();
    let h = data_hash(data);
    format!(
        "layers {} d {} vocab {} kv {:?}; vars {}; data {} tokens {h:016x}; seq {} batch {} seed {} steps {} lr {} {} {} warmup {}",
        c.n_layers,
        c.d_model,
        c.vocab_size,
        c.kv_source,
        vars.join(","),
        data.len(),
        opts.seq_len,
        opts.batch,
        opts.seed,
        opts.steps,
        opts.lr_weights,
        opts.lr_scales,
        opts.lr_norms,
        opts.warmup
    )
}

/// Write the student's trained values (and Adam's moments, when given)
/// with `step` and the run's fingerprint `fp` to `path`, atomically.
pub(crate) fn save_checkpoint(
    path: &Path,
    student: &Student,
    adam: Option<&Adam>,
    step: usize,
    fp: &str,
) -> Result<(), TrainError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, var) in student.vars() {
        let dims = var.dims().to_vec();
        owned.push((
            format!("value/{name}"),
            dims.clone(),
            var.as_tensor().flatten_all()?.to_vec1::<f32>()?,
        ));
        if let Some(adam) = adam {
            owned.push((format!("adam_m/{name}"), dims.clone(), adam.m[name].clone()));
            owned.push((format!("adam_v/{name}"), dims, adam.v[name].clone()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, dims, data)| {
            let v = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                dims.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| bad(path, e.to_string()))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_, TrainError>>()?;
    let meta: std::collections::HashMap<String, String> = [
        ("step".to_string(), step.to_string()),
        ("fingerprint".to_string(), fp.to_string()),
    ]
    .into();
    // A fresh temporary file beside the checkpoint (never an existing file or a symlink),
    // flushed to disk and renamed into place: a failure (a full disk) leaves the earlier
    // checkpoint as it was, and a symlink at `path` is replaced, not followed.
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| bad(path, e.to_string()))?;
    twain_io::write_atomic(path, &bytes).map_err(|e| {
        bad(
            path,
            format!("writing failed, the earlier checkpoint is kept: {e}"),
        )
    })?;
    Ok(())
}

/// Set the student's values (and Adam's moments, when given) from the
/// checkpoint at `path`, which must carry the fingerprint `fp` (empty:
/// any checkpoint, and values it lacks are kept); nothing
/// changes unless all of it reads. Returns the checkpoint's step.
pub(crate) fn load_checkpoint(
    path: &Path,
    student: &Student,
    mut adam: Option<&mut Adam>,
    fp: &str,
) -> Result<usize, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a checkpoint: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a checkpoint: {e}")))?;
    let h = header(path, meta.metadata())?;
    if !fp.is_empty() && h.fingerprint != fp {
        return Err(bad(
            path,
            format!(
                "it belongs to another run (model, trained tensors, data or settings differ):\n  checkpoint: {}\n  this run:   {fp}",
                h.fingerprint
            ),
        ));
    }
    let read = |key: &str, n: usize| -> Result<Vec<f32>, TrainError> {
        let t = st
            .tensor(key)
            .map_err(|e| bad(path, format!("{key}: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.data().len() != 4 * n {
            return Err(bad(path, format!("{key}: wrong type or size")));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    // Read everything before changing anything.
    let mut staged = Vec::new();
    for (name, var) in student.vars() {
        let n = var.elem_count();
        if fp.is_empty() && st.tensor(&format!("value/{name}")).is_err() {
            // Inspection (no fingerprint to match): a value the checkpoint
            // does not train keeps its starting value.
            continue;
        }
        let moments = if adam.is_some() {
            Some((
                read(&format!("adam_m/{name}"), n)?,
                read(&format!("adam_v/{name}"), n)?,
            ))
        } else {
            None
        };
        staged.push((name.clone(), read(&format!("value/{name}"), n)?, moments));
    }
    for (name, value, moments) in staged {
        let var = &student.vars()[&name];
        var.set(&Tensor::from_vec(value, var.shape(), var.device())?)?;
        if let (Some(adam), Some((m, v))) = (adam.as_deref_mut(), moments) {
            adam.m.insert(name.clone(), m);
            adam.v.insert(name, v);
        }
    }
    Ok(h.step)
}

/// Set the student's trained values to those of the checkpoint at `path`
/// (any run of the same model: the fingerprint is not checked, and values
/// the checkpoint does not hold keep their starting values),
/// to inspect or export a run in progress. Returns the checkpoint's step.
pub fn load_values(path: &Path, student: &Student) -> Result<usize, TrainError> {
    load_checkpoint(path, student, None, "")
}

/// The windows of step `step`: `batch` windows of `seq_len` tokens, in a
/// seeded order that changes every pass over the data.
fn windows_of_step(n_windows: usize, opts: &TrainOptions, step: usize) -> Vec<usize> {
    let per_epoch = (n_windows / opts.batch).max(1);
    let epoch = step / per_epoch;
    let at = step % per_epoch;
    let mut order: Vec<usize> = (0..n_windows).collect();
    let mut rng = SplitMix::new(opts.seed ^ (epoch as u64).wrapping_mul(0x9e3779b97f4a7c15));
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    (0..opts.batch)
        .map(|b| order[(at * opts.batch + b) % n_windows])
        .collect()
}

/// The teacher's next-token probabilities of `tokens` (rows x vocab) and the
/// sum of `p log p` over the rows.
fn teacher_probs(
    teacher: &Transformer,
    seqs: &[&[u32]],
    vocab: usize,
) -> Result<(Vec<f32>, f64), TrainError> {
    let mut probs = Vec::with_capacity(seqs.iter().map(|s| s.len()).sum::<usize>() * vocab);
    for s in seqs {
        let mut st = teacher.new_state();
        probs.extend(teacher.forward_all(&mut st, s)?);
    }
    let neg_entropy: f64 = probs
        .par_chunks_mut(vocab)
        .map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut z = 0.0f64;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                z += *v as f64;
            }
            let mut acc = 0.0f64;
            for v in row.iter_mut() {
                let p = *v as f64 / z;
                if p > 0.0 {
                    acc += p * (p.ln());
                }
                *v = p as f32;
            }
            acc
        })
        .sum();
    Ok((probs, neg_entropy))
}

/// The mean KL divergence KL(teacher || student) over the positions of
/// `seqs`, as a differentiable scalar, and its value.
pub fn distillation_loss(
    student: &Student,
    teacher: &Transformer,
    seqs: &[&[u32]],
) -> Result<(Tensor, f64), TrainError> {
    let vocab = student.config().vocab_size;
    let tm = Instant::now();
    let (probs, neg_entropy) = teacher_probs(teacher, seqs, vocab)?;
    if std::env::var_os("TWAIN_TRAIN_TIMING").is_some() {
        eprintln!("teacher {:?}", tm.elapsed());
    }
    let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
    let rows = tokens.len();
    let logits = student.forward(&tokens, seqs.len())?;
    let cross = soft_cross_entropy(&logits, probs)?;
    let value = cross.to_scalar::<f32>()? as f64 + neg_entropy / rows as f64;
    Ok((cross, value))
}

/// Train `student` towards `teacher` on `data` (token ids, cut into windows
/// of `opts.seq_len`). With a checkpoint path that holds a checkpoint of the
/// same run, the run resumes from it. `progress` is called after every
/// step; when it breaks, the run stops there (checkpointing first, as at the
/// end) and the summary says how far it got.
pub fn train(
    student: &Student,
    teacher: &Transformer,
    data: &[u32],
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<TrainSummary, TrainError> {
    if opts.seq_len < 2 || opts.batch == 0 || opts.steps == 0 {
        return Err(TrainError::Data(format!(
            "{} steps of {} sequences of {} tokens is no run",
            opts.steps, opts.batch, opts.seq_len
        )));
    }
    if student.vars().is_empty() {
        return Err(TrainError::Model(
            "nothing to train: every target is off".into(),
        ));
    }
    let n_windows = data.len() / opts.seq_len;
    if n_windows < opts.batch {
        return Err(TrainError::Data(format!(
            "{} tokens make {n_windows} windows of {}, fewer than a batch of {}",
            data.len(),
            opts.seq_len,
            opts.batch
        )));
    }
    if teacher.config().vocab_size != student.config().vocab_size {
        return Err(TrainError::Model(format!(
            "the teacher's vocabulary has {} tokens, the student's {}",
            teacher.config().vocab_size,
            student.config().vocab_size
        )));
    }
    let fp = fingerprint(student, data, opts);
    let mut adam = Adam::new(student);
    let mut start = 0;
    if let Some(path) = &opts.checkpoint {
        if path.exists() {
            start = load_checkpoint(path, student, Some(&mut adam), &fp)?;
        }
    }
    let t0 = Instant::now();
    let mut last_ckpt = Instant::now();
    let mut losses = Vec::new();
    let tps = opts.tokens_per_step();
    let mut done = start;
    for step in start..opts.steps {
        let idx = windows_of_step(n_windows, opts, step);
        let seqs: Vec<&[u32]> = idx
            .iter()
            .map(|&w| &data[w * opts.seq_len..(w + 1) * opts.seq_len])
            .collect();
        let tm = Instant::now();
        let (loss, value) = distillation_loss(student, teacher, &seqs)?;
        let t_fwd = tm.elapsed();
        let grads = loss.backward()?;
        let t_bwd = tm.elapsed();
        let f = opts.lr_factor(step);
        adam.step(student, &grads, step + 1, |name| {
            f * if name.ends_with(".scales") {
                opts.lr_scales
            } else if name.contains("norm") {
                opts.lr_norms
            } else {
                opts.lr_weights
            }
        })?;
        drop(grads);
        if std::env::var_os("TWAIN_TRAIN_TIMING").is_some() {
            eprintln!(
                "step {step}: fwd {t_fwd:?} bwd {:?} adam {:?}",
                t_bwd - t_fwd,
                tm.elapsed() - t_bwd
            );
        }
        losses.push(value);
        done = step + 1;
        let mut checkpointed = false;
        if let Some(path) = &opts.checkpoint {
            if done == opts.steps || last_ckpt.elapsed() >= opts.checkpoint_every {
                save_checkpoint(path, student, Some(&adam), done, &fp)?;
                last_ckpt = Instant::now();
                checkpointed = true;
            }
        }
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let flow = progress(&Progress {
            step: done,
            steps: opts.steps,
            tokens: (done * tps) as u64,
            loss: value,
            tokens_per_s: ((done - start) * tps) as f64 / secs,
            checkpointed,
        });
        if flow.is_break() {
            if let (Some(path), false) = (&opts.checkpoint, checkpointed) {
                save_checkpoint(path, student, Some(&adam), done, &fp)?;
            }
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    Ok(TrainSummary {
        steps: done,
        resumed_from: start,
        tokens_per_s: ((done - start) * tps) as f64 / secs,
        losses,
    })
}
