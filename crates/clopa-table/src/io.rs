//! Generic Parquet I/O: atomic writes with provenance, and reads checked against a schema.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::{KEY_SEED, KEY_SETTINGS, KEY_TOOL, KEY_VERSION, Provenance, TableError};

fn pq_err(path: &Path, e: impl std::fmt::Display) -> TableError {
    TableError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn io_err(action: &'static str, path: &Path, source: std::io::Error) -> TableError {
    TableError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn properties(prov: &Provenance) -> WriterProperties {
    let kv = vec![
        KeyValue::new(KEY_TOOL.to_string(), prov.tool.clone()),
        KeyValue::new(KEY_VERSION.to_string(), prov.version.clone()),
        KeyValue::new(KEY_SETTINGS.to_string(), prov.settings.to_string()),
        KeyValue::new(KEY_SEED.to_string(), prov.seed.to_string()),
    ];
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(kv))
        .build()
}

/// Writes `batches` (all of `schema`) as Parquet to any writer; `path` only names the output in
/// errors (use it for `-o -`).
pub fn write_batches_to<W: Write + Send>(
    writer: W,
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    prov: &Provenance,
) -> Result<W, TableError> {
    let mut w = ArrowWriter::try_new(writer, schema, Some(properties(prov)))
        .map_err(|e| pq_err(path, e))?;
    for b in batches {
        w.write(b).map_err(|e| pq_err(path, e))?;
    }
    w.into_inner().map_err(|e| pq_err(path, e))
}

/// Writes `batches` to `path` atomically: into a temporary file in the same folder, renamed into
/// place only when complete.
pub fn write_batches(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    prov: &Provenance,
) -> Result<(), TableError> {
    clopa_fs::write_atomic(path, |file| {
        let file = file.try_clone().map_err(|e| io_err("write", path, e))?;
        write_batches_to(file, path, schema, batches, prov)?;
        Ok(())
    })
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, TableError> {
    let file = File::open(path).map_err(|e| io_err("open", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq_err(path, e))
}

/// Whether a column of type `found` can stand for `expected` after a lossless cast. Writers
/// other than ours (polars) store strings as LargeUtf8 or Utf8View.
fn compatible(expected: &DataType, found: &DataType) -> bool {
    expected == found
        || (*expected == DataType::Utf8
            && matches!(found, DataType::LargeUtf8 | DataType::Utf8View))
}

/// Reads a table and returns its batches with exactly the `expected` schema: every expected
/// column must exist with a compatible type, and non-nullable columns must hold no null.
/// Columns the schema does not name are dropped.
pub fn read_batches(path: &Path, expected: &Schema) -> Result<Vec<RecordBatch>, TableError> {
    let builder = open(path)?;
    let found = builder.schema().clone();
    let mut indices = Vec::with_capacity(expected.fields().len());
    for field in expected.fields() {
        let (i, f) =
            found
                .column_with_name(field.name())
                .ok_or_else(|| TableError::MissingColumn {
                    path: path.to_path_buf(),
                    column: field.name().clone(),
                })?;
        if !compatible(field.data_type(), f.data_type()) {
            return Err(TableError::WrongType {
                path: path.to_path_buf(),
                column: field.name().clone(),
                expected: field.data_type().to_string(),
                found: f.data_type().to_string(),
            });
        }
        indices.push(i);
    }
    let reader = builder.build().map_err(|e| pq_err(path, e))?;
    let schema: SchemaRef = Arc::new(expected.clone());
    let mut out = Vec::new();
    let mut offset = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| pq_err(path, e))?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(indices.len());
        for (field, &i) in expected.fields().iter().zip(&indices) {
            let mut col = batch.column(i).clone();
            if col.data_type() != field.data_type() {
                col = arrow::compute::cast(&col, field.data_type()).map_err(|e| pq_err(path, e))?;
            }
            if !field.is_nullable() && col.null_count() > 0 {
                let row = (0..col.len()).find(|&r| col.is_null(r)).unwrap_or(0);
                return Err(TableError::Null {
                    path: path.to_path_buf(),
                    column: field.name().clone(),
                    row: offset + row,
                });
            }
            cols.push(col);
        }
        offset += batch.num_rows();
        out.push(RecordBatch::try_new(schema.clone(), cols).map_err(|e| pq_err(path, e))?);
    }
    Ok(out)
}

/// The provenance stored in a table's key-value metadata.
pub fn read_provenance(path: &Path) -> Result<Provenance, TableError> {
    let builder = open(path)?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let get = |key: &str| -> Result<String, TableError> {
        kv.iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.clone())
            .ok_or_else(|| TableError::Metadata {
                path: path.to_path_buf(),
                key: key.to_string(),
                problem: "missing".into(),
            })
    };
    let bad = |key: &str, problem: String| TableError::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        problem,
    };
    let settings = serde_json::from_str(&get(KEY_SETTINGS)?)
        .map_err(|e| bad(KEY_SETTINGS, format!("not JSON: {e}")))?;
    let seed_text = get(KEY_SEED)?;
    let seed = seed_text
        .parse()
        .map_err(|_| bad(KEY_SEED, format!("not an integer: {seed_text:?}")))?;
    Ok(Provenance {
        tool: get(KEY_TOOL)?,
        version: get(KEY_VERSION)?,
        settings,
        seed,
    })
}

/// Typed access to the columns of a batch that [`read_batches`] has checked.
pub(crate) mod col {
    use arrow::array::{Array, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array};

    pub fn str<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
        b.column_by_name(name)?.as_any().downcast_ref()
    }
    pub fn u32<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a UInt32Array> {
        b.column_by_name(name)?.as_any().downcast_ref()
    }
    pub fn f64<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a Float64Array> {
        b.column_by_name(name)?.as_any().downcast_ref()
    }
    #[allow(dead_code)]
    pub fn bool<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a BooleanArray> {
        b.column_by_name(name)?.as_any().downcast_ref()
    }
    pub fn opt_u32(a: &UInt32Array, i: usize) -> Option<u32> {
        a.is_valid(i).then(|| a.value(i))
    }
    pub fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
        a.is_valid(i).then(|| a.value(i))
    }
}
