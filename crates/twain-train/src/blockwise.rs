//! Block-wise reconstruction (the first training stage, as EfficientQAT's
//! Block-AP and OmniQuant do it): layer by layer, the student's block is
//! trained so that its output on the student's own inputs (what the
//! already-trained blocks before it produce) matches the f32 block's output
//! on the f32 inputs, in squared error relative to the target's energy,
//! or per token ([`BlockLoss`]). One block's forward and
//! backward cost a thirtieth of the whole model's and the LM head is never
//! run, so this stage moves the 2-bit grid much further per CPU hour than
//! end-to-end distillation, which then polishes what is left.
//!
//! The teacher is the f32 source rotated like the student
//! ([`twain_convert::rotate::rotate_like`]), so both residual streams live
//! in one basis. Block-2 layers of a KV-sharing student read the K/V that
//! the trained student's source layer computed on the student's inputs, as
//! at inference.
//!
//! A checkpoint is written after every block; a resumed run replays the
//! finished blocks' forwards and computes what an uninterrupted run would.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use twain_convert::synthetic::SplitMix;

use crate::train::{data_hash, load_checkpoint, save_checkpoint, Adam};
use crate::{Student, TrainError};

/// Settings of a block-wise reconstruction run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BlockOptions {
    /// Calibration sequences (windows of the data, chosen by `seed`).
    pub seqs: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Passes over the sequences per block.
    pub epochs: usize,
    /// Peak learning rate of the Q2 latent weights, in units of their
    /// group's quantization step.
    pub lr_weights: f64,
    /// Peak learning rate of the group scales, in units of their row's
    /// scale step.
    pub lr_scales: f64,
    /// Peak learning rate of the norm gains and row gains.
    pub lr_norms: f64,
    /// Steps of linear warm-up at the start of every block.
    pub warmup: usize,
    /// Seed of the sequences and their order.
    pub seed: u64,
    /// Where to keep the checkpoint (written after every block).
    pub checkpoint: Option<PathBuf>,
    /// How a block's output error is measured.
    pub loss: BlockLoss,
}

/// The error a block is trained to lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockLoss {
    /// Squared error of the whole residual stream over its energy: tokens
    /// and channels with massive activations (SmolLM2's first token, a few
    /// outlier channels from the middle layers on) dominate it.
    #[default]
    Mse,
    /// Each token's squared error over that token's energy, averaged: the
    /// error as the next RMSNorm sees it, every position weighted alike.
    Token,
}

impl BlockLoss {
    /// The loss of `out` against `target` (rows of width d), a scalar
    /// tensor, relative to the target's energy.
    fn of(self, out: &Tensor, target: &Tensor) -> Result<Tensor, TrainError> {
        let diff = (out - target)?;
        Ok(match self {
            BlockLoss::Mse => {
                let energy = target.sqr()?.mean_all()?.to_scalar::<f32>()?;
                (diff.sqr()?.mean_all()? / f64::from(energy.max(1e-30)))?
            }
            BlockLoss::Token => {
                // Mean over tokens of |e|^2 / |y|^2: equal to Mse's figure
                // when every token has the same energy.
                let last = target.rank() - 1;
                let energy = (target.sqr()?.sum_keepdim(last)? + 1e-12)?;
                let per = diff.sqr()?.sum_keepdim(last)?;
                per.broadcast_div(&energy)?.mean_all()?
            }
        })
    }
}

impl Default for BlockOptions {
    fn default() -> Self {
        Self {
            seqs: 128,
            seq_len: 256,
            batch: 2,
            epochs: 2,
            lr_weights: 3e-3,
            lr_scales: 1e-4,
            lr_norms: 1e-2,
            warmup: 4,
            seed: 1,
            checkpoint: None,
            loss: BlockLoss::Mse,
        }
    }
}

impl BlockOptions {
    /// Optimizer steps per block.
    pub fn steps_per_block(&self) -> usize {
        self.epochs * self.seqs.div_ceil(self.batch.max(1))
    }

    fn lr_factor(&self, step: usize) -> f64 {
        let steps = self.steps_per_block();
        if step < self.warmup {
            return (step + 1) as f64 / self.warmup as f64;
        }
        let span = steps.saturating_sub(self.warmup).max(1) as f64;
        let t = ((step - self.warmup) as f64 / span).min(1.0);
        0.1 + 0.45 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Where a block-wise run stands.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BlockProgress {
    /// The block being trained.
    pub layer: usize,
    /// Blocks of the model.
    pub layers: usize,
    /// Steps done in this block.
    pub step: usize,
    /// Steps per block.
    pub steps: usize,
    /// Relative squared error of the last step (error / target energy).
    pub loss: f64,
    /// Tokens per second of this process's training steps.
    pub tokens_per_s: f64,
    /// This block just finished: its result.
    pub finished: Option<BlockResult>,
}

/// What training did to one block, measured on all calibration sequences.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BlockResult {
    /// The block.
    pub layer: usize,
    /// Relative squared error of its output before training.
    pub before: f64,
    /// ... and after.
    pub after: f64,
}

/// What a run did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BlockSummary {
    /// Blocks finished (all of them unless progress broke off).
    pub blocks: usize,
    /// The block this process started from (0 unless resumed).
    pub resumed_from: usize,
    /// Per block this process trained.
    pub results: Vec<BlockResult>,
    /// Tokens per second of this process's training steps.
    pub tokens_per_s: f64,
}

/// Train every block of `student` to reproduce `teacher`'s (an untrained
/// [`Student`] of the f32 model, rotated like the student) on windows of
/// `data`. `progress` is called after every step; when it breaks, the run
/// stops after checkpointing the finished blocks.
pub fn reconstruct(
    student: &Student,
    teacher: &Student,
    data: &[u32],
    opts: &BlockOptions,
    progress: &mut dyn FnMut(&BlockProgress) -> ControlFlow<()>,
) -> Result<BlockSummary, TrainError> {
    let (sc, tc) = (student.config(), teacher.config());
    if (sc.n_layers, sc.d_model, sc.vocab_size) != (tc.n_layers, tc.d_model, tc.vocab_size) {
        return Err(TrainError::Model(format!(
            "the teacher ({} layers, width {}, vocabulary {}) is not the student's model ({}, {}, {})",
            tc.n_layers, tc.d_model, tc.vocab_size, sc.n_layers, sc.d_model, sc.vocab_size
        )));
    }
    if !teacher.vars().is_empty() {
        return Err(TrainError::Model("the teacher must train nothing".into()));
    }
    if student.vars().is_empty() {
        return Err(TrainError::Model(
            "nothing to train: every target is off".into(),
        ));
    }
    if opts.seq_len < 2 || opts.batch == 0 || opts.seqs == 0 || opts.epochs == 0 {
        return Err(TrainError::Data(format!(
            "{} epochs over {} sequences of {} tokens in batches of {} is no run",
            opts.epochs, opts.seqs, opts.seq_len, opts.batch
        )));
    }
    let n_windows = data.len() / opts.seq_len;
    if n_windows < opts.seqs {
        return Err(TrainError::Data(format!(
            "{} tokens make {n_windows} windows of {}, fewer than the {} sequences asked for",
            data.len(),
            opts.seq_len,
            opts.seqs
        )));
    }
    let n_layers = sc.n_layers;
    let (t, d) = (opts.seq_len, sc.d_model);
    // The sequences: a seeded choice of windows.
    let mut order: Vec<usize> = (0..n_windows).collect();
    let mut rng = SplitMix::new(opts.seed);
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let tokens: Vec<u32> = order[..opts.seqs]
        .iter()
        .flat_map(|&w| data[w * t..(w + 1) * t].iter().copied())
        .collect();
    let fp = fingerprint(student, &tokens, opts);
    let mut adam = Adam::new(student);
    let mut start = 0;
    if let Some(path) = &opts.checkpoint {
        if path.exists() {
            start = load_checkpoint(path, student, None, &fp)?;
        }
    }
    let chunks: Vec<(usize, usize)> = (0..opts.seqs)
        .step_by(opts.batch)
        .map(|a| (a, opts.batch.min(opts.seqs - a)))
        .collect();
    // Which layers' K/V later layers read.
    let plan = student.plan();
    let read_later: Vec<bool> = (0..n_layers)
        .map(|l| (l + 1..n_layers).any(|m| plan.source(m) == l))
        .collect();
    // The residual streams entering the current block (seqs x len x d).
    let embed = |m: &Student| -> Result<Tensor, TrainError> {
        Ok(m.embed(&tokens)?.reshape((opts.seqs, t, d))?)
    };
    let mut xs = embed(student)?;
    let mut xt = embed(teacher)?;
    let mut kv: Vec<Option<(Tensor, Tensor)>> = vec![None; n_layers];
    let mut results = Vec::new();
    let (mut trained_tokens, mut train_secs) = (0usize, 0f64);
    let mut blocks = start;
    for l in 0..n_layers {
        // The teacher's output, the target.
        let (yt, _) = run_block(teacher, l, &xt, &chunks, t, None)?;
        if l < start {
            // Finished before a resume: replay its forward.
            let (ys, k) = run_block(student, l, &xs, &chunks, t, Some(&kv))?;
            if read_later[l] {
                kv[l] = k;
            }
            xs = ys;
            xt = yt;
            continue;
        }
        let before = rel_error(
            &run_block(student, l, &xs, &chunks, t, Some(&kv))?.0,
            &yt,
            opts.loss,
        )?;
        let steps = opts.steps_per_block();
        let per_epoch = chunks.len();
        let mut broke = false;
        for step in 0..steps {
            let epoch = step / per_epoch;
            let mut perm: Vec<usize> = (0..opts.seqs).collect();
            let mut rng = SplitMix::new(
                opts.seed ^ ((l as u64) << 32 | epoch as u64).wrapping_mul(0x9e3779b97f4a7c15),
            );
            for i in (1..perm.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                perm.swap(i, j);
            }
            let (a, n) = chunks[step % per_epoch];
            let idx: Vec<u32> = perm[a..a + n].iter().map(|&i| i as u32).collect();
            let tm = Instant::now();
            let idx_t = Tensor::from_vec(idx, n, xs.device())?;
            let x = xs.index_select(&idx_t, 0)?.reshape((n * t, d))?;
            let y = yt.index_select(&idx_t, 0)?.reshape((n * t, d))?;
            let w = student.window(n, t)?;
            let mut caches = batch_caches(&kv, Some(&idx_t))?;
            let out = student.block(l, &x, &w, &mut caches)?;
            let loss = opts.loss.of(&out, &y)?;
            let value = loss.to_scalar::<f32>()? as f64;
            let grads = loss.backward()?;
            let f = opts.lr_factor(step);
            adam.step(student, &grads, step + 1, |name| {
                f * if name.ends_with(".scales") {
                    opts.lr_scales
                } else if name.contains("norm") || name.ends_with(".rows") {
                    opts.lr_norms
                } else {
                    opts.lr_weights
                }
            })?;
            drop(grads);
            train_secs += tm.elapsed().as_secs_f64();
            trained_tokens += n * t;
            let flow = progress(&BlockProgress {
                layer: l,
                layers: n_layers,
                step: step + 1,
                steps,
                loss: value,
                tokens_per_s: trained_tokens as f64 / train_secs.max(1e-9),
                finished: None,
            });
            if flow.is_break() {
                broke = true;
                break;
            }
        }
        if broke {
            // The block is unfinished: the checkpoint keeps the blocks before
            // it (a resume retrains this one from its checkpointed values,
            // which an interrupted block has not changed on disk).
            break;
        }
        let (ys, k) = run_block(student, l, &xs, &chunks, t, Some(&kv))?;
        let after = rel_error(&ys, &yt, opts.loss)?;
        if read_later[l] {
            kv[l] = k;
        }
        xs = ys;
        xt = yt;
        blocks = l + 1;
        if let Some(path) = &opts.checkpoint {
            save_checkpoint(path, student, None, blocks, &fp)?;
        }
        let result = BlockResult {
            layer: l,
            before,
            after,
        };
        results.push(result);
        let flow = progress(&BlockProgress {
            layer: l,
            layers: n_layers,
            step: steps,
            steps,
            loss: after,
            tokens_per_s: trained_tokens as f64 / train_secs.max(1e-9),
            finished: Some(result),
        });
        if flow.is_break() {
            break;
        }
    }
    Ok(BlockSummary {
        blocks,
        resumed_from: start,
        results,
        tokens_per_s: trained_tokens as f64 / train_secs.max(1e-9),
    })
}

/// The caches of a batch: every stored layer's K/V, rows `idx` (or all).
fn batch_caches(
    kv: &[Option<(Tensor, Tensor)>],
    idx: Option<&Tensor>,
) -> Result<Vec<Option<(Tensor, Tensor)>>, TrainError> {
    kv.iter()
        .map(|c| {
            c.as_ref()
                .map(|(k, v)| -> Result<(Tensor, Tensor), TrainError> {
                    Ok(match idx {
                        Some(i) => (k.index_select(i, 0)?, v.index_select(i, 0)?),
                        None => (k.clone(), v.clone()),
                    })
                })
                .transpose()
        })
        .collect()
}

/// Block `l` of `m` on every sequence of `x` (seqs x len x d), in chunks,
/// without gradients: its output, and the K/V it wrote (when it owns K/V).
/// `kv` holds the stored K/V of earlier layers (None for the teacher, which
/// owns every layer's).
fn run_block(
    m: &Student,
    l: usize,
    x: &Tensor,
    chunks: &[(usize, usize)],
    t: usize,
    kv: Option<&[Option<(Tensor, Tensor)>]>,
) -> Result<(Tensor, Option<(Tensor, Tensor)>), TrainError> {
    let n_layers = m.config().n_layers;
    let d = x.dim(2)?;
    let (mut outs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for &(a, n) in chunks {
        let xb = x.narrow(0, a, n)?.reshape((n * t, d))?.detach();
        let w = m.window(n, t)?;
        let mut caches = match kv {
            Some(kv) => kv
                .iter()
                .map(|c| {
                    c.as_ref()
                        .map(|(k, v)| -> Result<(Tensor, Tensor), TrainError> {
                            Ok((k.narrow(0, a, n)?, v.narrow(0, a, n)?))
                        })
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![None; n_layers],
        };
        let y = m.block(l, &xb, &w, &mut caches)?.detach();
        outs.push(y.reshape((n, t, d))?);
        if m.plan().owns(l) {
            if let Some((k, v)) = caches[l].take() {
                ks.push(k.detach());
                vs.push(v.detach());
            }
        }
    }
    let kv_out = if ks.is_empty() {
        None
    } else {
        Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?))
    };
    Ok((Tensor::cat(&outs, 0)?, kv_out))
}

/// The loss of `a` against `b`, as a number.
fn rel_error(a: &Tensor, b: &Tensor, loss: BlockLoss) -> Result<f64, TrainError> {
    Ok(loss.of(a, b)?.to_scalar::<f32>()? as f64)
}

fn fingerprint(student: &Student, tokens: &[u32], opts: &BlockOptions) -> String {
    let c = student.config();
    let vars: Vec<String> = student
        .vars()
        .iter()
        .map(|(n, v)| format!("{n}{:?}", v.dims()))
        .collect();
    format!(
        "block-wise; layers {} d {} vocab {} kv {:?}; vars {}; data {} tokens {:016x}; seqs {} seq {} batch {} epochs {} seed {} lr {} {} {} warmup {} loss {:?}",
        c.n_layers,
        c.d_model,
        c.vocab_size,
        c.kv_source,
        vars.join(","),
        tokens.len(),
        data_hash(tokens),
        opts.seqs,
        opts.seq_len,
        opts.batch,
        opts.epochs,
        opts.seed,
        opts.lr_weights,
        opts.lr_scales,
        opts.lr_norms,
        opts.warmup,
        opts.loss
    )
}
