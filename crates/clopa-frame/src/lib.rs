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
        ("clopa.tool".to_string(), by.tool.to_string()),
        ("clopa.version".to_string(), by.version.to_string()),
        ("clopa.settings".to_string(), by.settings.to_string()),
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
        for (k, v) in [
            ("clopa.tool", "clopa-test"),
            ("clopa.version", "9.9"),
            ("clopa.settings", "{\"k\":1}"),
        ] {
            assert!(kv.contains(&(k.to_string(), Some(v.to_string()))), "{kv:?}");
        }
        // nothing else is left beside it
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
