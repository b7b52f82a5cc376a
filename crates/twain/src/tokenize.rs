//! What generation needs from a tokenizer and a chat format: the traits live
//! in twain-model (so an app's tokenizer need not depend on the facade) and
//! are re-exported here.

pub use twain_model::{BoxError, ChatFormat, ChatMl, Message, Role, Tokenize};
