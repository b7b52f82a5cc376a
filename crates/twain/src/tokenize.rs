//! What generation needs from a tokenizer and a chat format, as small traits
//! so an app can bring its own.

use serde::{Deserialize, Serialize};
use twain_model::TokenId;

use crate::Error;

/// Text to tokens and tokens to bytes.
pub trait Tokenize: Send + Sync {
    /// Encode `text`; special-token text (e.g. `<|im_start|>`) maps to its id.
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, Error>;
    /// The raw bytes token `id` stands for (may be part of a UTF-8 character).
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, Error>;
    /// Whether `id` is a control token (e.g. `<|im_start|>`), which guided
    /// generation never lets into generated text. Default: none is (stop
    /// tokens are known from the model anyway).
    fn is_special(&self, id: TokenId) -> bool {
        let _ = id;
        false
    }
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's output.
    Tool,
}

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Renders a transcript into the model's prompt text.
pub trait ChatFormat: Send + Sync {
    /// Render `messages`; with `add_generation_prompt` end with the opening of
    /// an assistant turn.
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, Error>;
}

/// The ChatML format (`<|im_start|>role\ncontent<|im_end|>\n`), for models
/// without a template of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatMl;

impl ChatFormat for ChatMl {
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, Error> {
        let mut s = String::new();
        for m in messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            s.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.content));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        Ok(s)
    }
}
