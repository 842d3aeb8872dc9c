//! Polars DataFrames as clopa tables: the one place the polars-based tools (`clopa-eval`,
//! `clopa-rank`) write Parquet. Kept apart from `clopa-table` (arrow-based, used by the tools that
//! must not pull polars into their build).
//!
//! Every table carries the key-value metadata `clopa.tool`, `clopa.version` and
//! `clopa.settings` (JSON), like the arrow-side tables, and is written through a temporary file
//! beside the target so a crash never leaves a half-written table.

use std::path::Path;

use anyhow::Context;
use polars::prelude::{CompatLevel, DataFrame, SchemaExt};
use polars_parquet::write::{
    CompressionOptions, FileWriter, KeyValue, StatisticsOptions, Version, WriteOptions,
    get_dtype_encoding, row_group_iter, schema_to_metadata_key, to_parquet_schema,
};

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
///
/// Through polars' own Parquet encoder rather than its `ParquetWriter`, which always stores
/// strings as Arrow's `Utf8View` (`CompatLevel::newest()`, no option): pyarrow then reads
/// `string_view` columns, which many of its compute functions refuse. At `CompatLevel::oldest()`
/// strings are `LargeUtf8` (pyarrow `large_string`); the Parquet data is the same either way
/// (UTF-8 byte arrays, zstd, statistics), as polars, duckdb and arrow-rs read it.
pub fn write_parquet(path: &Path, df: &mut DataFrame, by: Writer<'_>) -> anyhow::Result<()> {
    let what = || format!("cannot write {}", path.display());
    df.rechunk_mut_par();
    let compat = CompatLevel::oldest();
    let schema = df.schema().to_arrow(compat);
    let fields = to_parquet_schema(&schema)
        .with_context(what)?
        .fields()
        .to_vec();
    let encodings: Vec<_> = schema
        .iter_values()
        .map(|f| get_dtype_encoding(&f.dtype))
        .collect();
    let options = WriteOptions {
        statistics: StatisticsOptions::default(),
        compression: CompressionOptions::Zstd(None),
        version: Version::V1,
        data_page_size: None,
    };
    let mut meta = vec![schema_to_metadata_key(&schema)];
    for (k, v) in [
        (KEY_TOOL, by.tool.to_string()),
        (KEY_VERSION, by.version.to_string()),
        (KEY_SETTINGS, by.settings.to_string()),
    ] {
        meta.push(KeyValue {
            key: k.to_string(),
            value: Some(v),
        });
    }
    clopa_fs::write_atomic_path(path, |tmp| {
        let file = std::fs::File::create(tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = FileWriter::try_new(std::io::BufWriter::new(file), schema.clone(), options)
            .with_context(what)?;
        // One row group per chunk: one, after the rechunk (the tables are small).
        for batch in df.iter_chunks(compat, false) {
            let rows = batch.len() as u64;
            let columns = row_group_iter(batch, encodings.clone().into(), fields.clone(), options);
            w.write(rows, columns).with_context(what)?;
        }
        w.end(Some(meta.clone())).with_context(what)?;
        use std::io::Write;
        w.into_inner().flush().with_context(what)?;
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

    #[test]
    fn strings_are_plain_utf8_and_every_type_reads_back() {
        use arrow::array::{Array, LargeStringArray};
        use arrow::datatypes::DataType;
        use polars::prelude::{NamedFrom, ParquetReader, SerReader, Series};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let cols: Vec<Column> = vec![
            Series::new("task".into(), ["organ", "vessels", "ünïcode"]).into(),
            Series::new("run".into(), [Some(0u32), None, Some(2)]).into(),
            Series::new("p".into(), [0.5f64, f64::NAN, 1e-300]).into(),
            Series::new("ok".into(), [true, false, true]).into(),
            Series::new("note".into(), [None, Some("x"), None::<&str>]).into(),
        ];
        let mut df = DataFrame::new(3, cols).unwrap();
        let settings = serde_json::json!({});
        let by = Writer {
            tool: "clopa-test",
            version: "9.9",
            settings: &settings,
        };
        write_parquet(&path, &mut df, by).unwrap();

        // arrow-rs (as pyarrow) sees LargeUtf8, not Utf8View, and the same values
        let file = std::fs::File::open(&path).unwrap();
        let batches: Vec<_> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let b = &batches[0];
        assert_eq!(b.num_rows(), 3);
        for name in ["task", "note"] {
            let col = b.column_by_name(name).unwrap();
            assert_eq!(col.data_type(), &DataType::LargeUtf8, "{name}");
        }
        let task = b
            .column_by_name("task")
            .unwrap()
            .as_any()
            .downcast_ref::<LargeStringArray>()
            .unwrap();
        assert_eq!(task.value(2), "ünïcode");
        assert_eq!(b.column_by_name("note").unwrap().null_count(), 2);

        // polars reads back the frame it wrote (NaN compared as missing-equal)
        let back = ParquetReader::new(std::fs::File::open(&path).unwrap())
            .finish()
            .unwrap();
        assert!(back.equals_missing(&df), "{back:?} vs {df:?}");
    }
}
