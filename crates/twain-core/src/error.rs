use thiserror::Error;

/// Errors from building or running a transformer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The model description is inconsistent (what and where in the message).
    #[error("invalid model config: {0}")]
    Config(String),
    /// A tensor is missing or has the wrong shape or format.
    #[error("tensor {name}: {problem}")]
    Tensor {
        /// Canonical tensor name, e.g. `blk.3.attn_q.weight`.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An adapter does not fit the model; the source is the adapter's own
    /// error (for LoRA a `twain_adapters::AdapterError`, which names the tensor).
    #[error("adapter: {0}")]
    Adapter(#[source] twain_model::BoxError),
    /// An adapter failed while applied to linear layer `tensor`.
    #[error("tensor {tensor}: adapter: {source}")]
    AdapterApply {
        /// Canonical tensor name, e.g. `blk.3.attn_q.weight`.
        tensor: String,
        /// The adapter's error.
        #[source]
        source: twain_model::BoxError,
    },
    /// Reading model files failed.
    #[error(transparent)]
    Io(#[from] twain_io::IoError),
    /// A kernel rejected its input.
    #[error("kernel: {0}")]
    Quant(#[from] twain_quant::QuantError),
    /// Model-level failure (bad tokens, context overflow, ...).
    #[error(transparent)]
    Model(#[from] twain_model::ModelError),
}

impl From<CoreError> for twain_model::ModelError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Model(m) => m,
            other => twain_model::ModelError::other(other),
        }
    }
}
