//! The trained model back in twain's formats: every fake-quantized matrix
//! re-encoded to Q2 with the scales and codes the training forward used (so
//! twain-core computes what was trained; frozen codes are written exactly as
//! they were read), the trained norm gains as f32.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use twain_io::{LoadedModel, NativeModel, Tensor};
use twain_quant::blocks::QK;
use twain_quant::{QMatrix, QuantFormat};

use crate::fakequant::{encode_q2_row, encode_q2_row_frozen};
use crate::model::Q2Matrix;
use crate::{Student, TrainError};

/// The tensors of `base` with the student's trained values in place: the
/// Q2 matrices re-encoded, the norm gains replaced. Every other tensor is
/// `base`'s as it is.
pub fn tensors(
    student: &Student,
    base: &LoadedModel,
) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let mut out = base.tensors.clone();
    for Q2Matrix {
        name,
        w,
        s,
        a,
        codes,
    } in student.q2_matrices()
    {
        let t = base.tensor(&name)?;
        let (rows, cols) = w.dims2()?;
        if t.format() != QuantFormat::Q2 || t.shape() != [rows, cols] {
            return Err(TrainError::Model(format!(
                "{name}: the base holds a {} {:?} tensor, the student a Q2 {rows}x{cols}",
                t.format(),
                t.shape()
            )));
        }
        let m = t.matrix()?;
        let sv = s.flatten_all()?.to_vec1::<f32>()?;
        let nb = cols / QK;
        let rows_bytes: Vec<Vec<u8>> = match codes {
            // Frozen codes: exactly the stored ones, with the new scales.
            Some(codes) => (0..rows)
                .into_par_iter()
                .map(|r| {
                    encode_q2_row_frozen(
                        m.row_data(r)?,
                        &codes[r * cols..(r + 1) * cols],
                        &sv[r * nb..(r + 1) * nb],
                    )
                })
                .collect::<Result<_, _>>()?,
            None => {
                let wv = w.flatten_all()?.to_vec1::<f32>()?;
                (0..rows)
                    .into_par_iter()
                    .map(|r| {
                        encode_q2_row(
                            m.row_data(r)?,
                            &wv[r * cols..(r + 1) * cols],
                            &sv[r * nb..(r + 1) * nb],
                        )
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let mut bytes: Vec<u8> = rows_bytes.concat();
        if let Some(a) = a {
            // The row gain goes into the row's f32 scale: every value of the
            // row is d * k * code, so d -> a d multiplies the row by a.
            let av = a.flatten_all()?.to_vec1::<f32>()?;
            let rb = bytes.len() / rows;
            for (r, g) in av.iter().enumerate() {
                let at = r * rb;
                let d =
                    f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                bytes[at..at + 4].copy_from_slice(&(d * g).to_le_bytes());
            }
        }
        let q = QMatrix::from_bytes(QuantFormat::Q2, rows, cols, &bytes)?;
        out.insert(
            name.clone(),
            Tensor::from_qmatrix(name, vec![rows, cols], q)?,
        );
    }
    for (name, g) in student.norms() {
        let v = g.flatten_all()?.to_vec1::<f32>()?;
        let shape = vec![v.len()];
        out.insert(name.clone(), Tensor::from_f32(name, shape, v)?);
    }
    Ok(out)
}

/// Write the trained model as a native twain file at `path`, with `base`'s
/// tokenizer and template and `provenance` (keys starting `twain.`) added.
pub fn write_model(
    student: &Student,
    base: &LoadedModel,
    path: &Path,
    provenance: BTreeMap<String, String>,
) -> Result<u64, TrainError> {
    let tensors = tensors(student, base)?;
    let mut native = NativeModel::from_loaded(base);
    native.tensors = &tensors;
    native.provenance.extend(provenance);
    Ok(twain_io::write_native(path, &native, &mut |_| {})?)
}
