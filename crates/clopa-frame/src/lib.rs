//! Polars DataFrames as clopa tables: the one place the polars-based tools (`clopa-eval`,
//! `clopa-rank`) write Parquet. Kept apart from `clopa-table` (arrow-based, used by the tools that
//! must not pull polars into their build).
//!
//! Every table carries the key-value metadata `clopa.tool`, `clopa.version` and
//! `clopa.settings` (JSON), like the arrow-side tables, and is written through a temporary file
//! beside the target so a crash never leaves a half-written table.

use std::path::Path;

use anyhow::Context;
use polars::prelude::{DataFrame, KeyValueMetadata, ParquetWriter};

/// The provenance metadata keys, spelled as `clopa-table` spells them for the arrow-side tables
/// (its `KEY_*`; the test below checks they agree — depending on `clopa-table` would pull arrow
/// and parquet into the polars tools' build).
pub const KEY_TOOL: &str = "clopa.tool";
/// See [`KEY_TOOL`].
pub const KEY_VERSION: &str = "clopa.version";
/// See [`KEY_TOOL`]: the resolved settings as JSON.
pub const KEY_SETTINGS: &str = "clopa.settings";

/// Who wrote a table and with which settings.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The tool's name, e.g. `clopa-eval`.
    pub tool: &'a str,
    /// The tool's version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'a str,
    /// The resolved settings, stored as JSON.
    pub settings: &'a serde_json::Value,
}

/// Writes `df` to `path` atomically with the writer's provenance metadata.
pub fn write_parquet(path: &Path, df: &mut DataFrame, by: Writer<'_>) -> anyhow::Result<()> {
    let meta = KeyValueMetadata::from_static(vec![
        (KEY_TOOL.to_string(), by.tool.to_string()),
        (KEY_VERSION.to_string(), by.version.to_string()),
        (KEY_SETTINGS.to_string(), by.settings.to_string()),
    ]);
    clopa_fs::write_atomic_path(path, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        ParquetWriter::new(file)
            .with_key_value_metadata(Some(meta))
            .finish(df)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use polars::prelude::Column;

    #[test]
    fn writes_the_frame_and_its_provenance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut df = DataFrame::new(3, vec![Column::new("x".into(), [1u32, 2, 3])]).unwrap();
        let settings = serde_json::json!({"k": 1});
        let by = Writer {
            tool: "clopa-test",
            version: "9.9",
            settings: &settings,
        };
        write_parquet(&path, &mut df, by).unwrap();
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
                .unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        assert_eq!(meta.file_metadata().num_rows(), 3);
        let kv: Vec<(String, Option<String>)> = meta
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|k| (k.key.clone(), k.value.clone()))
            .collect();
        // the arrow-side tables' keys: both kinds of table must read alike
        for (k, v) in [
            (clopa_table::KEY_TOOL, "clopa-test"),
            (clopa_table::KEY_VERSION, "9.9"),
            (clopa_table::KEY_SETTINGS, "{\"k\":1}"),
        ] {
            assert!(kv.contains(&(k.to_string(), Some(v.to_string()))), "{kv:?}");
        }
        // nothing else is left beside it
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
