//! CLI tests: small cases/trajectory tables built here with polars, then the real binary.

use std::path::Path;

use assert_cmd::Command;
use polars::prelude::*;
use predicates::str::contains;

const N_CASES: usize = 20;

/// Deterministic per-case noise in [0, 0.05) so no two differences tie.
fn noise(i: usize, salt: usize) -> f64 {
    (((i * 7919 + salt * 104729) % 1000) as f64) / 20000.0
}

/// cases.parquet for one task: `base` (run null, episode 0) and, per method in `adapted`, two
/// training runs with episodes 1 and 2; and next to it final.parquet as clopa-eval writes it
/// (run null, the final episode). `in` is clearly better than everyone in its final episode;
/// episode 1 is bad so a wrong "final episode" choice would show.
fn write_cases(path: &Path, adapted: &[&str], drop_column: Option<&str>) {
    let mut cases = Rows::default();
    let mut finals = Rows::default();
    cases.push("base", None, 0, 0.5, 1);
    finals.push("base", None, 0, 0.5, 1);
    for (k, m) in adapted.iter().enumerate() {
        let level = if *m == "in" { 0.85 } else { 0.55 };
        for r in 0..2u32 {
            cases.push(m, Some(r), 1, 0.1, 10 + k * 3 + r as usize);
            cases.push(m, Some(r), 2, level, 20 + k * 3 + r as usize);
        }
        finals.push(m, None, 2, level, 30 + k);
    }
    cases.write(path, drop_column);
    finals.write(&path.with_file_name("final.parquet"), drop_column);
}

#[derive(Default)]
struct Rows {
    task: Vec<&'static str>,
    method: Vec<String>,
    run: Vec<Option<u32>>,
    episode: Vec<u32>,
    n_seen: Vec<u32>,
    case_id: Vec<String>,
    dice: Vec<f64>,
    noi: Vec<u32>,
    failed: Vec<bool>,
}

impl Rows {
    fn push(&mut self, m: &str, r: Option<u32>, e: u32, level: f64, salt: usize) {
        for i in 0..N_CASES {
            let d = (level + noise(i, salt)).min(1.0);
            self.task.push("liver");
            self.method.push(m.to_string());
            self.run.push(r);
            self.episode.push(e);
            self.n_seen.push(e * 5);
            self.case_id.push(format!("case{i:02}"));
            self.dice.push(d);
            self.noi.push(if d > 0.8 { 5u32 } else { 101 });
            self.failed.push(d <= 0.8 && i % 2 == 0);
        }
    }

    fn write(self, path: &Path, drop_column: Option<&str>) {
        let n = self.task.len();
        let mut cols = vec![
            Column::new("task".into(), self.task),
            Column::new("method".into(), self.method),
            Column::new("run".into(), self.run),
            Column::new("episode".into(), self.episode),
            Column::new("n_seen".into(), self.n_seen),
            Column::new("case_id".into(), self.case_id),
        ];
        for (j, name) in [
            "dice_init",
            "dice_final",
            "dice_nauc",
            "nsd_init",
            "nsd_final",
            "nsd_nauc",
        ]
        .iter()
        .enumerate()
        {
            cols.push(Column::new(
                (*name).into(),
                self.dice
                    .iter()
                    .map(|d| d * (1.0 - 0.01 * j as f64))
                    .collect::<Vec<f64>>(),
            ));
        }
        cols.push(Column::new("noi".into(), self.noi));
        cols.push(Column::new("failed".into(), self.failed));
        if let Some(c) = drop_column {
            cols.retain(|col| col.name().as_str() != c);
        }
        let mut df = DataFrame::new(n, cols).expect("frame");
        ParquetWriter::new(std::fs::File::create(path).expect("create"))
            .finish(&mut df)
            .expect("write");
    }
}

/// trajectory.parquet: 10 positions per method and metric, `in` on top, plus the AUC rows.
fn write_trajectory(path: &Path, methods: &[&str]) {
    let metrics = [
        "dice_init",
        "dice_final",
        "dice_nauc",
        "nsd_init",
        "nsd_final",
        "nsd_nauc",
        "nnoi_pct",
        "nof_pct",
    ];
    let (mut task, mut method, mut metric, mut position, mut value, mut nos) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for m in methods {
        for (j, name) in metrics.iter().enumerate() {
            let pct = name.ends_with("_pct");
            let mut vals = Vec::new();
            for p in 1..=10u32 {
                let level = match *m {
                    "in" => 0.6 + 0.03 * f64::from(p),
                    "cn" => 0.55 + 0.01 * f64::from(p),
                    _ => 0.5,
                } + noise(p as usize, j + 1);
                let v = if pct { 100.0 * (1.0 - level) } else { level };
                vals.push(v);
                task.push("liver");
                method.push(m.to_string());
                metric.push(name.to_string());
                position.push(Some(p));
                value.push(v);
                nos.push(None);
            }
            task.push("liver");
            method.push(m.to_string());
            metric.push(name.to_string());
            position.push(None);
            value.push(vals.iter().sum::<f64>() / vals.len() as f64);
            nos.push((*name == "dice_final" && *m == "in").then_some(0.4));
        }
    }
    let n = task.len();
    let mut df = DataFrame::new(
        n,
        vec![
            Column::new("task".into(), task),
            Column::new("method".into(), method),
            Column::new("metric".into(), metric),
            Column::new("position".into(), position),
            Column::new("value".into(), value),
            Column::new("nos".into(), nos),
        ],
    )
    .expect("frame");
    ParquetWriter::new(std::fs::File::create(path).expect("create"))
        .finish(&mut df)
        .expect("write");
}

fn read(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).expect("open"))
        .finish()
        .expect("read")
}

/// The tool on tables without clopa-eval's metadata (the fixtures are written directly), so
/// with the paper's steps per curve given.
fn rank() -> Command {
    let mut c = Command::cargo_bin("clopa-rank").expect("binary");
    c.args(["--steps", "101"]);
    c
}

#[test]
fn writes_every_output_and_bolds_the_clear_winner() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = dir.path().join("cases.parquet");
    let traj = dir.path().join("trajectory.parquet");
    write_cases(&cases, &["in", "cn"], None);
    write_trajectory(&traj, &["base", "in", "cn"]);
    let out = dir.path().join("report");
    rank()
        .arg(&cases)
        .arg("--trajectory")
        .arg(&traj)
        .arg("-o")
        .arg(&out)
        .args(["--threshold", "0.8", "-q"])
        .assert()
        .success();
    for f in [
        "pairs.parquet",
        "ranking.parquet",
        "table2.md",
        "table3.md",
        "fig2.png",
        "fig2.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    let table2 = std::fs::read_to_string(out.join("table2.md")).expect("table2");
    let row = |name: &str| {
        table2
            .lines()
            .find(|l| l.contains(&format!("| {name} |")))
            .expect(name)
            .to_string()
    };
    let in_row = row("CLoPA-I.N");
    let base_row = row("nnInteractive");
    // `in` (final episode ≈ 0.87 mean Dice) beats base (≈ 0.52) and cn (≈ 0.57) on every score.
    assert_eq!(in_row.matches("**").count(), 2 * 8, "{in_row}");
    assert!(!base_row.contains("**"), "{base_row}");
    assert!(
        in_row.contains("**0.8"),
        "final episode values are shown: {in_row}"
    );
    assert!(table2.contains("| liver |"));

    let table3 = std::fs::read_to_string(out.join("table3.md")).expect("table3");
    assert!(
        table3
            .lines()
            .any(|l| l.contains("CLoPA-I.N") && l.contains("**")),
        "{table3}"
    );

    let pairs = read(&out.join("pairs.parquet"));
    // 3 methods → 6 ordered pairs, 8 metrics in Table 2 and 8 in Table 3.
    assert_eq!(pairs.height(), 6 * 16);
    let col = |n: &str| pairs.column(n).expect(n).as_materialized_series().clone();
    let method = col("method");
    let opponent = col("opponent");
    let p = col("p_value");
    let metric = col("metric");
    let table = col("table");
    let test = col("test");
    let (method, opponent, p, metric, table, test) = (
        method.str().expect("s"),
        opponent.str().expect("s"),
        p.f64().expect("f"),
        metric.str().expect("s"),
        table.str().expect("s"),
        test.str().expect("s"),
    );
    for i in 0..pairs.height() {
        let back = (0..pairs.height())
            .find(|&j| {
                method.get(j) == opponent.get(i)
                    && opponent.get(j) == method.get(i)
                    && metric.get(j) == metric.get(i)
                    && table.get(j) == table.get(i)
            })
            .expect("both directions");
        assert_eq!(
            p.get(i).map(f64::to_bits),
            p.get(back).map(f64::to_bits),
            "row {i}"
        );
        let want_test = if metric.get(i) == Some("failed") {
            "mcnemar"
        } else {
            "wilcoxon"
        };
        assert_eq!(test.get(i), Some(want_test));
    }

    let ranking = read(&out.join("ranking.parquet"));
    assert_eq!(ranking.height(), 3 * 16);

    let png = std::fs::read(out.join("fig2.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 1000);
    let svg = std::fs::read_to_string(out.join("fig2.svg")).expect("svg");
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("CLoPA-I.N"), "legend text in the SVG");
}

#[test]
fn single_method_writes_tables_without_pairs() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = dir.path().join("cases.parquet");
    write_cases(&cases, &[], None);
    let out = dir.path().join("report");
    rank()
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .arg("-q")
        .assert()
        .success();
    assert_eq!(read(&out.join("pairs.parquet")).height(), 0);
    assert_eq!(read(&out.join("ranking.parquet")).height(), 8);
    let table2 = std::fs::read_to_string(out.join("table2.md")).expect("table2");
    assert!(table2.contains("nnInteractive") && !table2.contains("**"));
    assert!(
        out.join("table3.md").is_file()
            && out.join("fig2.png").is_file()
            && out.join("fig2.svg").is_file()
    );

    // --base-label names the base rows (a `|` escaped for Markdown), also in the figure's legend
    rank()
        .arg(&cases)
        .args(["-o"])
        .arg(&out)
        .args(["-q", "--base-label", "tiny|v2"])
        .assert()
        .success();
    let table2 = std::fs::read_to_string(out.join("table2.md")).expect("table2");
    assert!(
        table2.contains("| tiny\\|v2 |") && !table2.contains("nnInteractive"),
        "{table2}"
    );
    let svg = std::fs::read_to_string(out.join("fig2.svg")).expect("svg");
    assert!(svg.contains("tiny|v2") || !svg.contains("<text"), "{svg}");
    rank()
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .args(["--base-label", " "])
        .assert()
        .code(2)
        .stderr(contains("the base rows need a name"));
    rank()
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .args(["--base-label", "a\nb"])
        .assert()
        .code(2)
        .stderr(contains("a name on one line"));
}

#[test]
fn challenger_mode_ranks_the_winner_first() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = dir.path().join("cases.parquet");
    write_cases(&cases, &["in", "cn"], None);
    let out = dir.path().join("report");
    rank()
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .args(["--mode", "challenger", "-q"])
        .assert()
        .success();
    let ranking = read(&out.join("ranking.parquet"));
    let m = ranking
        .column("method")
        .expect("m")
        .as_materialized_series()
        .clone();
    let r = ranking
        .column("rank")
        .expect("r")
        .as_materialized_series()
        .clone();
    let (m, r) = (m.str().expect("s"), r.u32().expect("u"));
    for i in 0..ranking.height() {
        if m.get(i) == Some("in") {
            assert_eq!(r.get(i), Some(1));
        }
    }
}

/// Table 2 of several training runs needs final.parquet: without it the tool refuses (per-run
/// NoI and failures cannot be combined into the averaged curve's); `--final` names it anywhere.
#[test]
fn several_training_runs_need_final_parquet() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = dir.path().join("cases.parquet");
    write_cases(&cases, &["in", "cn"], None);
    let elsewhere = dir.path().join("table2-input.parquet");
    std::fs::rename(dir.path().join("final.parquet"), &elsewhere).expect("mv");
    let out = dir.path().join("report");
    rank()
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("2 training runs").and(contains("--final")));
    assert!(!out.join("table2.md").exists());
    rank()
        .arg(&cases)
        .arg("--final")
        .arg(&elsewhere)
        .arg("-o")
        .arg(&out)
        .arg("-q")
        .assert()
        .success();
    let table2 = std::fs::read_to_string(out.join("table2.md")).expect("table2");
    assert!(table2.contains("CLoPA-I.N"), "{table2}");

    // A final.parquet of another task would put another task in Table 2 than in Table 3.
    let mut other = read(&elsewhere);
    let n = other.height();
    other
        .with_column(Column::new("task".into(), vec!["spleen"; n]))
        .expect("task");
    let other_path = dir.path().join("spleen-final.parquet");
    ParquetWriter::new(std::fs::File::create(&other_path).expect("create"))
        .finish(&mut other)
        .expect("write");
    let out2 = dir.path().join("report2");
    rank()
        .arg(&cases)
        .arg("--final")
        .arg(&other_path)
        .arg("-o")
        .arg(&out2)
        .assert()
        .code(1)
        .stderr(
            contains("spleen-final.parquet")
                .and(contains("\"spleen\""))
                .and(contains("\"liver\"")),
        );
    assert!(!out2.join("table2.md").exists());

    // A folder where a late output goes is refused before any output is written.
    std::fs::create_dir_all(out2.join("fig2.png")).expect("dir");
    rank()
        .arg(&cases)
        .arg("--final")
        .arg(&elsewhere)
        .arg("-o")
        .arg(&out2)
        .assert()
        .code(1)
        .stderr(contains("fig2.png"));
    assert!(!out2.join("pairs.parquet").exists() && !out2.join("table2.md").exists());
}

#[test]
fn a_missing_column_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = dir.path().join("cases.parquet");
    write_cases(&cases, &["in"], Some("failed"));
    rank()
        .arg(&cases)
        .arg("-o")
        .arg(dir.path().join("out"))
        .assert()
        .code(1)
        .stderr(contains("\"failed\"").and(contains("cases.parquet")));
    assert!(!dir.path().join("out").join("table2.md").exists());
}

#[test]
fn an_unknown_mode_is_a_usage_error() {
    rank()
        .args(["x.parquet", "-o", "out", "--mode", "borda"])
        .assert()
        .code(2)
        .stderr(contains("borda"));
    rank()
        .args(["x.parquet", "-o", "out", "--alpha", "1.5"])
        .assert()
        .code(2);
}

#[test]
fn help_explains_itself() {
    let out = rank().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    insta::assert_snapshot!(text);
}

use predicates::prelude::PredicateBooleanExt;

#[test]
fn bad_tables_and_values_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = dir.path().join("cases.parquet");
    write_cases(&cases, &["in"], None);
    let out = dir.path().join("out");
    // No metadata and no --steps: nNoI cannot be computed honestly.
    Command::cargo_bin("clopa-rank")
        .expect("binary")
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("--steps").and(contains("cases.parquet")));
    // A NoI beyond the steps per curve.
    rank()
        .args(["--steps", "50"])
        .arg(&cases)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("noi is 101"));
    // NaN, out-of-range and empty tables.
    let df = read(&cases);
    let edit = |name: &str, f: &dyn Fn(DataFrame) -> DataFrame| {
        let p = dir.path().join(name);
        let mut d = f(df.clone());
        ParquetWriter::new(std::fs::File::create(&p).expect("create"))
            .finish(&mut d)
            .expect("write");
        p
    };
    let set_in = |col: &'static str, value: f64| {
        move |mut d: DataFrame| {
            let mut v: Vec<f64> = d
                .column(col)
                .expect("col")
                .f64()
                .expect("f64")
                .into_no_null_iter()
                .collect();
            v[3] = value;
            d.replace(col, Column::new(col.into(), v)).expect("replace");
            d
        }
    };
    let set_first = |value: f64| set_in("dice_final", value);
    // A NaN nAUC is what clopa-eval writes for 1-step curves: accepted.
    // (a file not named cases.parquet gets no final.parquet from beside it: --final names it)
    let p = edit("nan-nauc.parquet", &set_in("dice_nauc", f64::NAN));
    rank()
        .arg(&p)
        .arg("--final")
        .arg(dir.path().join("final.parquet"))
        .arg("-o")
        .arg(dir.path().join("nauc"))
        .assert()
        .success();
    rank()
        .arg(&p)
        .arg("-o")
        .arg(dir.path().join("nauc2"))
        .assert()
        .code(1)
        .stderr(contains("--final"));
    for (name, f, needle) in [
        (
            "nan.parquet",
            &set_first(f64::NAN) as &dyn Fn(DataFrame) -> DataFrame,
            "NaN in row 3",
        ),
        ("seven.parquet", &set_first(7.0), "7 in row 3"),
        ("empty.parquet", &|d: DataFrame| d.head(Some(0)), "no rows"),
    ] {
        let p = edit(name, f);
        rank()
            .arg(&p)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(1)
            .stderr(contains(name).and(contains(needle)));
    }
    assert!(!out.join("table2.md").exists());
    // A metric stored as text is named, not parsed.
    let p = edit("text.parquet", &|mut d: DataFrame| {
        let c = d
            .column("dice_init")
            .expect("col")
            .cast(&DataType::String)
            .expect("cast");
        d.replace("dice_init", c).expect("replace");
        d
    });
    rank()
        .arg(&p)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(contains("dice_init").and(contains("expected f64")));
    // A threshold outside [0, 1] and `-o -` are usage errors.
    for args in [&["--threshold", "3", "-o", "x"][..], &["-o", "-"]] {
        rank().arg(&cases).args(args).assert().code(2);
    }
}
