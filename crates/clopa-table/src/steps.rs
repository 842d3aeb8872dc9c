//! `steps.parquet`: one row per (checkpoint, inference run, holdout case, interaction step).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::io::{col, read_batches, write_batches, write_batches_to};
use crate::{Provenance, TableError};

/// One record of `steps.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub task: String,
    /// `base`, `in`, `cn`, ...
    pub method: String,
    /// Training run (0-based); `None` for `base`.
    pub run: Option<u32>,
    /// Episode of the checkpoint (0 for `base`).
    pub episode: u32,
    /// Cache size the checkpoint was trained on (0 for `base`).
    pub n_seen: u32,
    /// Inference run (0-based).
    pub infer_run: u32,
    pub case_id: String,
    /// 0 = initialisation, 1.. = edits.
    pub step: u32,
    pub dice: f64,
    pub nsd: f64,
    /// Foreground clicks added at this step.
    pub fg_clicks: u32,
    /// Background clicks added at this step.
    pub bg_clicks: u32,
    /// Wall time of this step's inference.
    pub seconds: f64,
}

/// The schema of `steps.parquet` (DESIGN.md "Tables").
pub fn steps_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("task", DataType::Utf8, false),
                Field::new("method", DataType::Utf8, false),
                Field::new("run", DataType::UInt32, true),
                Field::new("episode", DataType::UInt32, false),
                Field::new("n_seen", DataType::UInt32, false),
                Field::new("infer_run", DataType::UInt32, false),
                Field::new("case_id", DataType::Utf8, false),
                Field::new("step", DataType::UInt32, false),
                Field::new("dice", DataType::Float64, false),
                Field::new("nsd", DataType::Float64, false),
                Field::new("fg_clicks", DataType::UInt32, false),
                Field::new("bg_clicks", DataType::UInt32, false),
                Field::new("seconds", DataType::Float64, false),
            ]))
        })
        .clone()
}

/// The rows as one record batch of [`steps_schema`].
pub fn steps_batch(rows: &[StepRow]) -> Result<RecordBatch, TableError> {
    let s = |f: fn(&StepRow) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let u = |f: fn(&StepRow) -> u32| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<UInt32Array>())
    };
    let d = |f: fn(&StepRow) -> f64| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let cols = vec![
        s(|r| &r.task),
        s(|r| &r.method),
        Arc::new(rows.iter().map(|r| r.run).collect::<UInt32Array>()) as ArrayRef,
        u(|r| r.episode),
        u(|r| r.n_seen),
        u(|r| r.infer_run),
        s(|r| &r.case_id),
        u(|r| r.step),
        d(|r| r.dice),
        d(|r| r.nsd),
        u(|r| r.fg_clicks),
        u(|r| r.bg_clicks),
        d(|r| r.seconds),
    ];
    RecordBatch::try_new(steps_schema(), cols).map_err(|e| TableError::Build {
        path: "steps.parquet".into(),
        message: e.to_string(),
    })
}

/// Writes `steps.parquet` atomically.
pub fn write_steps(path: &Path, rows: &[StepRow], prov: &Provenance) -> Result<(), TableError> {
    write_batches(path, steps_schema(), &[steps_batch(rows)?], prov)
}

/// Writes `steps.parquet` to any writer (e.g. stdout for `-o -`).
pub fn write_steps_to<W: Write + Send>(
    writer: W,
    rows: &[StepRow],
    prov: &Provenance,
) -> Result<W, TableError> {
    write_batches_to(
        writer,
        Path::new("-"),
        steps_schema(),
        &[steps_batch(rows)?],
        prov,
    )
}

/// Reads `steps.parquet`, checking its schema.
pub fn read_steps(path: &Path) -> Result<Vec<StepRow>, TableError> {
    let schema = steps_schema();
    let missing = |c: &str| TableError::MissingColumn {
        path: path.to_path_buf(),
        column: c.to_string(),
    };
    let mut rows = Vec::new();
    for b in read_batches(path, &schema)? {
        let s = |c: &str| col::str(&b, c).ok_or_else(|| missing(c));
        let u = |c: &str| col::u32(&b, c).ok_or_else(|| missing(c));
        let d = |c: &str| col::f64(&b, c).ok_or_else(|| missing(c));
        let (task, method, case) = (s("task")?, s("method")?, s("case_id")?);
        let (run, episode, n_seen, infer_run) =
            (u("run")?, u("episode")?, u("n_seen")?, u("infer_run")?);
        let (step, fg, bg) = (u("step")?, u("fg_clicks")?, u("bg_clicks")?);
        let (dice, nsd, secs) = (d("dice")?, d("nsd")?, d("seconds")?);
        for i in 0..b.num_rows() {
            rows.push(StepRow {
                task: task.value(i).to_string(),
                method: method.value(i).to_string(),
                run: col::opt_u32(run, i),
                episode: episode.value(i),
                n_seen: n_seen.value(i),
                infer_run: infer_run.value(i),
                case_id: case.value(i).to_string(),
                step: step.value(i),
                dice: dice.value(i),
                nsd: nsd.value(i),
                fg_clicks: fg.value(i),
                bg_clicks: bg.value(i),
                seconds: secs.value(i),
            });
        }
    }
    Ok(rows)
}
