//! CLI tests: a tiny hand-computed example (cases, episodes, trajectory), every kind of bad
//! input (exit 1, nothing written), the masks subcommand and the help text.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use polars::prelude::*;
use predicates::prelude::*;

fn bin() -> Command {
    Command::cargo_bin("clopa-eval").unwrap()
}

/// One steps row: (method, run, episode, n_seen, infer_run, case, step, dice, nsd).
type Row = (
    &'static str,
    Option<u32>,
    u32,
    u32,
    u32,
    &'static str,
    u32,
    f64,
    f64,
);

fn steps_frame(rows: &[Row]) -> DataFrame {
    let n = rows.len();
    DataFrame::new(
        n,
        vec![
            Column::new("task".into(), vec!["t"; n]),
            Column::new(
                "method".into(),
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            ),
            Column::new(
                "run".into(),
                rows.iter().map(|r| r.1).collect::<Vec<Option<u32>>>(),
            ),
            Column::new(
                "episode".into(),
                rows.iter().map(|r| r.2).collect::<Vec<u32>>(),
            ),
            Column::new(
                "n_seen".into(),
                rows.iter().map(|r| r.3).collect::<Vec<u32>>(),
            ),
            Column::new(
                "infer_run".into(),
                rows.iter().map(|r| r.4).collect::<Vec<u32>>(),
            ),
            Column::new(
                "case_id".into(),
                rows.iter().map(|r| r.5).collect::<Vec<_>>(),
            ),
            Column::new(
                "step".into(),
                rows.iter().map(|r| r.6).collect::<Vec<u32>>(),
            ),
            Column::new(
                "dice".into(),
                rows.iter().map(|r| r.7).collect::<Vec<f64>>(),
            ),
            Column::new("nsd".into(), rows.iter().map(|r| r.8).collect::<Vec<f64>>()),
            Column::new("fg_clicks".into(), vec![1u32; n]),
            Column::new("bg_clicks".into(), vec![1u32; n]),
            Column::new("seconds".into(), vec![0.5f64; n]),
        ],
    )
    .unwrap()
}

fn write(df: &mut DataFrame, path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    ParquetWriter::new(f).finish(df).unwrap();
}

fn read(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

/// Adds one curve (steps 0..) for each inference run given.
fn curve(
    rows: &mut Vec<Row>,
    (method, run, episode, n_seen): (&'static str, Option<u32>, u32, u32),
    case: &'static str,
    runs: &[(&[f64], &[f64])],
) {
    for (ir, (dice, nsd)) in runs.iter().enumerate() {
        for (s, (d, n)) in dice.iter().zip(nsd.iter()).enumerate() {
            rows.push((
                method, run, episode, n_seen, ir as u32, case, s as u32, *d, *n,
            ));
        }
    }
}

/// The tiny example, threshold 0.5, 3 steps, 2 holdout cases, 2 inference runs, one training
/// run with a stream of N = 4 and episodes at n_seen 2 and 4.
fn example(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut base = Vec::new();
    let b = ("base", None, 0, 0);
    // A: runs average to [0.3, 0.5, 0.4]; 0.5 only touches the threshold -> NoI 3, failed.
    curve(
        &mut base,
        b,
        "A",
        &[
            (&[0.2, 0.4, 0.4], &[0.1, 0.2, 0.3]),
            (&[0.4, 0.6, 0.4], &[0.1, 0.2, 0.3]),
        ],
    );
    curve(
        &mut base,
        b,
        "B",
        &[(&[0.1, 0.2, 0.4], &[0.5; 3]), (&[0.1, 0.2, 0.4], &[0.5; 3])],
    );
    let mut clopa = Vec::new();
    let e1 = ("in", Some(0), 1, 2);
    curve(
        &mut clopa,
        e1,
        "A",
        &[(&[0.1, 0.2, 0.3], &[0.5; 3]), (&[0.1, 0.2, 0.3], &[0.5; 3])],
    );
    curve(
        &mut clopa,
        e1,
        "B",
        &[
            (&[0.55, 0.6, 0.7], &[0.5; 3]),
            (&[0.55, 0.6, 0.7], &[0.5; 3]),
        ],
    );
    let e2 = ("in", Some(0), 2, 4);
    for case in ["A", "B"] {
        curve(
            &mut clopa,
            e2,
            case,
            &[(&[0.9; 3], &[0.5; 3]), (&[0.9; 3], &[0.5; 3])],
        );
    }
    let p1 = dir.join("base.parquet");
    let p2 = dir.join("in.parquet");
    write(&mut steps_frame(&base), &p1);
    write(&mut steps_frame(&clopa), &p2);

    // split: 4 train cases in run 0 (positions 1..4), 2 holdout cases.
    let n = 6;
    let mut split = DataFrame::new(
        n,
        vec![
            Column::new("task".into(), vec!["t"; n]),
            Column::new("case_id".into(), vec!["s1", "s2", "s3", "s4", "A", "B"]),
            Column::new(
                "split".into(),
                vec!["train", "train", "train", "train", "holdout", "holdout"],
            ),
            Column::new(
                "run".into(),
                vec![Some(0u32), Some(0), Some(0), Some(0), None, None],
            ),
            Column::new(
                "position".into(),
                vec![Some(3u32), Some(1), Some(4), Some(2), None, None],
            ),
            Column::new(
                "episode".into(),
                vec![Some(1u32), Some(1), Some(2), Some(2), None, None],
            ),
            Column::new(
                "role".into(),
                vec![
                    Some("train"),
                    Some("val"),
                    Some("train"),
                    Some("val"),
                    None,
                    None,
                ],
            ),
        ],
    )
    .unwrap();
    let ps = dir.join("split.parquet");
    write(&mut split, &ps);
    (p1, p2, ps)
}

fn bool_col(df: &DataFrame, name: &str) -> Vec<Option<bool>> {
    df.column(name).unwrap().bool().unwrap().iter().collect()
}

fn u32_col(df: &DataFrame, name: &str) -> Vec<Option<u32>> {
    df.column(name).unwrap().u32().unwrap().iter().collect()
}

fn f64_col(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name).unwrap().f64().unwrap().iter().collect()
}

fn assert_close(got: &[Option<f64>], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?}");
    for (g, w) in got.iter().zip(want) {
        let g = g.unwrap_or(f64::NAN);
        assert!(
            (g - w).abs() < 1e-12 || (g.is_nan() && w.is_nan()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn tiny_example_matches_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, ps) = example(dir.path());
    let out = dir.path().join("eval");
    bin()
        .args([p1.as_os_str(), p2.as_os_str()])
        .args(["--threshold", "0.5", "--split"])
        .arg(&ps)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();

    // cases: sorted by (task, method, run, episode, case): base A, base B, in/1 A, in/1 B, in/2 A, in/2 B.
    let cases = read(&out.join("cases.parquet"));
    assert_eq!(
        cases
            .get_column_names()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        [
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
            "failed"
        ]
    );
    assert_eq!(cases.column("run").unwrap().dtype(), &DataType::UInt32);
    let noi = u32_col(&cases, "noi");
    assert_eq!(noi, [Some(3), Some(3), Some(3), Some(1), Some(1), Some(1)]);
    let failed = bool_col(&cases, "failed");
    assert_eq!(
        failed,
        [
            Some(true),
            Some(true),
            Some(true),
            Some(false),
            Some(false),
            Some(false)
        ]
    );
    assert_close(
        &f64_col(&cases, "dice_init"),
        &[0.3, 0.1, 0.1, 0.55, 0.9, 0.9],
        "dice_init",
    );
    assert_close(
        &f64_col(&cases, "dice_final"),
        &[0.4, 0.4, 0.3, 0.7, 0.9, 0.9],
        "dice_final",
    );
    assert_close(
        &f64_col(&cases, "dice_nauc"),
        &[0.425, 0.225, 0.2, 0.6125, 0.9, 0.9],
        "dice_nauc",
    );
    assert_close(
        &f64_col(&cases, "nsd_nauc"),
        &[0.2, 0.5, 0.5, 0.5, 0.5, 0.5],
        "nsd_nauc",
    );

    let eps = read(&out.join("episodes.parquet"));
    assert_eq!(eps.height(), 3);
    assert_close(
        &f64_col(&eps, "dice_init"),
        &[0.2, 0.325, 0.9],
        "ep dice_init",
    );
    assert_close(
        &f64_col(&eps, "dice_final"),
        &[0.4, 0.5, 0.9],
        "ep dice_final",
    );
    assert_close(
        &f64_col(&eps, "dice_nauc"),
        &[0.325, 0.40625, 0.9],
        "ep dice_nauc",
    );
    assert_close(&f64_col(&eps, "nsd_init"), &[0.3, 0.5, 0.5], "ep nsd_init");
    assert_close(
        &f64_col(&eps, "nsd_final"),
        &[0.4, 0.5, 0.5],
        "ep nsd_final",
    );
    assert_close(&f64_col(&eps, "nsd_nauc"), &[0.35, 0.5, 0.5], "ep nsd_nauc");
    assert_close(
        &f64_col(&eps, "nnoi_pct"),
        &[100.0, 200.0 / 3.0, 100.0 / 3.0],
        "nnoi_pct",
    );
    assert_close(&f64_col(&eps, "nof_pct"), &[100.0, 50.0, 0.0], "nof_pct");
    let n_cases = u32_col(&eps, "n_cases");
    assert_eq!(n_cases, [Some(2); 3]);
    let n_seen = u32_col(&eps, "n_seen");
    assert_eq!(n_seen, [Some(0), Some(2), Some(4)]);

    // trajectory of `in`, dice_final: base 0.4 at position 1, episode 1 (n_seen 2) at 2-3,
    // episode 2 (n_seen 4) at 4.
    let tr = read(&out.join("trajectory.parquet"));
    type Picked = (Vec<Option<f64>>, Vec<Option<u32>>, Vec<Option<f64>>);
    let pick = |method: &str, metric: &str| -> Picked {
        let m = tr.column("method").unwrap().str().unwrap();
        let k = tr.column("metric").unwrap().str().unwrap();
        let idx: Vec<usize> = (0..tr.height())
            .filter(|&i| m.get(i) == Some(method) && k.get(i) == Some(metric))
            .collect();
        let v = f64_col(&tr, "value");
        let p = u32_col(&tr, "position");
        let nos = f64_col(&tr, "nos");
        (
            idx.iter().map(|&i| v[i]).collect(),
            idx.iter().map(|&i| p[i]).collect(),
            idx.iter().map(|&i| nos[i]).collect(),
        )
    };
    let (v, p, nos) = pick("in", "dice_final");
    assert_eq!(p, [Some(1), Some(2), Some(3), Some(4), None]);
    // AUC = (0.45 + 0.5 + 0.7) / 3; NoS = argmax(traj >= 0.5) / N = 1 / 4.
    assert_close(&v, &[0.4, 0.5, 0.5, 0.9, 1.65 / 3.0], "in dice_final");
    assert_eq!(&nos[..4], &[None; 4]);
    assert_close(&nos[4..], &[0.25], "NoS");
    let (v, _, nos) = pick("in", "nof_pct");
    assert_close(&v, &[100.0, 50.0, 50.0, 0.0, 50.0], "in nof_pct");
    assert_eq!(nos, [None; 5]);
    let (v, _, nos) = pick("base", "dice_final");
    assert_close(&v, &[0.4, 0.4, 0.4, 0.4, 0.4], "base dice_final");
    assert!(nos[4].unwrap().is_nan(), "base never reaches 0.5: NoS NaN");

    // final.parquet: the last episode of each method, run null (one training run here, so the
    // values are the episode's cases).
    let fin = read(&out.join("final.parquet"));
    assert_eq!(fin.get_column_names(), cases.get_column_names());
    assert_eq!(fin.column("run").unwrap().null_count(), 4);
    let ep = u32_col(&fin, "episode");
    assert_eq!(ep, [Some(0), Some(0), Some(2), Some(2)]);
    let noi = u32_col(&fin, "noi");
    assert_eq!(noi, [Some(3), Some(3), Some(1), Some(1)]);
    assert_close(
        &f64_col(&fin, "dice_nauc"),
        &[0.425, 0.225, 0.9, 0.9],
        "final dice_nauc",
    );

    // provenance
    let mut r = ParquetReader::new(std::fs::File::open(out.join("cases.parquet")).unwrap());
    let meta = r.get_metadata().unwrap();
    let kv = meta.key_value_metadata().clone().unwrap();
    let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
    assert_eq!(get("clopa.tool").as_deref(), Some("clopa-eval"));
    assert!(get("clopa.version").is_some());
    let settings: serde_json::Value =
        serde_json::from_str(&get("clopa.settings").unwrap()).unwrap();
    assert_eq!(settings["threshold"], 0.5);
}

#[test]
fn threshold_from_manifest_and_no_split_means_no_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, _) = example(dir.path());
    let m = dir.path().join("t.toml");
    std::fs::write(
        &m,
        "name = \"t\"\ndataset = \"T\"\nchannel = 0\nlabels = [1]\nlargest_component = false\n\
         nsd_tolerance_mm = 1.0\nexpert_dice = 0.35\n",
    )
    .unwrap();
    let out = dir.path().join("eval");
    // an earlier run with --split left a trajectory: it does not belong to the new tables
    let (_, _, split) = example(dir.path());
    bin()
        .arg(&p1)
        .arg(&p2)
        .args(["--threshold", "0.5", "--split"])
        .arg(&split)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    assert!(out.join("trajectory.parquet").exists());
    bin()
        .arg(&p1)
        .arg(&p2)
        .arg("--manifest")
        .arg(&m)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("removed"));
    assert!(!out.join("trajectory.parquet").exists());
    let cases = read(&out.join("cases.parquet"));
    // At 0.35 base case A (0.3, 0.5, 0.4) passes at step 2.
    let noi = u32_col(&cases, "noi");
    assert_eq!(noi[0], Some(2));
}

/// Table 2's input averages the final episode's curves over training runs before NoI and failure
/// are taken (the reference's order); per-run NoI averaged and a majority vote on failures would
/// say "not failed, NoI (1 + 1 + 3) / 3" for this case instead.
#[test]
fn final_table_averages_training_runs_before_noi_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    // an earlier episode of run 0 that must not count
    curve(
        &mut rows,
        ("in", Some(0), 1, 2),
        "A",
        &[(&[0.0; 3], &[0.0; 3])],
    );
    for (run, d) in [(0, 0.9), (1, 0.9), (2, 0.3)] {
        curve(
            &mut rows,
            ("in", Some(run), 2, 4),
            "A",
            &[(&[d; 3], &[d; 3]), (&[d; 3], &[d; 3])],
        );
    }
    let p = dir.path().join("in.parquet");
    write(&mut steps_frame(&rows), &p);
    let out = dir.path().join("eval");
    bin()
        .arg(&p)
        .args(["--threshold", "0.8", "-o"])
        .arg(&out)
        .assert()
        .success();
    let cases = read(&out.join("cases.parquet"));
    let noi = u32_col(&cases, "noi");
    assert_eq!(
        noi,
        [Some(3), Some(1), Some(1), Some(3)],
        "per run and episode"
    );
    let fin = read(&out.join("final.parquet"));
    assert_eq!(fin.height(), 1);
    let noi = u32_col(&fin, "noi");
    assert_eq!(noi, [Some(3)], "the mean curve 0.7 never exceeds 0.8");
    let failed = bool_col(&fin, "failed");
    assert_eq!(failed, [Some(true)]);
    assert_close(&f64_col(&fin, "dice_final"), &[0.7], "mean of the runs");
    assert_close(&f64_col(&fin, "nsd_nauc"), &[0.7], "mean of the runs");
    let ep = u32_col(&fin, "episode");
    assert_eq!(ep, [Some(2)]);
    let n_seen = u32_col(&fin, "n_seen");
    assert_eq!(n_seen, [Some(4)]);
}

/// Runs the tool on bad input and checks exit code 1, the message, and that nothing was written.
fn fails_with(args: &[&std::ffi::OsStr], out: &Path, needles: &[&str]) {
    let mut pred = predicate::str::contains("clopa-eval: error").boxed();
    for n in needles {
        pred = pred.and(predicate::str::contains(n.to_string())).boxed();
    }
    bin()
        .args(args)
        .arg("-o")
        .arg(out)
        .assert()
        .code(1)
        .stderr(pred);
    assert!(
        !out.exists() || std::fs::read_dir(out).unwrap().next().is_none(),
        "partial output"
    );
}

#[test]
fn a_manifest_of_another_task_and_an_unwritable_output_fail_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, _) = example(dir.path());
    // the steps are task "t": another task's expert Dice is no threshold for them
    let m = dir.path().join("other.toml");
    std::fs::write(
        &m,
        "name = \"other\"\ndataset = \"O\"\nchannel = 0\nlabels = [1]\n\
         largest_component = false\nnsd_tolerance_mm = 1.0\nexpert_dice = 0.35\n",
    )
    .unwrap();
    let out = dir.path().join("eval");
    fails_with(
        &[p1.as_os_str(), "--manifest".as_ref(), m.as_os_str()],
        &out,
        &["other.toml", "\"other\"", "\"t\""],
    );
    // a folder where final.parquet goes: refused before cases.parquet is written
    std::fs::create_dir_all(out.join("final.parquet")).unwrap();
    bin()
        .arg(&p1)
        .arg(&p2)
        .args(["--threshold", "0.5", "-o"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("final.parquet"));
    assert!(!out.join("cases.parquet").exists());
}

#[test]
fn bad_inputs_are_errors_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, ps) = example(dir.path());
    let out = dir.path().join("eval");
    let thr = ["--threshold".as_ref(), "0.5".as_ref()];

    // missing column: named with its file
    let mut df = read(&p1).drop("nsd").unwrap();
    let missing = dir.path().join("no_nsd.parquet");
    write(&mut df, &missing);
    fails_with(
        &[missing.as_os_str(), thr[0], thr[1]],
        &out,
        &["`nsd`", "no_nsd.parquet"],
    );

    // the same file twice is named as such
    fails_with(
        &[p1.as_os_str(), p1.as_os_str(), thr[0], thr[1]],
        &out,
        &["base.parquet is given twice", "arguments 1 and 2"],
    );
    // duplicated row: a copy of a file
    let copy = dir.path().join("copy.parquet");
    std::fs::copy(&p1, &copy).unwrap();
    fails_with(
        &[p1.as_os_str(), copy.as_os_str(), thr[0], thr[1]],
        &out,
        &["duplicated row", "copy.parquet"],
    );

    // (a --threshold outside [0, 1] is a usage error: `usage_errors_exit_2`)

    // columns of the wrong type are named, not cast: text Dice, fractional steps, numeric methods
    for (name, to, needle) in [
        ("dice", DataType::String, "expected numbers"),
        ("step", DataType::Float64, "expected integers"),
        ("method", DataType::Int32, "expected text"),
    ] {
        let mut df = read(&p1);
        let col = if name == "method" {
            Column::new("method".into(), vec![1i32; df.height()])
        } else {
            df.column(name).unwrap().cast(&to).unwrap()
        };
        df.replace(name, col).unwrap();
        let p = dir.path().join(format!("typed_{name}.parquet"));
        write(&mut df, &p);
        fails_with(
            &[p.as_os_str(), thr[0], thr[1]],
            &out,
            &[
                &format!("`{name}`"),
                needle,
                &format!("typed_{name}.parquet"),
            ],
        );
    }

    // empty table
    let mut empty = read(&p1).head(Some(0));
    let empty_path = dir.path().join("empty.parquet");
    write(&mut empty, &empty_path);
    fails_with(
        &[empty_path.as_os_str(), thr[0], thr[1]],
        &out,
        &["empty.parquet", "no rows"],
    );

    // inconsistent curve lengths: one more step on one curve
    let mut rows = Vec::new();
    curve(
        &mut rows,
        ("base", None, 0, 0),
        "C",
        &[(&[0.1, 0.2, 0.3, 0.4], &[0.1, 0.2, 0.3, 0.4])],
    );
    let long = dir.path().join("long.parquet");
    write(&mut steps_frame(&rows), &long);
    fails_with(
        &[p1.as_os_str(), long.as_os_str(), thr[0], thr[1]],
        &out,
        // both files named, the run as a number or "none", the likely cause
        &[
            "inconsistent curve lengths",
            "long.parquet's curve",
            "base.parquet's curve",
            "run none",
            "different --edits",
        ],
    );

    // trajectories without base rows
    fails_with(
        &[
            p2.as_os_str(),
            thr[0],
            thr[1],
            "--split".as_ref(),
            ps.as_os_str(),
        ],
        &out,
        &["base model"],
    );

    // a split whose holdout is not where the steps come from (case B is a train case there)
    let mut other = read(&ps);
    other
        .replace(
            "case_id",
            Column::new("case_id".into(), vec!["s1", "B", "s3", "s4", "A", "C"]),
        )
        .unwrap();
    let other_path = dir.path().join("other-split.parquet");
    write(&mut other, &other_path);
    fails_with(
        &[
            p1.as_os_str(),
            p2.as_os_str(),
            thr[0],
            thr[1],
            "--split".as_ref(),
            other_path.as_os_str(),
        ],
        &out,
        &["\"B\"", "not a holdout case", "other-split.parquet"],
    );

    // a missing input file
    fails_with(
        &[dir.path().join("nope.parquet").as_os_str(), thr[0], thr[1]],
        &out,
        &["nope.parquet"],
    );
}

#[test]
fn usage_errors_exit_2() {
    bin().args(["steps.parquet", "-o", "x"]).assert().code(2);
    bin()
        .args(["steps.parquet", "--threshold", "1.5", "-o", "x"])
        .assert()
        .code(2);
    // Three tables cannot go to stdout (no folder named `-` either).
    bin()
        .args(["steps.parquet", "--threshold", "0.5", "-o", "-"])
        .assert()
        .code(2);
    bin()
        .args([
            "steps.parquet",
            "--threshold",
            "0.5",
            "--manifest",
            "m.toml",
            "-o",
            "x",
        ])
        .assert()
        .code(2);
}

#[test]
fn masks_prints_dice_and_nsd_and_rejects_other_grids() {
    use clopa_volume::{Volume, write_nifti};
    let dir = tempfile::tempdir().unwrap();
    let shape = [6, 6, 6];
    let mut a = vec![0u8; 216];
    let mut b = vec![0u8; 216];
    for x in 1..4 {
        for y in 1..4 {
            for z in 1..4 {
                a[(x * 6 + y) * 6 + z] = 1;
                b[(x * 6 + y) * 6 + z + 1] = 1;
            }
        }
    }
    let pa = dir.path().join("a.nii.gz");
    let pb = dir.path().join("b.nii.gz");
    let pc = dir.path().join("c.nii");
    write_nifti(
        &pa,
        &Volume::from_shape(shape, [1.0, 1.0, 2.0], a.clone()).unwrap(),
    )
    .unwrap();
    write_nifti(
        &pb,
        &Volume::from_shape(shape, [1.0, 1.0, 2.0], b.clone()).unwrap(),
    )
    .unwrap();
    write_nifti(
        &pc,
        &Volume::from_shape(shape, [1.0, 1.0, 1.0], b.clone()).unwrap(),
    )
    .unwrap();

    let out = bin()
        .args(["masks", "--pred"])
        .arg(&pa)
        .arg("--ref")
        .arg(&pb)
        .args(["--tolerance-mm", "2.0"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let want_nsd = clopa_metrics::nsd(&a, &b, shape, [1.0, 1.0, 2.0], 2.0).unwrap();
    assert!(
        (line["dice"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "{line}"
    );
    assert!(
        (line["nsd"].as_f64().unwrap() - want_nsd).abs() < 1e-12,
        "{line}"
    );
    assert!(want_nsd > 0.0 && want_nsd <= 1.0);

    bin()
        .args(["masks", "--pred"])
        .arg(&pa)
        .arg("--ref")
        .arg(&pc)
        .args(["--tolerance-mm", "2.0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("a.nii.gz").and(predicate::str::contains("c.nii")));

    // --label: the reference's foreground is those label values only. A multi-label reference:
    // b's block as label 2, and a second structure (label 3) that the prediction misses.
    let multi: Vec<u16> = (0..216)
        .map(|i| match (b[i], i < 36) {
            (1, _) => 2,
            (_, true) => 3,
            _ => 0,
        })
        .collect();
    let pm = dir.path().join("multi.nii.gz");
    write_nifti(
        &pm,
        &Volume::from_shape(shape, [1.0, 1.0, 2.0], multi).unwrap(),
    )
    .unwrap();
    let dice_with = |labels: &[&str]| {
        let mut cmd = bin();
        cmd.args(["masks", "--pred"])
            .arg(&pa)
            .arg("--ref")
            .arg(&pm)
            .args(["--tolerance-mm", "2.0"]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        let out = cmd.assert().success().get_output().stdout.clone();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        line["dice"].as_f64().unwrap()
    };
    assert!((dice_with(&["2"]) - 2.0 / 3.0).abs() < 1e-12);
    let all = dice_with(&[]);
    assert!(all < 0.5, "label 3 counts without --label: {all}");
    assert_eq!(dice_with(&["2,3"]), all);
    assert_eq!(dice_with(&["3", "2"]), all);
    // a label value the reference lacks is an error naming it and the file's values
    bin()
        .args(["masks", "--pred"])
        .arg(&pa)
        .arg("--ref")
        .arg(&pm)
        .args(["--tolerance-mm", "2.0", "--label", "2,5"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("[5] do not occur in")
                .and(predicate::str::contains("multi.nii.gz"))
                .and(predicate::str::contains("(its values: 0, 2, 3)")),
        );
    for (bad, want) in [
        ("0", "0 is the background"),
        ("x", "is not a label value"),
        ("-1", "is not a label value"),
    ] {
        bin()
            .args(["masks", "--pred"])
            .arg(&pa)
            .arg("--ref")
            .arg(&pm)
            .args(["--tolerance-mm", "2.0", "--label", bad])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(want));
    }

    // a negative or NaN tolerance is a usage error
    for t in ["-1", "NaN", "inf"] {
        bin()
            .args(["masks", "--pred"])
            .arg(&pa)
            .arg("--ref")
            .arg(&pb)
            .args(["--tolerance-mm", t])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "non-negative number of millimetres",
            ));
    }
}

#[test]
fn help_snapshot() {
    let out = bin()
        .arg("--help")
        .env("COLUMNS", "100")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    insta::assert_snapshot!(String::from_utf8(out).unwrap());
}
