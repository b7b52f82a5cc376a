//! Accuracy recovery for twain models by training, on the CPU.
//!
//! * [`model::Student`]: the differentiable twain — twain-core's forward
//!   (KV-sharing plans and post-training rotations included) in candle,
//!   with every Q2 matrix fake-quantized ([`fakequant`]): the forward is
//!   exactly twain's dequantized grid, gradients are straight-through for
//!   the weights and LSQ's for the group scales (learnable clipping);
//!   without trained weights the stored 2-bit codes are frozen (only
//!   scales, row gains and norms train, and the export keeps every code).
//! * [`train`](mod@train): end-to-end distillation, the KL divergence from the f32
//!   teacher's full next-token distribution (teacher logits from twain-core's
//!   fast forward, on the fly), Adam, checkpoints every few minutes and
//!   resume with the same result as an uninterrupted run.
//! * [`export`]: the trained model re-encoded to twain's Q2 exactly (same
//!   file format, same kernels) and written as a native model file.
//!
//! Data is the teacher's own seeded text plus the corpus texts
//! (`twain_convert::calib`), never the texts quality is measured on.

#![deny(missing_docs)]

pub mod blockwise;
pub mod export;
pub mod fakequant;
pub mod model;
pub mod train;

pub use blockwise::{
    reconstruct, BlockLoss, BlockOptions, BlockProgress, BlockResult, BlockSummary,
};
pub use model::{Student, Targets, Window};
pub use train::{train, Checkpoint, Progress, TrainOptions, TrainSummary};

use std::path::PathBuf;

/// Errors of training, checkpointing and export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The autodiff library failed (shapes, allocation).
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a model file.
    #[error(transparent)]
    Io(#[from] twain_io::IoError),
    /// The model does not build.
    #[error(transparent)]
    Core(#[from] twain_core::CoreError),
    /// The teacher's forward failed.
    #[error("teacher: {0}")]
    Teacher(#[from] twain_model::ModelError),
    /// A quantized row could not be read or written.
    #[error(transparent)]
    Quant(#[from] twain_quant::QuantError),
    /// The model cannot be trained as asked.
    #[error("model: {0}")]
    Model(String),
    /// The training data is unusable (too short, bad token ids).
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint could not be written or does not fit this run.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}
