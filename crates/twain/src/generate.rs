//! The streaming generation loop: an iterator of [`Event`]s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use twain_model::{Model, TokenId};
use twain_sample::Sampler;

use crate::text::TextAssembler;
use crate::tokenize::{Message, Role, Tokenize};
use crate::Error;

/// A flag another thread sets to stop a generation at its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Limits and stop conditions of one generation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// Stop after this many tokens.
    pub max_tokens: usize,
    /// Stop when the text contains any of these; the stop text is not emitted.
    pub stop: Vec<String>,
    /// Stop when this flag is set.
    pub cancel: Option<CancelFlag>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            stop: Vec::new(),
            cancel: None,
        }
    }
}

twain_model::setters!(GenerateOptions {
    max_tokens: usize,
    stop: Vec<String>,
    cancel: Option<CancelFlag>,
});

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The model produced an end-of-turn / end-of-sequence token.
    EndOfTurn,
    /// The text reached this stop sequence.
    StopSequence(String),
    /// `max_tokens` were generated.
    MaxTokens,
    /// The cancel flag was set.
    Cancelled,
}

/// One step of a streamed generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A sampled token id (end-of-turn tokens are not reported).
    Token(TokenId),
    /// Text to show: always valid UTF-8, never part of a stop sequence.
    Text(String),
    /// The end, with its reason; the iterator yields nothing after it.
    End(EndReason),
}

/// A running generation. Iterate it for [`Event`]s; dropping it early is
/// fine (a session records the text produced so far).
pub struct Generation<'a, M: Model> {
    pub(crate) model: &'a M,
    pub(crate) state: &'a mut M::State,
    pub(crate) tokens: &'a mut Vec<TokenId>,
    pub(crate) logits: &'a mut Vec<f32>,
    pub(crate) tokenizer: &'a dyn Tokenize,
    pub(crate) sampler: &'a mut Sampler,
    pub(crate) transcript: Option<&'a mut Vec<Message>>,
    pub(crate) opts: GenerateOptions,
    pub(crate) asm: TextAssembler,
    pub(crate) queue: VecDeque<Event>,
    pub(crate) to_feed: Option<TokenId>,
    pub(crate) produced: usize,
    pub(crate) text: String,
    pub(crate) finished: bool,
    pub(crate) scratch: Vec<f32>,
}

impl<'a, M: Model> Generation<'a, M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        model: &'a M,
        state: &'a mut M::State,
        tokens: &'a mut Vec<TokenId>,
        logits: &'a mut Vec<f32>,
        tokenizer: &'a dyn Tokenize,
        sampler: &'a mut Sampler,
        transcript: Option<&'a mut Vec<Message>>,
        opts: GenerateOptions,
    ) -> Self {
        let asm = TextAssembler::new(&opts.stop);
        Self {
            model,
            state,
            tokens,
            logits,
            tokenizer,
            sampler,
            transcript,
            opts,
            asm,
            queue: VecDeque::new(),
            to_feed: None,
            produced: 0,
            text: String::new(),
            finished: false,
            scratch: Vec::new(),
        }
    }

    /// The text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.produced
    }

    /// Run to the end and return the whole text and the reason it ended.
    pub fn collect_text(mut self) -> Result<(String, EndReason), Error> {
        let mut reason = EndReason::MaxTokens;
        for ev in self.by_ref() {
            if let Event::End(r) = ev? {
                reason = r;
            }
        }
        Ok((self.text.clone(), reason))
    }

    fn finish(&mut self, reason: EndReason) {
        let rest = if matches!(reason, EndReason::StopSequence(_)) {
            String::new()
        } else {
            self.asm.finish()
        };
        if !rest.is_empty() {
            self.text.push_str(&rest);
            self.queue.push_back(Event::Text(rest));
        }
        self.queue.push_back(Event::End(reason));
        self.finished = true;
        self.record();
    }

    fn record(&mut self) {
        if let Some(t) = self.transcript.take() {
            t.push(Message::new(Role::Assistant, self.text.clone()));
        }
    }

    fn step(&mut self) -> Result<(), Error> {
        if let Some(tok) = self.to_feed {
            self.model.forward(self.state, &[tok], self.logits)?;
            self.tokens.push(tok);
            self.to_feed = None;
        }
        if self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            self.finish(EndReason::Cancelled);
            return Ok(());
        }
        if self.produced >= self.opts.max_tokens {
            self.finish(EndReason::MaxTokens);
            return Ok(());
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(self.logits);
        let tok = self.sampler.sample(&mut self.scratch, self.tokens)?;
        if self.model.info().special.is_stop(tok) {
            self.finish(EndReason::EndOfTurn);
            return Ok(());
        }
        self.produced += 1;
        self.queue.push_back(Event::Token(tok));
        let bytes = self.tokenizer.token_bytes(tok).map_err(Error::Tokenizer)?;
        let piece = self.asm.push(&bytes);
        if !piece.text.is_empty() {
            self.text.push_str(&piece.text);
            self.queue.push_back(Event::Text(piece.text));
        }
        if let Some(stop) = piece.stopped {
            // The token is part of the answer the model gave; keep the state in step.
            self.to_feed = Some(tok);
            self.finish(EndReason::StopSequence(stop));
            return Ok(());
        }
        self.to_feed = Some(tok);
        Ok(())
    }
}

impl<M: Model> Iterator for Generation<'_, M> {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(Ok(ev));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.step() {
                self.finished = true;
                self.record();
                return Some(Err(e));
            }
        }
    }
}

impl<M: Model> Drop for Generation<'_, M> {
    fn drop(&mut self) {
        self.record();
    }
}
