use thiserror::Error;

/// Errors of offline work on a model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Quantizing a tensor failed (the tensor is named).
    #[error("tensor {name}: {source}")]
    Tensor {
        /// Canonical tensor name, e.g. `blk.3.attn_q.weight`.
        name: String,
        /// What the quantizer said.
        source: twain_quant::QuantError,
    },
    /// A KV-sharing plan does not fit the model.
    #[error("KV plan: {0}")]
    Plan(String),
    /// Calibration data is unusable (empty, too short, non-finite activations).
    #[error("calibration: {0}")]
    Calibration(String),
    /// The model itself is inconsistent.
    #[error(transparent)]
    Core(#[from] twain_core::CoreError),
    /// Reading or building tensors failed.
    #[error(transparent)]
    Io(#[from] twain_io::IoError),
    /// A kernel rejected its input.
    #[error(transparent)]
    Quant(#[from] twain_quant::QuantError),
    /// Running the model failed.
    #[error(transparent)]
    Model(#[from] twain_model::ModelError),
    /// Shipped trained parameters (a partial model or a patch) do not fit,
    /// or are damaged.
    #[error("{}: {what}", path.display())]
    Shipped {
        /// The pack or patch file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Tokenizing the calibration text failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] twain_tokenizer::TokenizerError),
}
