//! Round trips, schema checks and provenance of the Parquet tables.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, LargeStringArray, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use clopa_table::*;

fn prov() -> Provenance {
    Provenance::new(
        "clopa-test",
        "9.9.9",
        serde_json::json!({"k_d": 0.25, "tasks": ["a"]}),
        42,
    )
}

fn split_rows() -> Vec<SplitRow> {
    vec![
        SplitRow {
            task: "t".into(),
            case_id: "c0".into(),
            split: SplitKind::Holdout,
            run: None,
            position: None,
            episode: None,
            role: None,
        },
        SplitRow {
            task: "t".into(),
            case_id: "c1".into(),
            split: SplitKind::Train,
            run: Some(0),
            position: Some(1),
            episode: Some(1),
            role: Some(Role::Train),
        },
        SplitRow {
            task: "t".into(),
            case_id: "c2".into(),
            split: SplitKind::Train,
            run: Some(0),
            position: Some(2),
            episode: Some(1),
            role: Some(Role::Val),
        },
        SplitRow {
            task: "t".into(),
            case_id: "c3".into(),
            split: SplitKind::Train,
            run: Some(2),
            position: Some(3),
            episode: None,
            role: None,
        },
    ]
}

fn step_rows() -> Vec<StepRow> {
    (0..5)
        .map(|i| StepRow {
            task: "t".into(),
            method: if i == 0 { "base".into() } else { "in".into() },
            run: if i == 0 { None } else { Some(i % 3) },
            episode: i,
            n_seen: 5 * i,
            infer_run: i % 2,
            case_id: format!("c{i}"),
            step: i,
            dice: 0.1 * i as f64,
            nsd: 1.0 / (1.0 + i as f64),
            fg_clicks: 1,
            bg_clicks: i % 2,
            seconds: 0.25,
        })
        .collect()
}

#[test]
fn split_round_trip_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("split.parquet");
    write_split(&p, &split_rows(), &prov()).unwrap();
    assert_eq!(read_split(&p).unwrap(), split_rows());
    assert_eq!(read_provenance(&p).unwrap(), prov());
    // No temporary file is left beside the output.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("split.parquet")]);
}

#[test]
fn steps_round_trip_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/steps.parquet");
    write_steps(&p, &step_rows(), &prov()).unwrap();
    assert_eq!(read_steps(&p).unwrap(), step_rows());
    assert_eq!(read_provenance(&p).unwrap().seed, 42);
}

#[test]
fn empty_tables_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.parquet");
    write_steps(&p, &[], &prov()).unwrap();
    assert!(read_steps(&p).unwrap().is_empty());
}

#[test]
fn schemas_use_standard_types() {
    let s = split_schema();
    assert_eq!(
        s.field_with_name("run").unwrap().data_type(),
        &DataType::UInt32
    );
    assert!(s.field_with_name("run").unwrap().is_nullable());
    assert!(!s.field_with_name("case_id").unwrap().is_nullable());
    let t = steps_schema();
    let names: Vec<&str> = t.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "task",
            "method",
            "run",
            "episode",
            "n_seen",
            "infer_run",
            "case_id",
            "step",
            "dice",
            "nsd",
            "fg_clicks",
            "bg_clicks",
            "seconds"
        ]
    );
    assert_eq!(
        t.field_with_name("dice").unwrap().data_type(),
        &DataType::Float64
    );
    assert!(t.field_with_name("run").unwrap().is_nullable());
    assert!(!t.field_with_name("episode").unwrap().is_nullable());
}

/// Writes the steps table without one column (or with one column replaced).
fn write_altered(path: &Path, drop: &str, replace: Option<(DataType, ArrayRef)>) {
    let batch = steps_batch(&step_rows()).unwrap();
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if f.name() == drop {
            if let Some((dt, col)) = &replace {
                fields.push(Field::new(f.name(), dt.clone(), true));
                cols.push(col.clone());
            }
            continue;
        }
        fields.push(f.as_ref().clone());
        cols.push(c.clone());
    }
    let schema = Arc::new(Schema::new(fields));
    let b = RecordBatch::try_new(schema.clone(), cols).unwrap();
    write_batches(path, schema, &[b], &prov()).unwrap();
}

#[test]
fn missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("steps.parquet");
    write_altered(&p, "nsd", None);
    let e = read_steps(&p).unwrap_err();
    assert!(matches!(e, TableError::MissingColumn { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("`nsd`") && msg.contains("steps.parquet"),
        "{msg}"
    );
}

#[test]
fn mistyped_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("steps.parquet");
    let col: ArrayRef = Arc::new(Int64Array::from(vec![0i64; 5]));
    write_altered(&p, "step", Some((DataType::Int64, col)));
    let msg = read_steps(&p).unwrap_err().to_string();
    assert!(
        msg.contains("`step`") && msg.contains("Int64") && msg.contains("UInt32"),
        "{msg}"
    );
}

#[test]
fn null_in_a_required_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("steps.parquet");
    let col: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(1.0),
        Some(1.0),
        None,
        Some(1.0),
        Some(1.0),
    ]));
    write_altered(&p, "dice", Some((DataType::Float64, col)));
    let msg = read_steps(&p).unwrap_err().to_string();
    assert!(msg.contains("`dice`") && msg.contains("row 2"), "{msg}");
}

#[test]
fn other_writers_string_types_are_accepted() {
    // polars stores strings as LargeUtf8 (or Utf8View); readers must accept them.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("steps.parquet");
    let col: ArrayRef = Arc::new(LargeStringArray::from(vec!["x"; 5]));
    write_altered(&p, "case_id", Some((DataType::LargeUtf8, col)));
    let rows = read_steps(&p).unwrap();
    assert!(rows.iter().all(|r| r.case_id == "x"));
}

#[test]
fn bad_split_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("split.parquet");
    let mut batch = split_batch(&split_rows()).unwrap();
    let cols: Vec<ArrayRef> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            if f.name() == "split" {
                Arc::new(StringArray::from(vec!["holdout", "train", "test", "train"])) as ArrayRef
            } else {
                c.clone()
            }
        })
        .collect();
    batch = RecordBatch::try_new(split_schema(), cols).unwrap();
    write_batches(&p, split_schema(), &[batch], &prov()).unwrap();
    let msg = read_split(&p).unwrap_err().to_string();
    assert!(
        msg.contains("`split`") && msg.contains("row 2") && msg.contains("test"),
        "{msg}"
    );
    let _ = UInt32Array::from(vec![1u32]);
}

#[test]
fn a_repeated_case_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("split.parquet");
    let mut rows = split_rows();
    rows.push(rows[0].clone());
    write_split(&p, &rows, &prov()).unwrap();
    let msg = read_split(&p).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("row {}", rows.len() - 1)) && msg.contains("already in row 0"),
        "{msg}"
    );
}

#[test]
fn not_parquet_and_missing_file_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.parquet");
    std::fs::write(&p, b"not a parquet file at all").unwrap();
    let msg = read_split(&p).unwrap_err().to_string();
    assert!(msg.contains("junk.parquet"), "{msg}");
    let msg = read_split(&dir.path().join("nope.parquet"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.parquet"), "{msg}");
}

#[test]
fn write_to_a_buffer() {
    let buf = write_split_to(Vec::new(), &split_rows(), &prov()).unwrap();
    assert_eq!(&buf[..4], b"PAR1");
}

#[test]
fn tables_written_by_polars_are_read() {
    // Fixtures: our sample tables re-written by polars (large_string columns); see fixtures/README.md.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let split_rows = read_split(&dir.join("split_polars.parquet")).unwrap();
    let ids: Vec<String> = (0..21).map(|i| format!("case_{i:03}")).collect();
    let expected =
        clopa_schedule::split("sample", &ids, &clopa_schedule::SplitSettings::default()).unwrap();
    assert_eq!(split_rows, expected);
    let steps = read_steps(&dir.join("steps_polars.parquet")).unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[2].step, 2);
    assert!((steps[2].dice - 0.7).abs() < 1e-12);
    assert_eq!(steps[0].run, None);
}

#[cfg(unix)]
#[test]
fn outputs_are_readable_by_others() {
    // Regression: the temporary file was created 0600 and kept that mode after the rename.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("split.parquet");
    write_split(&p, &split_rows(), &prov()).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(mode & 0o044, 0o044, "mode {mode:o}");
}
