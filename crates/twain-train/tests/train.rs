//! The differentiable twain: its forward is twain-core's, its gradients are
//! right, distillation lowers the KL to the teacher, a resumed run equals an
//! uninterrupted one, the export is what was trained, bad input is a typed
//! error that loses no checkpoint.

use std::ops::ControlFlow;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use twain_convert::rotate::{rotate, RotateOptions};
use twain_convert::synthetic::{self, SplitMix};
use twain_convert::{convert, ConvertOptions, Preset};
use twain_core::{KvDtype, Transformer, TransformerOptions};
use twain_io::{LoadedModel, Tensor as IoTensor};
use twain_model::Model;
use twain_quant::{quantize, QuantFormat, QuantizeOptions};
use twain_train::fakequant::{encode_q2_row, fake_q2};
use twain_train::{train, Student, Targets, TrainError, TrainOptions};

fn f32_core(m: LoadedModel) -> Transformer {
    Transformer::from_loaded(m, TransformerOptions::default().kv_dtype(KvDtype::F32)).unwrap()
}

/// The model with every quantized tensor replaced by its f32 dequantization
/// (so twain-core runs the same weights without quantizing activations).
fn dequantized(m: &LoadedModel) -> LoadedModel {
    let mut out = m.clone();
    for (name, t) in &m.tensors {
        if t.format() != QuantFormat::F32 {
            let v = t.to_f32().unwrap();
            out.tensors.insert(
                name.clone(),
                IoTensor::from_f32(name.clone(), t.shape().to_vec(), v).unwrap(),
            );
        }
    }
    out
}

fn core_logits(core: &Transformer, tokens: &[u32], batch: usize) -> Vec<f32> {
    let len = tokens.len() / batch;
    let mut out = Vec::new();
    for s in tokens.chunks(len) {
        let mut st = core.new_state();
        out.extend(core.forward_all(&mut st, s).unwrap());
    }
    out
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tiny model of every feature the forward has: QK-norm, q/k/v bias,
/// interleaved RoPE, a 3:1 KV-sharing plan, all three rotations.
fn featureful(preset: Preset) -> LoadedModel {
    let mut c = synthetic::tiny_config(4);
    c.qk_norm = true;
    c.qkv_bias = true;
    c.rope_layout = twain_core::RopeLayout::Interleaved;
    let f32m = synthetic::random_model(&c, Preset::F32, 11).unwrap();
    let opts = ConvertOptions {
        kv_share: Some((3, 1)),
        ..Default::default()
    };
    let mut m = convert(f32m, Preset::F32, opts).unwrap();
    rotate(&mut m, &RotateOptions::default()).unwrap();
    if preset == Preset::F32 {
        m
    } else {
        convert(m, preset, ConvertOptions::default()).unwrap()
    }
}

#[test]
fn fake_quantization_is_twains_dequantization_exactly() {
    let (rows, cols) = (5, 96);
    let mut rng = SplitMix::new(3);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.1).collect();
    let m = quantize(QuantFormat::Q2, rows, cols, &w, &QuantizeOptions::default()).unwrap();
    let m = m.as_ref();
    let deq = m.dequantize();
    let mut d = Vec::new();
    let mut s = Vec::new();
    for r in 0..rows {
        let row = m.row_data(r).unwrap();
        d.push(twain_quant::grid::q2_row_scale(row).unwrap());
        s.extend(twain_quant::grid::group_scales(QuantFormat::Q2, row, cols).unwrap());
    }
    let d = Arc::new(d);
    let dev = Device::Cpu;
    // The stored codes and scales: the forward is the file's values.
    let wt = Tensor::from_vec(deq.clone(), (rows, cols), &dev).unwrap();
    let st = Tensor::from_vec(s.clone(), (rows, cols / 32), &dev).unwrap();
    let fq = fake_q2(&wt, &st, d.clone()).unwrap().flatten_all().unwrap();
    assert_eq!(fq.to_vec1::<f32>().unwrap(), deq);
    // Moved latent weights and scales: the re-encoded row dequantizes to
    // exactly what the forward computed.
    let w2: Vec<f32> = w.iter().map(|v| v + 0.02 * rng.uniform()).collect();
    let s2: Vec<f32> = s.iter().map(|v| v * (1.0 + 0.3 * rng.uniform())).collect();
    let wt = Tensor::from_vec(w2.clone(), (rows, cols), &dev).unwrap();
    let st = Tensor::from_vec(s2.clone(), (rows, cols / 32), &dev).unwrap();
    let fq = fake_q2(&wt, &st, d)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let nb = cols / 32;
    let mut bytes = Vec::new();
    for r in 0..rows {
        bytes.extend(
            encode_q2_row(
                m.row_data(r).unwrap(),
                &w2[r * cols..(r + 1) * cols],
                &s2[r * nb..(r + 1) * nb],
            )
            .unwrap(),
        );
    }
    let back = twain_quant::QMatrix::from_bytes(QuantFormat::Q2, rows, cols, &bytes).unwrap();
    assert_eq!(back.as_ref().dequantize(), fq);
    assert_ne!(fq, deq, "the moved weights changed some codes");
}

#[test]
fn fake_quantization_gradients_are_straight_through_and_lsq() {
    let (rows, cols) = (2, 64);
    let mut rng = SplitMix::new(5);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform()).collect();
    let d = Arc::new(vec![0.05f32, 0.04]);
    let s: Vec<f32> = vec![0.3, 0.5, 0.2, 0.4];
    let dev = Device::Cpu;
    let wv = candle_core::Var::from_vec(w.clone(), (rows, cols), &dev).unwrap();
    let sv = candle_core::Var::from_vec(s.clone(), (rows, 2), &dev).unwrap();
    let g: Vec<f32> = (0..rows * cols).map(|_| rng.uniform()).collect();
    let gt = Tensor::from_vec(g.clone(), (rows, cols), &dev).unwrap();
    let y = fake_q2(wv.as_tensor(), sv.as_tensor(), d.clone()).unwrap();
    let loss = (y * gt).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let dw = grads
        .get(wv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let ds = grads
        .get(sv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut clipped = 0;
    for r in 0..rows {
        for b in 0..2 {
            let sc = twain_train::fakequant::stored_scale(d[r], s[r * 2 + b]);
            let mut want_ds = 0.0f32;
            for c in b * 32..(b + 1) * 32 {
                let i = r * cols + c;
                let u = w[i] / sc;
                let level = (u + 2.0).clamp(0.0, 3.0).floor() - 1.5;
                let level = level.min(1.5);
                if u.abs() <= 2.0 {
                    assert_eq!(dw[i], g[i]);
                    want_ds += g[i] * (level - u);
                } else {
                    clipped += 1;
                    assert_eq!(dw[i], 0.0);
                    want_ds += g[i] * level;
                }
            }
            assert!(
                (ds[r * 2 + b] - want_ds).abs() < 1e-4,
                "{} vs {want_ds}",
                ds[r * 2 + b]
            );
        }
    }
    assert!(clipped > 0, "some weights lie outside the grid");
}

#[test]
fn training_forward_matches_twain_core() {
    for preset in [Preset::F32, Preset::Afm] {
        let m = featureful(preset);
        let student = Student::new(&m, Targets::none()).unwrap();
        let toks = tokens(2 * 40, m.config.vocab_size, 7);
        let got = student.forward(&toks, 2).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = core_logits(&f32_core(dequantized(&m)), &toks, 2);
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let e = max_diff(&got, &want);
        assert!(
            e < 1e-4 * scale.max(1.0),
            "{preset:?}: max |diff| {e} (logits up to {scale})"
        );
    }
}

/// KL(teacher || student) summed over positions: the loss trained on.
fn loss_of(student: &Student, teacher: &Transformer, toks: &[u32], batch: usize) -> f64 {
    let len = toks.len() / batch;
    let seqs: Vec<&[u32]> = toks.chunks(len).collect();
    twain_train::train::distillation_loss(student, teacher, &seqs)
        .unwrap()
        .1
}

#[test]
fn gradients_match_finite_differences() {
    // An f32 model training its norm gains: every op of the backward (norms,
    // RoPE, attention with the KV plan, rotations, the fixed linears, the
    // soft cross-entropy) lies on the path of these gradients.
    let m = featureful(Preset::F32);
    let teacher = f32_core(synthetic::random_model(&m.config, Preset::F32, 99).unwrap());
    let mut t = Targets::none();
    t.norms = true;
    let student = Student::new(&m, t).unwrap();
    let toks = tokens(2 * 24, m.config.vocab_size, 8);
    let seqs: Vec<&[u32]> = toks.chunks(24).collect();
    let (loss, _) = twain_train::train::distillation_loss(&student, &teacher, &seqs).unwrap();
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for name in [
        "blk.0.attn_norm.weight",
        "blk.2.ffn_norm.weight",
        "blk.3.attn_q_norm.weight",
        "blk.0.attn_k_norm.weight",
        "output_norm.weight",
    ] {
        let var = &student.vars()[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in [0usize, 5, 11] {
            let h = 1e-2f32;
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, base.len(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(&student, &teacher, &toks, 2)
            };
            let fd = ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
            var.set(&Tensor::from_vec(base.clone(), base.len(), &Device::Cpu).unwrap())
                .unwrap();
            let tol = 2e-3 + 2e-2 * fd.abs();
            assert!(
                (g[i] - fd).abs() < tol,
                "{name}[{i}]: autodiff {} vs finite differences {fd}",
                g[i]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
}

thread_local! {
    /// The rotated f32 model of the last `tiny_pair` (to spread latents from).
    static SOURCE: std::cell::RefCell<Option<LoadedModel>> = const { std::cell::RefCell::new(None) };
}

fn tiny_pair() -> (Transformer, LoadedModel, Vec<u32>) {
    let c = synthetic::tiny_config(3);
    let f32m = synthetic::random_model(&c, Preset::F32, 21).unwrap();
    let teacher = f32_core(f32m.clone());
    let mut r = f32m;
    rotate(&mut r, &RotateOptions::default()).unwrap();
    let student = convert(r.clone(), Preset::Afm, ConvertOptions::default()).unwrap();
    SOURCE.with(|s| *s.borrow_mut() = Some(r));
    // Text the teacher writes itself (greedy from a few seeds would repeat:
    // sample from its distribution with a fixed seed).
    let mut rng = SplitMix::new(4);
    let mut data = Vec::new();
    for _ in 0..48 {
        let mut st = teacher.new_state();
        let mut t = (rng.next_u64() % c.vocab_size as u64) as u32;
        let mut logits = vec![0.0f32; c.vocab_size];
        for _ in 0..32 {
            data.push(t);
            teacher.forward(&mut st, &[t], &mut logits).unwrap();
            let m = logits.iter().cloned().fold(f32::MIN, f32::max);
            let p: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
            let z: f32 = p.iter().sum();
            let mut u = (rng.uniform() * 0.5 + 0.5) * z;
            t = 0;
            for (i, &pi) in p.iter().enumerate() {
                u -= pi;
                if u <= 0.0 {
                    t = i as u32;
                    break;
                }
            }
        }
    }
    (teacher, student, data)
}

fn opts(steps: usize) -> TrainOptions {
    let mut o = TrainOptions::default();
    o.steps = steps;
    o.seq_len = 32;
    o.batch = 2;
    o.lr_weights = 5e-3;
    o.lr_scales = 2e-2;
    o.lr_norms = 1e-2;
    o.warmup = 5;
    o
}

#[test]
fn distillation_lowers_the_kl_and_the_export_computes_it() {
    let (teacher, base, data) = tiny_pair();
    let student = Student::new(&base, Targets::default()).unwrap();
    let spread = SOURCE.with(|s| student.spread_latent(s.borrow().as_ref().unwrap()).unwrap());
    assert_eq!(spread, 3 * 7);
    let (train_data, held) = data.split_at(data.len() - 64);
    // Spreading moves no weight out of its bin: the forward is the file's.
    assert_eq!(
        loss_of(&student, &teacher, held, 2),
        loss_of(
            &Student::new(&base, Targets::default()).unwrap(),
            &teacher,
            held,
            2
        )
    );
    let before = loss_of(&student, &teacher, held, 2);
    let before_train = loss_of(&student, &teacher, &train_data[..256], 2);
    let s = train(&student, &teacher, train_data, &opts(300), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let after = loss_of(&student, &teacher, held, 2);
    let after_train = loss_of(&student, &teacher, &train_data[..256], 2);
    eprintln!("train {before_train} -> {after_train}, held-out {before} -> {after}");
    assert_eq!(s.steps, 300);
    assert!(after < 0.6 * before, "held-out KL {before} -> {after}");
    // The exported file holds what was trained: twain-core on it computes
    // the training forward's logits (same weights; twain-core quantizes
    // activations for Q2 matmuls, so compare the dequantized weights).
    let tensors = twain_train::export::tensors(&student, &base).unwrap();
    let mut exported = base.clone();
    exported.tensors = tensors;
    let want = student
        .forward(held, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let got = core_logits(&f32_core(dequantized(&exported)), held, 2);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    assert!(max_diff(&got, &want) < 1e-4 * scale.max(1.0));
    // And the file round trip keeps it.
    let dir = std::env::temp_dir().join(format!("twain-train-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recovered.twain");
    twain_train::export::write_model(&student, &base, &path, Default::default()).unwrap();
    let loaded = twain_io::load_model(&path).unwrap();
    let got = core_logits(&f32_core(dequantized(&loaded)), held, 2);
    assert!(max_diff(&got, &want) < 1e-4 * scale.max(1.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let (teacher, base, data) = tiny_pair();
    let dir = std::env::temp_dir().join(format!("twain-train-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let values = |s: &Student| -> Vec<Vec<f32>> {
        s.vars()
            .values()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    };
    let whole = Student::new(&base, Targets::default()).unwrap();
    let mut o = opts(12);
    o.checkpoint = Some(dir.join("whole.ckpt"));
    train(&whole, &teacher, &data, &o, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();

    // Stopped after 5 steps (a checkpoint every step, as if killed after the
    // fifth), then a fresh process resumes.
    let mut o = opts(12);
    o.checkpoint = Some(dir.join("split.ckpt"));
    o.checkpoint_every = std::time::Duration::ZERO;
    let first = Student::new(&base, Targets::default()).unwrap();
    let s = train(&first, &teacher, &data, &o, &mut |p| {
        if p.step == 5 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(s.steps, 5);
    let resumed = Student::new(&base, Targets::default()).unwrap();
    let s = train(&resumed, &teacher, &data, &o, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!((s.resumed_from, s.steps), (5, 12));
    assert_eq!(values(&resumed), values(&whole));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_typed_error_and_keeps_the_checkpoint() {
    let (teacher, base, data) = tiny_pair();
    let student = Student::new(&base, Targets::default()).unwrap();
    let go = &mut |_: &twain_train::Progress| ControlFlow::Continue(());
    // No data, or too little for one batch.
    let e = train(&student, &teacher, &data[..40], &opts(3), go).unwrap_err();
    assert!(matches!(e, TrainError::Data(_)), "{e}");
    // A token id outside the vocabulary.
    let mut bad = data.clone();
    bad[3] = 100_000;
    assert!(student.forward(&bad[..64], 2).is_err());
    // Nothing to train.
    let frozen = Student::new(&base, Targets::none()).unwrap();
    assert!(matches!(
        train(&frozen, &teacher, &data, &opts(3), go),
        Err(TrainError::Model(_))
    ));

    let dir = std::env::temp_dir().join(format!("twain-train-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("run.ckpt");
    let mut o = opts(3);
    o.checkpoint = Some(ckpt.clone());
    train(&student, &teacher, &data, &o, go).unwrap();
    assert!(std::fs::read(&ckpt).is_ok_and(|b| !b.is_empty()));
    // A checkpoint of another model (other shapes) or other settings.
    let other = synthetic::random_model(&synthetic::tiny_config(2), Preset::Afm, 5).unwrap();
    let other = Student::new(&other, Targets::default()).unwrap();
    let e = train(&other, &teacher, &data, &o, go).unwrap_err();
    assert!(matches!(e, TrainError::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("another run"), "{e}");
    let mut o2 = o.clone();
    o2.seed = 2;
    assert!(matches!(
        train(&student, &teacher, &data, &o2, go),
        Err(TrainError::Checkpoint { .. })
    ));
    // A write that fails (here: the checkpoint's directory turns into a
    // file mid-run, so no temporary file can be created, as on a full disk)
    // is an error and the earlier checkpoint stays as it was.
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let ckpt2 = sub.join("full-disk.ckpt");
    let mut o3 = opts(5);
    o3.checkpoint = Some(ckpt2.clone());
    o3.checkpoint_every = std::time::Duration::ZERO;
    let fresh = Student::new(&base, Targets::default()).unwrap();
    let mut kept = Vec::new();
    let moved = dir.join("sub-moved");
    let e = train(&fresh, &teacher, &data, &o3, &mut |p| {
        if p.step == 2 {
            kept = std::fs::read(&ckpt2).unwrap();
            std::fs::rename(&sub, &moved).unwrap();
            std::fs::write(&sub, b"a file").unwrap();
        }
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(matches!(e, TrainError::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("earlier checkpoint is kept"), "{e}");
    let old = moved.join("full-disk.ckpt");
    assert_eq!(twain_train::Checkpoint::peek(&old).unwrap().step, 2);
    assert_eq!(std::fs::read(&old).unwrap(), kept);
    // A symlink planted at the checkpoint's name is replaced, not followed:
    // the file it pointed at is untouched, and no temporary file is left.
    #[cfg(unix)]
    {
        let linked = dir.join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        let victim = dir.join("victim.txt");
        std::fs::write(&victim, b"not yours").unwrap();
        let ckpt3 = linked.join("run.ckpt");
        std::os::unix::fs::symlink(&victim, &ckpt3).unwrap();
        let mut o4 = opts(3);
        o4.checkpoint = Some(ckpt3.clone());
        let s4 = Student::new(&base, Targets::default()).unwrap();
        // It reads as no checkpoint: a typed error, and the file is untouched.
        let e = train(&s4, &teacher, &data, &o4, go).unwrap_err();
        assert!(matches!(e, TrainError::Checkpoint { .. }), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
        // A dangling link: the run starts afresh and the link's target is
        // never created.
        std::fs::remove_file(&ckpt3).unwrap();
        let absent = dir.join("absent.txt");
        std::os::unix::fs::symlink(&absent, &ckpt3).unwrap();
        // A link planted at a guessable temporary name is not followed either.
        std::os::unix::fs::symlink(&victim, linked.join("run.partial")).unwrap();
        train(&s4, &teacher, &data, &o4, go).unwrap();
        assert!(!absent.exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
        assert!(!std::fs::symlink_metadata(&ckpt3)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(twain_train::Checkpoint::peek(&ckpt3).unwrap().step, 3);
        let mut names: Vec<_> = std::fs::read_dir(&linked)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["run.ckpt", "run.partial"].map(std::ffi::OsString::from)
        );
    }
    // A file that is not a checkpoint.
    std::fs::write(&ckpt, b"not a checkpoint").unwrap();
    assert!(matches!(
        train(&student, &teacher, &data, &o, go),
        Err(TrainError::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_fused_q2_linear_equals_fake_quantization_then_matmul() {
    let (n, rows, cols) = (7, 5, 96);
    let mut rng = SplitMix::new(9);
    let dev = Device::Cpu;
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.1).collect();
    let m = quantize(QuantFormat::Q2, rows, cols, &w, &QuantizeOptions::default()).unwrap();
    let (mut d, mut s) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let row = m.as_ref().row_data(r).unwrap();
        d.push(twain_quant::grid::q2_row_scale(row).unwrap());
        s.extend(twain_quant::grid::group_scales(QuantFormat::Q2, row, cols).unwrap());
    }
    let d = Arc::new(d);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform()).collect();
    let g: Vec<f32> = (0..n * rows).map(|_| rng.uniform()).collect();
    let run = |fused: bool| {
        let xv = candle_core::Var::from_vec(x.clone(), (n, cols), &dev).unwrap();
        let wv = candle_core::Var::from_vec(w.clone(), (rows, cols), &dev).unwrap();
        let sv = candle_core::Var::from_vec(s.clone(), (rows, cols / 32), &dev).unwrap();
        let y = if fused {
            twain_train::fakequant::q2_linear(
                xv.as_tensor(),
                wv.as_tensor(),
                sv.as_tensor(),
                d.clone(),
            )
            .unwrap()
        } else {
            let q = fake_q2(wv.as_tensor(), sv.as_tensor(), d.clone()).unwrap();
            xv.as_tensor().matmul(&q.t().unwrap()).unwrap()
        };
        let gt = Tensor::from_vec(g.clone(), (n, rows), &dev).unwrap();
        let grads = (y.clone() * gt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        [
            v(&y),
            v(grads.get(xv.as_tensor()).unwrap()),
            v(grads.get(wv.as_tensor()).unwrap()),
            v(grads.get(sv.as_tensor()).unwrap()),
        ]
    };
    let (a, b) = (run(true), run(false));
    for (i, what) in [
        "output",
        "input gradient",
        "weight gradient",
        "scale gradient",
    ]
    .iter()
    .enumerate()
    {
        let scale = b[i].iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(max_diff(&a[i], &b[i]) < 1e-4 * scale.max(1.0), "{what}");
    }
}

/// A random Q2 matrix: its row scales, stored group scales, codes, and the
/// latent weights the student starts from (its dequantization).
fn q2_matrix(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u8>, Vec<f32>) {
    let mut rng = SplitMix::new(seed);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.1).collect();
    let m = quantize(QuantFormat::Q2, rows, cols, &w, &QuantizeOptions::default()).unwrap();
    let m = m.as_ref();
    let (mut d, mut s, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rows {
        let row = m.row_data(r).unwrap();
        d.push(twain_quant::grid::q2_row_scale(row).unwrap());
        s.extend(twain_quant::grid::group_scales(QuantFormat::Q2, row, cols).unwrap());
        codes.extend(twain_quant::grid::codes(QuantFormat::Q2, row, cols).unwrap());
    }
    (d, s, codes, m.dequantize())
}

#[test]
fn frozen_code_scale_gradients_match_finite_differences() {
    let (n, rows, cols) = (6, 3, 96);
    let (d, mut s, codes, lat) = q2_matrix(rows, cols, 17);
    let nb = cols / 32;
    // One group stored at scale 0: zero, and no gradient (as in LSQ).
    s[1] = 0.0;
    let d = Arc::new(d);
    let codes = Arc::new(codes);
    let dev = Device::Cpu;
    let mut rng = SplitMix::new(18);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform()).collect();
    let g: Vec<f32> = (0..n * rows).map(|_| rng.uniform()).collect();
    let xt = Tensor::from_vec(x.clone(), (n, cols), &dev).unwrap();
    let gt = Tensor::from_vec(g, (n, rows), &dev).unwrap();
    // The loss sum(g * x Q^T), fused or as fake quantization then matmul.
    let loss = |w: &Tensor, s: &Tensor, fused: bool| -> Tensor {
        let y = if fused {
            twain_train::fakequant::q2_linear_frozen(&xt, w, s, d.clone(), codes.clone()).unwrap()
        } else {
            let q = twain_train::fakequant::fake_q2_frozen(w, s, d.clone(), codes.clone()).unwrap();
            xt.matmul(&q.t().unwrap()).unwrap()
        };
        (y * &gt).unwrap().sum_all().unwrap()
    };
    let value = |s: &[f32]| -> f64 {
        let w = Tensor::from_vec(lat.clone(), (rows, cols), &dev).unwrap();
        let st = Tensor::from_vec(s.to_vec(), (rows, nb), &dev).unwrap();
        loss(&w, &st, true).to_scalar::<f32>().unwrap() as f64
    };
    // The latent weights do not matter: the codes are frozen.
    {
        let noise: Vec<f32> = (0..rows * cols).map(|_| rng.uniform()).collect();
        let w = Tensor::from_vec(noise, (rows, cols), &dev).unwrap();
        let st = Tensor::from_vec(s.clone(), (rows, nb), &dev).unwrap();
        assert_eq!(
            loss(&w, &st, true).to_scalar::<f32>().unwrap() as f64,
            value(&s)
        );
    }
    for fused in [true, false] {
        let wv = candle_core::Var::from_vec(lat.clone(), (rows, cols), &dev).unwrap();
        let sv = candle_core::Var::from_vec(s.clone(), (rows, nb), &dev).unwrap();
        let grads = loss(wv.as_tensor(), sv.as_tensor(), fused)
            .backward()
            .unwrap();
        assert!(
            grads.get(wv.as_tensor()).is_none(),
            "no weight gradient with frozen codes"
        );
        let ds = grads
            .get(sv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut checked = 0;
        for r in 0..rows {
            for b in 0..nb {
                let i = r * nb + b;
                let k = (s[i] / d[r]).round();
                if s[i] == 0.0 {
                    assert_eq!(ds[i], 0.0, "group {i} has scale 0");
                    continue;
                }
                // The value is linear in the stored scale, which moves in
                // steps of the row scale: a difference over one step is
                // exact (up to f32 rounding).
                let (lo, hi) = (
                    if k > 0.0 { -1.0 } else { 0.0 },
                    if k < 15.0 { 1.0 } else { 0.0 },
                );
                let at = |delta: f32| {
                    let mut v = s.clone();
                    v[i] += delta * d[r];
                    value(&v)
                };
                let fd = ((at(hi) - at(lo)) / ((hi - lo) as f64 * d[r] as f64)) as f32;
                let tol = 1e-3 * (1.0 + fd.abs());
                assert!(
                    (ds[i] - fd).abs() < tol,
                    "group {i} (fused {fused}): autodiff {} vs finite differences {fd}",
                    ds[i]
                );
                checked += 1;
            }
        }
        assert_eq!(checked, rows * nb - 1);
    }
}

#[test]
fn frozen_codes_stay_bit_identical_through_training_and_export() {
    let (teacher, base, data) = tiny_pair();
    let mut targets = Targets::none();
    targets.scales = true;
    targets.norms = true;
    targets.rows = true;
    let student = Student::new(&base, targets).unwrap();
    // Without weights nothing spreads: there are no latent weights to train.
    let spread = SOURCE.with(|s| student.spread_latent(s.borrow().as_ref().unwrap()).unwrap());
    assert_eq!(spread, 0);
    assert!(student
        .vars()
        .keys()
        .all(|n| !n.ends_with(".weight") || n.contains("norm")));
    let (train_data, held) = data.split_at(data.len() - 64);
    // Before any step the forward is the file's.
    let before = loss_of(&student, &teacher, held, 2);
    assert_eq!(
        before,
        loss_of(
            &Student::new(&base, Targets::default()).unwrap(),
            &teacher,
            held,
            2
        )
    );
    let mut o = opts(60);
    // Large scale steps, so that scales move by whole sub-scale steps (and
    // re-rounding the latent weights would flip codes).
    o.lr_scales = 0.2;
    train(&student, &teacher, train_data, &o, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let after = loss_of(&student, &teacher, held, 2);
    eprintln!("frozen codes: held-out KL {before} -> {after}");
    assert!(after < before, "held-out KL {before} -> {after}");
    let tensors = twain_train::export::tensors(&student, &base).unwrap();
    let (mut q2, mut scales_changed, mut gains_changed, mut flips) = (0, 0, 0, 0);
    for (name, t) in &base.tensors {
        if t.format() != QuantFormat::Q2 {
            continue;
        }
        q2 += 1;
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let (m0, m1) = (t.matrix().unwrap(), tensors[name].matrix().unwrap());
        for r in 0..rows {
            let (a, b) = (m0.row_data(r).unwrap(), m1.row_data(r).unwrap());
            assert_eq!(
                twain_quant::grid::codes(QuantFormat::Q2, a, cols).unwrap(),
                twain_quant::grid::codes(QuantFormat::Q2, b, cols).unwrap(),
                "{name} row {r}: the codes changed"
            );
            let (k0, k1) = (
                twain_quant::grid::group_scales(QuantFormat::Q2, a, cols).unwrap(),
                twain_quant::grid::group_scales(QuantFormat::Q2, b, cols).unwrap(),
            );
            let (d0, d1) = (
                twain_quant::grid::q2_row_scale(a).unwrap(),
                twain_quant::grid::q2_row_scale(b).unwrap(),
            );
            // Sub-scales compare as multiples of each row's scale.
            scales_changed += k0
                .iter()
                .zip(&k1)
                .filter(|(x, y)| (*x / d0).round() != (*y / d1).round())
                .count();
            // Re-rounding the stored values under the new scales (what
            // training the weights would do) would have flipped codes.
            let stored = twain_quant::grid::codes(QuantFormat::Q2, a, cols).unwrap();
            let mut deq = vec![0.0f32; cols];
            m0.dequantize_row(r, &mut deq).unwrap();
            flips += (0..cols)
                .filter(|&c| {
                    let sc = d0 * (k1[c / 32] / d1).round();
                    sc != 0.0 && twain_quant::grid::code(QuantFormat::Q2, sc, deq[c]) != stored[c]
                })
                .count();
            gains_changed += usize::from(d0 != d1);
        }
    }
    assert_eq!(q2, 3 * 7);
    eprintln!(
        "{scales_changed} group scales and {gains_changed} row gains changed, \
         re-rounding would flip {flips} codes"
    );
    assert!(scales_changed > 0, "no group scale moved");
    assert!(
        flips > 0,
        "the scales moved too little to test frozen codes"
    );
    assert!(gains_changed > 0, "no row gain moved");
    // And the exported file computes what was trained.
    let mut exported = base.clone();
    exported.tensors = tensors;
    let want = student
        .forward(held, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let got = core_logits(&f32_core(dequantized(&exported)), held, 2);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    assert!(max_diff(&got, &want) < 1e-4 * scale.max(1.0));
}
