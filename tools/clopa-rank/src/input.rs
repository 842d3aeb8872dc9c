//! Reading and validating `cases.parquet` and `trajectory.parquet` (DESIGN.md "Tables").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader, Series};

/// The per-case metric columns of `cases.parquet` that are averaged and ranked (higher is better).
pub const CASE_METRICS: [&str; 6] = [
    "dice_init",
    "dice_final",
    "dice_nauc",
    "nsd_init",
    "nsd_final",
    "nsd_nauc",
];

const CASE_COLUMNS: [&str; 14] = [
    "task",
    "method",
    "run",
    "episode",
    "n_seen",
    "case_id",
    "dice_init",
    "dice_final",
    "dice_nauc",
    "nsd_init",
    "nsd_final",
    "nsd_nauc",
    "noi",
    "failed",
];

const TRAJECTORY_COLUMNS: [&str; 6] = ["task", "method", "metric", "position", "value", "nos"];

/// One row of `cases.parquet`.
#[derive(Debug, Clone)]
pub struct CaseRow {
    pub task: String,
    pub method: String,
    pub run: Option<u32>,
    pub episode: u32,
    pub n_seen: u32,
    pub case_id: String,
    /// In [`CASE_METRICS`] order.
    pub values: [f64; 6],
    pub noi: f64,
    pub failed: bool,
}

/// Settings that `clopa-eval` left in the file's key-value metadata (`clopa.settings`).
#[derive(Debug, Clone, Default)]
pub struct EvalSettings {
    pub threshold: Option<f64>,
    /// Per-task thresholds of a table merged from several clopa-eval runs (`task_thresholds`,
    /// written by clopa-reproduce), which has no single `threshold` when the tasks differ.
    pub task_thresholds: BTreeMap<String, f64>,
    /// Steps per curve (initialisation + edits).
    pub n_steps: Option<usize>,
}

/// One row of `trajectory.parquet`: a value at a stream position, or (position `None`) the
/// trajectory AUC with the NoS fraction for the Dice-at-last-step metric.
#[derive(Debug, Clone)]
pub struct TrajectoryRow {
    pub task: String,
    pub method: String,
    pub metric: String,
    pub position: Option<u32>,
    pub value: f64,
    pub nos: Option<f64>,
}

fn read_frame(
    path: &Path,
    required: &[&str],
) -> anyhow::Result<(DataFrame, Option<serde_json::Value>)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = ParquetReader::new(file);
    let settings = reader
        .get_metadata()
        .ok()
        .and_then(|m| m.key_value_metadata.clone())
        .and_then(|kv| kv.into_iter().find(|k| k.key == clopa_frame::KEY_SETTINGS))
        .and_then(|k| k.value)
        .and_then(|v| serde_json::from_str(&v).ok());
    let df = reader
        .finish()
        .with_context(|| format!("cannot read {} as Parquet", path.display()))?;
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|c| !names.iter().any(|n| n == c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks the column(s) {} (it has: {})",
            path.display(),
            missing
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        );
    }
    Ok((df, settings))
}

fn series(df: &DataFrame, path: &Path, name: &str, dtype: &DataType) -> anyhow::Result<Series> {
    let c = df
        .column(name)
        .with_context(|| format!("{}: no column \"{name}\"", path.display()))?;
    // Only casts that keep the meaning (u64 → u32, f32 or an integer → f64): text → number would
    // read "0.5" as 0.5, and float → integer 2.5 as the episode 2.
    let have = c.dtype();
    let same_kind = matches!(have, DataType::Null)
        || match dtype {
            DataType::String => have.is_string(),
            DataType::Boolean => matches!(have, DataType::Boolean),
            DataType::Float64 => have.is_primitive_numeric(),
            d if d.is_integer() => have.is_integer(),
            _ => true,
        };
    if !same_kind {
        bail!(
            "{}: column \"{name}\" has type {have}, expected {dtype}",
            path.display()
        );
    }
    c.as_materialized_series().cast(dtype).with_context(|| {
        format!(
            "{}: column \"{name}\" cannot be read as {dtype}",
            path.display()
        )
    })
}

fn strings(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    let s = series(df, path, name, &DataType::String)?;
    let ca = s
        .str()
        .with_context(|| format!("{}: column \"{name}\"", path.display()))?;
    ca.iter()
        .enumerate()
        .map(|(i, v)| {
            v.map(str::to_string).with_context(|| {
                format!("{}: column \"{name}\" is null in row {i}", path.display())
            })
        })
        .collect()
}

fn opt_u32(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<Option<u32>>> {
    let s = series(df, path, name, &DataType::UInt32)?;
    Ok(s.u32()
        .with_context(|| format!("{}: column \"{name}\"", path.display()))?
        .iter()
        .collect())
}

fn req_u32(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<u32>> {
    opt_u32(df, path, name)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.with_context(|| format!("{}: column \"{name}\" is null in row {i}", path.display()))
        })
        .collect()
}

fn opt_f64(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let s = series(df, path, name, &DataType::Float64)?;
    Ok(s.f64()
        .with_context(|| format!("{}: column \"{name}\"", path.display()))?
        .iter()
        .collect())
}

fn req_f64(df: &DataFrame, path: &Path, name: &str) -> anyhow::Result<Vec<f64>> {
    opt_f64(df, path, name)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.with_context(|| format!("{}: column \"{name}\" is null in row {i}", path.display()))
        })
        .collect()
}

/// `req_f64` of a column whose every value must lie in `[lo, hi]`: a Dice of 7 would otherwise
/// end up in Table 2 as a mean above 1. NaN passes only where clopa-eval writes it (`nan_ok`:
/// the nAUC of a 1-step curve, `--edits 0`, is undefined) and shows as "–" in the tables.
fn f64_in(
    df: &DataFrame,
    path: &Path,
    name: &str,
    (lo, hi): (f64, f64),
    nan_ok: bool,
) -> anyhow::Result<Vec<f64>> {
    let v = req_f64(df, path, name)?;
    let bad = |x: f64| {
        if x.is_nan() {
            !nan_ok
        } else {
            !(lo..=hi).contains(&x)
        }
    };
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| bad(**x)) {
        bail!(
            "{}: column \"{name}\" is {x} in row {i}, outside [{lo}, {hi}]",
            path.display()
        );
    }
    Ok(v)
}

/// Reads `cases.parquet`; every column of the DESIGN.md schema must be present.
pub fn read_cases(path: &Path) -> anyhow::Result<(Vec<CaseRow>, EvalSettings)> {
    let (df, settings) = read_frame(path, &CASE_COLUMNS)?;
    if df.height() == 0 {
        bail!("{} has no rows: nothing to rank", path.display());
    }
    let task = strings(&df, path, "task")?;
    let method = strings(&df, path, "method")?;
    let case_id = strings(&df, path, "case_id")?;
    let run = opt_u32(&df, path, "run")?;
    let episode = req_u32(&df, path, "episode")?;
    let n_seen = req_u32(&df, path, "n_seen")?;
    let metrics: Vec<Vec<f64>> = CASE_METRICS
        .iter()
        .map(|m| f64_in(&df, path, m, (0.0, 1.0), m.ends_with("_nauc")))
        .collect::<anyhow::Result<_>>()?;
    let noi = f64_in(&df, path, "noi", (0.0, f64::MAX), false)?;
    let failed_s = series(&df, path, "failed", &DataType::Boolean)?;
    let failed: Vec<bool> = failed_s
        .bool()
        .with_context(|| format!("{}: column \"failed\"", path.display()))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.with_context(|| format!("{}: column \"failed\" is null in row {i}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let rows = (0..df.height())
        .map(|i| CaseRow {
            task: task[i].clone(),
            method: method[i].clone(),
            run: run[i],
            episode: episode[i],
            n_seen: n_seen[i],
            case_id: case_id[i].clone(),
            values: std::array::from_fn(|m| metrics[m][i]),
            noi: noi[i],
            failed: failed[i],
        })
        .collect();
    let settings = EvalSettings {
        threshold: settings.as_ref().and_then(|s| s["threshold"].as_f64()),
        task_thresholds: settings
            .as_ref()
            .and_then(|s| s["task_thresholds"].as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(t, v)| Some((t.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default(),
        n_steps: settings
            .as_ref()
            .and_then(|s| s["n_steps"].as_u64())
            .map(|n| n as usize),
    };
    Ok((rows, settings))
}

/// Reads `trajectory.parquet`.
pub fn read_trajectory(path: &Path) -> anyhow::Result<Vec<TrajectoryRow>> {
    let (df, _) = read_frame(path, &TRAJECTORY_COLUMNS)?;
    let task = strings(&df, path, "task")?;
    let method = strings(&df, path, "method")?;
    let metric = strings(&df, path, "metric")?;
    let position = opt_u32(&df, path, "position")?;
    // NaN: a trajectory AUC over a stream of one position is undefined.
    let value = f64_in(&df, path, "value", (f64::MIN, f64::MAX), true)?;
    let nos = opt_f64(&df, path, "nos")?;
    Ok((0..df.height())
        .map(|i| TrajectoryRow {
            task: task[i].clone(),
            method: method[i].clone(),
            metric: metric[i].clone(),
            position: position[i],
            value: value[i],
            nos: nos[i],
        })
        .collect())
}

/// One (task, method, case) of Table 2: the final episode's six metrics, NoI and failure.
#[derive(Debug, Clone)]
pub struct FinalCase {
    pub values: [f64; 6],
    pub noi: f64,
    pub failed: bool,
}

/// task → method → case_id → final-episode values.
pub type FinalCases = BTreeMap<String, BTreeMap<String, BTreeMap<String, FinalCase>>>;

/// Table 2's cases: per (task, method) the rows of the largest `episode`. The rows must be of one
/// training run per (task, method): `final.parquet` (run null: clopa-eval has already averaged
/// the final episodes' curves over training runs, before NoI and failure, as the reference
/// does), or a `cases.parquet` of a single training run. Several runs are an error rather than
/// averaged here: NoI and failure of the averaged curve cannot be had from per-run values.
pub fn final_cases(rows: &[CaseRow], path: &Path) -> anyhow::Result<FinalCases> {
    let mut runs: BTreeMap<(&str, &str), BTreeSet<Option<u32>>> = BTreeMap::new();
    let mut last: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for r in rows {
        runs.entry((&r.task, &r.method)).or_default().insert(r.run);
        let e = last.entry((&r.task, &r.method)).or_insert(r.episode);
        *e = (*e).max(r.episode);
    }
    if let Some(((task, method), rs)) = runs.iter().find(|(_, rs)| rs.len() > 1) {
        bail!(
            "{} has {} training runs of method {method:?} in task {task:?}: Table 2 needs \
             final.parquet from clopa-eval (--final), whose NoI and failures come from the \
             final episodes' curves averaged over training runs",
            path.display(),
            rs.len()
        );
    }
    let mut out = FinalCases::new();
    for r in rows
        .iter()
        .filter(|r| last[&(r.task.as_str(), r.method.as_str())] == r.episode)
    {
        let prev = out
            .entry(r.task.clone())
            .or_default()
            .entry(r.method.clone())
            .or_default()
            .insert(
                r.case_id.clone(),
                FinalCase {
                    values: r.values,
                    noi: r.noi,
                    failed: r.failed,
                },
            );
        if prev.is_some() {
            bail!(
                "{}: case {:?} of method {:?} in task {:?} appears twice in episode {}",
                path.display(),
                r.case_id,
                r.method,
                r.task,
                r.episode
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        method: &str,
        run: Option<u32>,
        episode: u32,
        case: &str,
        dice: f64,
        failed: bool,
    ) -> CaseRow {
        CaseRow {
            task: "t".into(),
            method: method.into(),
            run,
            episode,
            n_seen: episode * 5,
            case_id: case.into(),
            values: [dice; 6],
            noi: if failed { 101.0 } else { 10.0 },
            failed,
        }
    }

    #[test]
    fn final_episode_of_each_method() {
        let rows = vec![
            row("in", Some(0), 1, "c1", 0.1, true),
            row("in", Some(0), 2, "c1", 0.6, false),
            row("in", Some(0), 2, "c2", 0.7, true),
            row("base", None, 0, "c1", 0.3, true),
        ];
        let f = final_cases(&rows, Path::new("cases.parquet")).expect("one run per method");
        let c = &f["t"]["in"]["c1"];
        assert!((c.values[1] - 0.6).abs() < 1e-12, "{}", c.values[1]);
        assert!((c.noi - 10.0).abs() < 1e-12);
        assert!(!c.failed);
        assert!(f["t"]["in"]["c2"].failed);
        assert!((f["t"]["base"]["c1"].values[0] - 0.3).abs() < 1e-12);
    }

    /// Per-run values cannot give the NoI and failure of the run-averaged curve: refused, with
    /// the way out in the message.
    #[test]
    fn several_training_runs_need_final_parquet() {
        let rows = vec![
            row("in", Some(0), 1, "c1", 0.1, true),
            row("in", Some(1), 1, "c1", 0.1, false),
        ];
        let e = final_cases(&rows, Path::new("x/cases.parquet"))
            .expect_err("two runs")
            .to_string();
        assert!(e.contains("x/cases.parquet has 2 training runs"), "{e}");
        assert!(e.contains("final.parquet"), "{e}");
    }
}
