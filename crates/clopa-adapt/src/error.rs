//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while sampling, augmenting or training.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    /// A case whose image and mask do not fit together or cannot be normalised.
    #[error("case `{case}`: {problem}")]
    Case { case: String, problem: String },
    /// A setting that cannot be trained with.
    #[error("invalid training setting `{key}` = {value}: {problem}")]
    Config {
        key: &'static str,
        value: String,
        problem: String,
    },
    /// The episode has no training cases.
    #[error("no training cases: an episode needs at least one")]
    NoTrainCases,
    /// A tensor or network failure.
    #[error(transparent)]
    Nn(#[from] clopa_nn::NnError),
    /// A candle failure.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Prompt rendering or click simulation failed.
    #[error(transparent)]
    Interact(#[from] clopa_interact::InteractError),
    /// Writing the epoch log failed.
    #[error("cannot write the epoch log {path}: {problem}")]
    Log { path: PathBuf, problem: String },
}

/// `Result` with [`AdaptError`].
pub type Result<T, E = AdaptError> = std::result::Result<T, E>;
