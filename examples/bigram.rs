//! Bring your own model: a character bigram model implements `twain::Model`
//! and gets the same samplers, sessions and streaming loop as the bundled
//! transformer.
//!
//! Run: `cargo run -p twain-examples --example bigram`

use std::io::Write;
use std::sync::Arc;

use twain::{
    ChatMl, Event, GenerateOptions, Model, ModelError, ModelInfo, Sampler, Session, TokenId,
    Tokenize,
};

const TEXT: &str = "in the beginning was the word, and the word was with the sea. \
the sea was wide and the wind was on the water. and there was evening and there was morning. ";

/// Log-counts of "byte b follows byte a", learned from a text.
struct Bigram {
    info: ModelInfo,
    table: Vec<f32>, // 256 x 256
}

impl Bigram {
    fn learn(text: &str) -> Self {
        // Bigram counts backed off to unigram frequencies, so an unseen
        // previous byte (like the chat template's newline) still predicts text.
        let mut unigram = vec![1e-3f32; 256];
        for &b in text.as_bytes() {
            unigram[b as usize] += 1.0;
        }
        let mut counts = vec![0.0f32; 256 * 256];
        for a in 0..256 {
            for b in 0..256 {
                counts[a * 256 + b] = 0.05 * unigram[b];
            }
        }
        for w in text.as_bytes().windows(2) {
            counts[w[0] as usize * 256 + w[1] as usize] += 1.0;
        }
        let table = counts.iter().map(|c| c.ln()).collect();
        let mut info = ModelInfo::new("bigram", 256, 1 << 16);
        info.special.eot = Some(b'.' as TokenId);
        Bigram { info, table }
    }
}

impl Model for Bigram {
    /// The only state a bigram needs: the sequence so far.
    type State = Vec<TokenId>;
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn new_state(&self) -> Vec<TokenId> {
        Vec::new()
    }
    fn forward(
        &self,
        state: &mut Vec<TokenId>,
        tokens: &[TokenId],
        logits: &mut [f32],
    ) -> Result<(), ModelError> {
        self.info.check_forward(state.len(), tokens, logits.len())?;
        state.extend_from_slice(tokens);
        let last = *tokens.last().expect("checked non-empty") as usize;
        logits.copy_from_slice(&self.table[last * 256..(last + 1) * 256]);
        Ok(())
    }
    fn position(&self, state: &Vec<TokenId>) -> usize {
        state.len()
    }
    fn truncate(&self, state: &mut Vec<TokenId>, len: usize) -> Result<(), ModelError> {
        if len > state.len() {
            return Err(ModelError::TruncateBeyondEnd {
                len,
                position: state.len(),
            });
        }
        state.truncate(len);
        Ok(())
    }
}

/// One token per byte.
struct Bytes;

impl Tokenize for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, twain::BoxError> {
        Ok(text.bytes().map(TokenId::from).collect())
    }
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, twain::BoxError> {
        u8::try_from(id)
            .map(|b| vec![b])
            .map_err(|_| format!("no token {id}").into())
    }
}

fn main() -> Result<(), twain::Error> {
    let model = Bigram::learn(TEXT);
    let mut session = Session::new(model, Arc::new(Bytes), Arc::new(ChatMl));
    session.set_sampler(
        Sampler::builder()
            .temperature(0.8)
            .top_k(8)
            .seed(7)
            .build()?,
    );
    let mut out = std::io::stdout().lock();
    for turn in ["tell me about the sea", "and the wind?"] {
        writeln!(out, "> {turn}").ok();
        for event in session.respond(turn, GenerateOptions::default().max_tokens(80))? {
            match event? {
                Event::Text(t) => write!(out, "{t}").ok(),
                Event::End(reason) => writeln!(out, "\n[{reason:?}]").ok(),
                Event::Token(_) => None,
            };
        }
    }
    assert_eq!(session.transcript().len(), 4);
    Ok(())
}
