//! [`Tokenizer`]: text <-> token ids over a `tokenizers` pipeline.

use std::str::FromStr;

use crate::byte_level;
use crate::error::{Result, TokenizerError};
use crate::gguf::{self, GgufVocab, TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL};
pub use twain_model::SpecialTokens;

/// Pieces that end a turn in the chat formats twain knows, most specific first. Used to find
/// the end-of-turn token when the file does not name it (as llama.cpp does).
pub(crate) const END_OF_TURN_PIECES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|end_of_turn|>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
    "<EOT>",
    "<|endoftext|>",
    "<|end_of_text|>",
];
const BOS_PIECES: &[&str] = &[
    "<|begin_of_text|>",
    "<s>",
    "<bos>",
    "<|startoftext|>",
    "<|endoftext|>",
];
const EOS_PIECES: &[&str] = &[
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
];

/// Ids a tokenizer.json may leave unused beyond twice its entry count (see [`max_id_table`]).
pub const ID_SLACK: usize = 1024;

/// Largest id table a tokenizer.json with `entries` vocabulary entries (model vocab plus added
/// tokens) may need: every id must be below `2 * entries + ID_SLACK`. Real files are dense
/// (ids `0..entries`); the bound keeps the table within a small multiple of the file.
pub fn max_id_table(entries: usize) -> usize {
    entries.saturating_mul(2).saturating_add(ID_SLACK)
}

/// How a vocabulary piece spells its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceForm {
    /// GPT-2 byte alphabet (`Ġ` for a space).
    ByteLevel,
    /// SentencePiece: `▁` for a space, `<0xXX>` for a raw byte.
    SentencePiece,
    /// The piece is the text.
    Plain,
}

/// How [`Tokenizer::decode`] turns ids into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoding {
    /// Concatenate [`Tokenizer::token_bytes`] (exactly what the pipeline's decoder does, but it
    /// also covers ids the `tokenizers` model lost to duplicate pieces).
    Bytes {
        /// SentencePiece with a prepended `▁`: drop one leading space of the text.
        strip_leading_space: bool,
    },
    /// The pipeline's own decoder (tokenizer.json with an arbitrary decoder).
    Pipeline,
}

#[derive(Debug, Clone)]
struct Piece {
    bytes: Box<[u8]>,
    special: bool,
}

/// A tokenizer: text to token ids and back, the bytes of every token, and the special ids.
///
/// Built from GGUF metadata ([`Tokenizer::from_gguf`]), from a tokenizer.json
/// ([`Tokenizer::from_json`]) or from whatever a loaded model carries
/// ([`Tokenizer::from_loaded`]). Immutable after construction, `Send + Sync`; no method panics.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// By id; `None` for ids no token uses.
    pieces: Vec<Option<Piece>>,
    decoding: Decoding,
    specials: SpecialTokens,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.pieces.len())
            .field("specials", &self.specials)
            .field("add_bos", &self.add_bos)
            .field("decoding", &self.decoding)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes in its `tokenizer.ggml.*` keys.
    pub fn from_gguf(gguf: &twain_io::GgufFile) -> Result<Tokenizer> {
        Self::from_gguf_vocab(&GgufVocab::from_metadata(gguf)?)
    }

    /// Build a tokenizer from GGUF tokenizer facts already read (or made by hand).
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer> {
        let built = gguf::build(v)?;
        let form = if v.model == "llama" {
            PieceForm::SentencePiece
        } else {
            PieceForm::ByteLevel
        };
        let pieces = v
            .tokens
            .iter()
            .enumerate()
            .map(|(id, text)| {
                let ty = v.token_type(id);
                let bytes = match ty {
                    TOKEN_TYPE_CONTROL | gguf::TOKEN_TYPE_USER_DEFINED => text.as_bytes().to_vec(),
                    TOKEN_TYPE_BYTE => sentencepiece_byte(text)
                        .map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
                    _ => piece_bytes(text, form),
                };
                Some(Piece {
                    bytes: bytes.into_boxed_slice(),
                    special: ty == TOKEN_TYPE_CONTROL,
                })
            })
            .collect();
        let mut tok = Tokenizer {
            inner: built.inner,
            pieces,
            decoding: Decoding::Bytes {
                strip_leading_space: built.strip_leading_space,
            },
            specials: SpecialTokens {
                bos: v.bos,
                eos: v.eos,
                eot: v.eot,
                eom: v.eom,
                unk: v.unk,
                pad: v.pad,
                extra_stops: Vec::new(),
            },
            add_bos: built.add_bos,
        };
        if tok.specials.eot.is_none() {
            tok.specials.eot = tok.find_piece(END_OF_TURN_PIECES);
        }
        if tok.specials.eom.is_none() {
            tok.specials.eom = tok.find_piece(&["<|eom_id|>"]);
        }
        Ok(tok)
    }

    /// Build a tokenizer from the text of a Hugging Face `tokenizer.json`.
    ///
    /// tokenizer.json does not name BOS/EOS; they are taken from the post-processor (what
    /// `encode(text, true)` adds around the text) and else from well-known pieces (`<s>`,
    /// `</s>`, `<|endoftext|>`, ...). Correct them with [`Tokenizer::set_special_tokens`] when
    /// the model's config says otherwise.
    pub fn from_json(json: &str) -> Result<Tokenizer> {
        // `tokenizers` panics ("Helper") when the `decoder` value is malformed JSON (a
        // truncated file): check the JSON itself first (found by fuzz/, docs/reliability.md).
        let value = serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| TokenizerError::Json(format!("tokenizer.json: {e}")))?;
        check_bpe_prefix(&value)?;
        let inner = tokenizers::Tokenizer::from_str(json)
            .map_err(|e| TokenizerError::Json(e.to_string()))?;
        Self::from_pipeline(inner)
    }

    /// Wrap an already built `tokenizers` pipeline.
    pub fn from_pipeline(inner: tokenizers::Tokenizer) -> Result<Tokenizer> {
        let form = pipeline_piece_form(&inner);
        let added = inner.get_added_tokens_decoder();
        let vocab = inner.get_vocab(true);
        // The id table is sized by the largest id: bound it by the number of entries so an id
        // near 2^32 is an error, not a 100 GB allocation (docs/reliability.md).
        let limit = max_id_table(vocab.len());
        if let Some((text, &id)) = vocab.iter().find(|(_, &id)| id as usize >= limit) {
            return Err(TokenizerError::Json(format!(
                "token {:?} has id {id}, but the vocabulary has only {} entries \
                 (ids must be < 2 * entries + {ID_SLACK} = {limit})",
                text.chars().take(64).collect::<String>(),
                vocab.len()
            )));
        }
        let len = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut pieces: Vec<Option<Piece>> = vec![None; len];
        for (text, id) in &vocab {
            let piece = match added.get(id) {
                Some(t) => Piece {
                    bytes: t.content.as_bytes().into(),
                    special: t.special,
                },
                None => Piece {
                    bytes: piece_bytes(text, form).into_boxed_slice(),
                    special: false,
                },
            };
            pieces[*id as usize] = Some(piece);
        }
        let mut tok = Tokenizer {
            inner,
            pieces,
            decoding: Decoding::Pipeline,
            specials: SpecialTokens::default(),
            add_bos: false,
        };
        // What the post-processor puts before and after a text.
        let (prefix, suffix) = tok.added_around("a");
        let added_bos = prefix.last().copied();
        let added_eos = suffix.first().copied();
        tok.add_bos = added_bos.is_some();
        tok.specials = SpecialTokens {
            bos: added_bos.or_else(|| tok.find_piece(BOS_PIECES)),
            eos: added_eos.or_else(|| tok.find_piece(EOS_PIECES)),
            eot: tok.find_piece(END_OF_TURN_PIECES),
            eom: tok.find_piece(&["<|eom_id|>"]),
            unk: tok.find_piece(&["<unk>", "[UNK]"]),
            pad: tok.find_piece(&["<pad>", "[PAD]", "<|pad|>"]),
            extra_stops: Vec::new(),
        };
        Ok(tok)
    }

    /// The tokenizer of a loaded model: its tokenizer.json when it has one, else its GGUF
    /// tokenizer metadata. Special ids named in the GGUF metadata win over guesses; when the
    /// file names no end-of-turn token, the chat template's end marker (e.g. `<|im_end|>`) is
    /// used.
    pub fn from_loaded(model: &twain_io::LoadedModel) -> Result<Tokenizer> {
        let gguf_vocab = match &model.gguf {
            Some(g) if g.get("tokenizer.ggml.model").is_some() => {
                Some(GgufVocab::from_metadata(g)?)
            }
            _ => None,
        };
        let mut tok = match (&model.tokenizer_json, &gguf_vocab) {
            (Some(json), _) => {
                let mut tok = Self::from_json(json)?;
                if let Some(v) = &gguf_vocab {
                    // Only ids this vocabulary has.
                    let known = |id: Option<u32>| id.filter(|&id| tok.piece(id).is_ok());
                    let s = tok.specials.clone();
                    let specials = SpecialTokens {
                        bos: known(v.bos).or(s.bos),
                        eos: known(v.eos).or(s.eos),
                        eot: known(v.eot).or(s.eot),
                        eom: known(v.eom).or(s.eom),
                        unk: known(v.unk).or(s.unk),
                        pad: known(v.pad).or(s.pad),
                        extra_stops: s.extra_stops,
                    };
                    tok.specials = specials;
                }
                tok
            }
            (None, Some(v)) => Self::from_gguf_vocab(v)?,
            (None, None) => return Err(TokenizerError::NoTokenizer),
        };
        let explicit_eot = gguf_vocab.as_ref().and_then(|v| v.eot);
        let template = model.chat_template.as_deref().or_else(|| {
            model
                .gguf
                .as_ref()
                .and_then(|g| g.get("tokenizer.chat_template"))
                .and_then(|v| v.as_str())
        });
        if let (None, Some(template)) = (explicit_eot, template) {
            if let Some(id) = tok.end_marker_of(template) {
                tok.specials.eot = Some(id);
            }
        }
        Ok(tok)
    }

    /// Serialise to the Hugging Face tokenizer.json format (what [`Tokenizer::from_json`]
    /// reads), e.g. to store the tokenizer inside a converted model file.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(TokenizerError::backend)
    }

    /// Token ids of `text`. Special-token text in the input (`<|im_start|>`) becomes its one id.
    /// `add_special` adds what the model adds around a sequence (BOS when the file says so,
    /// see [`Tokenizer::adds_bos`]).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(TokenizerError::backend)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`. Special tokens are left out when `skip_special`. Bytes that do not
    /// form UTF-8 (a token sequence cut inside a character) become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        for &id in ids {
            self.piece(id)?;
        }
        match self.decoding {
            Decoding::Pipeline => self
                .inner
                .decode(ids, skip_special)
                .map_err(TokenizerError::backend),
            Decoding::Bytes {
                strip_leading_space,
            } => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                for &id in ids {
                    let p = self.piece(id)?;
                    if !(skip_special && p.special) {
                        bytes.extend_from_slice(&p.bytes);
                    }
                }
                let text = String::from_utf8_lossy(&bytes);
                let text = if strip_leading_space {
                    text.strip_prefix(' ').unwrap_or(&text)
                } else {
                    &text
                };
                Ok(text.to_owned())
            }
        }
    }

    /// A decoder that turns ids into text one at a time, never splitting a UTF-8 character.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            skip_special,
            pending: Vec::new(),
            at_start: matches!(
                self.decoding,
                Decoding::Bytes {
                    strip_leading_space: true
                }
            ),
        }
    }

    /// The raw bytes token `id` stands for (`" the"` for `Ġthe`, `[0x0A]` for `<0x0A>`, the
    /// text of a special token). A token may hold part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        Ok(&self.piece(id)?.bytes)
    }

    /// Number of token ids (one more than the largest id). A model's embedding table may be
    /// larger (padded); ids past this have no token.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The id of a vocabulary piece (as spelled in the vocabulary: `"Ġthe"`, `"<|im_end|>"`).
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// The vocabulary piece of `id` (as spelled in the vocabulary).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special (control) token, left out by `decode(.., true)`.
    pub fn is_special(&self, id: u32) -> bool {
        self.piece(id).is_ok_and(|p| p.special)
    }

    /// The ids with a role in generation.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.specials
    }

    /// Replace the special ids (e.g. from the model's config). Ids outside the vocabulary are
    /// refused.
    pub fn set_special_tokens(&mut self, specials: SpecialTokens) -> Result<()> {
        for id in specials.ids() {
            self.piece(id)?;
        }
        self.specials = specials;
        Ok(())
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.specials.bos
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> Option<u32> {
        self.specials.eos
    }

    /// End-of-turn id (`<|im_end|>` for ChatML).
    pub fn eot_id(&self) -> Option<u32> {
        self.specials.eot
    }

    /// Every id that ends generation: EOS, end of turn, end of message; no duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.specials.stop_ids()
    }

    /// The text of the BOS token (for chat templates' `bos_token`).
    pub fn bos_token(&self) -> Option<String> {
        self.specials.bos.and_then(|id| self.piece_text(id))
    }

    /// The text of the EOS token (for chat templates' `eos_token`).
    pub fn eos_token(&self) -> Option<String> {
        self.specials.eos.and_then(|id| self.piece_text(id))
    }

    /// Whether `encode(.., true)` puts BOS first.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The underlying `tokenizers` pipeline (e.g. for llguidance's `toktrie_hf_tokenizers`).
    pub fn pipeline(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The end-of-turn token a chat template writes, if it writes a known one.
    pub fn end_marker_of(&self, template: &str) -> Option<u32> {
        END_OF_TURN_PIECES
            .iter()
            .filter(|p| template.contains(*p))
            .find_map(|p| self.token_to_id(p))
    }

    /// The ids `encode(text, true)` puts before and after those of `encode(text, false)`.
    fn added_around(&self, text: &str) -> (Vec<u32>, Vec<u32>) {
        let (Ok(plain), Ok(full)) = (self.encode(text, false), self.encode(text, true)) else {
            return (Vec::new(), Vec::new());
        };
        if plain.is_empty() || plain.len() > full.len() {
            return (Vec::new(), Vec::new());
        }
        match full
            .windows(plain.len())
            .position(|w| w == plain.as_slice())
        {
            Some(at) => (full[..at].to_vec(), full[at + plain.len()..].to_vec()),
            None => (Vec::new(), Vec::new()),
        }
    }

    fn piece(&self, id: u32) -> Result<&Piece> {
        self.pieces
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or(TokenizerError::UnknownId {
                id,
                vocab_size: self.pieces.len(),
            })
    }

    fn piece_text(&self, id: u32) -> Option<String> {
        self.piece(id)
            .ok()
            .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
    }

    fn find_piece(&self, candidates: &[&str]) -> Option<u32> {
        candidates.iter().find_map(|p| self.token_to_id(p))
    }
}

/// Turns ids into text one token at a time, holding back bytes until they complete a UTF-8
/// character. Made by [`Tokenizer::decode_stream`].
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
    /// SentencePiece: the first emitted space is the prepended one and is dropped.
    at_start: bool,
}

impl DecodeStream<'_> {
    /// Add one token; returns the text it completes (may be empty).
    pub fn step(&mut self, id: u32) -> Result<String> {
        let piece = self.tokenizer.piece(id)?;
        if !(self.skip_special && piece.special) {
            self.pending.extend_from_slice(&piece.bytes);
        }
        Ok(self.drain(false))
    }

    /// Flush what is held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, all: bool) -> String {
        if self.at_start && !self.pending.is_empty() {
            if self.pending[0] == b' ' {
                self.pending.remove(0);
            }
            self.at_start = false;
        }
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // The prefix is valid UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + bad;
                        }
                        None if all => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = self.pending.len();
                            break;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

/// The byte of a SentencePiece byte piece `<0xXX>`.
fn sentencepiece_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn piece_bytes(piece: &str, form: PieceForm) -> Vec<u8> {
    match form {
        PieceForm::ByteLevel => {
            byte_level::piece_to_bytes(piece).unwrap_or_else(|| piece.as_bytes().to_vec())
        }
        PieceForm::SentencePiece => match sentencepiece_byte(piece) {
            Some(b) => vec![b],
            None => piece.replace('▁', " ").into_bytes(),
        },
        PieceForm::Plain => piece.as_bytes().to_vec(),
    }
}

/// Guess how a tokenizer.json spells bytes from its decoder (and model).
fn pipeline_piece_form(inner: &tokenizers::Tokenizer) -> PieceForm {
    fn has_type(v: &serde_json::Value, names: &[&str]) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.get("type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| names.contains(&t))
                    || m.values().any(|x| has_type(x, names))
            }
            serde_json::Value::Array(a) => a.iter().any(|x| has_type(x, names)),
            _ => false,
        }
    }
    let decoder = inner
        .get_decoder()
        .and_then(|d| serde_json::to_value(d).ok())
        .unwrap_or_default();
    if has_type(&decoder, &["ByteLevel"]) {
        return PieceForm::ByteLevel;
    }
    if has_type(&decoder, &["ByteFallback", "Metaspace"]) || decoder.to_string().contains('▁') {
        return PieceForm::SentencePiece;
    }
    PieceForm::Plain
}

/// `tokenizers` cuts a BPE model's `continuing_subword_prefix` off the second piece of every
/// merge unchecked and panics when that piece is shorter: check it first (found by fuzz/).
fn check_bpe_prefix(v: &serde_json::Value) -> Result<()> {
    let model = &v["model"];
    let Some(prefix) = model["continuing_subword_prefix"].as_str() else {
        return Ok(());
    };
    let Some(merges) = model["merges"].as_array() else {
        return Ok(());
    };
    for m in merges {
        let second = match m {
            serde_json::Value::String(s) => s.split_once(' ').map(|(_, b)| b),
            serde_json::Value::Array(a) => a.get(1).and_then(|b| b.as_str()),
            _ => None,
        };
        if let Some(b) = second {
            if b.len() < prefix.len() || !b.is_char_boundary(prefix.len()) {
                return Err(TokenizerError::Json(format!(
                    "tokenizer.json: merge {m} has a second piece {b:?} shorter than the \
                     continuing_subword_prefix {prefix:?}"
                )));
            }
        }
    }
    Ok(())
}
