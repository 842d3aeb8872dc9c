//! `split.parquet`: one row per holdout case and one per (train case, run).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::io::{col, read_batches, write_batches, write_batches_to};
use crate::{Provenance, Role, SplitKind, SplitRow, TableError};

/// The schema of `split.parquet` (DESIGN.md "Tables").
pub fn split_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("task", DataType::Utf8, false),
                Field::new("case_id", DataType::Utf8, false),
                Field::new("split", DataType::Utf8, false),
                Field::new("run", DataType::UInt32, true),
                Field::new("position", DataType::UInt32, true),
                Field::new("episode", DataType::UInt32, true),
                Field::new("role", DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// The rows as one record batch of [`split_schema`].
pub fn split_batch(rows: &[SplitRow]) -> Result<RecordBatch, TableError> {
    let s = |f: fn(&SplitRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let u = |f: fn(&SplitRow) -> Option<u32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<UInt32Array>())
    };
    let cols = vec![
        s(|r| Some(r.task.as_str())),
        s(|r| Some(r.case_id.as_str())),
        s(|r| Some(r.split.as_str())),
        u(|r| r.run),
        u(|r| r.position),
        u(|r| r.episode),
        s(|r| r.role.map(Role::as_str)),
    ];
    RecordBatch::try_new(split_schema(), cols).map_err(|e| TableError::Build {
        path: "split.parquet".into(),
        message: e.to_string(),
    })
}

/// Writes `split.parquet` atomically.
pub fn write_split(path: &Path, rows: &[SplitRow], prov: &Provenance) -> Result<(), TableError> {
    write_batches(path, split_schema(), &[split_batch(rows)?], prov)
}

/// Writes `split.parquet` to any writer (e.g. stdout for `-o -`).
pub fn write_split_to<W: Write + Send>(
    writer: W,
    rows: &[SplitRow],
    prov: &Provenance,
) -> Result<W, TableError> {
    write_batches_to(
        writer,
        Path::new("-"),
        split_schema(),
        &[split_batch(rows)?],
        prov,
    )
}

fn internal(path: &Path, column: &str) -> TableError {
    TableError::WrongType {
        path: path.to_path_buf(),
        column: column.to_string(),
        expected: "the checked type".into(),
        found: "another".into(),
    }
}

/// Reads `split.parquet`, checking its schema and values.
pub fn read_split(path: &Path) -> Result<Vec<SplitRow>, TableError> {
    let schema = split_schema();
    let mut rows = Vec::new();
    let mut offset = 0usize;
    for b in read_batches(path, &schema)? {
        let task = col::str(&b, "task").ok_or_else(|| internal(path, "task"))?;
        let case = col::str(&b, "case_id").ok_or_else(|| internal(path, "case_id"))?;
        let split = col::str(&b, "split").ok_or_else(|| internal(path, "split"))?;
        let run = col::u32(&b, "run").ok_or_else(|| internal(path, "run"))?;
        let pos = col::u32(&b, "position").ok_or_else(|| internal(path, "position"))?;
        let ep = col::u32(&b, "episode").ok_or_else(|| internal(path, "episode"))?;
        let role = col::str(&b, "role").ok_or_else(|| internal(path, "role"))?;
        for i in 0..b.num_rows() {
            let bad = |column: &str, problem: String| TableError::BadValue {
                path: path.to_path_buf(),
                column: column.into(),
                row: offset + i,
                problem,
            };
            let kind = SplitKind::parse(split.value(i)).ok_or_else(|| {
                bad(
                    "split",
                    format!("{:?} is neither \"train\" nor \"holdout\"", split.value(i)),
                )
            })?;
            let role = match col::opt_str(role, i) {
                None => None,
                Some(v) => Some(Role::parse(v).ok_or_else(|| {
                    bad("role", format!("{v:?} is neither \"train\" nor \"val\""))
                })?),
            };
            rows.push(SplitRow {
                task: task.value(i).to_string(),
                case_id: case.value(i).to_string(),
                split: kind,
                run: col::opt_u32(run, i),
                position: col::opt_u32(pos, i),
                episode: col::opt_u32(ep, i),
                role,
            });
        }
        offset += b.num_rows();
    }
    // One row per holdout case and per (train case, run): a repeated key would be merged or
    // counted twice downstream without anyone noticing.
    let mut seen = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(first) = seen.insert((&r.task, &r.case_id, r.run), i) {
            return Err(TableError::BadValue {
                path: path.to_path_buf(),
                column: "case_id".into(),
                row: i,
                problem: format!(
                    "case {:?} of task {:?} (run {}) is already in row {first}",
                    r.case_id,
                    r.task,
                    r.run.map_or("null".to_string(), |v| v.to_string())
                ),
            });
        }
    }
    Ok(rows)
}
