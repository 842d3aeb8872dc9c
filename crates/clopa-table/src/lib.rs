//! The Parquet tables that pass between clopa's tools: their Arrow schemas, row types, atomic
//! writers and schema-checking readers (arrow-rs + parquet, standard types so that polars,
//! duckdb and pyarrow read them too).
//!
//! Tables: `split.parquet` ([`SplitRow`], [`split_schema`], [`write_split`], [`read_split`]) and
//! `steps.parquet` ([`StepRow`], [`steps_schema`], [`write_steps`], [`read_steps`]). Every file
//! carries its [`Provenance`] in the Parquet key-value metadata: `clopa.tool`, `clopa.version`,
//! `clopa.settings` (JSON) and `clopa.seed`. Writers go through a temporary file in the target
//! folder that is renamed into place, so an interrupted run never leaves a half-written table.
//! Readers check every expected column (extra columns are ignored) and name the file and the
//! missing or mistyped column.
//!
//! ```
//! use clopa_table::{Provenance, SplitKind, SplitRow, read_split, write_split};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("split.parquet");
//! let rows = vec![SplitRow {
//!     task: "liver".into(), case_id: "liver_0".into(), split: SplitKind::Holdout,
//!     run: None, position: None, episode: None, role: None,
//! }];
//! let prov = Provenance::new("clopa-split", "0.1.0", serde_json::json!({"k_d": 0.25}), 0);
//! write_split(&path, &rows, &prov)?;
//! assert_eq!(read_split(&path)?, rows);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod io;
mod split;
mod steps;

pub use clopa_schedule::{Role, SplitKind, SplitRow};
pub use io::{read_batches, read_provenance, write_batches, write_batches_to};
pub use split::{read_split, split_batch, split_schema, write_split, write_split_to};
pub use steps::{StepRow, read_steps, steps_batch, steps_schema, write_steps, write_steps_to};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What wrote a table, recorded in the file's key-value metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The tool (`clopa-split`, ...).
    pub tool: String,
    /// The tool's version.
    pub version: String,
    /// The resolved settings (e.g. the profile) as JSON.
    pub settings: serde_json::Value,
    /// The seed the tool ran with.
    pub seed: u64,
}

impl Provenance {
    pub fn new(tool: &str, version: &str, settings: serde_json::Value, seed: u64) -> Self {
        Provenance {
            tool: tool.into(),
            version: version.into(),
            settings,
            seed,
        }
    }
}

/// Metadata keys.
pub const KEY_TOOL: &str = "clopa.tool";
pub const KEY_VERSION: &str = "clopa.version";
pub const KEY_SETTINGS: &str = "clopa.settings";
pub const KEY_SEED: &str = "clopa.seed";

impl From<clopa_fs::IoError> for TableError {
    fn from(e: clopa_fs::IoError) -> TableError {
        TableError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// Everything that can go wrong reading or writing a table; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable Parquet table: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: missing column `{column}`")]
    MissingColumn { path: PathBuf, column: String },
    #[error("{path}: column `{column}` has type {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        column: String,
        expected: String,
        found: String,
    },
    #[error("{path}: column `{column}` is null in row {row}, which it never may be")]
    Null {
        path: PathBuf,
        column: String,
        row: usize,
    },
    #[error("{path}: column `{column}`, row {row}: {problem}")]
    BadValue {
        path: PathBuf,
        column: String,
        row: usize,
        problem: String,
    },
    #[error("{path}: metadata `{key}`: {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("cannot build the record batch for {path}: {message}")]
    Build { path: PathBuf, message: String },
}
