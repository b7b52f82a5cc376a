//! One module per subcommand: its `clap::Args` struct and its `run`.

pub(crate) mod bench;
pub(crate) mod chat;
pub(crate) mod convert;
pub(crate) mod fetch;
pub(crate) mod generate;
pub(crate) mod inspect;
pub(crate) mod perplexity;
pub(crate) mod recover;
