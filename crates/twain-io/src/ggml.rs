//! ggml tensor types and their block decoders (dequantization to f32).
//!
//! Written from the block layouts of ggml (`ggml-common.h`): every block starts at a
//! byte boundary and is read with explicit little-endian loads, so the data needs no
//! particular alignment.

use half::{bf16, f16};

/// A ggml element type as stored in GGUF tensor infos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float (id 0).
    F32,
    /// IEEE half (id 1).
    F16,
    /// 4-bit, scale, offset 8 (id 2).
    Q4_0,
    /// 4-bit, scale and min (id 3).
    Q4_1,
    /// 5-bit, scale, offset 16 (id 6).
    Q5_0,
    /// 5-bit, scale and min (id 7).
    Q5_1,
    /// 8-bit, scale (id 8).
    Q8_0,
    /// 2-bit k-quant (id 10).
    Q2K,
    /// 3-bit k-quant (id 11).
    Q3K,
    /// 4-bit k-quant (id 12).
    Q4K,
    /// 5-bit k-quant (id 13).
    Q5K,
    /// 6-bit k-quant (id 14).
    Q6K,
    /// 8-bit k-quant (id 15).
    Q8K,
    /// i8 (id 24).
    I8,
    /// i16 (id 25).
    I16,
    /// i32 (id 26).
    I32,
    /// f64 (id 28).
    F64,
    /// bfloat16 (id 30).
    BF16,
    /// A type id this reader recognises but cannot decode (Q8_1, IQ*, TQ*, MXFP4, I64, ...).
    Other(u32),
}

impl GgmlType {
    /// The type with ggml id `id`; `None` for ids ggml never assigned (or removed: 4, 5).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            28 => F64,
            30 => BF16,
            9 | 16..=23 | 27 | 29 | 34 | 35 | 39..=41 => Other(id),
            _ => return None,
        })
    }

    /// The ggml id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            F64 => 28,
            BF16 => 30,
            Other(id) => id,
        }
    }

    /// ggml's name, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            F64 => "F64",
            BF16 => "BF16",
            Other(9) => "Q8_1",
            Other(16) => "IQ2_XXS",
            Other(17) => "IQ2_XS",
            Other(18) => "IQ3_XXS",
            Other(19) => "IQ1_S",
            Other(20) => "IQ4_NL",
            Other(21) => "IQ3_S",
            Other(22) => "IQ2_S",
            Other(23) => "IQ4_XS",
            Other(27) => "I64",
            Other(29) => "IQ1_M",
            Other(34) => "TQ1_0",
            Other(35) => "TQ2_0",
            Other(39) => "MXFP4",
            Other(40) => "NVFP4",
            Other(41) => "Q1_0",
            Other(_) => "unknown",
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
            Other(9) | Other(20) | Other(39) => 32,
            Other(40) => 64,
            Other(41) => 128,
            Other(27) => 1,
            Other(_) => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            Other(9) => 36,
            Other(16) => 66,
            Other(17) => 74,
            Other(18) => 98,
            Other(19) => 50,
            Other(20) => 18,
            Other(21) => 110,
            Other(22) => 82,
            Other(23) => 136,
            Other(27) => 8,
            Other(29) => 56,
            Other(34) => 54,
            Other(35) => 66,
            Other(39) => 17,
            Other(40) => 36,
            Other(41) => 18,
            Other(_) => 1,
        }
    }

    /// Whether [`dequantize`] can decode this type.
    pub fn is_supported(self) -> bool {
        !matches!(self, GgmlType::Other(_))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `n` elements of type `ty` from `data` (exactly `n / block_len` blocks).
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (bl, bb) = (ty.block_len(), ty.block_bytes());
    if !ty.is_supported() {
        return Err(format!(
            "ggml type {} (id {}) is not supported",
            ty.name(),
            ty.id()
        ));
    }
    if !n.is_multiple_of(bl) || (n / bl).checked_mul(bb) != Some(data.len()) {
        return Err(format!(
            "{} bytes do not hold {n} elements of type {}",
            data.len(),
            ty.name()
        ));
    }
    let mut out = vec![0f32; n];
    let blocks = data.chunks_exact(bb).zip(out.chunks_exact_mut(bl));
    use GgmlType::*;
    match ty {
        F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        F64 => blocks.for_each(|(b, y)| {
            y[0] = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        I8 => blocks.for_each(|(b, y)| y[0] = b[0] as i8 as f32),
        I16 => blocks.for_each(|(b, y)| y[0] = i16::from_le_bytes([b[0], b[1]]) as f32),
        I32 => blocks.for_each(|(b, y)| y[0] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        Q2K => blocks.for_each(|(b, y)| q2_k(b, y)),
        Q3K => blocks.for_each(|(b, y)| q3_k(b, y)),
        Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
        Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
        Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
        Q8K => blocks.for_each(|(b, y)| q8_k(b, y)),
        Other(_) => unreachable!("rejected above"),
    }
    Ok(out)
}

/// Q4_0: f16 d, 16 bytes of nibbles; low nibbles are elements 0..16, high ones 16..32; x = (q - 8) d.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = q d + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0: f16 d, u32 of fifth bits (bit j for element j), 16 bytes of nibbles; x = (q - 16) d.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((q & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; x = q d + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((q & 0xF) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0: f16 d, 32 i8; x = q d.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = q as i8 as f32 * d;
    }
}

/// Q8_K: f32 d, 256 i8, 16 i16 block sums (unused here); x = q d.
fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (j, &q) in b[4..260].iter().enumerate() {
        y[j] = q as i8 as f32 * d;
    }
}

/// Q2_K: 16 scale bytes (low nibble scale, high nibble min, one per 16 elements),
/// 64 bytes of 2-bit codes, f16 d, f16 dmin. Each 128-element half uses 32 code bytes:
/// bit pair `s` of byte `l` is element 32 s + l of that half.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for s in 0..4 {
            for sub in 0..2 {
                let sc = scales[8 * half + 2 * s + sub];
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    let code = (q[16 * sub + l] >> (2 * s)) & 3;
                    y[128 * half + 32 * s + 16 * sub + l] = dl * code as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K: 32 bytes of high-bit masks, 64 bytes of 2-bit codes, 12 bytes holding sixteen
/// 6-bit scales (offset 32), f16 d. Code layout as Q2_K; the high bit of element
/// 128 h + 32 s + l (l < 32) is bit `4 h + s` of `hmask[l]`; a clear bit subtracts 4.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sb) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let scale = |i: usize| -> f32 {
        let low = if i < 8 { sb[i] & 0xF } else { sb[i - 8] >> 4 };
        let high = (sb[8 + i % 4] >> (2 * (i / 4))) & 3;
        ((low | (high << 4)) as i32 - 32) as f32
    };
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for s in 0..4 {
            let bit = 1u8 << (4 * half + s);
            for sub in 0..2 {
                let dl = d * scale(8 * half + 2 * s + sub);
                for l in 0..16 {
                    let i = 16 * sub + l;
                    let code =
                        ((q[i] >> (2 * s)) & 3) as i32 - if hmask[i] & bit != 0 { 0 } else { 4 };
                    y[128 * half + 32 * s + i] = dl * code as f32;
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in 12 bytes (Q4_K, Q5_K).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32, 128 bytes of
/// nibbles; each 64-element chunk uses 32 bytes: low nibbles first, then high nibbles.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            y[64 * c + l] = d * s1 * (q[l] & 0xF) as f32 - dmin * m1;
            y[64 * c + 32 + l] = d * s2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits: element 64 c + l takes bit 2c of qh[l],
/// element 64 c + 32 + l bit 2c + 1.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let q = &qs[32 * c..32 * c + 32];
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            y[64 * c + l] = d * s1 * ((q[l] & 0xF) | h1) as f32 - dmin * m1;
            y[64 * c + 32 + l] = d * s2 * ((q[l] >> 4) | h2) as f32 - dmin * m2;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 i8 scales, f16 d;
/// x = d * scale * (q - 32). Per 128-element half: ql[64], qh[32], scales[8].
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let yy = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            yy[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            yy[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            yy[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            yy[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
