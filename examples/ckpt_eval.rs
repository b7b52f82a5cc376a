//! Evaluate a `twain recover` checkpoint while its run goes on: the student
//! with the checkpoint's values, exported to twain's formats, against the
//! f32 teacher (mean KL divergence, perplexity, same top-1), next to the
//! model the run started from.
//!
//! Run: `cargo run --release -p twain-examples --example ckpt_eval -- STUDENT.twain TEACHER.gguf CKPT TEXT WINDOWS [OUT.twain]`

use twain_convert::calib::load_reference;
use twain_convert::eval::perplexity;
use twain_core::{Transformer, TransformerOptions};
use twain_train::{Student, Targets};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 5 {
        return Err("usage: ckpt_eval STUDENT TEACHER CKPT TEXT WINDOWS [OUT]".into());
    }
    let base = twain_io::load_model(&a[0])?;
    let teacher = load_reference(a[1].as_ref())?;
    let student = Student::new(&base, Targets::default())?;
    let step = twain_train::train::load_values(a[2].as_ref(), &student)?;
    let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&base)?;
    let tokens = tokenizer.encode(&std::fs::read_to_string(&a[3])?, false)?;
    let windows: usize = a[4].parse()?;
    let mut trained = base.clone();
    trained.tensors = twain_train::export::tensors(&student, &base)?;
    if let Some(out) = a.get(5) {
        twain_train::export::write_model(&student, &base, out.as_ref(), Default::default())?;
    }
    for (name, m) in [("start", base), (&*format!("step {step}"), trained)] {
        let t = Transformer::from_loaded(m, TransformerOptions::default())?;
        let r = perplexity(&t, Some(&teacher), &tokens, 512, Some(windows), |_, _| {})?;
        println!(
            "{name}: PPL {:.3} mean KLD {:.4} same top-1 {:.1} % ({} scored)",
            r.perplexity,
            r.mean_kld.unwrap_or(f64::NAN),
            100.0 * r.top1_agreement.unwrap_or(f64::NAN),
            r.scored
        );
    }
    Ok(())
}
