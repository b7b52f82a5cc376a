//! How two Q2 models differ: codes, sub-scales and row scales per matrix.
//! Run: `cargo run --release -p twain-examples --example code_diff -- A.twain B.twain`
use twain_quant::QuantFormat;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (ma, mb) = (twain_io::load_model(&a[0])?, twain_io::load_model(&a[1])?);
    let (mut codes, mut changed, mut subs, mut subs_changed, mut rows, mut rows_changed) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let mut other = 0usize;
    for (name, ta) in &ma.tensors {
        let Some(tb) = mb.tensors.get(name) else {
            continue;
        };
        let (ba, bb) = (ta.bytes()?, tb.bytes()?);
        if ta.format() != QuantFormat::Q2 {
            if ba != bb {
                other += 1;
                println!("{name}: {:?} differs", ta.format());
            }
            continue;
        }
        let cols = *ta.shape().last().unwrap();
        let nb = cols / 32;
        let row = 4 + 8 * nb + nb.div_ceil(2);
        let (mut c, mut s) = (0usize, 0usize);
        for (ra, rb) in ba.chunks(row).zip(bb.chunks(row)) {
            rows += 1;
            rows_changed += (ra[..4] != rb[..4]) as usize;
            for b in 0..nb {
                for j in 0..8 {
                    let (x, y) = (ra[4 + 8 * b + j], rb[4 + 8 * b + j]);
                    for k in 0..4 {
                        c += ((x >> (2 * k)) & 3 != (y >> (2 * k)) & 3) as usize;
                    }
                }
                let off = 4 + 8 * nb + b / 2;
                s += ((ra[off] >> (4 * (b % 2))) & 15 != (rb[off] >> (4 * (b % 2))) & 15) as usize;
            }
        }
        let n = ba.len() / row * nb * 32;
        codes += n;
        changed += c;
        subs += n / 32;
        subs_changed += s;
        if name.contains("layers.0.") || name.contains("layers.29.") {
            println!("{name}: {:.2} % codes changed", 100.0 * c as f64 / n as f64);
        }
    }
    println!(
        "codes {changed}/{codes} ({:.2} %), sub-scales {subs_changed}/{subs}, row scales {rows_changed}/{rows}, other tensors differing {other}",
        100.0 * changed as f64 / codes as f64
    );
    Ok(())
}
