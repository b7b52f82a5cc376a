//! The one error type of this crate.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while reading, writing or fetching a model file.
///
/// Every variant names the file and, where there is one, the key or tensor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IoError {
    /// The operating system refused a read, write, open or rename.
    #[error("{}{source}", at(path))]
    Os {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file's structure is broken (truncated, bad magic, absurd counts, ...).
    #[error("{}{what}", at(path))]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (byte offset when known).
        what: String,
    },
    /// A metadata key is missing or has the wrong type or value.
    #[error("{}key {key}: {what}", at(path))]
    Key {
        /// The file.
        path: PathBuf,
        /// The metadata key (GGUF key, config.json field, native metadata entry).
        key: String,
        /// What is wrong.
        what: String,
    },
    /// A tensor is malformed: wrong shape, unknown type, data out of range, ...
    #[error("{}tensor {tensor}: {what}", at(path))]
    Tensor {
        /// The file (empty for tensors built in memory).
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        what: String,
    },
    /// A tensor the model needs is not there.
    #[error("{}missing tensor {tensor}", at(path))]
    MissingTensor {
        /// The file or directory.
        path: PathBuf,
        /// The canonical tensor name.
        tensor: String,
    },
    /// The file is valid but describes something twain does not support.
    #[error("{}unsupported: {what}", at(path))]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// Downloading or verifying the default model failed.
    #[error("fetch: {0}")]
    Fetch(String),
}

/// `"path: "`, or nothing for objects built in memory (empty path).
fn at(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

impl IoError {
    pub(crate) fn os(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Os {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn malformed(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        IoError::Malformed {
            path: path.into(),
            what: what.into(),
        }
    }
    pub(crate) fn key(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        IoError::Key {
            path: path.into(),
            key: key.into(),
            what: what.into(),
        }
    }
    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        what: impl Into<String>,
    ) -> Self {
        IoError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            what: what.into(),
        }
    }
    pub(crate) fn unsupported(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        IoError::Unsupported {
            path: path.into(),
            what: what.into(),
        }
    }
}
