//! Sessions: a chat transcript over one model state, reusing the cache of
//! earlier turns.

use std::sync::Arc;

use twain_model::{Model, TokenId};
use twain_sample::Sampler;

use crate::generate::{GenerateOptions, Generation};
use crate::tokenize::{ChatFormat, Message, Role, Tokenize};
use crate::Error;

/// A conversation with a model: the transcript, the model state that holds
/// it (KV cache), and the sampler. Each turn prefills only the tokens that
/// are new since the state last matched the transcript.
pub struct Session<M: Model> {
    pub(crate) model: M,
    pub(crate) tokenizer: Arc<dyn Tokenize>,
    pub(crate) chat: Arc<dyn ChatFormat>,
    pub(crate) state: M::State,
    pub(crate) tokens: Vec<TokenId>,
    pub(crate) logits: Vec<f32>,
    pub(crate) transcript: Vec<Message>,
    pub(crate) sampler: Sampler,
}

impl<M: Model> Session<M> {
    /// A new, empty session with greedy sampling.
    pub fn new(model: M, tokenizer: Arc<dyn Tokenize>, chat: Arc<dyn ChatFormat>) -> Self {
        let state = model.new_state();
        let logits = vec![0.0; model.info().vocab_size];
        Self {
            model,
            tokenizer,
            chat,
            state,
            tokens: Vec::new(),
            logits,
            transcript: Vec::new(),
            sampler: Sampler::greedy(),
        }
    }

    /// Start the transcript with a system message.
    pub fn with_system(mut self, instructions: impl Into<String>) -> Self {
        self.transcript
            .push(Message::new(Role::System, instructions));
        self
    }

    /// Use `sampler` for the following turns.
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.sampler = sampler;
    }

    /// The sampler (e.g. to set a token mask).
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// The transcript so far.
    pub fn transcript(&self) -> &[Message] {
        &self.transcript
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model state (KV cache).
    pub fn state(&self) -> &M::State {
        &self.state
    }

    /// The tokens the state holds.
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// Forget the conversation (transcript and cache). The state is emptied
    /// in place, so what it carries besides the cache (e.g. a LoRA adapter
    /// set with `set_adapter`) stays.
    pub fn reset(&mut self) {
        self.transcript.clear();
        self.tokens.clear();
        if self.model.truncate(&mut self.state, 0).is_err() {
            self.state = self.model.new_state();
        }
    }

    /// Add a user message and stream the assistant's answer. The answer is
    /// added to the transcript when the generation ends or is dropped. On
    /// error (e.g. [`Error::ExceededContextWindow`]) the transcript is unchanged
    /// and the session stays usable.
    pub fn respond(
        &mut self,
        user: &str,
        opts: GenerateOptions,
    ) -> Result<Generation<'_, M>, Error> {
        let mut messages = self.transcript.clone();
        messages.push(Message::new(Role::User, user));
        let text = self.chat.render(&messages, true).map_err(Error::Template)?;
        let prompt = self.tokenizer.encode(&text).map_err(Error::Tokenizer)?;
        self.prefill(&prompt)?;
        self.transcript = messages;
        Ok(Generation::new(
            &self.model,
            &mut self.state,
            &mut self.tokens,
            &mut self.logits,
            &*self.tokenizer,
            &mut self.sampler,
            Some(&mut self.transcript),
            opts,
        ))
    }

    /// Feed `text` as-is (no chat template) after what the session holds and
    /// stream a continuation. The transcript is not touched.
    pub fn complete(
        &mut self,
        text: &str,
        opts: GenerateOptions,
    ) -> Result<Generation<'_, M>, Error> {
        let mut prompt = self.tokens.clone();
        prompt.extend(self.tokenizer.encode(text).map_err(Error::Tokenizer)?);
        self.prefill(&prompt)?;
        Ok(Generation::new(
            &self.model,
            &mut self.state,
            &mut self.tokens,
            &mut self.logits,
            &*self.tokenizer,
            &mut self.sampler,
            None,
            opts,
        ))
    }

    /// Make the state hold exactly `prompt`, reusing the longest common prefix
    /// with what it holds, and leave the last position's logits in `self.logits`.
    pub(crate) fn prefill(&mut self, prompt: &[TokenId]) -> Result<(), Error> {
        let limit = self.model.info().context_length;
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if prompt.len() > limit {
            return Err(Error::ExceededContextWindow {
                needed: prompt.len(),
                limit,
            });
        }
        let mut common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        if common == prompt.len() {
            // Need the logits of the last position: recompute it.
            common -= 1;
        }
        self.model.truncate(&mut self.state, common)?;
        self.tokens.truncate(common);
        self.model
            .forward(&mut self.state, &prompt[common..], &mut self.logits)?;
        self.tokens.extend_from_slice(&prompt[common..]);
        Ok(())
    }
}
