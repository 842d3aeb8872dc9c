//! Significance ranking per task and metric, and the paper's Tables 2 and 3 (Markdown and
//! Parquet rows).

use std::collections::{BTreeMap, BTreeSet};

use clopa_stats::{Direction, PairResult, PairTest, RankMode, RankOptions, rank_methods};

use crate::input::{CASE_METRICS, FinalCases, TrajectoryRow};

/// The trajectory metrics of `trajectory.parquet`, in table order.
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

/// Which table a result belongs to (`table` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Final,
    Trajectory,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Final => "final",
            Table::Trajectory => "trajectory",
        }
    }
}

/// One ranked (task, table, metric): its pairs, and per method the displayed value and rank.
#[derive(Debug, Clone)]
pub struct MetricRanking {
    pub task: String,
    pub table: Table,
    pub metric: String,
    pub pairs: Vec<PairResult>,
    /// Per method, in table order: (method, mean of the paired values, wins, rank).
    pub ranks: Vec<(String, f64, u32, u32)>,
    /// Per method: the number shown in the Markdown table.
    pub display: BTreeMap<String, f64>,
}

/// The method order of the tables: base, in, cn, then the rest alphabetically.
pub fn method_order<'a>(methods: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let known = ["base", "in", "cn"];
    let mut v: Vec<String> = methods.into_iter().cloned().collect();
    v.sort_by_key(|m| {
        (
            known.iter().position(|k| k == m).unwrap_or(known.len()),
            m.clone(),
        )
    });
    v.dedup();
    v
}

/// The name a method has in the paper's tables; the base model's rows are labelled `base_label`
/// (`nnInteractive` in the paper, `--base-label`).
pub fn display_name(method: &str, base_label: &str) -> String {
    match method {
        "base" => base_label.to_string(),
        "in" => "CLoPA-I.N".to_string(),
        "cn" => "CLoPA-C.N".to_string(),
        other => other.to_string(),
    }
}

fn options(direction: Direction, test: PairTest, mode: RankMode, alpha: f64) -> RankOptions {
    RankOptions {
        direction,
        test,
        mode,
        alpha,
    }
}

/// Ranks the final-episode metrics of every task (Table 2). Cases are paired by `case_id`; only
/// cases present for every method of the task are used (`dropped` counts the others per task).
pub fn rank_final(
    cases: &FinalCases,
    n_steps: usize,
    mode: RankMode,
    alpha: f64,
) -> anyhow::Result<(Vec<MetricRanking>, BTreeMap<String, usize>)> {
    let mut out = Vec::new();
    let mut dropped = BTreeMap::new();
    for (task, per_method) in cases {
        let methods = method_order(per_method.keys());
        let all: BTreeSet<&String> = per_method.values().flat_map(|c| c.keys()).collect();
        let common: Vec<&String> = all
            .iter()
            .copied()
            .filter(|c| per_method.values().all(|m| m.contains_key(*c)))
            .collect();
        dropped.insert(task.clone(), all.len() - common.len());
        let metrics: Vec<(&str, Direction, PairTest)> = CASE_METRICS
            .iter()
            .map(|m| (*m, Direction::HigherIsBetter, PairTest::Wilcoxon))
            .chain([("noi", Direction::LowerIsBetter, PairTest::Wilcoxon)])
            .chain([("failed", Direction::LowerIsBetter, PairTest::McNemar)])
            .collect();
        for (mi, (metric, direction, test)) in metrics.into_iter().enumerate() {
            let samples: Vec<(String, Vec<f64>)> = methods
                .iter()
                .map(|m| {
                    let c = &per_method[m];
                    let v = common
                        .iter()
                        .map(|id| {
                            let fc = &c[*id];
                            match mi {
                                0..=5 => fc.values[mi],
                                6 => fc.noi,
                                _ => f64::from(u8::from(fc.failed)),
                            }
                        })
                        .collect();
                    (m.clone(), v)
                })
                .collect();
            let r = rank_methods(&samples, &options(direction, test, mode, alpha))?;
            // Shown as in the paper: nNoI % = 100·mean(NoI)/N with N the curve length (101 in
            // the paper, where NoI of a failed case is 101), NoF % = 100·failures/n.
            let scale = match metric {
                "noi" => 100.0 / n_steps as f64,
                "failed" => 100.0,
                _ => 1.0,
            };
            let display = r
                .ranks
                .iter()
                .map(|m| (m.method.clone(), m.mean * scale))
                .collect();
            out.push(MetricRanking {
                task: task.clone(),
                table: Table::Final,
                metric: metric.to_string(),
                ranks: r
                    .ranks
                    .iter()
                    .map(|m| (m.method.clone(), m.mean, m.wins, m.rank))
                    .collect(),
                pairs: r.pairs,
                display,
            });
        }
    }
    Ok((out, dropped))
}

/// Ranks the trajectory metrics (Table 3): per task and metric, the methods' values are paired
/// along the stream position (positions present for every method); the table shows the
/// trajectory AUC (the row with a null position). NoF is tested with the Wilcoxon test on the
/// per-position NoF % values, since McNemar needs per-case failures that a trajectory does not
/// have.
pub fn rank_trajectory(
    rows: &[TrajectoryRow],
    mode: RankMode,
    alpha: f64,
) -> anyhow::Result<Vec<MetricRanking>> {
    // task → metric → method → (position → value, auc)
    type PerMethod = BTreeMap<String, (BTreeMap<u32, f64>, Option<f64>)>;
    let mut by: BTreeMap<String, BTreeMap<String, PerMethod>> = BTreeMap::new();
    for r in rows {
        let e = by
            .entry(r.task.clone())
            .or_default()
            .entry(r.metric.clone())
            .or_default()
            .entry(r.method.clone())
            .or_default();
        match r.position {
            Some(p) => {
                e.0.insert(p, r.value);
            }
            None => e.1 = Some(r.value),
        }
    }
    let mut out = Vec::new();
    for (task, metrics) in &by {
        let mut names: Vec<&String> = metrics.keys().collect();
        names.sort_by_key(|m| {
            (
                TRAJECTORY_METRICS.iter().position(|k| k == m).unwrap_or(99),
                (*m).clone(),
            )
        });
        for metric in names {
            let per_method = &metrics[metric];
            let methods = method_order(per_method.keys());
            let positions: Vec<u32> = per_method
                .values()
                .next()
                .map(|(p, _)| {
                    p.keys()
                        .copied()
                        .filter(|k| per_method.values().all(|(q, _)| q.contains_key(k)))
                        .collect()
                })
                .unwrap_or_default();
            let direction = if metric == "nnoi_pct" || metric == "nof_pct" {
                Direction::LowerIsBetter
            } else {
                Direction::HigherIsBetter
            };
            let samples: Vec<(String, Vec<f64>)> = methods
                .iter()
                .map(|m| {
                    (
                        m.clone(),
                        positions.iter().map(|p| per_method[m].0[p]).collect(),
                    )
                })
                .collect();
            let r = rank_methods(
                &samples,
                &options(direction, PairTest::Wilcoxon, mode, alpha),
            )?;
            let display = methods
                .iter()
                .map(|m| (m.clone(), per_method[m].1.unwrap_or(f64::NAN)))
                .collect();
            out.push(MetricRanking {
                task: task.clone(),
                table: Table::Trajectory,
                metric: metric.clone(),
                ranks: r
                    .ranks
                    .iter()
                    .map(|m| (m.method.clone(), m.mean, m.wins, m.rank))
                    .collect(),
                pairs: r.pairs,
                display,
            });
        }
    }
    Ok(out)
}

/// A number as the paper prints it: 3 decimals for scores in [0, 1], 3 significant digits
/// (without trailing zeros) for percentages.
fn format_value(metric: &str, v: f64) -> String {
    if v.is_nan() {
        return "–".to_string();
    }
    let percent = matches!(metric, "noi" | "failed" | "nnoi_pct" | "nof_pct");
    if !percent {
        return format!("{v:.3}");
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let digits = 3 - 1 - v.abs().log10().floor() as i32;
    let s = format!("{:.*}", digits.max(0) as usize, v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Table 2 or 3 as Markdown: per task, one row per method, bold = rank 1 (when there is more
/// than one method to rank).
pub fn markdown(
    title: &str,
    results: &[MetricRanking],
    metric_order: &[&str],
    iter_label: &str,
    base_label: &str,
) -> String {
    let mut s = String::new();
    s.push_str(&format!("{title}\n\n"));
    s.push_str(&format!(
        "| Task | Algorithm | Dice Init. | Dice {iter_label} | Dice nAUC | NSD Init. | NSD {iter_label} | NSD nAUC | nNoI | NoF |\n"
    ));
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let tasks: BTreeSet<&String> = results.iter().map(|r| &r.task).collect();
    if tasks.is_empty() {
        s.push_str("\n(no data)\n");
    }
    for task in tasks {
        let per_metric: Vec<Option<&MetricRanking>> = metric_order
            .iter()
            .map(|m| results.iter().find(|r| &r.task == task && r.metric == *m))
            .collect();
        let methods = method_order(per_metric.iter().flatten().flat_map(|r| r.display.keys()));
        for (i, method) in methods.iter().enumerate() {
            let task_cell = if i == 0 { task.as_str() } else { "" };
            s.push_str(&format!(
                "| {task_cell} | {} |",
                // a `|` in a name would end its cell
                display_name(method, base_label).replace('|', "\\|")
            ));
            for (metric, r) in metric_order.iter().zip(&per_metric) {
                let cell = match r {
                    Some(r) => {
                        let v = r.display.get(method).copied().unwrap_or(f64::NAN);
                        let text = format_value(metric, v);
                        let rank1 = r.ranks.len() > 1
                            && r.ranks
                                .iter()
                                .any(|(m, _, _, rank)| m == method && *rank == 1);
                        if rank1 { format!("**{text}**") } else { text }
                    }
                    None => "–".to_string(),
                };
                s.push_str(&format!(" {cell} |"));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_like_the_paper() {
        assert_eq!(format_value("dice_init", 0.50512), "0.505");
        assert_eq!(format_value("noi", 29.61), "29.6");
        assert_eq!(format_value("noi", 22.0), "22");
        assert_eq!(format_value("failed", 6.0606), "6.06");
        assert_eq!(format_value("failed", 0.0), "0");
        assert_eq!(format_value("nof_pct", 97.71), "97.7");
        assert_eq!(format_value("dice_final", f64::NAN), "–");
    }

    #[test]
    fn nnoi_is_normalised_by_the_curve_length() {
        // Every case fails with 5 edits (curves of 6 steps): NoI = 6 everywhere, so nNoI is 100 %,
        // whatever the paper's 101-step normalisation would say (5.94 %).
        let case = crate::input::FinalCase {
            values: [0.1; 6],
            noi: 6.0,
            failed: true,
        };
        let cases: FinalCases = BTreeMap::from([(
            "t".to_string(),
            BTreeMap::from([(
                "base".to_string(),
                (0..4).map(|i| (format!("c{i}"), case.clone())).collect(),
            )]),
        )]);
        let (ranks, _) = rank_final(&cases, 6, RankMode::IsValidate, 0.05).unwrap();
        let noi = ranks.iter().find(|r| r.metric == "noi").unwrap();
        assert!(
            (noi.display["base"] - 100.0).abs() < 1e-12,
            "{:?}",
            noi.display
        );
    }

    #[test]
    fn methods_are_ordered_and_named_as_in_the_paper() {
        let m = [
            "zeta".to_string(),
            "cn".to_string(),
            "base".to_string(),
            "in".to_string(),
        ];
        assert_eq!(method_order(m.iter()), vec!["base", "in", "cn", "zeta"]);
        assert_eq!(display_name("base", "nnInteractive"), "nnInteractive");
        assert_eq!(display_name("base", "clopa-tiny"), "clopa-tiny");
        assert_eq!(display_name("cn", "clopa-tiny"), "CLoPA-C.N");
        assert_eq!(display_name("two-phase", "x"), "two-phase");
    }
}
