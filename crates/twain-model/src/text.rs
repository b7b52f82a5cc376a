//! What generation needs from a tokenizer and a chat format, as small traits
//! an app can implement for its own, without depending on the facade.

use serde::{Deserialize, Serialize};

use crate::TokenId;

/// The error a [`Tokenize`] or [`ChatFormat`] implementation returns: any
/// error type (a `String` converts with `.into()`). The facade keeps it as
/// the source of its own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Text to tokens and tokens to bytes.
pub trait Tokenize: Send + Sync {
    /// Encode `text`; special-token text (e.g. `<|im_start|>`) maps to its id.
    fn encode(&self, text: &str) -> Result<Vec<TokenId>, BoxError>;
    /// The raw bytes token `id` stands for (may be part of a UTF-8 character).
    fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, BoxError>;
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

impl Role {
    /// The role's name in chat templates: `system`, `user`, `assistant`, `tool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
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
    fn render(&self, messages: &[Message], add_generation_prompt: bool)
        -> Result<String, BoxError>;
}

/// The ChatML format (`<|im_start|>role\ncontent<|im_end|>\n`), for models
/// without a template of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatMl;

impl ChatFormat for ChatMl {
    fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, BoxError> {
        let mut s = String::new();
        for m in messages {
            s.push_str("<|im_start|>");
            s.push_str(m.role.as_str());
            s.push('\n');
            s.push_str(&m.content);
            s.push_str("<|im_end|>\n");
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_roles_and_the_generation_prompt() {
        let m = [
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "hi"),
        ];
        let s = ChatMl.render(&m, true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!ChatMl.render(&m, false).unwrap().ends_with("assistant\n"));
    }

    #[test]
    fn a_string_is_a_tokenize_error() {
        struct Empty;
        impl Tokenize for Empty {
            fn encode(&self, _: &str) -> Result<Vec<TokenId>, BoxError> {
                Err("no vocabulary".into())
            }
            fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>, BoxError> {
                Err(format!("no token {id}").into())
            }
        }
        assert_eq!(Empty.encode("x").unwrap_err().to_string(), "no vocabulary");
        assert_eq!(Empty.token_bytes(3).unwrap_err().to_string(), "no token 3");
        assert!(!Empty.is_special(0));
    }
}
