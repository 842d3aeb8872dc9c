//! Settings as data: task manifests (`data-manifests/*.toml`) and pipeline profiles
//! (`pipelines/*.toml`).
//!
//! A [`Manifest`] names one binary segmentation task: the MSD-format dataset folder, the image
//! channel, the label values that form the foreground, the NSD tolerance and the expert Dice
//! threshold. A [`Profile`] holds every protocol setting (split fractions, seeds, schedule, training
//! and simulation sizes, methods, tasks, model, device); [`Profile::default`] is the paper's
//! settings, [`Profile::quick`] the embedded CPU default (`pipelines/quick.toml`). Tools load a
//! profile, override single keys from their flags with [`Profile::set`], and write the resolved
//! profile next to their outputs with [`Profile::to_toml_string`].
//!
//! Every error names the file and the key at fault. The crate never reads environment variables:
//! a tool passes `$CLOPA_DATA` to [`Manifest::dataset_dir`] itself.
//!
//! ```
//! use clopa_config::{Manifest, Profile};
//! let m = Manifest::from_toml_str(
//!     "name = \"hippocampus\"\ndataset = \"Task04_Hippocampus\"\nchannel = 0\nlabels = [1, 2]\n\
//!      largest_component = false\nnsd_tolerance_mm = 1.0\nexpert_dice = 0.9\n",
//!     "hippocampus.toml".as_ref(),
//! )?;
//! assert_eq!(m.labels, vec![1, 2]);
//! let mut p = Profile::default();
//! p.set("epochs", "3")?;
//! assert_eq!(p.epochs, 3);
//! assert!(p.to_toml_string()?.contains("epochs = 3"));
//! # Ok::<(), clopa_config::ConfigError>(())
//! ```

mod manifest;
mod profile;

pub use manifest::{DEFAULT_DATA_ROOT, Manifest};
pub use profile::{Profile, SynthSettings, cuda_ordinal};

/// The largest patch side clopa takes (profiles, `--patch`, model folders). nnInteractive uses
/// 192; one 32-channel f32 activation of a 512³ patch is already 17 GB, and a larger side is a
/// typo that would otherwise end in an allocation failure deep in the network.
pub const MAX_PATCH: usize = 512;

use std::path::PathBuf;

/// Everything that can be wrong with a manifest or a profile. Each variant names the file (or
/// "in memory" / the flag) and, where it applies, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed TOML, a missing key, a key of the wrong type or an unknown key (the message from
    /// the TOML parser names the key and the line).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A well-typed value outside its allowed range.
    #[error("{path}: key `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
    /// An override (`Profile::set`) for a key the profile does not have.
    #[error("unknown profile key `{key}` (known keys: {known})")]
    UnknownKey { key: String, known: String },
    #[error("cannot write the profile as TOML: {0}")]
    Serialize(String),
}

/// Rejects a value with [`ConfigError::Invalid`].
fn invalid(path: &std::path::Path, key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The TOML parser's message already quotes the offending line; we drop its trailing newline so
/// our `path: message` stays tidy.
fn parse_error(path: &std::path::Path, err: toml::de::Error) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: err.to_string().trim_end().to_string(),
    }
}
