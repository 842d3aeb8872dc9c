//! Building the output frames (written by `clopa_frame::write_parquet`).

use anyhow::Context;
use polars::prelude::{Column, DataFrame};

use crate::summary::{CASE_METRICS, CaseRow, EpisodeRow, TrajectoryRow};

pub fn cases_frame(rows: &[CaseRow]) -> anyhow::Result<DataFrame> {
    let mut cols = vec![
        Column::new(
            "task".into(),
            rows.iter().map(|r| r.key.task.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "method".into(),
            rows.iter()
                .map(|r| r.key.method.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "run".into(),
            rows.iter().map(|r| r.key.run).collect::<Vec<Option<u32>>>(),
        ),
        Column::new(
            "episode".into(),
            rows.iter().map(|r| r.key.episode).collect::<Vec<u32>>(),
        ),
        Column::new(
            "n_seen".into(),
            rows.iter().map(|r| r.n_seen).collect::<Vec<u32>>(),
        ),
        Column::new(
            "case_id".into(),
            rows.iter()
                .map(|r| r.key.case_id.as_str())
                .collect::<Vec<_>>(),
        ),
    ];
    for (i, name) in CASE_METRICS.iter().enumerate() {
        cols.push(Column::new(
            (*name).into(),
            rows.iter().map(|r| r.values[i]).collect::<Vec<f64>>(),
        ));
    }
    cols.push(Column::new(
        "noi".into(),
        rows.iter().map(|r| r.noi).collect::<Vec<u32>>(),
    ));
    cols.push(Column::new(
        "failed".into(),
        rows.iter().map(|r| r.failed).collect::<Vec<bool>>(),
    ));
    Ok(DataFrame::new(rows.len(), cols)?)
}

pub fn episodes_frame(rows: &[EpisodeRow]) -> anyhow::Result<DataFrame> {
    let mut cols = vec![
        Column::new(
            "task".into(),
            rows.iter().map(|r| r.key.0.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "method".into(),
            rows.iter().map(|r| r.key.1.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "run".into(),
            rows.iter().map(|r| r.key.2).collect::<Vec<Option<u32>>>(),
        ),
        Column::new(
            "episode".into(),
            rows.iter().map(|r| r.key.3).collect::<Vec<u32>>(),
        ),
        Column::new(
            "n_seen".into(),
            rows.iter().map(|r| r.n_seen).collect::<Vec<u32>>(),
        ),
    ];
    for (i, name) in CASE_METRICS.iter().enumerate() {
        cols.push(Column::new(
            (*name).into(),
            rows.iter().map(|r| r.values[i]).collect::<Vec<f64>>(),
        ));
    }
    cols.push(Column::new(
        "noi".into(),
        rows.iter().map(|r| r.mean_noi).collect::<Vec<f64>>(),
    ));
    cols.push(Column::new(
        "nnoi_pct".into(),
        rows.iter().map(|r| r.nnoi_pct).collect::<Vec<f64>>(),
    ));
    cols.push(Column::new(
        "nof_pct".into(),
        rows.iter().map(|r| r.nof_pct).collect::<Vec<f64>>(),
    ));
    cols.push(Column::new(
        "n_cases".into(),
        rows.iter().map(|r| r.n_cases).collect::<Vec<u32>>(),
    ));
    Ok(DataFrame::new(rows.len(), cols)?)
}

/// One row per stream position (position 1..N, `nos` null), then one row with `position` null
/// holding the trajectory AUC in `value` and, for `dice_final`, NoS in `nos` (NaN when the
/// threshold is never reached, as IS_Validate).
pub fn trajectory_frame(rows: &[TrajectoryRow]) -> anyhow::Result<DataFrame> {
    let mut task = Vec::new();
    let mut method = Vec::new();
    let mut metric = Vec::new();
    let mut position: Vec<Option<u32>> = Vec::new();
    let mut value = Vec::new();
    let mut nos: Vec<Option<f64>> = Vec::new();
    for r in rows {
        for (i, v) in r.values.iter().enumerate() {
            task.push(r.task.as_str());
            method.push(r.method.as_str());
            metric.push(r.metric);
            position.push(Some(u32::try_from(i + 1).context("stream too long")?));
            value.push(*v);
            nos.push(None);
        }
        task.push(r.task.as_str());
        method.push(r.method.as_str());
        metric.push(r.metric);
        position.push(None);
        value.push(r.auc);
        nos.push(r.nos);
    }
    let n = task.len();
    Ok(DataFrame::new(
        n,
        vec![
            Column::new("task".into(), task),
            Column::new("method".into(), method),
            Column::new("metric".into(), metric),
            Column::new("position".into(), position),
            Column::new("value".into(), value),
            Column::new("nos".into(), nos),
        ],
    )?)
}
