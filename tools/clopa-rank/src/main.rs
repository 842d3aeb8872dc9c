//! `clopa-rank`: significance ranking of the methods and the paper's Tables 2, 3 and Fig. 2
//! (DESIGN.md protocol step 6).
//!
//! Where things are: `input.rs` reads and validates `cases.parquet` / `final.parquet` /
//! `trajectory.parquet` and picks the final episode; `report.rs` ranks every (task, metric) with
//! `clopa-stats` and renders the Markdown tables; `figure.rs` draws Fig. 2 with plotters; this
//! file parses the arguments and writes every output atomically.
//!
//! Decisions documented here (and in `--help`):
//! - Table 2 reads `final.parquet` (clopa-eval): per case, the curves of every training run's
//!   final episode averaged before NoI and failure are taken, as the reference does (paper §3:
//!   metrics are averaged across runs before statistics; IS_Validate takes NoI from the
//!   run-averaged curve). A `cases.parquet` of a single training run gives the same; one of
//!   several runs is refused, as its per-run NoI and failures cannot be combined faithfully.
//! - Cases are paired by `case_id`; cases missing for some method of a task are left out (with
//!   a warning).
//! - Table 3 pairs the methods along the stream position; NoF there is tested with the Wilcoxon
//!   test on the per-position NoF % (McNemar needs per-case failures).
//! - Without `--trajectory`, Fig. 2 plots per-episode means from `cases.parquet` and Table 3
//!   says it has no data.

mod figure;
mod input;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use clopa_stats::RankMode;
use polars::prelude::{Column, DataFrame};

use report::MetricRanking;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// IS_Validate/CLoPA: two-sided test (Wilcoxon, McNemar exact for failures), the better mean
    /// wins a significant pair, dense ranks of wins.
    IsValidate,
    /// MSD/challengeR: one-sided Wilcoxon with continuity correction (normal approximation), a
    /// significant pair is a win, "min" ranks of wins.
    Challenger,
}

/// Rank methods by paired significance tests and write the paper's Tables 2 and 3 and Fig. 2.
///
/// Reads `cases.parquet` and `final.parquet` (and optionally `trajectory.parquet`) written by
/// clopa-eval and writes into DIR: pairs.parquet (every ordered pair of methods per task, table
/// and metric, with its test and p-value), ranking.parquet (wins and rank per method), table2.md
/// (final episode), table3.md (trajectory AUCs), fig2.png and fig2.svg.
///
/// Final episode (Table 2): final.parquet, where each case's curves of every training run's final
/// episode were averaged before NoI and failure were taken (the reference's order). Table 3 pairs
/// methods along the stream position (NoF there: Wilcoxon on the per-position NoF %). Bold = rank
/// 1 of a metric within a task.
#[derive(Debug, Parser)]
#[command(
    name = "clopa-rank",
    version,
    args_override_self = true,
    after_help = "Examples:\n  clopa-eval steps/*.parquet --split split.parquet --threshold 0.9 -o eval/\n  clopa-rank eval/cases.parquet --trajectory eval/trajectory.parquet \\\n      -o report/\n  # (Table 2 from eval/final.parquet, found next to cases.parquet)\n  clopa-rank eval/cases.parquet -o report-msd/ --mode challenger"
)]
struct Args {
    /// cases.parquet from clopa-eval.
    cases: PathBuf,
    /// final.parquet from clopa-eval (Table 2's cases) [default: final.parquet beside CASES when
    /// CASES is a cases.parquet, else CASES itself, which then must hold one training run per
    /// method].
    #[arg(long = "final", value_name = "F")]
    final_cases: Option<PathBuf>,
    /// trajectory.parquet from clopa-eval (Table 3 and the Fig. 2 curves).
    #[arg(long, value_name = "T")]
    trajectory: Option<PathBuf>,
    /// Output folder.
    #[arg(short, long, value_name = "DIR", value_parser = clopa_cli::not_stdout)]
    output: PathBuf,
    /// Ranking scheme.
    #[arg(long, value_enum, default_value = "is-validate")]
    mode: Mode,
    /// Significance level (no multiple-comparison correction).
    #[arg(long, default_value_t = 0.05, value_parser = parse_alpha)]
    alpha: f64,
    /// Expert Dice threshold for the red line of Fig. 2 [default: the one clopa-eval recorded in
    /// cases.parquet's metadata].
    #[arg(long, value_parser = clopa_cli::parse_unit_interval)]
    threshold: Option<f64>,
    /// Steps per curve (1 + edits; 101 in the paper), for nNoI = 100·NoI/N [default: the one
    /// clopa-eval recorded in cases.parquet's metadata; needed when that metadata was lost].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    steps: Option<u32>,
    /// Name of the base model's rows in the tables and the figure (method `base`), e.g. the
    /// model a CPU run adapts instead of nnInteractive.
    #[arg(long, value_name = "NAME", default_value = "nnInteractive", value_parser = parse_label)]
    base_label: String,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long)]
    quiet: bool,
}

/// `--base-label`: a name to print in a table cell, so not empty and on one line.
fn parse_label(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the base rows need a name".into())
    } else if s.chars().any(char::is_control) {
        Err(format!(
            "{s:?}: a name on one line, without control characters"
        ))
    } else {
        Ok(s.to_string())
    }
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    let a: f64 = s.parse().map_err(|_| format!("\"{s}\" is not a number"))?;
    if a > 0.0 && a < 1.0 {
        Ok(a)
    } else {
        Err(format!("alpha must lie in (0, 1), got {a}"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    clopa_cli::run_main("clopa-rank", args.verbose, args.quiet, || run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mode = match args.mode {
        Mode::IsValidate => RankMode::IsValidate,
        Mode::Challenger => RankMode::ChallengeR,
    };
    clopa_cli::check_output_dir(&args.output)?;
    // Each output file too, before the work: a folder in a file's place would otherwise fail a
    // late write and leave the first outputs of the set beside it.
    for name in clopa_cli::outputs::RANK {
        clopa_cli::check_output(&args.output.join(name))?;
    }
    let (cases, settings) = input::read_cases(&args.cases)?;
    // nNoI needs the steps per curve; guessing the paper's 101 would print a wrong nNoI for
    // any other protocol (e.g. 5.94 instead of 100 for 6-step curves).
    let n_steps = match args.steps.map(|n| n as usize).or(settings.n_steps) {
        Some(n) => n,
        None => anyhow::bail!(
            "{} has no clopa-eval settings in its metadata (`{}`; rewriting a table with \
             another tool drops it), so the steps per curve are unknown: pass --steps N \
             (1 + edits, 101 in the paper)",
            args.cases.display(),
            clopa_frame::KEY_SETTINGS
        ),
    };
    check_noi(&cases, n_steps, &args.cases)?;
    let trajectory = args
        .trajectory
        .as_deref()
        .map(input::read_trajectory)
        .transpose()?;
    // The sibling only beside a file named cases.parquet: beside a filtered copy (say one run's
    // cases) it would belong to other data.
    let final_path = args.final_cases.clone().or_else(|| {
        let sibling = args.cases.with_file_name("final.parquet");
        (args.cases.file_name() == Some("cases.parquet".as_ref()) && sibling.is_file())
            .then_some(sibling)
    });
    tracing::info!(
        "Table 2 from {}",
        final_path.as_deref().unwrap_or(&args.cases).display()
    );
    let final_cases = match &final_path {
        Some(path) => {
            let (rows, _) = input::read_cases(path)?;
            check_noi(&rows, n_steps, path)?;
            // Table 2 and Table 3 must speak of the same tasks (one clopa-eval run's tables).
            let tasks = |rows: &[input::CaseRow]| -> std::collections::BTreeSet<String> {
                rows.iter().map(|r| r.task.clone()).collect()
            };
            let (of_final, of_cases) = (tasks(&rows), tasks(&cases));
            if of_final != of_cases {
                anyhow::bail!(
                    "{} holds task(s) {of_final:?} but {} holds {of_cases:?}: give the \
                     final.parquet of the same clopa-eval run",
                    path.display(),
                    args.cases.display()
                );
            }
            input::final_cases(&rows, path)?
        }
        None => input::final_cases(&cases, &args.cases)?,
    };
    let (final_results, dropped) = report::rank_final(&final_cases, n_steps, mode, args.alpha)?;
    for (task, n) in dropped.iter().filter(|(_, n)| **n > 0) {
        tracing::warn!(
            "task {task}: {n} case(s) are missing for some method and were left out of the tests"
        );
    }
    for (task, methods) in &final_cases {
        if methods.len() < 2 {
            tracing::warn!("task {task}: only one method, nothing to rank");
        }
    }
    let traj_results = match &trajectory {
        Some(rows) => report::rank_trajectory(rows, mode, args.alpha)?,
        None => Vec::new(),
    };

    let iter_label = format!("Iter. {}", n_steps.saturating_sub(1));
    let table2 = report::markdown(
        "Table 2. Final-episode performance. Means over cases (each case's curves averaged over training and inference runs first); nNoI = 100·mean(NoI)/N with N the steps per curve (101 in the paper), NoF = % of failed cases. Bold: rank 1 per metric and task.",
        &final_results,
        &[
            "dice_init",
            "dice_final",
            "dice_nauc",
            "nsd_init",
            "nsd_final",
            "nsd_nauc",
            "noi",
            "failed",
        ],
        &iter_label,
        &args.base_label,
    );
    let table3 = report::markdown(
        "Table 3. Trajectory AUC performance. AUCs of the expected-performance trajectories over the stream (nNoI and NoF in %). Bold: rank 1 per metric and task.",
        &traj_results,
        &report::TRAJECTORY_METRICS,
        &iter_label,
        &args.base_label,
    );

    let all: Vec<&MetricRanking> = final_results.iter().chain(&traj_results).collect();
    let settings_json = serde_json::json!({
        "cases": args.cases.display().to_string(),
        "final": final_path.as_ref().map(|p| p.display().to_string()),
        "trajectory": args.trajectory.as_ref().map(|p| p.display().to_string()),
        "mode": format!("{mode}"),
        "alpha": args.alpha,
        "base_label": args.base_label,
    });
    let mut pairs = pairs_frame(&all)?;
    let mut ranking = ranking_frame(&all)?;

    let mut panels = match &trajectory {
        Some(rows) => figure::panels_from_trajectory(rows),
        None => figure::panels_from_cases(&cases),
    };
    for p in &mut panels {
        p.threshold = args
            .threshold
            .or_else(|| settings.task_thresholds.get(&p.task).copied())
            .or(settings.threshold);
        if p.threshold.is_none() {
            tracing::warn!(
                "task {}: no expert threshold known (give --threshold): its Fig. 2 panel has \
                 no red line",
                p.task
            );
        }
    }

    let out = &args.output;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the folder {}", out.display()))?;
    let by = clopa_frame::Writer {
        tool: "clopa-rank",
        version: env!("CARGO_PKG_VERSION"),
        settings: &settings_json,
    };
    clopa_frame::write_parquet(&out.join("pairs.parquet"), &mut pairs, by)?;
    clopa_frame::write_parquet(&out.join("ranking.parquet"), &mut ranking, by)?;
    write_text(&out.join("table2.md"), &table2)?;
    write_text(&out.join("table3.md"), &table3)?;
    for (name, svg) in [("fig2.png", false), ("fig2.svg", true)] {
        let path = out.join(name);
        let mut with_text = true;
        clopa_cli::write_atomic_path(&path, |tmp| {
            with_text = figure::write_figure(tmp, svg, &panels, &args.base_label)?;
            Ok(())
        })?;
        if !with_text {
            tracing::warn!(
                "{}: no font could be loaded, drawn without text",
                path.display()
            );
        }
    }
    tracing::info!(
        "ranked {} task(s), {} metric table(s); wrote {}",
        final_cases.len(),
        all.len(),
        out.display()
    );
    Ok(())
}

/// NoI cannot exceed the steps per curve (the failure value is the curve's length).
fn check_noi(rows: &[input::CaseRow], n_steps: usize, path: &Path) -> anyhow::Result<()> {
    if let Some((row, noi)) = rows
        .iter()
        .map(|c| c.noi)
        .enumerate()
        .find(|(_, n)| *n > n_steps as f64)
    {
        anyhow::bail!(
            "{}: noi is {noi} in row {row}, more than the {n_steps} steps per curve",
            path.display()
        );
    }
    Ok(())
}

fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    // write_atomic_path rather than write_atomic: the file gets the usual permissions (0644 under
    // the common umask) instead of the temporary file's 0600.
    clopa_cli::write_atomic_path(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("cannot write {}", path.display()))
    })
}

fn pairs_frame(results: &[&MetricRanking]) -> anyhow::Result<DataFrame> {
    let rows: Vec<(&MetricRanking, &clopa_stats::PairResult)> = results
        .iter()
        .flat_map(|r| r.pairs.iter().map(move |p| (*r, p)))
        .collect();
    let mut cols = key_columns(&rows);
    cols.extend([
        Column::new(
            "method".into(),
            rows.iter()
                .map(|(_, p)| p.method.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "opponent".into(),
            rows.iter()
                .map(|(_, p)| p.opponent.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "test".into(),
            rows.iter()
                .map(|(_, p)| p.test.to_string())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "p_value".into(),
            rows.iter().map(|(_, p)| p.p_value).collect::<Vec<f64>>(),
        ),
        Column::new(
            "method_mean".into(),
            rows.iter()
                .map(|(_, p)| p.method_mean)
                .collect::<Vec<f64>>(),
        ),
        Column::new(
            "opponent_mean".into(),
            rows.iter()
                .map(|(_, p)| p.opponent_mean)
                .collect::<Vec<f64>>(),
        ),
        Column::new(
            "win".into(),
            rows.iter().map(|(_, p)| p.win).collect::<Vec<bool>>(),
        ),
    ]);
    Ok(DataFrame::new(rows.len(), cols)?)
}

/// The key columns every ranking table starts with: task, table (2 or 3) and metric.
fn key_columns<T>(rows: &[(&MetricRanking, T)]) -> Vec<Column> {
    vec![
        Column::new(
            "task".into(),
            rows.iter()
                .map(|(r, _)| r.task.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "table".into(),
            rows.iter().map(|(r, _)| r.table.name()).collect::<Vec<_>>(),
        ),
        Column::new(
            "metric".into(),
            rows.iter()
                .map(|(r, _)| r.metric.as_str())
                .collect::<Vec<_>>(),
        ),
    ]
}

fn ranking_frame(results: &[&MetricRanking]) -> anyhow::Result<DataFrame> {
    type RankRow<'a> = (&'a MetricRanking, &'a (String, f64, u32, u32));
    let rows: Vec<RankRow> = results
        .iter()
        .flat_map(|r| r.ranks.iter().map(move |m| (*r, m)))
        .collect();
    let mut cols = key_columns(&rows);
    cols.extend([
        Column::new(
            "method".into(),
            rows.iter().map(|(_, m)| m.0.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "mean".into(),
            rows.iter().map(|(_, m)| m.1).collect::<Vec<f64>>(),
        ),
        Column::new(
            "wins".into(),
            rows.iter().map(|(_, m)| m.2).collect::<Vec<u32>>(),
        ),
        Column::new(
            "rank".into(),
            rows.iter().map(|(_, m)| m.3).collect::<Vec<u32>>(),
        ),
    ]);
    Ok(DataFrame::new(rows.len(), cols)?)
}
