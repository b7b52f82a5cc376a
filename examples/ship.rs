//! Make the trained parameters twain ships (`models/`): a recovered model
//! with the embedding every user's conversion reproduces, its pack, and a
//! variant's patch against the pack.
//!
//! ```sh
//! # the recovered model as users will get it (the embedding re-made), and its pack
//! cargo run --release -p twain-examples --example ship -- embed RECOVERED.twain SOURCE.gguf OUT.twain
//! cargo run --release -p twain-examples --example ship -- pack OUT.twain SOURCE.gguf PACK.twain
//! # a variant trained from the pack's model, as a patch against the pack
//! cargo run --release -p twain-examples --example ship -- patch PACK.twain SOURCE.gguf VARIANT.twain OUT.patch
//! ```

use std::path::Path;
use twain_convert::recovered::{assemble, pack_id, with_reproducible_embedding, write_pack};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ship embed RECOVERED SOURCE OUT | pack MODEL SOURCE PACK | patch PACK SOURCE VARIANT OUT";
    match (a.first().map(String::as_str), a.len()) {
        (Some("embed"), 4) => {
            // The LM head's input statistics on the calibration text, as
            // the conversion weighs the embedding's rounding by them.
            let source = twain_io::load_model(&a[2])?;
            let tokenizer = twain_tokenizer::Tokenizer::from_loaded(&source)?;
            let tokens = twain_convert::calib::kjv_chat_calibration_tokens(&tokenizer)?;
            let f32m = twain_convert::calib::load_reference(a[2].as_ref())?;
            let h = twain_convert::hessian::collect(&f32m, &tokens, 512, |_, _| {})?;
            let w = h
                .get(twain_convert::recovered::EMBEDDING)
                .ok_or("no statistics of the LM head input")?
                .mean_square();
            let m = with_reproducible_embedding(twain_io::load_model(&a[1])?, &source, Some(&w))?;
            let n = twain_io::write_native(
                &a[3],
                &twain_io::NativeModel::from_loaded(&m),
                &mut |_| {},
            )?;
            println!("wrote {} ({n} bytes)", a[3]);
        }
        (Some("pack"), 4) => {
            let source = twain_io::load_model(&a[2])?;
            let m = twain_io::load_model(&a[1])?;
            let n = write_pack(&m, &source, Path::new(&a[3]))?;
            println!(
                "wrote {} ({n} bytes), id {}",
                a[3],
                pack_id(Path::new(&a[3]))?
            );
        }
        (Some("patch"), 5) => {
            let source = twain_io::load_model(&a[2])?;
            let base = assemble(Path::new(&a[1]), &source)?;
            let variant = twain_io::load_model(&a[3])?;
            let s = twain_io::write_patch(
                &base,
                &variant,
                &pack_id(Path::new(&a[1]))?,
                Path::new(&a[4]),
            )?;
            println!(
                "wrote {} ({} bytes): {} of {} bytes changed, {} tensors whole, {} removed",
                a[4], s.file_bytes, s.changed_bytes, s.kept_bytes, s.full, s.removed
            );
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
