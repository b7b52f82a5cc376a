//! The one error type of this crate.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Everything that can go wrong loading, checking, writing or merging an adapter.
///
/// Every variant names the adapter file (empty for adapters built in memory) and, where there
/// is one, the tensor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The operating system refused a read or write.
    #[error("{}{source}", at(path))]
    Os {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file's structure is broken (bad JSON, bad safetensors header, wrong metadata).
    #[error("{}{what}", at(path))]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// One half of a LoRA pair (`lora_A` / `lora_B`) is not in the file.
    #[error("{}tensor {tensor}: missing (its other half is present)", at(path))]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The missing tensor, as named in the file.
        tensor: String,
    },
    /// A tensor has the wrong dtype or number of dimensions, or non-finite values.
    #[error("{}tensor {tensor}: {what}", at(path))]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor, as named in the file.
        tensor: String,
        /// What is wrong.
        what: String,
    },
    /// A and B of one target disagree on the rank, or the config's rank does not match.
    #[error("{}target {target}: rank mismatch: {what}", at(path))]
    RankMismatch {
        /// The file.
        path: PathBuf,
        /// Canonical name of the target weight, e.g. `blk.3.attn_q.weight`.
        target: String,
        /// Which ranks disagree.
        what: String,
    },
    /// A tensor or configured module that twain does not know how to adapt
    /// (e.g. `lm_head`, `embed_tokens`).
    #[error("{}unknown module {name}", at(path))]
    UnknownModule {
        /// The file.
        path: PathBuf,
        /// The name as found in the file.
        name: String,
    },
    /// The adapter targets a weight the model does not have.
    #[error("{}target {target}: the model has no such linear layer", at(path))]
    MissingTarget {
        /// The file.
        path: PathBuf,
        /// Canonical name of the target weight.
        target: String,
    },
    /// The adapter's delta does not have the shape of the model's weight.
    #[error(
        "{}target {target}: expected {}x{} (model weight), adapter has {}x{}",
        at(path), expected.0, expected.1, found.0, found.1
    )]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// Canonical name of the target weight.
        target: String,
        /// (rows, cols) of the model's weight.
        expected: (usize, usize),
        /// (rows, cols) of the adapter's delta (B rows, A cols).
        found: (usize, usize),
    },
    /// The adapter targets the K or V projection of a layer that reads another layer's cache
    /// (and so has no K/V projection).
    #[error(
        "{}target {target}: the layer shares another layer's K/V cache and has no K/V projection",
        at(path)
    )]
    SharedKv {
        /// The file.
        path: PathBuf,
        /// Canonical name of the target weight.
        target: String,
    },
    /// The file is valid but asks for something twain does not support (DoRA, ...).
    #[error("{}unsupported: {what}", at(path))]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// Reading a GGUF file or a model tensor failed.
    #[error(transparent)]
    Io(#[from] twain_io::IoError),
}

/// `"path: "`, or nothing for adapters built in memory (empty path).
fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

impl AdapterError {
    pub(crate) fn malformed(path: &Path, what: impl Into<String>) -> Self {
        AdapterError::Malformed {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    pub(crate) fn bad_tensor(path: &Path, tensor: &str, what: impl Into<String>) -> Self {
        AdapterError::BadTensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            what: what.into(),
        }
    }
    pub(crate) fn os(path: &Path, source: std::io::Error) -> Self {
        AdapterError::Os {
            path: path.to_path_buf(),
            source,
        }
    }
}
