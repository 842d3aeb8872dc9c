//! The error type of clopa-nn: every message names the file, tensor or value at fault.

use std::path::PathBuf;

/// Errors of the network, import and model-folder code.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A `--device` that is not valid, not built in, or cannot be opened.
    #[error("device {name:?}: {reason}")]
    Device { name: String, reason: String },

    /// The architecture block (nnU-Net `architecture` / clopa `model.json`) cannot be built.
    #[error("unsupported or invalid architecture: {0}")]
    Arch(String),

    /// A network input of the wrong shape.
    #[error(
        "network input has {got} channels, the network expects {expected} (input shape {shape:?})"
    )]
    InputChannels {
        expected: usize,
        got: usize,
        shape: Vec<usize>,
    },

    /// A network input that is not (B, C, D, H, W) or whose size the strides cannot divide.
    #[error("invalid network input shape {shape:?}: {reason}")]
    InputShape { shape: Vec<usize>, reason: String },

    /// A file that cannot be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file that does not parse (the reason says "not valid JSON") or lacks what we need.
    #[error("{}: {reason}", path.display())]
    Json { path: PathBuf, reason: String },

    /// A model folder that lacks a required file or has an inconsistent layout.
    #[error("invalid model folder {}: {reason}", path.display())]
    Folder { path: PathBuf, reason: String },

    /// A checkpoint (`.pth` or safetensors) that cannot be read.
    #[error("cannot read the checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },

    /// A tensor the architecture needs is absent from a weights file.
    #[error("{}: tensor `{tensor}` is missing (the architecture needs shape {expected:?})", path.display())]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
    },

    /// A tensor whose shape differs from what the architecture needs.
    #[error("{}: tensor `{tensor}` has shape {found:?}, the architecture needs {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor name that the architecture does not have.
    #[error("{}: tensor `{tensor}` is not a parameter of this architecture", path.display())]
    UnknownTensor { path: PathBuf, tensor: String },

    /// An episode checkpoint that does not belong to the base model it is applied to.
    #[error("episode checkpoint {} was trained from the base model with sha256 {found}, but the base model is {expected}", path.display())]
    BaseMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    /// Episode checkpoints given as a chain that are not one (see `check_chain`).
    #[error("{}: {reason}", path.display())]
    NotAChain { path: PathBuf, reason: String },

    /// A tensor computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of clopa-nn.
pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        NnError::Io {
            action,
            path: path.into(),
            source,
        }
    }
    pub(crate) fn json(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        NnError::Json {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        NnError::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn folder(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        NnError::Folder {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
