//! Presets: which twain format each kind of tensor gets.

use twain_quant::QuantFormat;

/// Bits per weight the `afm-mix` preset may spend on the decoder linears.
pub const AFM_MIX_BUDGET: f64 = 2.6;

/// A recipe: which format each kind of tensor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The reference system's recipe: 2-bit decoder linears, 4-bit embeddings.
    Afm,
    /// `afm` with the decoder linears that measure most sensitive kept at 4
    /// bits, within [`AFM_MIX_BUDGET`] bits per weight on the decoder (all
    /// scales counted); chosen by calibration ([`crate::ptq`]).
    AfmMix,
    /// 4-bit decoder linears and embeddings.
    Q4,
    /// int8 decoder linears and embeddings.
    Q8,
    /// Everything in f16 (norms stay f32).
    F16,
    /// Everything in f32.
    F32,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 6] = [
        Preset::Afm,
        Preset::AfmMix,
        Preset::Q4,
        Preset::Q8,
        Preset::F16,
        Preset::F32,
    ];

    /// Name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Afm => "afm",
            Preset::AfmMix => "afm-mix",
            Preset::Q4 => "q4",
            Preset::Q8 => "q8",
            Preset::F16 => "f16",
            Preset::F32 => "f32",
        }
    }

    /// Inverse of [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Format of the embedding table (and tied LM head).
    pub fn embedding_format(self) -> QuantFormat {
        match self {
            Preset::Afm | Preset::AfmMix | Preset::Q4 => QuantFormat::Q4,
            Preset::Q8 => QuantFormat::Q8,
            Preset::F16 => QuantFormat::F16,
            Preset::F32 => QuantFormat::F32,
        }
    }

    /// Format of decoder linear weights.
    pub fn linear_format(self) -> QuantFormat {
        match self {
            Preset::Afm | Preset::AfmMix => QuantFormat::Q2,
            Preset::Q4 => QuantFormat::Q4,
            Preset::Q8 => QuantFormat::Q8,
            Preset::F16 => QuantFormat::F16,
            Preset::F32 => QuantFormat::F32,
        }
    }

    /// The format `preset` gives a tensor with this canonical name and shape.
    pub fn format_for(self, name: &str, shape: &[usize]) -> QuantFormat {
        if shape.len() != 2 || name.ends_with(".bias") || name.contains("norm") {
            return QuantFormat::F32;
        }
        let f = if name == "token_embd.weight" || name == "output.weight" {
            self.embedding_format()
        } else {
            self.linear_format()
        };
        // Fall back to a wider format for rows the block size cannot split.
        let cols = shape[1];
        for cand in [f, QuantFormat::Q8, QuantFormat::F16] {
            if cand.row_bytes(cols).is_ok() {
                return cand;
            }
        }
        QuantFormat::F32
    }
}
