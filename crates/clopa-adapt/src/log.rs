//! The epoch log table (`CKPT` stem + `.log.parquet`): one row per epoch, epoch 0 being the
//! incoming model. Columns: `epoch` u32, `train_loss` f64 (null for epoch 0), `val_score` f64,
//! `val_ema` f64 (null without validation cases), `selected` bool, `seconds` f64.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, Float64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use clopa_table::{Provenance, read_batches, write_batches};

use crate::episode::EpochLog;
use crate::error::{AdaptError, Result};

/// The log's Arrow schema.
pub fn epoch_log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("train_loss", DataType::Float64, true),
        Field::new("val_score", DataType::Float64, true),
        Field::new("val_ema", DataType::Float64, true),
        Field::new("selected", DataType::Boolean, false),
        Field::new("seconds", DataType::Float64, false),
    ]))
}

/// `ep3.safetensors` → `ep3.log.parquet` beside it.
pub fn log_path(checkpoint: &Path) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "episode".into());
    checkpoint.with_file_name(format!("{stem}.log.parquet"))
}

fn log_err(path: &Path, e: impl std::fmt::Display) -> AdaptError {
    AdaptError::Log {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// Writes the log atomically.
pub fn write_epoch_log(path: &Path, rows: &[EpochLog], prov: &Provenance) -> Result<()> {
    let schema = epoch_log_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epoch))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.train_loss))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.val_score))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.val_ema))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.selected)),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.seconds),
            )),
        ],
    )
    .map_err(|e| log_err(path, e))?;
    write_batches(path, schema, &[batch], prov).map_err(|e| log_err(path, e))
}

/// Reads a log written by [`write_epoch_log`].
pub fn read_epoch_log(path: &Path) -> Result<Vec<EpochLog>> {
    let batches = read_batches(path, &epoch_log_schema()).map_err(|e| log_err(path, e))?;
    let mut out = Vec::new();
    for b in &batches {
        let col = |i: usize| b.column(i);
        let epoch = col(0).as_any().downcast_ref::<UInt32Array>();
        let f = |i: usize| col(i).as_any().downcast_ref::<Float64Array>();
        let sel = col(4).as_any().downcast_ref::<BooleanArray>();
        let (Some(epoch), Some(tl), Some(vs), Some(ve), Some(sel), Some(sec)) =
            (epoch, f(1), f(2), f(3), sel, f(5))
        else {
            return Err(log_err(path, "unexpected column types"));
        };
        let opt = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..b.num_rows() {
            out.push(EpochLog {
                epoch: epoch.value(i),
                train_loss: opt(tl, i),
                val_score: opt(vs, i),
                val_ema: opt(ve, i),
                selected: sel.value(i),
                seconds: sec.value(i),
            });
        }
    }
    Ok(out)
}
