//! A small deterministic mutator: xorshift64* randomness, bit flips, byte inserts and
//! deletes, splices with another input, interesting integers written over the bytes.

/// Integers that sit on boundaries parsers get wrong (lengths, counts, offsets, types).
pub const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    7,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0xFFFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
];

/// Texts that sit on boundaries text parsers get wrong.
pub const INTERESTING_TEXT: [&str; 12] = [
    "4294967295",
    "-1",
    "1e308",
    "18446744073709551616",
    "null",
    "{}",
    "[]",
    "\"\"",
    "{{",
    "{%",
    "\\u0000",
    "$ref",
];

/// xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; 0 is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545_F491_4F6C_DD1D | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1 / `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Applies one random mutation to `data`; `other` is a second input to splice from.
pub fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.below(10) {
        // Flip one bit.
        0 | 1 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Set a random byte.
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        // Insert random bytes.
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(i..i, bytes);
        }
        // Delete a range.
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            data.drain(i..i + n);
        }
        // Truncate.
        5 if len > 0 => data.truncate(rng.below(len)),
        // Write an interesting integer (1, 2, 4 or 8 bytes, little-endian).
        6 | 7 if len > 0 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.below(4)].min(len);
            let i = rng.below(len - width + 1);
            data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        // Overwrite or insert an interesting text.
        8 => {
            let t = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].as_bytes();
            let i = rng.below(len + 1);
            if rng.one_in(2) {
                let end = (i + t.len()).min(len);
                data.splice(i..end, t.iter().copied());
            } else {
                data.splice(i..i, t.iter().copied());
            }
        }
        // Splice: a piece of `other` over a piece of `data`, or a duplicated chunk.
        _ => {
            let src: &[u8] = if other.is_empty() || rng.one_in(3) {
                &data[..]
            } else {
                other
            };
            if src.is_empty() {
                return;
            }
            let a = rng.below(src.len());
            let n = 1 + rng.below((src.len() - a).min(256));
            let piece = src[a..a + n].to_vec();
            let i = rng.below(len + 1);
            if rng.one_in(2) {
                let end = (i + piece.len()).min(len);
                data.splice(i..end, piece);
            } else {
                data.splice(i..i, piece);
            }
        }
    }
}

/// `data` after 1 to 4 random mutations.
pub fn mutate(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut out, other);
    }
    out
}

/// Numbers that sit on boundaries configs get wrong (sizes, counts, ids, factors).
const INTERESTING_NUMBERS: [f64; 14] = [
    0.0,
    -1.0,
    1.0,
    2.0,
    3.0,
    65536.0,
    4_294_967_295.0,
    4_294_967_296.0,
    9_007_199_254_740_993.0,
    1.8446744073709552e19,
    1e308,
    -1e308,
    0.5,
    1e-300,
];

fn interesting_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::Value;
    match rng.below(6) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => Value::String(INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].into()),
        3 => Value::from(u64::MAX >> rng.below(64)),
        4 => Value::from(-(rng.below(1 << 20) as i64)),
        _ => {
            serde_json::Number::from_f64(INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())])
                .map_or(Value::Null, Value::Number)
        }
    }
}

/// Paths to every node of `v` (keys and indices), root first.
fn nodes(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                path.push(k.clone());
                nodes(x, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(i.to_string());
                nodes(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(
    v: &'a mut serde_json::Value,
    path: &[String],
) -> Option<&'a mut serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get_mut(p)?,
            serde_json::Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Mutates a JSON document as a tree (values replaced by boundary values, members removed,
/// subtrees copied elsewhere, arrays grown); `None` when `data` is not JSON.
pub fn mutate_json(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(data).ok()?;
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        nodes(&v, &mut Vec::new(), &mut all);
        let target = all[rng.below(all.len())].clone();
        let source = all[rng.below(all.len())].clone();
        let copy = node_mut(&mut v, &source).map(|x| x.clone());
        let Some(node) = node_mut(&mut v, &target) else {
            continue;
        };
        match rng.below(5) {
            0 | 1 => *node = interesting_value(rng),
            2 => match node {
                serde_json::Value::Object(m) if !m.is_empty() => {
                    let k = m
                        .keys()
                        .nth(rng.below(m.len()))
                        .cloned()
                        .unwrap_or_default();
                    m.remove(&k);
                }
                serde_json::Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.below(a.len()));
                }
                _ => *node = interesting_value(rng),
            },
            3 => {
                if let Some(c) = copy {
                    // Deep copies nest the document into itself (bounded: a few levels).
                    if c.to_string().len() < 1 << 14 {
                        *node = c;
                    }
                }
            }
            _ => match node {
                serde_json::Value::Array(a) if !a.is_empty() => {
                    let x = a[rng.below(a.len())].clone();
                    for _ in 0..1 + rng.below(4) {
                        a.push(x.clone());
                    }
                }
                serde_json::Value::Object(m) => {
                    let key = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].to_string();
                    m.insert(key, interesting_value(rng));
                }
                _ => *node = interesting_value(rng),
            },
        }
    }
    serde_json::to_vec_pretty(&v).ok()
}

fn interesting_meta(rng: &mut Rng, old: &twain_io::MetaValue) -> twain_io::MetaValue {
    use twain_io::MetaValue as M;
    let int = INTERESTING[rng.below(INTERESTING.len())];
    match old {
        M::U8(_) => M::U8(int as u8),
        M::I8(_) => M::I8(int as i8),
        M::U16(_) => M::U16(int as u16),
        M::I16(_) => M::I16(int as i16),
        M::U32(_) => M::U32(int as u32),
        M::I32(_) => M::I32(int as i32),
        M::U64(_) => M::U64(int),
        M::I64(_) => M::I64(int as i64),
        M::F32(_) => M::F32(INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())] as f32),
        M::F64(_) => M::F64(INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())]),
        M::Bool(b) => M::Bool(!b),
        M::String(s) => match rng.below(3) {
            0 => M::String(String::new()),
            1 => M::String(INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].into()),
            _ => M::String(s.repeat(2)),
        },
        M::Array(a) => match rng.below(4) {
            0 => M::Array(a[..rng.below(a.len() + 1)].to_vec()),
            1 if !a.is_empty() => {
                let mut a = a.clone();
                let i = rng.below(a.len());
                a[i] = interesting_meta(rng, &a[i]);
                M::Array(a)
            }
            2 if !a.is_empty() => {
                let mut a = a.clone();
                let x = a[rng.below(a.len())].clone();
                a.extend(std::iter::repeat_n(x, 1 + rng.below(8)));
                M::Array(a)
            }
            _ => M::Array(Vec::new()),
        },
    }
}

/// Mutates a GGUF file's metadata (values set to boundary values, keys dropped or retyped)
/// and rewrites it with its tensors; `None` when `data` is not a GGUF file.
pub fn mutate_gguf(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let g = twain_io::GgufFile::from_bytes("mutate.gguf", data).ok()?;
    let mut meta: Vec<(String, twain_io::MetaValue)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if meta.is_empty() {
        return None;
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(meta.len());
        match rng.below(6) {
            0 => {
                meta.remove(i);
                if meta.is_empty() {
                    break;
                }
            }
            1 => meta[i].1 = twain_io::MetaValue::U64(INTERESTING[rng.below(INTERESTING.len())]),
            2 => meta[i].1 = twain_io::MetaValue::String("x".into()),
            _ => meta[i].1 = interesting_meta(rng, &meta[i].1),
        }
    }
    let tensors: Vec<twain_io::gguf::GgufTensorData<'_>> = g
        .tensors()
        .iter()
        .map(|t| twain_io::gguf::GgufTensorData {
            name: &t.name,
            ggml_type: t.ggml_type,
            dims: t.dims.clone(),
            data: g.tensor_data(t),
        })
        .collect();
    let meta: Vec<(&str, twain_io::MetaValue)> =
        meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    twain_io::gguf::write_gguf(&meta, &tensors).ok()
}

/// A mutation that keeps the input's structure when it can: JSON documents (also the first
/// file of a two-file input) and GGUF metadata are mutated as trees half of the time, the
/// rest byte-wise ([`mutate`]).
pub fn mutate_structured(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    if rng.one_in(2) {
        if data.starts_with(b"GGUF") {
            if let Some(m) = mutate_gguf(rng, data) {
                return m;
            }
        } else {
            let (first, second) = crate::split(data);
            if !second.is_empty() && rng.one_in(2) {
                if let Some(m) = mutate_safetensors_header(rng, second) {
                    return crate::join(first, &m);
                }
            }
            if let Some(m) = mutate_json(rng, first) {
                return if second.is_empty() && !data.ends_with(crate::SPLIT) {
                    m
                } else {
                    crate::join(&m, second)
                };
            }
        }
    }
    mutate(rng, data, other)
}

/// Mutates the JSON header of a safetensors file (dtypes, shapes, offsets, metadata) as a
/// tree and keeps the data; `None` when it has no JSON header.
pub fn mutate_safetensors_header(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(data.get(..8)?.try_into().ok()?)).ok()?;
    let header = data.get(8..8usize.checked_add(n)?)?;
    let new = mutate_json(rng, header)?;
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&new);
    out.extend_from_slice(&data[8 + n..]);
    Some(out)
}
