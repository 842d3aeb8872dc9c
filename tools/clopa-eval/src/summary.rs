//! Cases, episodes and trajectories (DESIGN.md protocol step 5), computed with clopa-metrics.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clopa_metrics::curves;

use crate::steps::{CaseKey, Curve, StepsTable, StreamLengths};

/// The method name of the pretrained model (episode 0), whose values precede the first episode
/// in every trajectory.
pub const BASE: &str = "base";

/// The per-case metric columns, in output order (also the trajectory metrics, with the two
/// percentages added).
pub const CASE_METRICS: [&str; 6] = [
    "dice_init",
    "dice_final",
    "dice_nauc",
    "nsd_init",
    "nsd_final",
    "nsd_nauc",
];

#[derive(Debug, Clone)]
pub struct CaseRow {
    pub key: CaseKey,
    pub n_seen: u32,
    /// In [`CASE_METRICS`] order.
    pub values: [f64; 6],
    pub noi: u32,
    pub failed: bool,
}

/// Per case: average the curves over inference runs, then init, final, nAUC, NoI and failure.
pub fn cases(table: &StepsTable, threshold: f64) -> anyhow::Result<Vec<CaseRow>> {
    let mut out = Vec::with_capacity(table.curves.len());
    for (key, runs) in &table.curves {
        let curves: Vec<&Curve> = runs.values().collect();
        let n_seen = table.n_seen[&(key.task.clone(), key.method.clone(), key.run, key.episode)];
        out.push(case_row(key.clone(), n_seen, &curves, threshold)?);
    }
    Ok(out)
}

/// Table 2's per-case values: per (task, method, case), the curves of every training run's final
/// episode and every inference run averaged element-wise, then init, final, nAUC, NoI and
/// failure of that mean curve. This is the reference's aggregation (IS_Validate averages each
/// case's per-step metrics over runs, `groupby('Case_Name').mean()`, and takes NoI from the
/// averaged curve): NoI and failure are not linear in the curve, so averaging per-run NoI or
/// voting on per-run failures would give other numbers. The row's `run` is null; `episode` and
/// `n_seen` are the largest over the training runs (the runs share one schedule, so they agree
/// unless a run was left unfinished).
pub fn final_cases(table: &StepsTable, threshold: f64) -> anyhow::Result<Vec<CaseRow>> {
    type RunKey<'a> = (&'a str, &'a str, Option<u32>);
    let mut last: BTreeMap<RunKey, u32> = BTreeMap::new();
    for key in table.curves.keys() {
        let e = last
            .entry((&key.task, &key.method, key.run))
            .or_insert(key.episode);
        *e = (*e).max(key.episode);
    }
    // The runs share one schedule: final episodes that differ mean a run is unfinished, and
    // averaging its earlier episode with the others' later one is worth a warning.
    let mut finals: BTreeMap<(&str, &str), std::collections::BTreeSet<u32>> = BTreeMap::new();
    for ((task, method, _), e) in &last {
        finals.entry((task, method)).or_default().insert(*e);
    }
    for ((task, method), eps) in finals.iter().filter(|(_, e)| e.len() > 1) {
        tracing::warn!(
            "task {task:?}, method {method:?}: the training runs end at different episodes \
             {eps:?} (an unfinished run?); final.parquet averages each run's last one"
        );
    }
    // (task, method, case) -> (largest episode, its n_seen, the curves)
    type Group<'a> = (u32, u32, Vec<&'a Curve>);
    let mut groups: BTreeMap<(&str, &str, &str), Group> = BTreeMap::new();
    for (key, runs) in &table.curves {
        if last[&(key.task.as_str(), key.method.as_str(), key.run)] != key.episode {
            continue;
        }
        let n_seen = table.n_seen[&(key.task.clone(), key.method.clone(), key.run, key.episode)];
        let g = groups
            .entry((&key.task, &key.method, &key.case_id))
            .or_insert((key.episode, n_seen, Vec::new()));
        if (key.episode, n_seen) > (g.0, g.1) {
            (g.0, g.1) = (key.episode, n_seen);
        }
        g.2.extend(runs.values());
    }
    groups
        .into_iter()
        .map(|((task, method, case_id), (episode, n_seen, curves))| {
            let key = CaseKey {
                task: task.to_string(),
                method: method.to_string(),
                run: None,
                episode,
                case_id: case_id.to_string(),
            };
            case_row(key, n_seen, &curves, threshold)
        })
        .collect()
}

/// One case's row from its curves (averaged element-wise first).
fn case_row(
    key: CaseKey,
    n_seen: u32,
    curves: &[&Curve],
    threshold: f64,
) -> anyhow::Result<CaseRow> {
    let dice: Vec<Vec<f64>> = curves
        .iter()
        .map(|c| c.steps.iter().flatten().map(|s| s.0).collect())
        .collect();
    let nsd: Vec<Vec<f64>> = curves
        .iter()
        .map(|c| c.steps.iter().flatten().map(|s| s.1).collect())
        .collect();
    let what = || format!("case {:?} of method {:?}", key.case_id, key.method);
    let dice = curves::mean_curves(&dice).with_context(what)?;
    let nsd = curves::mean_curves(&nsd).with_context(what)?;
    let d = curves::summarize(&dice, threshold).with_context(what)?;
    let n = curves::summarize(&nsd, threshold).with_context(what)?;
    Ok(CaseRow {
        key,
        n_seen,
        values: [d.init, d.last, d.nauc, n.init, n.last, n.nauc],
        noi: u32::try_from(d.noi).context("NoI does not fit in u32")?,
        failed: d.failed,
    })
}

/// `(task, method, run, episode)`.
pub type EpisodeKey = (String, String, Option<u32>, u32);

#[derive(Debug, Clone)]
pub struct EpisodeRow {
    pub key: EpisodeKey,
    pub n_seen: u32,
    /// Dataset means in [`CASE_METRICS`] order.
    pub values: [f64; 6],
    pub mean_noi: f64,
    pub nnoi_pct: f64,
    pub nof_pct: f64,
    pub n_cases: u32,
}

impl EpisodeRow {
    /// The trajectory metrics: the six case means, then nNoI % and NoF %.
    pub fn trajectory_values(&self) -> [f64; 8] {
        let v = self.values;
        [
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            self.nnoi_pct,
            self.nof_pct,
        ]
    }
}

pub const TRAJECTORY_METRICS: [&str; 8] = [
    "dice_init",
    "dice_final",
    "dice_nauc",
    "nsd_init",
    "nsd_final",
    "nsd_nauc",
    "nnoi_pct",
    "nof_pct",
];

/// Per (task, method, run, episode): dataset means, nNoI % = 100·mean(NoI)/n_steps,
/// NoF % = 100·failures/n.
pub fn episodes(cases: &[CaseRow], n_steps: usize) -> anyhow::Result<Vec<EpisodeRow>> {
    let mut groups: BTreeMap<EpisodeKey, Vec<&CaseRow>> = BTreeMap::new();
    for c in cases {
        let k = (
            c.key.task.clone(),
            c.key.method.clone(),
            c.key.run,
            c.key.episode,
        );
        groups.entry(k).or_default().push(c);
    }
    let mut out = Vec::new();
    for (key, rows) in groups {
        let n = rows.len();
        let mut values = [0.0; 6];
        for (i, v) in values.iter_mut().enumerate() {
            let col: Vec<f64> = rows.iter().map(|r| r.values[i]).collect();
            *v = curves::mean(&col);
        }
        let nois: Vec<f64> = rows.iter().map(|r| f64::from(r.noi)).collect();
        let mean_noi = curves::mean(&nois);
        let failures = rows.iter().filter(|r| r.failed).count();
        out.push(EpisodeRow {
            n_seen: rows[0].n_seen,
            values,
            mean_noi,
            nnoi_pct: curves::nnoi_pct(mean_noi, n_steps),
            nof_pct: curves::nof_pct(failures, n),
            n_cases: u32::try_from(n).context("too many cases")?,
            key,
        });
    }
    Ok(out)
}

/// One (task, method, metric) trajectory: values at stream positions 1..=N, its AUC, and NoS
/// for `dice_final`.
#[derive(Debug, Clone)]
pub struct TrajectoryRow {
    pub task: String,
    pub method: String,
    pub metric: &'static str,
    pub values: Vec<f64>,
    pub auc: f64,
    pub nos: Option<f64>,
}

/// Trajectories of every method of every task, averaged over training runs. The base model
/// (method `base`, episode 0) supplies the value before each run's first episode; `base` itself
/// gets a flat trajectory over each run's stream.
pub fn trajectories(
    episodes: &[EpisodeRow],
    split: &StreamLengths,
    threshold: f64,
) -> anyhow::Result<Vec<TrajectoryRow>> {
    // task -> method -> run -> [(episode, n_seen, values)]
    type Eps<'a> = BTreeMap<Option<u32>, Vec<&'a EpisodeRow>>;
    let mut by: BTreeMap<&str, BTreeMap<&str, Eps>> = BTreeMap::new();
    for e in episodes {
        by.entry(e.key.0.as_str())
            .or_default()
            .entry(e.key.1.as_str())
            .or_default()
            .entry(e.key.2)
            .or_default()
            .push(e);
    }
    let mut out = Vec::new();
    for (task, methods) in &by {
        let runs: Vec<(u32, usize)> = split
            .iter()
            .filter(|((t, _), _)| t == task)
            .map(|((_, r), n)| (*r, *n))
            .collect();
        if runs.is_empty() {
            bail!("the split has no training stream for task {task:?}");
        }
        let Some(base) = methods.get(BASE) else {
            bail!(
                "trajectories of task {task:?} need the base model's rows (method \"{BASE}\", \
                 episode 0) in the step tables"
            );
        };
        // The base value for training run r: a run-specific base evaluation if there is one,
        // else the run-less one (the design's `run` = null for base).
        let base_for = |r: u32| -> anyhow::Result<[f64; 8]> {
            let eps = base
                .get(&Some(r))
                .or_else(|| base.get(&None))
                .ok_or_else(|| {
                    anyhow::anyhow!("task {task:?} has no base-model rows for training run {r}")
                })?;
            let e = eps.iter().find(|e| e.key.3 == 0).ok_or_else(|| {
                anyhow::anyhow!("task {task:?}: the base model's rows must have episode 0")
            })?;
            Ok(e.trajectory_values())
        };
        for (method, by_run) in methods {
            // Per metric, one trajectory per training run.
            let mut per_metric: Vec<Vec<Vec<f64>>> = vec![Vec::new(); TRAJECTORY_METRICS.len()];
            if *method == BASE {
                for &(r, n) in &runs {
                    let b = base_for(r)?;
                    for (m, tr) in per_metric.iter_mut().enumerate() {
                        tr.push(vec![b[m]; n]);
                    }
                }
            } else {
                for (run, eps) in by_run {
                    let Some(r) = run else {
                        bail!("task {task:?}, method {method:?} has rows without a training run");
                    };
                    let Some(&(_, n)) = runs.iter().find(|(rr, _)| rr == r) else {
                        bail!(
                            "the split has no training run {r} for task {task:?} (method {method:?})"
                        );
                    };
                    let b = base_for(*r)?;
                    let mut eps: Vec<&&EpisodeRow> = eps.iter().filter(|e| e.key.3 > 0).collect();
                    eps.sort_by_key(|e| e.key.3);
                    for (m, tr) in per_metric.iter_mut().enumerate() {
                        let points: Vec<(usize, f64)> = eps
                            .iter()
                            .map(|e| (e.n_seen as usize, e.trajectory_values()[m]))
                            .collect();
                        let t = curves::trajectory(n, b[m], &points).with_context(|| {
                            format!("trajectory of task {task:?}, method {method:?}, run {r}")
                        })?;
                        tr.push(t);
                    }
                }
            }
            for (m, metric) in TRAJECTORY_METRICS.iter().enumerate() {
                let values = curves::mean_curves(&per_metric[m]).with_context(|| {
                    format!(
                        "averaging the trajectories of task {task:?}, method {method:?} over \
                         training runs (their streams must have one length)"
                    )
                })?;
                let auc = curves::trajectory_auc(&values);
                let nos = (*metric == "dice_final").then(|| curves::nos(&values, threshold));
                out.push(TrajectoryRow {
                    task: task.to_string(),
                    method: method.to_string(),
                    metric,
                    values,
                    auc,
                    nos,
                });
            }
        }
    }
    Ok(out)
}
