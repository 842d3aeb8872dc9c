//! Reading and validating `steps.parquet` and `split.parquet`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polars::prelude::{Column, DataFrame, DataType, ParquetReader, SerReader};

/// One case's evaluation key: `(task, method, run, episode, case_id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CaseKey {
    pub task: String,
    pub method: String,
    pub run: Option<u32>,
    pub episode: u32,
    pub case_id: String,
}

/// One inference run's curve: `(dice, nsd)` per step, plus the file each step came from.
#[derive(Debug, Default)]
pub struct Curve {
    pub steps: Vec<Option<(f64, f64, usize)>>,
}

/// All curves of the inputs, validated: every curve has steps `0..n_steps` exactly once.
#[derive(Debug)]
pub struct StepsTable {
    /// Per case, per inference run.
    pub curves: BTreeMap<CaseKey, BTreeMap<u32, Curve>>,
    /// `n_seen` per `(task, method, run, episode)`.
    pub n_seen: BTreeMap<(String, String, Option<u32>, u32), u32>,
    /// Number of steps of every curve (101 in the protocol).
    pub n_steps: usize,
}

fn read_parquet(path: &Path) -> anyhow::Result<DataFrame> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .with_context(|| format!("cannot read {} as Parquet", path.display()))
}

fn column<'a>(df: &'a DataFrame, name: &str, path: &Path) -> anyhow::Result<&'a Column> {
    df.column(name).map_err(|_| {
        anyhow::anyhow!(
            "{} has no column `{name}` (it has: {})",
            path.display(),
            df.get_column_names()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Refuses a column whose type is not of the expected kind: a cast would turn text into
/// numbers ("0.5" → 0.5), truncate fractional steps and print numbers as method names.
fn expect_kind(c: &Column, ok: bool, kind: &str, name: &str, path: &Path) -> anyhow::Result<()> {
    if !ok {
        bail!(
            "column `{name}` of {} has type {}, expected {kind}",
            path.display(),
            c.dtype()
        );
    }
    Ok(())
}

fn strings(df: &DataFrame, name: &str, path: &Path) -> anyhow::Result<Vec<Option<String>>> {
    let c = column(df, name, path)?;
    let text = c.dtype().is_string() || matches!(c.dtype(), DataType::Null);
    expect_kind(c, text, "text", name, path)?;
    let c = c
        .cast(&DataType::String)
        .with_context(|| format!("column `{name}` of {} is not text", path.display()))?;
    Ok(c.str()?.iter().map(|v| v.map(str::to_string)).collect())
}

fn u32s(df: &DataFrame, name: &str, path: &Path) -> anyhow::Result<Vec<Option<u32>>> {
    let c = column(df, name, path)?;
    let int = c.dtype().is_integer() || matches!(c.dtype(), DataType::Null);
    expect_kind(c, int, "integers", name, path)?;
    let cast = c.strict_cast(&DataType::UInt32).with_context(|| {
        format!(
            "column `{name}` of {} ({}) does not hold non-negative integers",
            path.display(),
            c.dtype()
        )
    })?;
    Ok(cast.u32()?.iter().collect())
}

fn f64s(df: &DataFrame, name: &str, path: &Path) -> anyhow::Result<Vec<Option<f64>>> {
    let c = column(df, name, path)?;
    let num = c.dtype().is_primitive_numeric() || matches!(c.dtype(), DataType::Null);
    expect_kind(c, num, "numbers", name, path)?;
    let cast = c.strict_cast(&DataType::Float64).with_context(|| {
        format!(
            "column `{name}` of {} ({}) is not numeric",
            path.display(),
            c.dtype()
        )
    })?;
    Ok(cast.f64()?.iter().collect())
}

fn required<T>(v: Option<T>, name: &str, row: usize, path: &Path) -> anyhow::Result<T> {
    v.ok_or_else(|| anyhow::anyhow!("{} row {row}: `{name}` is null", path.display()))
}

/// Reads and merges the step tables; errors name the file (and row) at fault.
pub fn read_steps(paths: &[PathBuf]) -> anyhow::Result<StepsTable> {
    let mut curves: BTreeMap<CaseKey, BTreeMap<u32, Curve>> = BTreeMap::new();
    let mut n_seen: BTreeMap<(String, String, Option<u32>, u32), u32> = BTreeMap::new();
    // the same file twice would otherwise be reported as duplicated rows
    let mut seen = std::collections::HashMap::new();
    for (i, path) in paths.iter().enumerate() {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if let Some(j) = seen.insert(key, i) {
            bail!(
                "{} is given twice (arguments {} and {})",
                path.display(),
                j + 1,
                i + 1
            );
        }
    }
    for (fi, path) in paths.iter().enumerate() {
        let df = read_parquet(path)?;
        // Check every column first so a file missing several names the first one in schema order.
        for name in [
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
        ] {
            column(&df, name, path)?;
        }
        if df.height() == 0 {
            bail!("{} has no rows", path.display());
        }
        let task = strings(&df, "task", path)?;
        let method = strings(&df, "method", path)?;
        let run = u32s(&df, "run", path)?;
        let episode = u32s(&df, "episode", path)?;
        let seen = u32s(&df, "n_seen", path)?;
        let infer_run = u32s(&df, "infer_run", path)?;
        let case_id = strings(&df, "case_id", path)?;
        let step = u32s(&df, "step", path)?;
        let dice = f64s(&df, "dice", path)?;
        let nsd = f64s(&df, "nsd", path)?;
        for row in 0..df.height() {
            let key = CaseKey {
                task: required(task[row].clone(), "task", row, path)?,
                method: required(method[row].clone(), "method", row, path)?,
                run: run[row],
                episode: required(episode[row], "episode", row, path)?,
                case_id: required(case_id[row].clone(), "case_id", row, path)?,
            };
            let ir = required(infer_run[row], "infer_run", row, path)?;
            let st = required(step[row], "step", row, path)? as usize;
            let d = required(dice[row], "dice", row, path)?;
            let n = required(nsd[row], "nsd", row, path)?;
            if !(0.0..=1.0).contains(&d) || !(0.0..=1.0).contains(&n) {
                bail!(
                    "{} row {row}: dice {d} / nsd {n} is not in [0, 1]",
                    path.display()
                );
            }
            let ns = required(seen[row], "n_seen", row, path)?;
            let ep_key = (key.task.clone(), key.method.clone(), key.run, key.episode);
            match n_seen.get(&ep_key) {
                Some(&prev) if prev != ns => bail!(
                    "{} row {row}: n_seen {ns} differs from {prev} seen earlier for task {:?}, \
                     method {:?}, run {:?}, episode {}",
                    path.display(),
                    key.task,
                    key.method,
                    key.run,
                    key.episode
                ),
                Some(_) => {}
                None => {
                    n_seen.insert(ep_key, ns);
                }
            }
            let curve = curves
                .entry(key.clone())
                .or_default()
                .entry(ir)
                .or_default();
            if curve.steps.len() <= st {
                curve.steps.resize(st + 1, None);
            }
            if let Some((_, _, first)) = curve.steps[st] {
                bail!(
                    "duplicated row in {} (row {row}): task {:?}, method {:?}, run {:?}, episode {}, \
                     infer_run {ir}, case {:?}, step {st} already appears in {}",
                    path.display(),
                    key.task,
                    key.method,
                    key.run,
                    key.episode,
                    key.case_id,
                    paths[first].display()
                );
            }
            curve.steps[st] = Some((d, n, fi));
        }
    }
    // Every curve must be complete and all must have one length.
    // (described only for an error message: formatting every curve's description cost a String
    // per curve)
    let describe = |key: &CaseKey, ir: u32, curve: &Curve| {
        // the file of the curve's last row: every curve has one
        let file = curve.steps.iter().rev().flatten().next().map(|s| s.2);
        format!(
            "{}'s curve of task {:?}, method {:?}, run {}, episode {}, case {:?}, infer_run {ir}",
            file.map_or_else(|| "?".into(), |f| paths[f].display().to_string()),
            key.task,
            key.method,
            key.run.map_or_else(|| "none".into(), |r| r.to_string()),
            key.episode,
            key.case_id
        )
    };
    let mut n_steps: Option<(usize, (&CaseKey, u32, &Curve))> = None;
    for (key, runs) in &curves {
        for (&ir, curve) in runs {
            if let Some(missing) = curve.steps.iter().position(Option::is_none) {
                bail!(
                    "{} has no step {missing} but has later steps",
                    describe(key, ir, curve)
                );
            }
            match n_steps {
                None => n_steps = Some((curve.steps.len(), (key, ir, curve))),
                Some((len, first)) if len != curve.steps.len() => bail!(
                    "inconsistent curve lengths: {} has {} steps but {} has {len} \
                     (were the tables simulated with different --edits or profiles?)",
                    describe(key, ir, curve),
                    curve.steps.len(),
                    describe(first.0, first.1, first.2)
                ),
                Some(_) => {}
            }
        }
    }
    let Some((n_steps, _)) = n_steps else {
        bail!("the step tables hold no curve")
    };
    Ok(StepsTable {
        curves,
        n_seen,
        n_steps,
    })
}

/// Stream length N per `(task, run)`: the number of `train` rows of that run in split.parquet.
pub type StreamLengths = BTreeMap<(String, u32), usize>;

/// The holdout case ids of each task of a split.
pub type Holdout = BTreeMap<String, std::collections::BTreeSet<String>>;

pub fn read_split(path: &Path) -> anyhow::Result<(StreamLengths, Holdout)> {
    let df = read_parquet(path)?;
    for name in ["task", "case_id", "split", "run", "position"] {
        column(&df, name, path)?;
    }
    if df.height() == 0 {
        bail!("{} has no rows", path.display());
    }
    let task = strings(&df, "task", path)?;
    let split = strings(&df, "split", path)?;
    let run = u32s(&df, "run", path)?;
    let position = u32s(&df, "position", path)?;
    let case_id = strings(&df, "case_id", path)?;
    let mut count: StreamLengths = BTreeMap::new();
    let mut max_pos: BTreeMap<(String, u32), u32> = BTreeMap::new();
    let mut holdout = Holdout::new();
    for row in 0..df.height() {
        if split[row].as_deref() == Some("holdout") {
            let t = required(task[row].clone(), "task", row, path)?;
            let id = required(case_id[row].clone(), "case_id", row, path)?;
            holdout.entry(t).or_default().insert(id);
        }
        if split[row].as_deref() != Some("train") {
            continue;
        }
        let t = required(task[row].clone(), "task", row, path)?;
        let r = required(run[row], "run", row, path)?;
        let p = required(position[row], "position", row, path)?;
        *count.entry((t.clone(), r)).or_default() += 1;
        let m = max_pos.entry((t, r)).or_default();
        *m = (*m).max(p);
    }
    for (k, n) in &count {
        if max_pos.get(k).copied().unwrap_or(0) as usize != *n {
            bail!(
                "{}: task {:?} run {} has {n} train rows but positions up to {}",
                path.display(),
                k.0,
                k.1,
                max_pos.get(k).copied().unwrap_or(0)
            );
        }
    }
    if count.is_empty() {
        bail!("{} has no train rows", path.display());
    }
    Ok((count, holdout))
}
